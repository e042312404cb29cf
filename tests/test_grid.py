"""The grid: cells, items and the hashes that decide what reruns."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from fewstep.core.config import validate
from fewstep.core.errors import ConfigError
from fewstep.core.paths import Paths
from fewstep.grid import Cell, Grid, Item
from tests.conftest import REPO, study_of


def test_a_cells_models_are_those_that_make_its_images(raw_demo):
    """What a cell's provenance names: its generation, prompt-embedding and (face cells)
    identity-embedding models; no model of another cell, no scoring network."""
    grid = Grid(study_of(validate(raw_demo)))
    assert grid.cell_models(grid.cell("sd15/sd-style/1")) == ["ip-adapter", "sd15"]
    schnell = grid.cell_models(grid.cell("flux-schnell/infusenet-aes/4"))
    assert {"flux-schnell", "infiniteyou", "insightface", "arcface-irse50"} <= set(schnell)
    assert "sd15" not in schnell and "lpips-alex" not in schnell
    made = {name for cell in grid.cells for name in grid.cell_models(cell)}
    assert made < set(grid.models) and "lpips-alex" in set(grid.models) - made


def test_demo_grid_cells_and_items(raw_demo):
    grid = Grid(study_of(validate(raw_demo)))
    assert [c.id for c in grid.cells] == [
        "flux-dev/infusenet-aes/1",
        "flux-dev/infusenet-aes/2",
        "flux-dev/infusenet-aes/4",
        "flux-dev/infusenet-aes/8",
        "flux-schnell/infusenet-aes/1",
        "flux-schnell/infusenet-aes/2",
        "flux-schnell/infusenet-aes/4",
        *(f"{b}/{a}/{s}" for b in ("sd15", "sdxl") for a in ("sd-style", "sd-object") for s in (1, 2, 4)),
        "sd15-lcm/sd-style/2",  # one distilled cell per SD family
        "sdxl-lightning2/sd-style/2",
        "kontext/kontext-photo/2",
        "klein/klein-reference/2",
        "sd15/sd-faceid/2",  # one FaceID cell per SD family
        "sdxl/sd-faceid/2",
    ]
    assert grid.cell_models(grid.cell("sdxl-lightning2/sd-style/2")) == [
        "ip-adapter",
        "sdxl",
        "sdxl-lightning",
    ]
    flux_items = [i.id for i in grid.items_of(grid.cell("flux-dev/infusenet-aes/1"))]
    assert [i.id for i in grid.items_of(grid.cell("kontext/kontext-photo/2"))] == flux_items
    # each role renders its own prompts: the object reference with the object prompt only
    assert [i.id for i in grid.items_of(grid.cell("sdxl/sd-object/2"))] == ["coffee/kitchen/s0"]
    assert [i.id for i in grid.items_of(grid.cell("sd15/sd-style/1"))] == ["hubble/lighthouse/s0"]
    assert grid.items_of(grid.cell("sdxl/sd-faceid/2")) == grid.items  # FaceID crosses the identities
    assert [i.id for i in grid.items] == [
        "astronaut/portrait/s0",
        "astronaut/astronaut-suit/s0",
        "group-t1/portrait/s0",
        "group-t1/astronaut-suit/s0",
    ]
    assert grid.anchor == Cell("flux-dev", "infusenet-aes", 8)
    assert grid.comparison == (Cell("flux-dev", "infusenet-aes", 8), Cell("flux-schnell", "infusenet-aes", 4))
    assert grid.models == [
        "arcface-irse50",
        "arcface-w600k",  # the SD FaceID cells' face embedding (buffalo_l)
        "clip-vit-l14",  # clip_score, clip_i
        "csd-vit-l",  # the SD style cells' csd
        "dinov2-base",  # the SD object cells' dino
        "dlib-face",  # identity_dlib
        "flux-dev",
        "flux-kontext-dev",  # the Kontext cell
        "flux-schnell",
        "flux2-klein-4b",
        "infiniteyou",
        "insightface",
        "ip-adapter",
        "ip-adapter-faceid",  # the SD FaceID cells' adapter
        "lcm-lora-sdv1-5",  # the distilled sd15 cell's LoRA
        "lpips-alex",  # lpips
        "sd15",
        "sdxl",
        "sdxl-lightning",  # the distilled sdxl cell's UNet
    ]


def test_study_grid_crosses_every_block(tmp_path):
    from fewstep.core.config import load
    from tests.conftest import REPO

    grid = Grid(study_of(load([REPO / "config.yaml"])))
    # the main sweep, the scale and window ablations at dev-28 and schnell-4 only, the four
    # accelerations (compiled, cached and two cache schedules) of infusenet-aes at dev-28 and
    # schnell-4, SD1.5 and SDXL with 4 IP-Adapter settings, FaceID and none at 9 step counts, the
    # distilled SD backbones (style, object-plus, FaceID, none) at their cards' steps, three SD accelerations
    # (full, taylorseer, full-taylorseer) of sd15/style at 4 and 25 steps, sdxl/object-plus at 4 and 30,
    # Kontext with the identity photo at 5 step counts, and FLUX.2 [klein] with its reference and
    # bare at 6 step counts
    distilled = [b for b in grid.study.backbones.values() if b.get("distillation")]
    assert sum(len(b.steps) for b in distilled) == 3 + 4 + 1 + 1 + 1 + 4 + 3 + 3
    assert len(grid.cells) == (
        (9 + 6) * 3 + (4 + 5) + (4 + 3) + 2 * 4 + 2 * 6 * 9 + 4 * 20 + 2 * 3 * 2 + 5 + 2 * 6
    )
    accelerated = {
        "flux-dev": ("compiled", "cached", "taylorseer", "magcache"),
        "flux-schnell": ("compiled", "cached", "taylorseer-few", "magcache-few"),
    }
    assert {c.id for c in grid.cells if c.acceleration != "eager"} == {
        f"{b}/infusenet-aes+{a}/{s}"
        for b, s in (("flux-dev", 28), ("flux-schnell", 4))
        for a in accelerated[b]
    } | {
        f"{b}/{adapter}+{a}/{s}"
        for b, adapter, steps in (("sd15", "style", (4, 25)), ("sdxl", "object-plus", (4, 30)))
        for a in ("full", "taylorseer", "full-taylorseer")
        for s in steps
    }
    assert {c.steps for c in grid.cells if c.adapter.startswith("aes-")} == {28, 4}
    assert (
        Cell("flux-dev", "aes-first14", 28) in grid.cells
        and Cell("flux-schnell", "aes-scale0.5", 4) in grid.cells
    )
    assert len(grid.items) == 2 * 8 * 4
    assert Cell("flux-schnell", "none", 4) in grid.cells
    assert grid.text_encoder_backbone("flux") == "flux-schnell"  # ungated: no token needed for text
    assert list(grid.prompt_variants("flux")) == ["L256", "L512"]


def test_cell_ids_round_trip_and_paths_are_readable(raw_demo):
    config = validate(raw_demo)
    cell = Cell.parse("flux-schnell/infusenet-aes/4")
    assert cell == Cell("flux-schnell", "infusenet-aes", 4) and cell.id == "flux-schnell/infusenet-aes/4"
    image = Paths(study_of(config)).image(cell.id, Item("astronaut", "portrait", 0).id)
    assert str(image).endswith(
        "results/demo/cells/flux-schnell/infusenet-aes/4/images/astronaut/portrait/s0.png"
    )


def test_guidance_reaches_dev_only(raw_demo):
    grid = Grid(study_of(validate(raw_demo)))
    assert grid.guidance(Cell("flux-dev", "infusenet-aes", 4)) == 3.5
    assert grid.guidance(Cell("flux-schnell", "infusenet-aes", 4)) is None


def test_changing_one_backbone_parameter_changes_only_its_cells(raw_demo):
    before = Grid(study_of(validate(raw_demo)))
    changed = copy.deepcopy(raw_demo)
    changed["backbones"]["flux-dev"]["guidance"] = 4.0
    after = Grid(study_of(validate(changed)))
    differing = {c.id for c in before.cells if before.cell_hash(c) != after.cell_hash(c)}
    assert differing == {c.id for c in before.cells if c.backbone == "flux-dev"}
    # schnell ignores guidance entirely: setting it changes nothing
    changed["backbones"]["flux-schnell"]["guidance"] = 7.0
    assert all(
        after.cell_hash(c) == Grid(study_of(validate(changed))).cell_hash(c)
        for c in after.cells_of("flux-schnell")
    )


def test_adding_an_identity_changes_every_identity_cell_and_a_reference_its_roles_sd_cells(raw_demo):
    before = Grid(study_of(validate(raw_demo)))
    raw_demo["identities"].append({"id": "coffee", "image": "builtin:coffee"})
    after = Grid(study_of(validate(raw_demo)))
    changed = {c.id for c in before.cells if before.cell_hash(c) != after.cell_hash(c)}
    identity_families = ("flux", "kontext", "klein")
    assert changed == {
        c.id
        for c in before.cells
        if before.backbone(c).family in identity_families or c.adapter == "sd-faceid"
    }
    assert len(after.items) == 6
    raw_demo["references"].append({"id": "rocket", "image": "builtin:rocket", "role": "style"})
    with_style = Grid(study_of(validate(raw_demo)))
    changed = {c.id for c in after.cells if after.cell_hash(c) != with_style.cell_hash(c)}
    assert changed == {c.id for c in after.cells if c.adapter == "sd-style"}


def test_a_block_can_fix_its_steps_and_a_window_must_be_shorter_than_them(raw_demo):
    raw_demo["adapters"]["first2"] = {"kind": "infusenet", "first_steps": 2}
    raw_demo["cells"].append(
        {"backbones": ["flux-dev", "flux-schnell"], "adapters": ["first2"], "steps": [4]}
    )
    grid = Grid(study_of(validate(raw_demo)))
    assert [c.id for c in grid.cells if c.adapter == "first2"] == [
        "flux-dev/first2/4",
        "flux-schnell/first2/4",
    ]
    assert grid.cell_spec(Cell("flux-dev", "first2", 4))["adapter"]["first_steps"] == 2
    raw_demo["cells"][-1]["steps"] = [2, 4]
    with pytest.raises(
        ConfigError, match=r"adapters.first2.first_steps: 2 covers all 2 steps of cell flux-dev/first2/2"
    ):
        Grid(study_of(validate(raw_demo)))


#: jobs each config gained after the fingerprints were recorded (new cells: nothing of them to rerun)
ADDED_JOBS = {
    "config/demo.yaml": {"sd15/sd-faceid", "sdxl/sd-faceid"},  # issue 30: identity on SD
    "config.yaml": {  # issue 31: the SD operating points, accelerated; issue 30: FaceID
        f"{backbone}+{acceleration}"
        for backbone in ("sd15/style", "sdxl/object-plus")
        for acceleration in ("full", "taylorseer", "full-taylorseer")
    }
    | {"sd15/faceid", "sdxl/faceid"}
    | {
        f"{backbone}/faceid"
        for backbone in ("sd15-lcm", "sd15-hyper", "sdxl-lightning2", "sdxl-lightning4", "sdxl-lightning8")
        + ("sdxl-hyper", "sdxl-lcm", "sdxl-turbo")
    },
}


#: families joined after the fingerprints were recorded: their cells are new, so have none recorded
NEWER_FAMILIES = ("kontext", "klein")


@pytest.mark.parametrize("config_file", ["config/demo.yaml", "config.yaml"])
def test_rerun_fingerprints_are_those_recorded_before_the_grid_split(config_file):
    """Every cell, score and job fingerprint of the demo and the study as recorded from the grid
    before issue 24 (tests/fixtures/rerun_fingerprints.json): refactoring reruns nothing. Cells of
    the jobs added since (`ADDED_JOBS`) have no recorded fingerprint."""
    recorded = json.loads((REPO / "tests" / "fixtures" / "rerun_fingerprints.json").read_text())[config_file]
    grid = Grid(study_of(validate(yaml.safe_load((REPO / config_file).read_text()))))
    # cells of families added since (FLUX.1 Kontext, FLUX.2 [klein]) and the jobs in ADDED_JOBS are
    # new, not rerun
    older = [c for c in grid.cells if grid.backbone(c).family not in NEWER_FAMILIES]
    added = ADDED_JOBS[config_file]
    cells = [c for c in older if c.job not in added]
    assert {c.job for c in older} - {c.job for c in cells} == added
    assert {c.id: grid.cell_hash(c) for c in cells} == recorded["cell_hash"]
    assert {c.id: grid.score_hash(c) for c in cells} == recorded["score_hash"]
    assert {c.job: grid.job_hash(c.job) for c in cells} == recorded["job_hash"]
