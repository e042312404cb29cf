"""Families: FLUX has the grid side of the `Family` protocol; the grid takes the families it is given."""

from __future__ import annotations

import copy

import pytest
import yaml

from fewstep.core.config import SCHEMA_PATH, validate
from fewstep.core.errors import ConfigError
from fewstep.families import FAMILIES
from fewstep.families.base import Family
from fewstep.families.flux.family import FLUX
from fewstep.grid import Cell, Grid
from fewstep.registry.spec import ModelSpec
from tests.conftest import study_of

GRID_SIDE = (
    "name",
    "backbones",
    "adapter_kinds",
    "max_side",
    "check_backbone",
    "check_adapter",
    "guidance",
    "cell_models",
    "needs_identity_embeddings",
    "identity_models",
    "prompt_model",
    "acceleration_switches",
    "comparable",
    "settings",
    "image_size",
    "check_size",
    "prompt_variants",
    "prompt_variant",
    "prompt_metadata",
    "reference_file",
    "reference_models",
    "anchors_to_highest_step",
    "cell_weights",
    "adapter_roles",
    "adapter_role",
    "backbone_keys",
    "adapter_keys",
    "figure_files",
    "timing_name",
    "figure_cell",
)


def test_flux_is_the_registered_family_and_has_the_grid_side():
    assert FAMILIES["flux"] is FLUX and sorted(FAMILIES) == ["flux", "klein", "kontext", "sd15", "sdxl"]
    assert [(f, name) for f in FAMILIES.values() for name in GRID_SIDE if not hasattr(f, name)] == []
    assert set(GRID_SIDE) <= set(Family.__annotations__) | set(vars(Family))
    assert sorted(FLUX.backbones) == ["flux-dev", "flux-schnell"]
    assert FLUX.cell_models({"model": "flux-dev"}, {"kind": "none"}) == ["flux-dev"]
    assert FLUX.cell_models({"model": "flux-dev"}, {"kind": "infusenet", "variant": "aes_stage2"}) == [
        "flux-dev",
        "infiniteyou",
    ]


class ToyFamily:
    """A second family, only for the grid: what a new family folder would give it."""

    name = "toy"
    backbones = {"toy-1": ModelSpec("toy-1", "toy-1")}
    adapter_kinds = frozenset({"none"})
    max_side = 512
    backbone_keys = frozenset()
    adapter_keys = {"none": frozenset()}
    adapter_roles = ("identity",)
    acceleration_switches = frozenset()
    comparable = False
    anchors_to_highest_step = False

    def check_backbone(self, key, backbone):
        if backbone["steps"] != sorted(backbone["steps"]):
            raise ConfigError(f"config backbones.{key}.steps: list them in increasing order")

    def check_adapter(self, key, adapter):
        pass

    def guidance(self, backbone):
        return 7.5

    def cell_weights(self, backbone, adapter):
        return {backbone["model"]: ("unet/",)}

    def cell_models(self, backbone, adapter):
        return list(self.cell_weights(backbone, adapter))

    def needs_identity_embeddings(self, adapter):
        return False

    def identity_models(self, adapter):
        return []

    prompt_job_mem_mb = 2000

    def prompt_model(self, models):
        return models[0]

    def adapter_role(self, adapter):
        return None

    def settings(self, backbone):
        return {}

    def image_size(self, backbone, resolution):
        return {"width": 64, "height": 64}

    def check_size(self, key, backbone, resolution):
        pass

    def prompt_variants(self, backbones):
        return {"T": backbones[0]}

    def prompt_variant(self, backbone):
        return "T"

    def prompt_metadata(self, backbone):
        return {}

    def reference_file(self, adapter):
        return None


