"""Cache schedules of a FLUX generation job: on which steps the transformer's blocks run.

Each is a value of the ``cache`` switch, applied through diffusers' own hooks (`enable_cache`):

- ``first_block``: `FirstBlockCacheConfig(threshold=cache_threshold)`. The first block runs every
  step; when its residual changed by less than the threshold since the last full step, the other
  blocks are skipped and their cached residual added. Decided from the data at each step (random
  weights never hit it), so InfuseNet runs every step: its first-block addition enters the decision.
- ``taylorseer``: `TaylorSeerCacheConfig(use_lite_mode=True)`. On a predicted step every block
  returns zeros at once and the transformer's output (the velocity, ``proj_out``) is extrapolated
  to first order from the last two computed steps; the first ``cache_warmup`` steps are computed,
  then one step in ``cache_interval``. diffusers' default TaylorSeer hooks the attention modules
  *inside* the blocks instead: compiled blocks would then trace its hooks (recompiles, and
  ``fullgraph=True`` refuses them), and InfuseNet's residuals would still be needed every step.
- ``mag``: `MagCacheConfig` with `FLUX_MAG_RATIOS` (calibrated on FLUX.1-dev by MagCache's
  authors, interpolated to the step count): after the first ``cache_warmup`` steps, a step reuses
  the last computed residual of the whole block stack (input of the first block to output of the
  last) while the accumulated magnitude error stays under ``cache_threshold`` and at most
  ``cache_max_skips`` steps in a row.

TaylorSeer's and MagCache's skips depend on the step index and the calibrated ratios only, never
on the weights: `Cache.start` returns the schedule before the loop, and the loop does not run
InfuseNet on a skipped step (no block would read its residuals). After every call `Cache.computed`
reads the hooks' own decision, and `fewstep.families.flux.acceleration.Accelerated` stops the job
if it ever differs from the schedule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    MagCacheConfig,
    ModelHook,
    TaylorSeerCacheConfig,
)
from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK
from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK, FLUX_MAG_RATIOS
from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK


class InfuseNetResiduals:
    """InfuseNet's residuals added inside the backbone's blocks, so a cache hit skips them too.

    diffusers' FLUX transformer adds a ControlNet residual to the hidden states *between* blocks,
    outside the blocks. First-block cache hooks the blocks: on a hit the first block runs, the
    others return their input, and the last full step's residual of the whole tail is added. That
    cached residual already holds the previous step's InfuseNet additions, yet the transformer
    still adds the current step's after every skipped block: each InfuseNet residual counted
    twice. Here each residual is added by a hook *inside* its block (registered before the cache's
    hooks, so the cache wraps it): on a full step the arithmetic is the transformer's own (the
    same tensor sum in the same order, so a cache threshold of 0 gives the uncached image bit for
    bit); on a hit the skipped blocks add nothing and the cached tail stands in for them, the
    InfuseNet additions of the last full step included. The first block's addition still runs on
    a hit, and enters the cache's decision: a change of InfuseNet's output (its window closing)
    counts as a change of the first block.

    MagCache's cached residual ends at the last block's output: inside the block, that block's
    InfuseNet addition is part of it (between blocks it would be lost on every skipped step).

    Which residual a block receives follows diffusers' interval rule: block ``i`` of ``n`` gets
    sample ``i // ceil(n / len(samples))``.
    """

    def __init__(self, transformer: torch.nn.Module):
        self.samples: dict[str, list[torch.Tensor] | None] = {"double": None, "single": None}
        streams = {"double": transformer.transformer_blocks, "single": transformer.single_transformer_blocks}
        for stream, blocks in streams.items():
            for index, block in enumerate(blocks):
                hook = _ResidualHook(self, stream, index, len(blocks))
                HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, "fewstep_infusenet")

    @contextlib.contextmanager
    def added(self, double: list[torch.Tensor] | None, single: list[torch.Tensor] | None) -> Iterator[None]:
        """Add these residuals in the transformer calls inside the block."""
        self.samples = {"double": double, "single": single}
        try:
            yield
        finally:
            self.samples = {"double": None, "single": None}


class _ResidualHook(ModelHook):
    """Adds one block's InfuseNet residual to the block's output (post-forward only)."""

    def __init__(self, source: InfuseNetResiduals, stream: str, index: int, blocks: int):
        super().__init__()
        self.source, self.stream, self.index, self.blocks = source, stream, index, blocks

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        samples = self.source.samples[self.stream]
        if samples is None:
            return output
        encoder_hidden_states, hidden_states = output
        interval = math.ceil(self.blocks / len(samples))
        return encoder_hidden_states, hidden_states + samples[self.index // interval]


def _hook_state(module: torch.nn.Module, hook: str) -> Any:
    """The state a stateful diffusers hook on `module` keeps for the current cache context."""
    return HookRegistry.check_if_exists_or_initialize(module).get_hook(hook).state_manager.get_state()


class Cache:
    """One cache on a transformer. `residuals`: InfuseNet's additions moved inside the blocks, or
    None when the transformer adds them itself. `scheduled`: the skips are known before the loop."""

    scheduled = True
    residuals: InfuseNetResiduals | None = None

    def start(self, steps: int) -> list[bool]:
        """Prepare an image of `steps` steps; the steps whose blocks run (all when decided per step)."""
        return [True] * steps

    def computed(self) -> bool:
        """Whether the last call, inside its cache context, ran the blocks."""
        raise NotImplementedError


class FirstBlockCache(Cache):
    """diffusers' first-block cache; InfuseNet's additions inside the blocks."""

    scheduled = False

    def __init__(self, transformer: torch.nn.Module, switches: dict[str, Any], infusenet: bool):
        if infusenet:
            self.residuals = InfuseNetResiduals(transformer)
        transformer.enable_cache(FirstBlockCacheConfig(threshold=switches["cache_threshold"]))
        self.head = transformer.transformer_blocks[0]

    def computed(self) -> bool:
        return _hook_state(self.head, _FBC_LEADER_BLOCK_HOOK).should_compute


class TaylorSeerCache(Cache):
    """TaylorSeer-Lite: blocks skipped, the output extrapolated; InfuseNet added by the transformer.

    Its factors (the last computed velocity and its slope, one output-sized tensor each) are kept
    in float32, which holds the values of any compute dtype exactly: diffusers' default bfloat16
    would round a float32 job's velocity before extrapolating it.
    """

    def __init__(self, transformer: torch.nn.Module, switches: dict[str, Any], infusenet: bool):
        self.interval, self.warmup = switches["cache_interval"], switches["cache_warmup"]
        config = TaylorSeerCacheConfig(
            cache_interval=self.interval,
            disable_cache_before_step=self.warmup,
            max_order=1,
            taylor_factors_dtype=torch.float32,
            use_lite_mode=True,
        )
        transformer.enable_cache(config)
        self.output = transformer.proj_out

    def start(self, steps: int) -> list[bool]:
        """diffusers' rule: the first `warmup` steps, then every `interval`-th from `warmup + 1` on."""
        return [s < self.warmup or (s - self.warmup - 1) % self.interval == 0 for s in range(steps)]

    def computed(self) -> bool:
        state = _hook_state(self.output, _TAYLORSEER_CACHE_HOOK)
        return state.last_update_step == state.current_step


