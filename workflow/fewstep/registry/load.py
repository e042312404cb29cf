"""Loading any registry model the same way, whatever its source (real, tiny, random)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import WeightsError
from fewstep.registry.prepare import missing_weights

if TYPE_CHECKING:  # torch is imported where it is used: the workflow's parse never loads it
    import torch


def resolve_device(requested: str) -> torch.device:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise WeightsError(
            "config device: cuda requested but no CUDA GPU is visible; use device: auto or cpu"
        )
    return torch.device(requested)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The CPU always computes in float32 (bit-reproducible, and bf16 matmuls are slow there)."""
    import torch

    return torch.float32 if device.type == "cpu" else getattr(torch, name)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_component(
    cls: Any, path: Path, weights: str, device: torch.device, dtype: torch.dtype, *, model: str
) -> Any:
    """`cls.from_pretrained(path)`, or for random weights `cls.from_config` built on the device.

    `model` is the registry model the folder belongs to: a missing folder names its prepare job."""
    import torch

    path = Path(path)
    if not path.exists():
        raise missing_weights(path, model)
    if weights == "random":
        with torch.device(device), default_dtype(dtype):
            if hasattr(cls, "load_config"):  # diffusers
                module = cls.from_config(cls.load_config(path))
            else:  # transformers
                module = cls._from_config(cls.config_class.from_pretrained(path), dtype=dtype)
        return module.eval()
    module = cls.from_pretrained(path, dtype=dtype)
    return module.to(device).eval()
