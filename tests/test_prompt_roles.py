"""Prompts per role: identity, style and object cells render their own role's prompts (and those
without a role), embed only those, and rerun only when those change."""

from __future__ import annotations

import copy

import pytest

from fewstep.core.config import validate
from fewstep.core.errors import ConfigError
from fewstep.core.study import prompt_rule
from fewstep.grid import Grid
from tests.conftest import study_of


def _grid(raw: dict) -> Grid:
    return Grid(study_of(validate(copy.deepcopy(raw))))


def _with_bare_sd(raw_demo: dict) -> dict:
    """The demo with a bare SD1.5 cell: it crosses both reference roles."""
    raw = copy.deepcopy(raw_demo)
    raw["adapters"]["none"] = {"kind": "none"}
    raw["cells"].append({"backbones": ["sd15"], "adapters": ["none"], "steps": [2]})
    return raw


def test_each_cell_crosses_its_roles_prompts_only(raw_demo):
    raw = _with_bare_sd(raw_demo)
    raw["prompts"].append({"id": "shared", "text": "a photo, high detail"})  # no role: every cell
    grid = _grid(raw)
    items = {c: [i.id for i in grid.items_of(grid.cell(c))] for c in ("flux-dev/infusenet-aes/1",
             "sd15/sd-style/1", "sdxl/sd-object/4", "sd15/none/2")}  # fmt: skip
    assert items == {
        "flux-dev/infusenet-aes/1": [
            f"{who}/{p}/s0"
            for who in ("astronaut", "group-t1")
            for p in ("portrait", "astronaut-suit", "shared")
        ],
        "sd15/sd-style/1": ["hubble/lighthouse/s0", "hubble/shared/s0"],
        "sdxl/sd-object/4": ["coffee/kitchen/s0", "coffee/shared/s0"],
        # a bare backbone whose adapter cells include FaceID's crosses the identities with the
        # identity prompts, never the references
        "sd15/none/2": [
            f"{who}/{p}/s0"
            for who in ("astronaut", "group-t1")
            for p in ("portrait", "astronaut-suit", "shared")
        ],
    }
    cell = grid.cell("sd15/sd-style/1")
    assert [p.name for p in grid.prompt_embeddings(_Paths(), cell)] == ["lighthouse", "shared"]


class _Paths:
    """Stands in for `Paths`: the prompt embedding's name is enough here."""

    @staticmethod
    def prompt_variant_embedding(family: str, prompt: str, variant: str):
        from pathlib import PurePath

        return PurePath(family, variant, prompt)


def test_embedding_jobs_list_their_variants_prompts_by_group(raw_demo):
    raw = copy.deepcopy(raw_demo)
    raw["prompts"].append({"id": "shared", "text": "a photo, high detail"})
    grid = _grid(raw)
    (sd15,) = grid.prompt_variants("sd15")
    by_group = {
        (family, group): [p.id for p in grid.variant_prompts(family, label, group)]
        for family, label in (("flux", "L512"), ("sd15", sd15))
        for group in ("identity", "style", "object", "any")
    }
    assert by_group == {
        ("flux", "identity"): ["portrait", "astronaut-suit"],
        ("flux", "style"): [],
        ("flux", "object"): [],
        ("flux", "any"): ["shared"],
        ("sd15", "identity"): ["portrait", "astronaut-suit"],  # the FaceID cell's
        ("sd15", "style"): ["lighthouse"],
        ("sd15", "object"): ["kitchen"],
        ("sd15", "any"): ["shared"],
    }
    assert [prompt_rule(g) for g in ("any", "style")] == ["embed_prompt", "embed_prompt_style"]


def test_a_style_prompt_change_reruns_style_cells_only(raw_demo):
    before = _grid(raw_demo)
    raw = copy.deepcopy(raw_demo)
    next(p for p in raw["prompts"] if p["id"] == "lighthouse")["text"] = "A windmill in a tulip field"
    after = _grid(raw)
    changed = {c.id for c in before.cells if before.cell_hash(c) != after.cell_hash(c)}
    assert changed == {c.id for c in before.cells if c.adapter == "sd-style"}
    assert len(changed) == 3 * 2 + 2  # sd15 and sdxl at 3 step counts, and the 2 distilled cells
    # the embed_prompt jobs' text triggers: only the style group's change, of the families with style cells
    styled = {before.backbone(c).family for c in before.cells if c.adapter == "sd-style"}
    for family in before.families:
        for label in before.prompt_variants(family):
            for group in ("identity", "style", "object"):
                texts = [
                    [(p.id, p.text) for p in grid.variant_prompts(family, label, group)]
                    for grid in (before, after)
                ]
                assert (texts[0] != texts[1]) == (family in styled and group == "style"), (family, group)


def test_prompts_without_a_role_serve_every_cell_as_before(raw_demo):
    raw = copy.deepcopy(raw_demo)
    raw["prompts"] = ["a photo of the subject", "a painting of the subject"]
    grid = _grid(raw)
    # identity cells (FLUX's, Kontext's, klein's, SD FaceID's) cross 2 identities, the others 1 reference
    assert all(len(grid.items_of(c)) == 2 * (1 if grid.reads_references(c) else 2) for c in grid.cells)
    assert {p.id for c in grid.cells for p in grid.prompts_of(c)} == {"p00", "p01"}


@pytest.mark.parametrize(
    ("drop", "cell", "role"),
    [("lighthouse", "sd15/sd-style/1", "style"), ("kitchen", "sd15/sd-object/1", "object")],
)
def test_a_role_with_cells_but_no_prompt_is_one_line_naming_the_key(raw_demo, drop, cell, role):
    raw = copy.deepcopy(raw_demo)
    raw["prompts"] = [p for p in raw["prompts"] if p["id"] != drop]
    with pytest.raises(ConfigError) as error:
        _grid(raw)
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"config prompts: cell {cell} renders prompts of role {role} and no prompt has it; "
        f"add one with role: {role} (or one without a role)"
    )


def test_identity_cells_without_identity_prompts_are_refused(raw_demo):
    raw = copy.deepcopy(raw_demo)
    raw["prompts"] = [p for p in raw["prompts"] if p.get("role") != "identity"]
    with pytest.raises(ConfigError, match=r"^config prompts: cell flux-dev/infusenet-aes/1 .*role: identity"):
        _grid(raw)


def test_an_unknown_prompt_role_is_refused_by_the_schema(raw_demo):
    raw = copy.deepcopy(raw_demo)
    raw["prompts"][0]["role"] = "landscape"
    with pytest.raises(ConfigError, match=r"^config prompts\[0\]\.role"):
        validate(raw)