def test_the_grid_takes_its_families_from_the_caller(raw_demo):
    raw_demo["backbones"]["toy"] = {"model": "toy-1", "family": "toy", "steps": [2, 3]}
    raw_demo["adapters"]["bare"] = {"kind": "none"}
    raw_demo["cells"].append({"backbones": ["toy"], "adapters": ["bare"]})
    config = validate(raw_demo)
    known = ", ".join(sorted(FAMILIES))
    with pytest.raises(ConfigError, match=rf"backbones.toy.family: unknown family 'toy'; known: {known}$"):
        Grid(study_of(config))
    families = {**FAMILIES, "toy": ToyFamily()}
    grid = Grid(study_of(config), families=families)
    toy = Cell("toy", "bare", 3)
    assert grid.guidance(toy) == 7.5 and grid.generation_models(toy) == ["toy-1"]
    assert grid.families == [*sorted(FAMILIES), "toy"] and grid.text_encoder_backbone("toy") == "toy-1"
    assert "toy-1" in grid.models and not grid.needs_identity_embeddings(toy)
    raw_demo["cells"][-1]["adapters"] = ["infusenet-aes"]
    wrong_kind = r"adapter 'infusenet-aes' \(infusenet\) cannot run on a toy backbone"
    with pytest.raises(ConfigError, match=wrong_kind):
        Grid(study_of(validate(raw_demo)), families=families)
    raw_demo["cells"][-1]["adapters"] = ["bare"]
    raw_demo["backbones"]["toy"]["steps"] = [3, 2]
    with pytest.raises(ConfigError, match="backbones.toy.steps: list them in increasing order"):
        Grid(study_of(validate(raw_demo)), families=families)


class CompilingToy(ToyFamily):
    """A toy that implements one acceleration switch (`compile`) of the three."""

    acceleration_switches = frozenset({"compile"})


def test_a_family_takes_only_the_acceleration_switches_it_implements(raw_demo):
    raw_demo["backbones"]["toy"] = {"model": "toy-1", "family": "toy", "steps": [2, 3]}
    raw_demo["adapters"]["bare"] = {"kind": "none"}
    raw_demo["accelerations"] = {"compiled": {"compile": "regional"}, "cached": {"cache": "first_block"}}
    raw_demo["cells"].append({"backbones": ["toy"], "adapters": ["bare"], "accelerations": ["compiled"]})
    grid = Grid(study_of(validate(copy.deepcopy(raw_demo))), families={**FAMILIES, "toy": CompilingToy()})
    assert "toy/bare+compiled/3" in [c.id for c in grid.cells]
    with pytest.raises(
        ConfigError, match="^config cells.accelerations: 'compiled' on toy; toy backbones run eager only$"
    ):
        Grid(study_of(validate(copy.deepcopy(raw_demo))), families={**FAMILIES, "toy": ToyFamily()})
    raw_demo["cells"][-1]["accelerations"] = ["cached"]
    with pytest.raises(
        ConfigError,
        match="^config accelerations.cached.cache: toy backbones do not take it; set none, or leave",
    ):
        Grid(study_of(validate(raw_demo)), families={**FAMILIES, "toy": CompilingToy()})


def test_only_a_comparable_familys_cells_are_anchor_cells_and_any_familys_are_trajectory_cells(raw_demo):
    """SD cells are compared with their own highest-step cell (`comparable` False); every family's
    cell pipeline reports its x0 after each step, so trajectories take any family's cell."""
    raw_demo["trajectory"] = {"cells": ["sd15/sd-style/4", "flux-schnell/infusenet-aes/4"]}
    assert [c.id for c in Grid(study_of(validate(copy.deepcopy(raw_demo)))).trajectory_cells][
        0
    ] == "sd15/sd-style/4"
    raw_demo["anchor"] = "sd15/sd-style/4"
    with pytest.raises(
        ConfigError, match=r"^config anchor: sd15/sd-style/4 is a sd15 cell; the anchor takes"
    ):
        Grid(study_of(validate(copy.deepcopy(raw_demo))))
    raw_demo["anchor"] = "flux-dev/infusenet-aes/8"
    raw_demo["trajectory"]["cells"] = ["sd15/sd-style/3"]
    with pytest.raises(
        ConfigError, match=r"^config trajectory.cells\[0\]: cell 'sd15/sd-style/3' is not in the"
    ):
        Grid(study_of(validate(raw_demo)))


