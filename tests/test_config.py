"""Config schema: defaults are filled, bad values stop with one line naming the key."""

from __future__ import annotations

import copy

import pytest

from fewstep.core.config import fingerprint, load, validate
from fewstep.core.errors import ConfigError
from tests.conftest import study_of


def test_defaults_are_filled(raw_demo):
    raw = copy.deepcopy(raw_demo)
    del raw["resolution"]
    raw["adapters"]["plain"] = {"kind": "infusenet"}
    config = validate(raw)
    assert config["resolution"] == {"width": 864, "height": 1152}
    assert config["adapters"]["plain"] == {
        "kind": "infusenet",
        "variant": "aes_stage2",
        "conditioning_scale": 1.0,
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control": "none",
    }
    assert config["memory"] == {"offload": "none", "fp8_weights": False}
    assert config["face"] == {"pack": "antelopev2", "policy": "largest"}
    assert config["results_dir"] == "results" and config["models_dir"] == "resources/models"
    assert config["prompts"][0] == {"id": "portrait", "text": raw["prompts"][0]["text"], "role": "identity"}


def test_defaults_fill_only_where_they_apply(raw_demo):
    """InfuseNet's settings only on InfuseNet adapters; a family's own backbone keys (T5's sequence
    length) are never filled: the family reads its own default, and its grid refuses them elsewhere.
    The stored and hashed config of an IP-Adapter or SD cell holds nothing it does not use."""
    raw = copy.deepcopy(raw_demo)
    raw["adapters"]["style"] = {"kind": "ip_adapter", "role": "style"}
    raw["adapters"]["off"] = {"kind": "none"}
    raw["backbones"]["sd15"] = {"family": "sd15", "model": "sd15", "steps": [4]}
    config = validate(raw)
    assert config["adapters"]["style"] == {"kind": "ip_adapter", "role": "style"}
    assert config["adapters"]["off"] == {"kind": "none"}
    assert "max_sequence_length" not in config["backbones"]["sd15"]
    backbones = config["backbones"].values()
    assert config["backbones"]["flux-dev"]["max_sequence_length"] == 512  # as config/demo.yaml sets it
    del raw["backbones"]["flux-dev"]["max_sequence_length"]
    assert "max_sequence_length" not in validate(raw)["backbones"]["flux-dev"]
    assert all(b["guidance"] in (None, 3.5) for b in backbones)  # null: the family's default
    raw["adapters"]["style"]["variant"] = "sim_stage1"
    with pytest.raises(ConfigError) as error:
        validate(raw)
    assert str(error.value) == ("config adapters.style.variant: applies only where kind infusenet; remove it")
    del raw["adapters"]["style"]["variant"]
    raw["backbones"]["sd15"]["max_sequence_length"] = 77
    raw["cells"].append({"backbones": ["sd15"], "adapters": ["style"]})
    from fewstep.grid import Grid

    with pytest.raises(
        ConfigError, match=r"^config backbones.sd15.max_sequence_length: not a setting of sd15 backbones "
    ):
        Grid(study_of(validate(raw)))


def test_plain_string_prompts_get_ids(raw_demo):
    raw_demo["prompts"] = ["a photo", 'quotes "x" and ünïcode\nnew line']
    config = validate(raw_demo)
    assert [p["id"] for p in config["prompts"]] == ["p00", "p01"]
    assert config["prompts"][1]["text"] == 'quotes "x" and ünïcode\nnew line'


