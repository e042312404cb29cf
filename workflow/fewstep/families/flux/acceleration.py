"""Acceleration switches of a FLUX generation job: regional compile, fp8 matmuls, cache schedules.

Each switch is a key of a named entry under the config's ``accelerations`` and a sweep dimension:
a cell ``flux-dev/infusenet-aes+fast/28`` is the eager cell ``flux-dev/infusenet-aes/28`` with the
switches of ``accelerations.fast``, so one sweep measures what each switch costs in identity and
LPIPS, paired image by image against eager. All switches off is eager: the job then runs exactly
today's code path (no hook, no wrapper), so eager images do not change.

- ``compile: regional``: ``torch.compile`` of the forward of each of the transformer's
  ``_repeated_blocks`` and of InfuseNet's blocks (``FluxControlNetModel`` lists no
  ``_repeated_blocks``), on row-major inputs (see `compile_blocks`). Blocks of one class share one
  compiled graph per token count, so compiling costs seconds, paid once per job (one job runs all
  step counts of a backbone x adapter x acceleration).
- ``fp8: dynamic``: torchao's ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``
  on the linear layers of transformer and InfuseNet, except those whose name contains ``context``
  or ``add_`` (the text/identity stream: cuBLASLt refuses the rowwise fp8 matmul for InfuseNet's
  8 identity tokens). Without compile the activation quantisation is not fused and fp8 is slower
  than eager; use it together with ``compile``.
- ``cache``: a cache schedule through diffusers' hooks (`fewstep.families.flux.caches`):
  ``first_block`` (decided per step from the first block's residual), ``taylorseer`` and ``mag``
  (skips fixed by the step index: InfuseNet does not run on a skipped step). Hooks go on after
  compiling, so they stay outside the compiled blocks (see `compile_blocks`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

from fewstep.families.flux.caches import CACHES, Cache
from fewstep.families.fp8 import check_fp8, quantize_rowwise

#: torch.compile options of a job: its shapes never change (one resolution, one prompt length, 8
#: identity tokens), so each block class compiles once per token count, static, instead of the
#: dynamic-shape graph dynamo switches to when InfuseNet's 8 tokens follow the prompt's 512
COMPILE_OPTIONS = {"dynamic": False}
#: linear layers kept in the compute dtype under fp8 (text and identity streams)
FP8_KEPT = ("context", "add_")


def keeps_compute_dtype(name: str) -> bool:
    """True for a linear layer that fp8 leaves in the compute dtype (text/identity stream)."""
    return any(part in name for part in FP8_KEPT)


def quantize_fp8(module: torch.nn.Module) -> None:
    """Rowwise dynamic fp8 (`fewstep.families.fp8`) on every linear layer outside the text/identity stream."""
    quantize_rowwise(module, lambda name: not keeps_compute_dtype(name))


def repeated_blocks(parts: Any) -> list[torch.nn.Module]:
    """InfuseNet's blocks and the transformer's `_repeated_blocks`: what regional compile compiles."""
    names = parts.transformer._repeated_blocks
    blocks = [m for m in parts.transformer.modules() if type(m).__name__ in names]
    if parts.infusenet is not None:
        blocks += [*parts.infusenet.transformer_blocks, *parts.infusenet.single_transformer_blocks]
    return blocks


def compile_blocks(parts: Any, **options: Any) -> None:
    """Each repeated block's own `forward` compiled (torch.compile kwargs), called on row-major inputs.

    Hooks outside: `compile_repeated_blocks` would compile a block's whole call, hooks included, and
    the cache's and InfuseNet's residual hooks hold per-block state (index, head or tail role) that
    dynamo guards on: a recompile per block, soon past dynamo's recompile limit (the rest then runs
    uncompiled). Compiled beneath the hooks, one graph serves a block class.

    Row-major inputs: transformer and InfuseNet share the block classes, so their compiled forwards
    share one code object and one set of static-shape guards, strides included. A single block
    returns slices of its joint text + image tensor, so the block after it receives a view whose
    batch stride is that of 512 + 4096 tokens (the transformer's prompt) or 8 + 4096 (InfuseNet's
    identity tokens), while the first block of a stream, or one after a residual addition, receives
    a fresh tensor. Each stride is one more graph to compile, and an fp8 graph compiles slowly. With
    every input given the row-major strides of its shape, a block class compiles once per token
    count: double and single blocks, each for the prompt's tokens and InfuseNet's 8.
    """
    for block in repeated_blocks(parts):
        block.forward = _on_row_major_inputs(torch.compile(block.forward, **options))


def row_major(tensor: torch.Tensor) -> torch.Tensor:
    """The same values with the row-major strides of the tensor's shape.

    With batch 1 the slice is already contiguous for torch (a dimension of size 1 addresses nothing
    through its stride), so ``.contiguous()`` keeps the view, and its batch stride, that dynamo
    still guards on; ``.view(shape)`` then restrides it without a copy. A batch above 1 copies.
    """
    return tensor.contiguous().view(tensor.shape)


def _on_row_major_inputs(forward: Any) -> Any:
    """`forward` with its tensor arguments made `row_major` first, outside the compiled code."""

    def normalised(value: Any) -> Any:
        return row_major(value) if isinstance(value, torch.Tensor) else value

    @functools.wraps(forward)
    def call(*args: Any, **kwargs: Any) -> Any:
        return forward(*map(normalised, args), **{k: normalised(v) for k, v in kwargs.items()})

    return call


class Accelerated:
    """A job's pipeline parts with one acceleration applied; `start` and `denoiser_call` wrap each image.

    `acceleration` is a validated config ``accelerations`` entry (``compile``, ``fp8``, ``cache``
    and the cache's own keys); applied in the order torchao and diffusers expect: quantise,
    compile, hook. `compile_options` go to `torch.compile` (default `COMPILE_OPTIONS`). `tally`
    counts the transformer calls, those that ran the blocks and the InfuseNet calls.
    """

    def __init__(
        self,
        parts: Any,
        acceleration: dict[str, Any],
        device: torch.device,
        compile_options: dict[str, Any] | None = None,
    ):
        self.acceleration = acceleration
        if acceleration["fp8"] == "dynamic":
            check_fp8(device)
            for module in (parts.transformer, parts.infusenet):
                if module is not None:
                    quantize_fp8(module)
        options = COMPILE_OPTIONS | (compile_options or {})
        if acceleration["compile"] == "regional":
            compile_blocks(parts, **options)
        self.cache: Cache | None = None
        if acceleration["cache"] != "none":
            cache = CACHES[acceleration["cache"]]
            self.cache = cache(parts.transformer, acceleration, parts.infusenet is not None)
        self.transformer = parts.transformer
        self.schedule: list[bool] = []
        self.step = 0
        self.tally = {"calls": 0, "computed": 0, "infusenet": 0}

    def start(self, steps: int) -> list[bool]:
        """A new batch of `steps` steps, from a full step; the steps whose blocks run (InfuseNet's too)."""
        self.schedule = self.cache.start(steps) if self.cache is not None else [True] * steps
        self.step = 0
        if self.cache is not None:
            self.transformer._reset_stateful_cache()
        return self.schedule

    @contextlib.contextmanager
    def denoiser_call(self, residuals: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Context of one transformer call; yields the residual keyword arguments to pass it.

        Uncached: InfuseNet's residuals go to the transformer as diffusers expects. Cached: inside
        ``cache_context`` (diffusers' caches need it), the residuals added by the cache's
        `InfuseNetResiduals` where it has them. A scheduled cache whose hooks decide otherwise than
        its schedule stops the job: InfuseNet would have been skipped, or run, in vain.
        """
        self.tally["calls"] += 1
        self.tally["infusenet"] += residuals["controlnet_block_samples"] is not None
        if self.cache is None:
            yield residuals
            self.tally["computed"] += 1
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.transformer.cache_context("cond"))
            if self.cache.residuals is not None:
                stack.enter_context(
                    self.cache.residuals.added(
                        residuals["controlnet_block_samples"], residuals["controlnet_single_block_samples"]
                    )
                )
                residuals = {"controlnet_block_samples": None, "controlnet_single_block_samples": None}
            yield residuals
            computed = self.cache.computed()
        self.tally["computed"] += computed
        if self.cache.scheduled and computed != self.schedule[self.step]:
            did = "ran" if computed else "skipped"
            raise RuntimeError(
                f"the {self.acceleration['cache']} cache {did} step {self.step}, against its schedule; "
                "InfuseNet's calls followed the schedule (a fewstep bug)"
            )
        self.step += 1
