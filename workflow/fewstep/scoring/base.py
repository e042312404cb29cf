"""What every metric sees and promises: `Sample` in, one dict of columns per image out.

A metric is built with `(config, JobModels)`, loads its network once per job
through `JobModels.get` (metrics sharing a network share one copy) and scores
whole batches. Its class says whether it computes on the job's GPU card (`needs_card`): the
score job runs the others (face detectors on onnxruntime's CPU provider, dlib) before it takes
a card, and reads the torch networks of the rest from disk then too (`loads_before_card`), so
the card is held only while it computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fewstep.core.study import Study

if TYPE_CHECKING:
    import torch


@dataclass
class Sample:
    """One generated image with what metrics compare it to."""

    row: dict[str, Any]
    pixels: np.ndarray  # HxWx3 uint8 RGB
    reference: np.ndarray  # the identity's reference picture (the one conditioning the adapter), RGB
    prompt: str = ""  # the prompt's text
    anchor: np.ndarray | None = None  # the anchor cell's image of this item (other cells only)
    is_anchor: bool = False  # this image belongs to the anchor cell
    heldout: list[np.ndarray] = field(default_factory=list)  # the identity's held-out photos, RGB


class Metric(Protocol):
    name: str
    version: str

    #: its networks can load on the CPU before the card and move to it (`JobModels.to_card`)
    loads_before_card: bool

    @classmethod
    def needs_card(cls, config: Study) -> bool: ...

    def score(self, batch: list[Sample]) -> list[dict[str, Any]]: ...


class JobModels:
    """The networks one scoring job holds: each loads once, on the job's device; while `staged`
    (a score job that has not taken its card yet) on the CPU, moved to the device by `to_card`."""

    def __init__(self, config: Study, staged: bool = False):
        self.config = config
        self.staged = staged
        self._loaded: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        """Where networks load and compute now: the CPU while staged, else the job's device."""
        import torch

        return torch.device("cpu") if self.staged else self._job_device

    @cached_property
    def _job_device(self) -> torch.device:
        """Resolved when first asked (device ``auto`` asks CUDA, which must wait for the card)."""
        from fewstep.registry.load import resolve_device

        return resolve_device(self.config.device)

    def get(self, name: str, load: Callable[[], Any]) -> Any:
        if name not in self._loaded:
            self._loaded[name] = load()
        return self._loaded[name]

    def to_card(self) -> None:
        """End the staging: every torch network loaded so far moves to the job's device (the
        weights read from disk before the card, only the copy to it after)."""
        import torch

        self.staged = False
        for loaded in self._loaded.values():
            for part in loaded if isinstance(loaded, tuple) else (loaded,):
                if isinstance(part, torch.nn.Module):
                    part.to(self.device)