@pytest.mark.parametrize(
    ("mutate", "key", "hint"),
    [
        (lambda c: c["backbones"]["flux-dev"].update(steps=[0, 4]), "backbones.flux-dev.steps[0]", "minimum"),
        (lambda c: c["backbones"]["flux-dev"].update(steps=[-2]), "backbones.flux-dev.steps[0]", "minimum"),
        (lambda c: c["resolution"].update(width=100), "resolution.width", "multiple of 16"),
        (lambda c: c.update(prompts=[]), "prompts", "should be non-empty"),
        (lambda c: c.update(sweepp="x"), "<top level>", "sweepp"),
        (
            lambda c: c["adapters"]["infusenet-aes"].update(kind="ipadapter"),
            "adapters.infusenet-aes.kind",
            "is not one of",
        ),
        (
            lambda c: c["cells"][0]["backbones"].append("sd21"),
            "cells[0].backbones",
            "unknown backbone 'sd21'",
        ),
        (lambda c: c["cells"][0]["adapters"].append("nope"), "cells[0].adapters", "unknown adapter 'nope'"),
        (
            lambda c: c["identities"].append(dict(c["identities"][0])),
            "identities",
            "duplicated id 'astronaut'",
        ),
        (lambda c: c.update(seeds=[1, 1]), "seeds", "non-unique"),
        (lambda c: c.update(anchor="flux-dev/infusenet-aes/28"), "anchor", "not in the grid"),
        (
            lambda c: c["backbones"]["flux-dev"].update(model="sd3"),
            "backbones.flux-dev.model",
            "unknown model",
        ),
        (
            lambda c: c["backbones"]["flux-schnell"].update(max_sequence_length=512),
            "backbones.flux-schnell.max_sequence_length",
            "256",
        ),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(raw_demo, mutate, key, hint):
    from fewstep.grid import Grid

    mutate(raw_demo)
    with pytest.raises(ConfigError) as excinfo:
        Grid(study_of(validate(raw_demo)))
    message = str(excinfo.value)
    assert "\n" not in message
    assert key in message and hint in message


def test_load_merges_files_and_reports_bad_yaml(tmp_path):
    from tests.conftest import REPO

    override = tmp_path / "override.yaml"
    override.write_text("sweep: other\nseeds: [3, 4]\n")
    config = load([REPO / "config" / "demo.yaml", override])
    assert config["sweep"] == "other" and config["seeds"] == [3, 4]
    broken = tmp_path / "broken.yaml"
    broken.write_text("sweep: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+ is not valid YAML"):
        load([broken])
    with pytest.raises(ConfigError, match="does not exist"):
        load([tmp_path / "missing.yaml"])


def test_fingerprint_ignores_key_order_but_not_values():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def _pictures(folder, *names):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), (200, 120, 90)).save(folder / name)
    return folder


def test_identities_from_a_folder_or_glob_take_their_ids_from_file_names(raw_demo, tmp_path):
    faces = _pictures(tmp_path / "faces", "ada.png", "Grace Hopper.jpg", "lin.webp")
    (faces / "notes.txt").write_text("not a picture")
    raw_demo["identities"] = str(faces)
    config = validate(raw_demo)
    assert config["identities"] == [
        {"id": "Grace-Hopper", "image": str(faces / "Grace Hopper.jpg")},
        {"id": "ada", "image": str(faces / "ada.png")},
        {"id": "lin", "image": str(faces / "lin.webp")},
    ]
    assert validate(config)["identities"] == config["identities"]  # expanding is idempotent
    raw_demo["identities"] = [str(faces / "*.png"), {"id": "astronaut", "image": "builtin:astronaut"}]
    assert [i["id"] for i in validate(raw_demo)["identities"]] == ["ada", "astronaut"]


def _schema_validator():
    import jsonschema
    import yaml

    from fewstep.core.config import SCHEMA_PATH

    return jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA_PATH.read_text()))


def test_ids_from_file_names_are_valid_names(raw_demo, tmp_path):
    """A folder's ids satisfy the schema's name pattern (letter or digit first), so the resolved
    config passes the schema again: the Snakefile checks the config once, before the filling."""
    faces = _pictures(tmp_path / "faces", "_face.png", "-dash.png", "ünï cödé.jpg")
    raw_demo["identities"] = str(faces)
    config = validate(raw_demo)
    assert [identity["id"] for identity in config["identities"]] == ["dash", "face", "n-c-d"]
    errors = [error.message for error in _schema_validator().iter_errors(config)]
    assert errors == []


