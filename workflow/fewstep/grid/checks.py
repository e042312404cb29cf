"""Checks of a sweep's grid: every cell can run, with one-line `ConfigError`s naming the key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fewstep.core.errors import ConfigError
from fewstep.grid.cells import EAGER, EAGER_SWITCHES, IDENTITY, Cell
from fewstep.grid.inputs import FileInputs as Grid  # the grid's parts, as `fewstep.grid.Grid` joins them
from fewstep.registry.catalog import MODELS

#: the ``backbones.<id>`` keys every family reads (the others are a family's: `Family.backbone_keys`)
NEUTRAL_BACKBONE_KEYS = frozenset({"model", "family", "steps", "guidance"})
#: the acceleration settings that switch something on ("none": off); the others tune a switch
SWITCHES = tuple(name for name, off in EAGER_SWITCHES.items() if off == "none")


def check(grid: Grid) -> None:
    """Raise the first `ConfigError` of the study behind `grid`."""
    study, families = grid.study, grid.known_families
    for name, backbone in study.backbones.items():
        family = families.get(backbone.family)
        if family is None:
            known = ", ".join(sorted(families))
            raise ConfigError(
                f"config backbones.{name}.family: unknown family {backbone.family!r}; known: {known}"
            )
        if backbone.model not in family.backbones:
            known = ", ".join(sorted(family.backbones))
            raise ConfigError(
                f"config backbones.{name}.model: unknown model {backbone.model!r}; known: {known}"
            )
        _check_keys(
            f"backbones.{name}",
            backbone,
            NEUTRAL_BACKBONE_KEYS | family.backbone_keys,
            f"{family.name} backbones",
        )
        family.check_backbone(name, backbone)
    for name in study.local_weights:
        if name not in MODELS:
            known = ", ".join(sorted(MODELS))
            raise ConfigError(f"config local_weights.{name}: unknown model; known: {known}")
    hub = sorted(n for n, spec in MODELS.items() if spec.repo_id)
    for name in study.revisions:
        if name not in hub:
            raise ConfigError(f"config revisions.{name}: not a Hugging Face model; known: {', '.join(hub)}")
    used = {cell.backbone for cell in grid.cells}
    for name, backbone in study.backbones.items():
        if name in used:
            families[backbone.family].check_size(name, backbone, study.resolution)
    for cell in grid.cells:
        _check_cell(grid, cell)
    _check_compared_cells(grid)


def _check_keys(where: str, settings: Mapping[str, Any], taken: Iterable[str], owner: str) -> None:
    """One line for the first key of `settings` its family does not read (it would be ignored)."""
    for key in sorted(set(settings) - set(taken)):
        takes = ", ".join(sorted(set(taken))) or "nothing"
        raise ConfigError(f"config {where}.{key}: not a setting of {owner} (theirs: {takes}); remove it")


def _check_cell(grid: Grid, cell: Cell) -> None:
    family, adapter = grid.family(cell), grid.adapter(cell)
    if adapter.kind not in family.adapter_kinds:
        raise ConfigError(
            f"config cells: adapter {cell.adapter!r} ({adapter.kind}) cannot run on a {family.name} backbone"
        )
    keys = family.adapter_keys.get(adapter.kind, frozenset())
    _check_keys(
        f"adapters.{cell.adapter_name}", adapter, {"kind"} | keys, f"{family.name} {adapter.kind} adapters"
    )
    family.check_adapter(cell.adapter_name, adapter)
    _check_acceleration(grid, cell)
    _check_items(grid, cell)
    first = adapter.get("first_steps")
    if adapter.kind != "none" and first is not None and first >= cell.steps:
        raise ConfigError(
            f"config adapters.{cell.adapter_name}.first_steps: {first} covers all {cell.steps} "
            f"steps of cell {cell.id}, which would repeat the full adapter; "
            "run it at more steps or lower it"
        )


def _check_acceleration(grid: Grid, cell: Cell) -> None:
    """An accelerated cell's switches are ones its family implements (`acceleration_switches`)."""
    if cell.acceleration == EAGER:
        return
    family = grid.family(cell)
    if not family.acceleration_switches:
        raise ConfigError(
            f"config cells.accelerations: {cell.acceleration!r} on {cell.backbone}; "
            f"{family.name} backbones run eager only"
        )
    switches, taken = grid.acceleration(cell), family.acceleration_switches
    for switch in SWITCHES:
        value = switches[switch]
        if value == "none" or switch in taken or f"{switch}:{value}" in taken:
            continue
        values = sorted(entry.split(":", 1)[1] for entry in taken if entry.startswith(f"{switch}:"))
        what = f"{value}; they take {' or '.join(values)}" if values else "it"
        raise ConfigError(
            f"config accelerations.{cell.acceleration}.{switch}: {family.name} backbones do not take "
            f"{what}; set none, or leave {cell.acceleration!r} off {cell.backbone}'s cells"
        )


def _check_items(grid: Grid, cell: Cell) -> None:
    """Each cell has pictures to cross (identities, or references of the roles it reads) and
    prompts to render (those of its roles, or without a role)."""
    roles = grid.cell_roles(cell)
    pictured = [IDENTITY] if IDENTITY in roles else [r.role for r in grid.references_of(cell)]
    for role in dict.fromkeys(pictured):
        if not grid.role_prompts([role]):
            raise ConfigError(
                f"config prompts: cell {cell.id} renders prompts of role {role} and no prompt has it; "
                f"add one with role: {role} (or one without a role)"
            )
    if IDENTITY in roles and not grid.study.identities:
        raise ConfigError(f"config identities: cell {cell.id} crosses identities; add at least one")
    if not grid.reads_references(cell):
        return
    if not grid.references_of(cell):
        raise ConfigError(
            f"config references: cell {cell.id} needs a reference of role {' or '.join(roles)}; add one"
        )


def _check_compared_cells(grid: Grid) -> None:
    """The trajectory, anchor and comparison cells are in the grid; the anchor of a family that
    compares across cells (a trajectory cell may be of any family); the two cells of a comparison
    pair crossing one role's pictures."""
    for pair, (baseline, candidate) in zip(grid.study.comparisons, grid.comparisons, strict=True):
        key = pair.key
        _check_in_grid(grid, f"{key}.baseline", baseline)
        _check_in_grid(grid, f"{key}.candidate", candidate)
        if grid.cell_roles(baseline) != grid.cell_roles(candidate):
            raise ConfigError(
                f"config {key}: {baseline.id} and {candidate.id} cross different pictures "
                f"({' and '.join(grid.cell_roles(baseline))} vs {' and '.join(grid.cell_roles(candidate))}), "
                "so no image pairs; pair cells of one role"
            )
    for key, cell in (
        *((f"trajectory.cells[{i}]", c) for i, c in enumerate(grid.trajectory_cells)),
        ("anchor", grid.anchor),
    ):
        if cell is None:
            continue
        _check_in_grid(grid, key, cell)
        family = grid.family(cell)
        if not family.comparable and not key.startswith("trajectory"):
            raise ConfigError(
                f"config {key}: {cell.id} is a {family.name} cell; the {key.split('.')[0]} takes cells of "
                f"families compared across cells (not {family.name}); pick such a cell or remove it"
            )


def _check_in_grid(grid: Grid, key: str, cell: Cell) -> None:
    if cell not in grid.cells:
        raise ConfigError(f"config {key}: cell {cell.id!r} is not in the grid; add it to cells or change it")
