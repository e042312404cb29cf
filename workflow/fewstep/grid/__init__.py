"""The one place that turns a configuration into cells and items.

A *cell* is one set of images: backbone x adapter setting x acceleration x number
of steps, with a readable id such as ``flux-schnell/infusenet-aes/4``; an accelerated
cell carries its acceleration in the adapter segment, ``flux-schnell/infusenet-aes+fast/4``
(eager cells keep the plain id). A *generation job* runs every step count of one
backbone x adapter x acceleration with one model load (``flux-schnell/infusenet-aes``).
An *item* is one image inside every cell: identity x prompt x seed. The Snakefile, the
CLI and the tests all take cells, jobs and items from `Grid`; nothing re-derives them.

`Grid` is the facade of four parts: cell enumeration (`cells`), rerun triggers
(`triggers`), file inputs (`inputs`) and checks (`checks`). Everything family-specific
comes through the `fewstep.families.base.Family` of a cell's backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fewstep.core.study import Study
from fewstep.families.base import Family
from fewstep.grid.bootstrap import FAMILIES
from fewstep.grid.cells import (
    ACCELERATION_SEPARATOR,
    EAGER,
    EAGER_SWITCHES,
    IMAGE_KEYS,
    KEYS,
    Cell,
    Item,
    image_keys,
)
from fewstep.grid.checks import check
from fewstep.grid.inputs import FileInputs

__all__ = [
    "ACCELERATION_SEPARATOR",
    "EAGER",
    "EAGER_SWITCHES",
    "IMAGE_KEYS",
    "KEYS",
    "Cell",
    "Grid",
    "Item",
    "image_keys",
]


class Grid(FileInputs):
    """Cells, items and the parameters of each, from a `Study`."""

    def __init__(self, study: Study | Mapping[str, Any], families: Mapping[str, Family] = FAMILIES):
        """`study`: the sweep's `Study` (a validated config dict is parsed into one, for one release:
        for callers that still hold the dict); `families`: name -> `Family`
        (`fewstep.families.FAMILIES` unless a caller injects others)."""
        self.study = study if isinstance(study, Study) else Study.of(study)
        self.known_families = families
        check(self)
