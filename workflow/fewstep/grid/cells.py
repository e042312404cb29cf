"""Cell enumeration: the cells, jobs and items of a sweep and the config entries of each."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fewstep.core.errors import ConfigError
from fewstep.core.images import picture_source
from fewstep.core.study import Acceleration, Adapter, Backbone, Identity, Prompt, Reference, Study, section
from fewstep.families.base import Family

#: the acceleration of cells with every switch off; their ids carry no acceleration
EAGER = "eager"
EAGER_SWITCHES = {"compile": "none", "fp8": "none", "cache": "none", "cache_threshold": 0.0}
EAGER_ACCELERATION = section(Acceleration, EAGER_SWITCHES, id=EAGER)
#: joins adapter and acceleration in a cell's adapter segment (names cannot contain it)
ACCELERATION_SEPARATOR = "+"
#: the role of the config's ``identities``; every other role names ``references`` of that role
IDENTITY = "identity"


@dataclass(frozen=True, order=True)
class Cell:
    backbone: str
    adapter: str  # the adapter segment: an adapter name, plus "+<acceleration>" unless eager
    steps: int

    @property
    def id(self) -> str:
        return f"{self.backbone}/{self.adapter}/{self.steps}"

    @property
    def adapter_name(self) -> str:
        return self.adapter.partition(ACCELERATION_SEPARATOR)[0]

    @property
    def acceleration(self) -> str:
        return self.adapter.partition(ACCELERATION_SEPARATOR)[2] or EAGER

    @property
    def job(self) -> str:
        """The generation job that renders this cell (with the other step counts)."""
        return f"{self.backbone}/{self.adapter}"

    @classmethod
    def of(cls, backbone: str, adapter: str, acceleration: str, steps: int) -> Cell:
        segment = adapter if acceleration == EAGER else f"{adapter}{ACCELERATION_SEPARATOR}{acceleration}"
        return cls(backbone, segment, steps)

    @classmethod
    def parse(cls, cell_id: str) -> Cell:
        parts = cell_id.strip("/").split("/")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ConfigError(f"cell id {cell_id!r} is not <backbone>/<adapter>[+<acceleration>]/<steps>")
        return cls(parts[0], parts[1], int(parts[2]))


@dataclass(frozen=True, order=True)
class Item:
    identity: str
    prompt: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.identity}/{self.prompt}/s{self.seed}"


#: columns that name one image of the sweep, first in every per-image table
IMAGE_KEYS = ("cell_id", "backbone", "adapter", "steps", "item_id", "identity", "prompt_id", "seed")
#: columns of the image tables that identify an image or its provenance, never a metric
#: (what analysis and tracking both leave out of metrics)
KEYS = {
    *IMAGE_KEYS,
    "prompt",
    "image",
    "sha256",
    "weights",
    "config_hash",
    "git_commit",
    "metric_versions",
    "step",
    "sigma",
    "width",
    "height",
    "guidance",
    "adapter_steps",
    "step_s_median",
    "warmup",
    "device_name",
    "dtype",
    "batch_size",
    "weights_digest",
}


def image_keys(cell: Cell, item: Item) -> dict[str, Any]:
    """The `IMAGE_KEYS` values of one item in one cell."""
    values = (cell.id, cell.backbone, cell.adapter, cell.steps)
    values += (item.id, item.identity, item.prompt, item.seed)
    return dict(zip(IMAGE_KEYS, values, strict=True))


class CellEnumeration:
    """Cells, jobs and items of a study, and the study's entries each one reads."""

    study: Study
    known_families: Mapping[str, Family]

    @cached_property
    def cells(self) -> list[Cell]:
        seen: dict[Cell, None] = {}
        for block in self.study.cells:
            for backbone in block.backbones:
                for adapter in block.adapters:
                    for acceleration in block.accelerations:
                        for steps in sorted(block.steps or self.study.backbones[backbone].steps):
                            seen.setdefault(Cell.of(backbone, adapter, acceleration, steps))
        return list(seen)

    @cached_property
    def jobs(self) -> dict[str, list[Cell]]:
        """Generation job id -> its cells (every step count of one backbone x adapter x acceleration)."""
        jobs: dict[str, list[Cell]] = {}
        for cell in self.cells:
            jobs.setdefault(cell.job, []).append(cell)
        return jobs

    def job(self, job_id: str) -> list[Cell]:
        if job_id not in self.jobs:
            raise ConfigError(
                f"generation job {job_id!r} is not in this sweep's grid; known: {', '.join(self.jobs)}"
            )
        return self.jobs[job_id]

    @cached_property
    def items(self) -> list[Item]:
        """Identity x prompt x seed: the items of a cell that crosses the identities (the prompts
        of role identity, or of none)."""
        return [
            Item(identity.id, prompt.id, seed)
            for identity in self.study.identities
            for prompt in self.role_prompts([IDENTITY])
            for seed in self.study.seeds
        ]

    def items_of(self, cell: Cell) -> list[Item]:
        """The items rendered in `cell`, in order: picture x prompt x seed, the pictures those of
        its roles (`cell_roles`): the identities (`items`), or the references of those roles with
        `Item.identity` the reference id; each picture with the prompts of its own role and those
        without a role (a bare SD backbone paints no style prompt over an object reference)."""
        if not self.reads_references(cell):
            return self.items
        return [
            Item(reference.id, prompt.id, seed)
            for reference in self.references_of(cell)
            for prompt in self.role_prompts([reference.role])
            for seed in self.study.seeds
        ]

    def role_prompts(self, roles: list[str]) -> list[Prompt]:
        """The config's prompts a cell crossing pictures of `roles` renders, in config order."""
        return [p for p in self.study.prompts if p.serves(roles)]

    def prompts_of(self, cell: Cell) -> list[Prompt]:
        """The prompts `cell` renders: those of its roles (`cell_roles`) and those without a role."""
        return self.role_prompts(self.cell_roles(cell))

    def cell_roles(self, cell: Cell) -> list[str]:
        """The roles of the pictures `cell`'s items cross (its family's `adapter_role`): its
        adapter's; for a bare backbone those of its backbone's adapter cells, or every role of
        its family when it has none."""
        family = self.family(cell)
        role = family.adapter_role(self.adapter(cell))
        if role is not None:
            return [role]
        roles = {family.adapter_role(self.adapter(c)) for c in self.cells if c.backbone == cell.backbone}
        return sorted(roles - {None}) or list(family.adapter_roles)

    def reads_references(self, cell: Cell) -> bool:
        """The cell's items cross the config's references rather than its identities."""
        return IDENTITY not in self.cell_roles(cell)

    def references_of(self, cell: Cell) -> list[Reference]:
        roles = self.cell_roles(cell)
        return [r for r in self.study.references if r.role in roles]

    def reference(self, reference_id: str) -> Reference:
        reference = self.study.reference(reference_id)
        if reference is not None:
            return reference
        raise ConfigError(f"reference {reference_id!r} is not in the config's references")

    @cached_property
    def reference_pictures(self) -> dict[str, str]:
        """reference id -> what its picture's pixels depend on (`picture_source`)."""
        return {r.id: picture_source(r.image) for r in self.study.references}

    @cached_property
    def pictures(self) -> dict[str, str]:
        """identity id -> its conditioning photo's `picture_source` (its embedding's rerun trigger)."""
        return {i.id: picture_source(i.image) for i in self.study.identities}

    def picture_sources(self, cell: Cell) -> dict[str, str]:
        """Id -> `picture_source` of the pictures `cell`'s items cross (identities or references)."""
        return self.reference_pictures if self.reads_references(cell) else self.pictures

    def identity(self, identity_id: str) -> Identity:
        identity = self.study.identity(identity_id)
        if identity is not None:
            return identity
        raise ConfigError(f"identity {identity_id!r} is not in the config's identities")

    def reference_picture(self, cell: Cell, reference_id: str) -> str:
        """The picture (path or ``builtin:<name>``) that an item of `cell` is compared with: its
        identity's, or its style / object reference's."""
        if self.reads_references(cell):
            return self.reference(reference_id).image
        return self.identity(reference_id).image

    def prompt(self, prompt_id: str) -> Prompt:
        prompt = self.study.prompt(prompt_id)
        if prompt is not None:
            return prompt
        raise ConfigError(f"prompt {prompt_id!r} is not in the config's prompts")

    def cell(self, cell_id: str) -> Cell:
        cell = Cell.parse(cell_id)
        if cell not in self.cells:
            raise ConfigError(f"cell {cell_id!r} is not in this sweep's grid")
        return cell

    def backbone(self, cell: Cell) -> Backbone:
        return self.study.backbones[cell.backbone]

    def adapter(self, cell: Cell) -> Adapter:
        return self.study.adapters[cell.adapter_name]

    def acceleration(self, cell: Cell) -> Acceleration:
        """The cell's switches (all off for eager)."""
        if cell.acceleration == EAGER:
            return EAGER_ACCELERATION
        return self.study.accelerations[cell.acceleration]

    def family(self, cell: Cell) -> Family:
        return self.known_families[self.backbone(cell).family]

    @property
    def families(self) -> list[str]:
        return sorted({self.backbone(c).family for c in self.cells})

    def cells_of(self, backbone: str | None = None, adapter: str | None = None) -> list[Cell]:
        wanted = [(backbone, "backbone"), (adapter, "adapter")]
        return [c for c in self.cells if all(v is None or getattr(c, k) == v for v, k in wanted)]

    @property
    def anchor(self) -> Cell | None:
        anchor = self.study.anchor
        return Cell.parse(anchor) if anchor else None

    @property
    def comparisons(self) -> list[tuple[Cell, Cell]]:
        """(baseline, candidate) of every config ``comparison`` pair, in config order."""
        return [(Cell.parse(p.baseline), Cell.parse(p.candidate)) for p in self.study.comparisons]

    @property
    def comparison(self) -> tuple[Cell, Cell] | None:
        """The first comparison pair (the study's, where the config lists it first)."""
        return self.comparisons[0] if self.comparisons else None

    @property
    def trajectory_cells(self) -> list[Cell]:
        return [Cell.parse(c) for c in self.study.trajectory.cells]

    def guidance(self, cell: Cell) -> float | None:
        """Guidance the backbone really receives (None for FLUX.1-schnell)."""
        return self.family(cell).guidance(self.backbone(cell))

    def image_size(self, cell: Cell) -> dict[str, Any]:
        """The size of the cell's images as its family gives it (``width``, ``height``)."""
        return self.family(cell).image_size(self.backbone(cell), self.study.resolution)

    def resolution(self, cell: Cell) -> tuple[int, int]:
        """Width and height of the cell's images (SD: the backbone's square side)."""
        size = self.image_size(cell)
        return size["width"], size["height"]
