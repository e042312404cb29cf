"""What every metric sees and promises: `Sample` in, one dict of columns per image out.

A metric is built with `(config, JobModels)`, loads its network once per job
through `JobModels.get` (metrics sharing a network share one copy) and scores
whole batches. Its class says whether it computes on the job's GPU card (`needs_card`): the
score job runs the others (face detectors on onnxruntime's CPU provider, dlib) before it takes
a card, so the card is not held while the CPU works.
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

    @classmethod
    def needs_card(cls, config: Study) -> bool: ...

    def score(self, batch: list[Sample]) -> list[dict[str, Any]]: ...


class JobModels:
    """The networks one scoring job holds: each loads once, on the job's device."""

    def __init__(self, config: Study):
        self.config = config
        self._loaded: dict[str, Any] = {}

    @cached_property
    def device(self) -> torch.device:
        """The job's torch device, resolved when a network first asks (device ``auto`` asks CUDA,
        which must wait until the job has taken its card)."""
        from fewstep.registry.load import resolve_device

        return resolve_device(self.config.device)

    def get(self, name: str, load: Callable[[], Any]) -> Any:
        if name not in self._loaded:
            self._loaded[name] = load()
        return self._loaded[name]