def _schemas_with_defaults(node, where="config"):
    """(key path, subschema) of every subschema of the config schema that declares a default."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _schemas_with_defaults(item, f"{where}[{index}]")
    elif isinstance(node, dict):
        if "default" in node:
            yield where, node
        for key, value in node.items():
            if key in ("properties", "$defs"):  # maps of names to subschemas
                for name, sub in value.items():
                    yield from _schemas_with_defaults(sub, f"{where}.{name}")
            elif key != "default":
                yield from _schemas_with_defaults(value, f"{where}/{key}")


def test_every_schema_default_passes_its_own_schema():
    """The filled defaults need no second schema check: each one is valid where it is filled."""
    validator = _schema_validator()

    def invalid_defaults(node):
        found = list(_schemas_with_defaults(node))
        return len(found), [
            where for where, sub in found if not validator.evolve(schema=sub).is_valid(sub["default"])
        ]

    count, invalid = invalid_defaults(validator.schema)
    assert count > 40 and invalid == []
    # $refs and bounds are checked: a default its schema refuses is named
    bad = {
        "properties": {
            "sweep": {"$ref": "#/$defs/name", "default": "_results"},
            "seed": {"minimum": 0, "default": -1},
        }
    }
    assert invalid_defaults(bad) == (2, ["config.sweep", "config.seed"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: _pictures(d / "empty") and [str(d / "empty")], "folder {d}/empty holds no pictures"),
        (lambda d: [str(d / "none-*.png")], "glob '{d}/none-*.png' holds no pictures"),
        (lambda d: [str(d / "missing")], "{d}/missing is neither a folder nor a glob"),
        (
            lambda d: [str(_pictures(d / "f", "ada.png", "ada.jpg"))],
            "duplicated id 'ada' ({d}/f/ada.jpg and {d}/f/ada.png)",
        ),
        (
            lambda d: [str(_pictures(d / "g", "ada.png")), {"id": "ada", "image": "builtin:astronaut"}],
            "duplicated id 'ada' ({d}/g/ada.png and builtin:astronaut)",
        ),
        (
            lambda d: (_pictures(d / "h"), (d / "h" / "bad.jpg").write_bytes(b"not a jpeg"), [str(d / "h")])[
                -1
            ],
            "{d}/h/bad.jpg cannot be read as a picture (UnidentifiedImageError); replace or remove it",
        ),
    ],
)
def test_bad_identity_folders_fail_with_one_line(raw_demo, tmp_path, make, message):
    raw_demo["identities"] = make(tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(raw_demo)
    text = str(err.value)
    assert text.startswith("config identities: ") and "\n" not in text
    assert message.format(d=tmp_path) in text


def test_command_line_overrides_get_the_schema_types(raw_demo):
    """`--config seeds=[0,1]` arrives as strings (Snakemake's BaseLoader); validation restores the types."""
    from snakemake.cli import parse_config

    overrides = parse_config(
        ["seeds=[0,1]", "resolution={width: 96, height: 96}", "backbones={flux-dev: {guidance: null}}"]
    )
    assert overrides["seeds"] == ["0", "1"]  # what Snakemake hands over
    raw_demo.update(seeds=overrides["seeds"], resolution=overrides["resolution"])
    raw_demo["backbones"]["flux-dev"]["guidance"] = overrides["backbones"]["flux-dev"]["guidance"]
    raw_demo["prompts"] = [{"id": "7", "text": "1"}, "2"]
    config = validate(raw_demo)
    assert config["seeds"] == [0, 1]
    assert config["resolution"] == {"width": 96, "height": 96}
    assert config["backbones"]["flux-dev"]["guidance"] is None
    assert config["prompts"] == [{"id": "7", "text": "1"}, {"id": "p01", "text": "2"}]  # strings stay strings


def test_command_line_overrides_that_are_no_number_still_fail_naming_the_key(raw_demo):
    raw_demo["seeds"] = ["0", "a"]
    with pytest.raises(ConfigError, match=r"^config seeds\[1\]: 'a' is not of type 'integer'$"):
        validate(raw_demo)


def test_config_reference_page_is_current():
    """config/README.md is generated from the schema: regenerate with `fewstep config-reference`."""
    from fewstep.core.config import reference_markdown
    from tests.conftest import REPO

    page = (REPO / "config" / "README.md").read_text()
    assert page == reference_markdown(), "run: fewstep config-reference --out config/README.md"
    assert "| `backbones.<name>.steps` | list of integer |" in page
    assert '| `scoring.lpips_net` | `alex` \\| `vgg` | `"alex"` |' in page


@pytest.mark.parametrize(
    ("section", "key", "value", "line"),
    [
        (
            "backbones",
            "scheduler",
            "ddim",
            "config backbones.flux-dev.scheduler: not a setting of flux backbones (theirs: family, "
            "guidance, max_sequence_length, model, steps); remove it",
        ),
        ("backbones", "resolution", 512, "config backbones.flux-dev.resolution: not a setting of flux "),
        ("adapters", "scale", 0.5, "config adapters.infusenet-aes.scale: not a setting of flux infusenet"),
    ],
)
def test_sd_only_settings_on_flux_are_refused_in_one_line(section, key, value, line):
    import re

    import yaml

    from fewstep.grid import Grid
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    name = "flux-dev" if section == "backbones" else "infusenet-aes"
    raw[section][name][key] = value
    with pytest.raises(ConfigError, match=re.escape(line)):
        Grid(study_of(validate(raw)))


@pytest.mark.parametrize("section", ["identities", "references"])
@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("{d}/nowhere.png", "{d}/nowhere.png does not exist; fix the path or remove the entry"),
        ("{d}/corrupt.png", "{d}/corrupt.png cannot be read as a picture (UnidentifiedImageError)"),
        ("builtin:hubble", "unknown builtin image 'hubble'; use e.g. builtin:astronaut"),
        ("builtin:insightface/t9", "unknown builtin image 'insightface/t9'; insightface ships: "),
    ],
)
def test_explicit_picture_entries_are_checked_like_folder_entries(
    raw_demo, tmp_path, section, image, problem
):
    """An {id, image} entry with a picture no job could read stops validation (so `snakemake -n` and
    `fewstep validate`), naming the entry's key, as a bad picture in an identity folder does."""
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    entry = {"id": "extra", "image": image.format(d=tmp_path)} | (
        {"role": "style"} if section == "references" else {}
    )
    raw_demo[section].append(entry)
    index = len(raw_demo[section]) - 1
    with pytest.raises(ConfigError) as err:
        validate(raw_demo)
    assert str(err.value).startswith(f"config {section}[{index}].image: {problem.format(d=tmp_path)}")
    assert "\n" not in str(err.value)
    raw_demo[section][index]["image"] = "builtin:insightface/t1"  # a readable picture passes
    assert validate(raw_demo)[section][index]["image"] == "builtin:insightface/t1"


