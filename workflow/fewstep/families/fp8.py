"""Rowwise dynamic fp8 matmuls (torchao), shared by the families' ``fp8: dynamic`` switch.

Each family chooses its layers (`quantize_rowwise`'s `chosen`); what needs the same care everywhere
lives here: the device check and torchao's process-wide inductor settings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fewstep.core.errors import ConfigError


def check_fp8(device: torch.device) -> None:
    """fp8 matmuls need a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
        raise ConfigError(
            f"config accelerations: fp8: dynamic needs a CUDA GPU of compute capability >= 8.9, not {where}; "
            "set fp8: none for this device"
        )
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ConfigError(
            "config accelerations: fp8: dynamic needs torchao; pip install torchao==0.18.0"
        ) from None


def quantize_rowwise(module: torch.nn.Module, chosen: Callable[[str], bool]) -> None:
    """torchao's rowwise dynamic fp8 on every linear layer of `module` whose name `chosen` accepts.

    ``set_inductor_config=False``: by default torchao turns on inductor's coordinate-descent tuning
    (all directions) for the whole process, which compiles and times many variants of every Triton
    kernel, one after the other: on an H200 one full-size fp8 FLUX block took 70-90 s to compile
    instead of seconds, and a bf16 compile later in the same process slowed as much, so a
    compile + fp8 job sat minutes before its first image. The kernels that tuning found ran within
    1% of the default ones (docs/performance.md, Measured).
    """
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def linear(layer: torch.nn.Module, name: str) -> bool:
        return isinstance(layer, torch.nn.Linear) and chosen(name)

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(module, config, filter_fn=linear)
