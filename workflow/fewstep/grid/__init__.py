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

    def __init__(self, study: Study, families: Mapping[str, Family] = FAMILIES):
        """`study`: the sweep's `Study`; `families`: name -> `Family` (`fewstep.families.FAMILIES`
        unless a caller injects others). Entry points take `Grid.of(study)`, built once."""
        if not isinstance(study, Study):
            raise TypeError(f"Grid takes a Study (fewstep.core.study.Study.of), not {type(study).__name__}")
        self.study = study
        self.known_families = families
        check(self)

    @classmethod
    def of(cls, study: Study) -> Grid:
        """The grid of `study` with the listed families (`FAMILIES`), built and checked once per
        Study: the jobs, tables and runs of one process share it."""
        if "grid" not in study.derived:
            study.derived["grid"] = cls(study)
        return study.derived["grid"]