@pytest.mark.parametrize(
    ("mutate", "line"),
    [
        (
            lambda c: c.update(promts=c.pop("prompts")),
            "config <top level>: the required key 'prompts' is missing and 'promts' is not a key; "
            "did you mean 'prompts'? Rename it",
        ),
        (
            lambda c: c["backbones"]["flux-dev"].update(stepz=[1]),
            "config backbones.flux-dev: 'stepz' is not a key; did you mean 'steps'? Rename it",
        ),
        (
            lambda c: c.update(qqq=1),
            "config <top level>: 'qqq' is not a key; remove it or check its spelling",
        ),
        (
            lambda c: c.update({"wandb.mode": "disabled"}),
            "config <top level>: 'wandb.mode' is not a key: Snakemake's --config takes no dotted keys; "
            "write the nested override --config 'wandb={mode: disabled}'",
        ),
    ],
)
def test_a_misspelt_key_is_named_with_its_close_match(raw_demo, mutate, line):
    mutate(raw_demo)
    with pytest.raises(ConfigError) as err:
        validate(raw_demo)
    assert str(err.value) == line


def test_fewstep_snakemake_turns_dotted_overrides_into_nested_ones(raw_demo, capsys):
    """`--config wandb.mode=disabled` (a traceback from Snakemake) becomes `wandb={mode: disabled}`,
    which Snakemake merges into the config file's `wandb` keys: the other keys stay."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    from fewstep.cli import nested_config_overrides

    argv = ["-n", "--config", "wandb.mode=disabled", "seeds=[0,1]", "resolution.width=96", "--cores", "1"]
    rewritten = nested_config_overrides(argv)
    assert rewritten == [
        "-n",
        "--config",
        "wandb={mode: disabled}",
        "seeds=[0,1]",
        "resolution={width: 96}",
    ] + [
        "--cores",
        "1",
    ]
    assert capsys.readouterr().err.splitlines()[0] == (
        "fewstep snakemake: --config wandb.mode=disabled read as --config 'wandb={mode: disabled}'"
    )
    with pytest.raises(ValueError, match="valid identifier"):  # what Snakemake does with the dotted key
        parse_config(["wandb.mode=disabled"])
    update_config(raw_demo, parse_config(rewritten[2:5]))
    config = validate(raw_demo)
    assert config["wandb"] == {**config["wandb"], "mode": "disabled", "project": "fewstep-demo"}
    assert config["resolution"]["width"] == 96 and config["resolution"]["height"] == 64
    assert nested_config_overrides(["--configfile", "a.b=c.yaml"]) == ["--configfile", "a.b=c.yaml"]