def test_the_schema_enum_of_adapter_kinds_is_the_families_kinds():
    """The schema keeps every config key (an adapter kind's settings are keys too, each marked with
    the kinds it applies to): a family's new kind is listed there, and this test says which one is
    missing or stale."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    adapter = schema["properties"]["adapters"]["additionalProperties"]["properties"]
    kinds = set().union(*(family.adapter_kinds for family in FAMILIES.values()))
    missing, stale = (
        sorted(kinds - set(adapter["kind"]["enum"])),
        sorted(set(adapter["kind"]["enum"]) - kinds),
    )
    assert not missing and not stale, (
        f"{SCHEMA_PATH}: adapters.<name>.kind.enum: add {missing}, remove {stale}"
    )
    settings = {key for family in FAMILIES.values() for keys in family.adapter_keys.values() for key in keys}
    assert sorted(settings - set(adapter)) == [], f"{SCHEMA_PATH}: add these adapters.<name> keys"
    backbone = schema["properties"]["backbones"]["additionalProperties"]["properties"]
    settings = {key for family in FAMILIES.values() for key in family.backbone_keys}
    assert sorted(settings - set(backbone)) == [], f"{SCHEMA_PATH}: add these backbones.<name> keys"


def schema_enum(schema: dict, key: str) -> list:
    """The enum of config key `key` as the config reference writes it (``adapters.<name>.scale``,
    ``references[].role``); of a key with a oneOf, its branch's that has one."""
    node = schema
    for part in key.split("."):
        if part == "<name>":
            node = node["additionalProperties"]
        else:
            node = node["properties"][part.removesuffix("[]")]
            node = node["items"] if part.endswith("[]") else node
    return node.get("enum") or next(b["enum"] for b in node.get("oneOf", []) if "enum" in b)


def test_the_schema_enums_of_family_keys_are_the_families_values():
    """A family lists the values its enum keys take (`Family.config_values`: SD's schedulers and
    distillations, InfuseNet's variants ...); the schema's enum of each key is their union, and the
    references' roles are the families' adapter roles besides identity."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    wanted: dict[str, set[str]] = {}
    for family in FAMILIES.values():
        for key, values in family.config_values.items():
            wanted.setdefault(key, set()).update(values)
    wanted["references[].role"] = set().union(*(f.adapter_roles for f in FAMILIES.values())) - {"identity"}
    for key, values in wanted.items():
        listed = set(schema_enum(schema, key))
        missing, stale = sorted(values - listed), sorted(listed - values)
        assert not missing and not stale, f"{SCHEMA_PATH}: {key}.enum: add {missing}, remove {stale}"


def test_an_infusenet_window_that_ends_where_it_starts_is_refused_by_its_family():
    from conftest import demo_yaml

    raw = demo_yaml()
    name = next(key for key, adapter in raw["adapters"].items() if adapter["kind"] == "infusenet")
    raw["adapters"][name] |= {"guidance_start": 0.5, "guidance_end": 0.5}
    config = validate(raw)  # each setting alone is valid
    message = rf"^config adapters\.{name}: guidance_start must be below guidance_end$"
    with pytest.raises(ConfigError, match=message):
        Grid(study_of(config))


def test_each_family_reads_its_own_rows_of_the_committed_benchmark_summaries():
    """`Family.figure_cell` maps a benchmark's own ids to the config settings they ran: each row
    of a family file is one family's at most (the FLUX rows beside Kontext's and klein's none's),
    a valid backbone of one of its registry models, keyed by `timing_name` as a cell is."""
    import csv

    from tests.conftest import REPO

    claimed = {}
    for family in FAMILIES.values():
        for kind in family.figure_files:
            paths = sorted((REPO / "benchmarks" / "results").glob(f"{kind}_*_summary.csv"))
            assert paths, f"{family.name}: no committed {kind} summary"
            for path in paths:
                with path.open(newline="") as handle:
                    for number, row in enumerate(csv.DictReader(handle)):
                        if (cell := family.figure_cell(row)) is None:
                            continue
                        backbone, adapter = cell
                        assert backbone["model"] in family.backbones and backbone["family"] == family.name
                        family.check_backbone("figure", backbone)
                        assert adapter["kind"] in family.adapter_kinds
                        key = (path.name, number)
                        assert key not in claimed, f"{key}: {claimed[key]} and {family.name}"
                        claimed[key] = (family.timing_name(backbone), family.adapter_role(adapter),
                                        family.reference_file(adapter))  # fmt: skip
    values = set(claimed.values())
    assert ("flux-kontext-dev", "identity", None) in values
    assert {("flux2-klein-4b", "identity", None), ("flux2-klein-4b", None, None)} <= values
    assert {
        ("sd15/lcm-lora", None, None),
        ("sd15/lcm-lora", "object", "plus"),
        ("sd15", None, None),
    } <= values
    assert ("sdxl/turbo", "object", "plus") in values
    assert not [v for v in values if v[0].startswith("flux-dev") or v[0].startswith("flux-schnell")]
    assert FLUX.figure_files == () and FLUX.timing_name({"model": "flux-dev"}) == "flux-dev"
