"""Metric specs: one entry per metric (`fewstep.scoring.specs`), everything else derived from it."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest
import yaml

from fewstep.analysis import metric_registry
from fewstep.core.config import SCHEMA_PATH
from fewstep.core.study import parse_config
from fewstep.families import FAMILIES
from fewstep.grid import KEYS
from fewstep.jobs import score
from fewstep.scoring import networks, specs
from fewstep.scoring.specs import SPECS
from tests.conftest import REPO, demo_yaml

PACKAGE = REPO / "workflow" / "fewstep"
NAMES = [spec.name for spec in SPECS]
#: names a literal cannot tell from something else: `identity` is also the tables' key column of
#: an item's identity (`fewstep.grid.KEYS`), so its literals are not counted
KEY_NAMES = {name for name in NAMES if name in KEYS}
#: (module, literal) of the package that spell a metric's name and mean something else
ELSEWHERE = {("core/provenance.py", "lpips")}  # the pip package whose version provenance records


def metric_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, value) of every plain string literal of `source` equal to one of `names`."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.STRING:
            continue
        try:
            value = ast.literal_eval(token.string)
        except (ValueError, SyntaxError):  # an f-string
            continue
        if value in names:
            found.append((token.start[0], value))
    return found


def test_metric_names_are_spelled_in_the_spec_module_only():
    assert KEY_NAMES == {"identity"}
    names = set(NAMES) - KEY_NAMES
    spelled = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module == "scoring/specs.py":
            continue
        found = [
            (line, v) for line, v in metric_literals(path.read_text(), names) if (module, v) not in ELSEWHERE
        ]
        if found:
            spelled[module] = found
    assert spelled == {}, "metric names outside fewstep/scoring/specs.py (use its specs): " + repr(spelled)
    for module, name in ELSEWHERE:
        assert metric_literals((PACKAGE / module).read_text(), {name}), f"stale exception {module}: {name}"


def test_the_literal_finder_finds_quoted_names_only():
    source = 'A = {"lpips": 1}\nB = f"lpips-{x}"\nC = "clip_score_x"\n# "dino"\nD = (\n    \'csd\',\n)\n'
    assert metric_literals(source, {"lpips", "clip_score", "dino", "csd"}) == [(1, "lpips"), (6, "csd")]


def test_the_schema_enum_and_default_are_the_specs():
    metrics = yaml.safe_load(Path(SCHEMA_PATH).read_text())["properties"]["scoring"]["properties"]["metrics"]
    assert metrics["items"]["enum"] == NAMES
    assert metrics["default"] == [spec.name for spec in SPECS if spec.default]


def test_registries_are_derived_from_the_specs():
    assert list(score.METRICS) == NAMES
    for spec in SPECS:
        scorer = score.METRICS[spec.name]
        assert scorer.spec is spec and scorer.name.fget(scorer) == spec.name
        assert all(metric_registry.METRICS[c.name] == metric_registry.ColumnSpec.of(c) for c in spec.columns)
    assert networks.ANCHOR_METRICS == ("lpips",)
    raw = demo_yaml()
    config = parse_config(dict(raw, scoring=dict(raw.get("scoring", {}), lpips_net="vgg")))
    assert networks.scoring_models(config, NAMES) == [
        "clip-vit-l14",
        "csd-vit-l",
        "dinov2-base",
        "dlib-face",
        "insightface",
        "lpips-vgg",
        "pickscore",
    ]
    assert networks.scoring_models(config, ["clip_score", "clip_i"]) == ["clip-vit-l14"]
    columns = [c.name for spec in SPECS for c in spec.columns]
    assert len(columns) == len(set(columns)) and not set(columns) & KEYS


def test_the_analysis_registry_lists_headline_quality_costs_diagnostics_then_probes():
    registry = metric_registry.METRICS
    kinds = [c.kind for c in registry.values()]
    assert kinds == sorted(kinds, key=["quality", "cost", "diagnostic", "probe"].index)
    assert list(registry)[:4] == ["id_sim_zero", "id_sim", "face_detected", "lpips_ref"]
    assert [c.name for c in registry.values() if c.headline] == list(registry)[:4]
    quality = [c for c in registry if registry[c].kind == "quality"]
    assert quality[4:] == [
        "id_sim_heldout",
        "id_sim_dlib_zero",
        "id_sim_dlib",
        "face_detected_dlib",
        "id_sim_heldout_dlib",
        "lpips_anchor",
        "clip_score",
        "pick_score",
        "clip_i",
        "dino",
        "csd",
    ]


@pytest.mark.parametrize(
    ("family", "adapter", "role"),
    [
        ("flux", {"kind": "infusenet"}, "identity"),
        ("flux", {"kind": "none"}, None),
        ("sd15", {"kind": "ip_adapter", "role": "style"}, "style"),
        ("sdxl", {"kind": "ip_adapter", "role": "object"}, "object"),
        ("sd15", {"kind": "none"}, None),
    ],
)
def test_a_family_says_its_adapters_role(family, adapter, role):
    assert FAMILIES[family].adapter_role(adapter) == role
    assert role is None or role in FAMILIES[family].adapter_roles


CONFIGURED = ["identity", "identity_dlib", "lpips", "clip_score"]


@pytest.mark.parametrize(
    ("family", "adapter", "metrics"),
    [
        # a face role: config scoring.metrics, in its order; FLUX's bare backbone plays its adapters' role
        ("flux", {"kind": "infusenet"}, CONFIGURED),
        ("flux", {"kind": "none"}, CONFIGURED),
        # a reference role: every metric fitting it, LPIPS (anchor-paired) last
        ("sd15", {"kind": "ip_adapter", "role": "style"}, ["csd", "clip_i", "clip_score", "lpips"]),
        ("sdxl", {"kind": "ip_adapter", "role": "object"}, ["dino", "clip_i", "clip_score", "lpips"]),
        # SD's bare backbone crosses the references of both roles
        ("sd15", {"kind": "none"}, ["csd", "clip_i", "clip_score", "dino", "lpips"]),
    ],
)
def test_a_cells_metrics_are_those_fitting_its_role(family, adapter, metrics):
    assert specs.cell_metrics(FAMILIES[family], adapter, CONFIGURED) == metrics


@pytest.mark.parametrize(
    ("family", "adapter", "metrics"),
    [
        ("flux", {"kind": "infusenet"}, ["identity", "identity_dlib"]),
        ("sd15", {"kind": "ip_adapter", "role": "style"}, ["csd", "clip_i"]),
        ("sdxl", {"kind": "ip_adapter", "role": "object"}, ["dino", "clip_i"]),
        ("sd15", {"kind": "none"}, ["csd", "clip_i", "dino"]),
    ],
)
def test_a_trajectory_scores_x0_with_its_cells_metrics_that_compare_with_the_picture(
    family, adapter, metrics
):
    """Neither prompt alignment (CLIPScore) nor the anchor-paired LPIPS: a trajectory is about the
    adapter's picture forming, and its job reads no other cell's images."""
    assert specs.trajectory_metrics(FAMILIES[family], adapter, CONFIGURED) == metrics
    assert set(metrics) <= set(specs.cell_metrics(FAMILIES[family], adapter, CONFIGURED))


def test_configured_order_and_choice_hold_for_the_face_role():
    chosen = ["clip_score", "dino", "identity"]
    assert specs.cell_metrics(FAMILIES["flux"], {"kind": "infusenet"}, chosen) == chosen
    style = specs.cell_metrics(FAMILIES["sd15"], {"kind": "ip_adapter", "role": "style"}, chosen)
    assert style == ["csd", "clip_i", "clip_score", "lpips"]  # a reference role takes no config list
