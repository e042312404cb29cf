"""Acceleration switches of an SD generation job (sd15, sdxl): compile, fp8 matmuls, TaylorSeer.

The config contract is FLUX's (`fewstep.families.flux.acceleration`): a cell
``sd15/style+compiled/25`` is the eager cell ``sd15/style/25`` with the switches of
``accelerations.compiled``, paired image by image. All switches off is eager: `SDCellPipeline`
then builds nothing from this module, so eager images do not change.

- ``compile: regional``: diffusers' `compile_repeated_blocks` on the UNet, whose class lists
  ``_repeated_blocks = ["BasicTransformerBlock"]`` (diffusers 0.42.1): every transformer block
  (self-attention, cross-attention with IP-Adapter's image keys and values, feed-forward) compiled;
  blocks of one width and token count share a graph, and a graph per IP-Adapter scale the blocks
  hold (a per-layer InstantStyle scale is a constant of the graph). ResNet blocks, samplers and the
  time embedding stay eager. Paid once per job, like FLUX's.
- ``compile: full``: the UNet's whole forward as one graph (``fullgraph=True``) with CUDA graphs
  (inductor's ``reduce-overhead`` mode): an SD UNet at batch 1-2 is bound by kernel launches
  (GPU busy 51-68% eager on an H100, docs/performance.md), which regional compile leaves between
  the blocks and in the ResNets; one graph replayed per call launches the whole step at once. Each
  output is copied out of the graph's memory, which the next replay overwrites (TaylorSeer and the
  schedulers keep earlier outputs). SD only: FLUX's transformer is not launch-bound.
- ``fp8: dynamic``: torchao rowwise fp8 (`fewstep.families.fp8`) on the linear layers of the UNet's
  transformers (``attentions.*``: projections in and out, attention, feed-forward; rows = image
  tokens, 64 to 4096 per image), except the keys and values of the prompt's 77 tokens (``attn2.to_k``,
  ``attn2.to_v``) and of IP-Adapter's 4 or 16 image tokens (``to_k_ip``, ``to_v_ip``): few rows,
  little work, and cuBLASLt refuses the rowwise fp8 matmul for few-token streams (FLUX's 8 identity
  tokens). Convolutions (the ResNet blocks, about half an SD step) stay in the compute dtype: torchao's
  fp8 config quantises linear layers. As with FLUX, use it with ``compile``.
- ``cache: taylorseer``: the UNet's output (the noise prediction, CFG batch included) computed on
  FLUX's TaylorSeer schedule (the first ``cache_warmup`` UNet calls, then one in ``cache_interval``)
  and extrapolated to first order in between, with diffusers' own `TaylorSeerState` arithmetic
  (factors in float32). IP-Adapter lives inside the UNet, so it is skipped with it.

Why no other cache: diffusers' cache hooks (first-block, MagCache, TaylorSeer, FasterCache,
pyramid attention broadcast) are switched on through `CacheMixin.enable_cache`, which
`UNet2DConditionModel` does not have; first-block and MagCache hook a flat stack of transformer
blocks (each block's output the next one's input), and a UNet's blocks are joined by skip
connections, so no residual of "the other blocks" exists to reuse; TaylorSeer's default hooks
target those stacks' attention modules by name. TaylorSeer on the UNet's whole output is the same
schedule and arithmetic, applied where a UNet allows it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fewstep.families.fp8 import check_fp8, quantize_rowwise

#: torch.compile options of a job: one resolution and prompt length per job, so static shapes
COMPILE_OPTIONS = {"dynamic": False}
#: ``compile: full``: the whole UNet one graph, replayed as a CUDA graph
FULL_COMPILE_OPTIONS = COMPILE_OPTIONS | {"fullgraph": True, "mode": "reduce-overhead"}
#: linear layers fp8 leaves in the compute dtype: keys and values of the prompt's and the image's tokens
FP8_KEPT = ("attn2.to_k", "attn2.to_v", "to_k_ip", "to_v_ip")


def quantized(name: str) -> bool:
    """True for a linear layer (by its name in the UNet) that ``fp8: dynamic`` quantises."""
    return ".attentions." in f".{name}" and not any(part in name for part in FP8_KEPT)


def taylorseer_schedule(calls: int, interval: int, warmup: int) -> list[bool]:
    """The UNet calls TaylorSeer computes (diffusers' rule, as FLUX's): the first `warmup`, then
    every `interval`-th from `warmup + 1` on."""
    return [s < warmup or (s - warmup - 1) % interval == 0 for s in range(calls)]


def copied_out(forward: Callable[..., Any]) -> Callable[..., Any]:
    """`forward` whose output sample is a copy: a CUDA graph's outputs live in memory its next
    replay overwrites, and TaylorSeer and multistep schedulers keep earlier outputs."""

    def call(*args: Any, **kwargs: Any) -> Any:
        output = forward(*args, **kwargs)
        if isinstance(output, tuple):
            return (output[0].clone(), *output[1:])
        return type(output)(sample=output.sample.clone())

    return call


class TaylorSeerUNet:
    """The UNet's forward on TaylorSeer's schedule; skipped calls return the extrapolated output.

    A run of the pipeline calls the UNet once per entry of its scheduler's timesteps (SD1.5 and
    SDXL: CFG in one batch), which `set_timesteps` sets before the first call; the call counter
    restarts when the last run's calls are done, so a job may run any step counts one after the
    other. `tally` counts calls and those computed.
    """

    def __init__(self, unet: torch.nn.Module, timesteps: Callable[[], int], interval: int, warmup: int):
        from diffusers.hooks.taylorseer_cache import TaylorSeerState

        self.interval, self.warmup, self.timesteps = interval, warmup, timesteps
        self.state = TaylorSeerState(taylor_factors_dtype=torch.float32, max_order=1)
        self.calls, self.run = 0, 0  # calls of the current run, and its length
        self.tally = {"calls": 0, "computed": 0}
        self.forward = unet.forward
        unet.forward = self

    def schedule(self, calls: int) -> list[bool]:
        return taylorseer_schedule(calls, self.interval, self.warmup)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.calls == self.run:  # a new run
            self.calls, self.run = 0, self.timesteps()
            self.state.reset()
        compute = self.schedule(self.calls + 1)[-1]
        self.calls += 1
        self.state.current_step += 1
        self.tally["calls"] += 1
        if compute:
            self.tally["computed"] += 1
            output = self.forward(*args, **kwargs)
            self.state.update((output[0] if isinstance(output, tuple) else output.sample,))
            return output
        (prediction,) = self.state.predict()
        if kwargs.get("return_dict", True):
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=prediction)
        return (prediction,)


class Accelerated:
    """A job's diffusers pipeline with one acceleration applied to its UNet: quantise, compile, cache.

    `acceleration` is a validated config ``accelerations`` entry; `compile_options` go to
    `torch.compile` (default `COMPILE_OPTIONS`; tests pass ``backend="eager"``). `tally`: UNet
    calls and those computed.
    """

    def __init__(
        self,
        pipe: Any,
        acceleration: dict[str, Any],
        device: torch.device,
        compile_options: dict[str, Any] | None = None,
    ):
        self.acceleration = acceleration
        unet = pipe.unet
        if acceleration["fp8"] == "dynamic":
            check_fp8(device)
            quantize_rowwise(unet, quantized)
        if acceleration["compile"] == "regional":
            unet.compile_repeated_blocks(**(COMPILE_OPTIONS | (compile_options or {})))
        elif acceleration["compile"] == "full":
            unet.forward = copied_out(
                torch.compile(unet.forward, **(FULL_COMPILE_OPTIONS | (compile_options or {})))
            )
        self.cache: TaylorSeerUNet | None = None
        if acceleration["cache"] == "taylorseer":
            self.cache = TaylorSeerUNet(
                unet,
                lambda: len(pipe.scheduler.timesteps),
                acceleration["cache_interval"],
                acceleration["cache_warmup"],
            )
        elif acceleration["cache"] != "none":
            raise ValueError(f"cache {acceleration['cache']!r} has no UNet implementation (grid checks)")

    def computed(self, calls: int) -> list[bool]:
        """Which of a run's `calls` UNet calls run the UNet (and its IP-Adapter layers)."""
        return self.cache.schedule(calls) if self.cache is not None else [True] * calls

    @property
    def tally(self) -> dict[str, int] | None:
        return dict(self.cache.tally) if self.cache is not None else None