class MagCache(Cache):
    """MagCache with FLUX's calibrated ratios; InfuseNet's additions inside the blocks."""

    def __init__(self, transformer: torch.nn.Module, switches: dict[str, Any], infusenet: bool):
        self.switches = switches
        if infusenet:
            self.residuals = InfuseNetResiduals(transformer)
        self.config = self.config_for(28)
        transformer.enable_cache(self.config)  # every hook holds this one config object
        self.head = transformer.transformer_blocks[0]

    def config_for(self, steps: int) -> MagCacheConfig:
        """``cache_warmup`` steps as MagCache's retention ratio; the ratios interpolated to `steps`."""
        return MagCacheConfig(
            threshold=self.switches["cache_threshold"],
            max_skip_steps=self.switches["cache_max_skips"],
            retention_ratio=self.switches["cache_warmup"] / steps,
            num_inference_steps=steps,
            mag_ratios=FLUX_MAG_RATIOS,
        )

    def start(self, steps: int) -> list[bool]:
        """Set the hooks' shared config to `steps` (a job runs several step counts); its schedule."""
        vars(self.config).update(vars(self.config_for(steps)))
        return mag_schedule(self.config)

    def computed(self) -> bool:
        return _hook_state(self.head, _MAG_CACHE_LEADER_BLOCK_HOOK).should_compute


def mag_schedule(config: MagCacheConfig) -> list[bool]:
    """The steps MagCache computes: its head hook's rule, step by step, in the same tensor arithmetic.

    The rule reads the data only to ask whether a residual is cached yet, which it is after step 0
    (always computed: nothing is cached before it).
    """
    steps = config.num_inference_steps
    retention = int(config.retention_ratio * steps + 0.5)
    ratio, skipped, error = 1.0, 0, 0.0
    computes = []
    for step in range(steps):
        compute = True
        if step >= retention:
            ratio = ratio * (config.mag_ratios[step] if step < len(config.mag_ratios) else 1.0)
            skipped += 1
            error += abs(1.0 - ratio)
            if step > 0 and error <= config.threshold and skipped <= config.max_skip_steps:
                compute = False
            else:
                ratio, skipped, error = 1.0, 0, 0.0
        computes.append(bool(compute))
    return computes


#: the ``cache`` switch's values and their classes
CACHES = {"first_block": FirstBlockCache, "taylorseer": TaylorSeerCache, "mag": MagCache}
