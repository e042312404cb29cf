"""Acceleration switches on tiny models: eager untouched, the cache correct with InfuseNet."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig

from fewstep.core.config import check_caches, validate
from fewstep.core.errors import ConfigError
from fewstep.core.paths import Paths
from fewstep.families.flux import acceleration, pipeline
from fewstep.grid import Cell, Grid
from fewstep.jobs import generate
from tests.conftest import study_of

CPU = torch.device("cpu")
OFF = {"compile": "none", "fp8": "none", "cache": "none", "cache_threshold": 0.05}


def load(config):
    return pipeline.load_flux(
        study_of(config), "flux-dev", config["adapters"]["infusenet-aes"], CPU, torch.float32
    )


@pytest.fixture(scope="module")
def cond(tiny_config):
    parts = load(tiny_config)
    torch.manual_seed(0)
    width = parts.transformer.config.joint_attention_dim
    embedding = torch.nn.functional.normalize(torch.randn(1, 1, 512), dim=-1)
    control = pipeline.encode_control(parts.vae, np.zeros((64, 64, 3), np.uint8), CPU, torch.float32)
    return pipeline.Conditioning(
        torch.randn(1, 16, width), torch.randn(1, 32), parts.resampler(embedding), control
    )


def latents(parts, cond, accelerated=None, steps=4):
    settings = pipeline.Settings(steps=steps, height=64, width=64, seeds=(0,), guidance=3.5)
    return pipeline.denoise(parts, cond, settings, CPU, torch.float32, accelerated=accelerated).latents


def test_accelerated_cells_are_their_own_ids_and_leave_eager_cells_untouched(raw_demo):
    plain = Grid(study_of(validate(copy.deepcopy(raw_demo))))
    raw_demo["accelerations"] = {"fast": {"compile": "regional", "fp8": "dynamic"}}
    raw_demo["cells"][0]["accelerations"] = ["eager", "fast"]
    grid = Grid(study_of(validate(raw_demo)))
    eager = [c for c in grid.cells if c.acceleration == "eager"]
    assert eager == plain.cells  # same ids, so same paths
    assert [grid.cell_hash(c) for c in eager] == [plain.cell_hash(c) for c in plain.cells]
    fast = grid.cell("flux-dev/infusenet-aes+fast/8")
    assert (fast.adapter_name, fast.acceleration, fast.job) == (
        "infusenet-aes",
        "fast",
        "flux-dev/infusenet-aes+fast",
    )
    assert grid.adapter(fast) == grid.adapter(Cell("flux-dev", "infusenet-aes", 8))
    assert grid.acceleration(fast) == {**OFF, "compile": "regional", "fp8": "dynamic"}
    assert [c.steps for c in grid.job("flux-dev/infusenet-aes+fast")] == [1, 2, 4, 8]
    assert Paths(grid.study).cell_dir(fast.id).parts[-3:] == ("flux-dev", "infusenet-aes+fast", "8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {
                "cells": [
                    {"backbones": ["flux-dev"], "adapters": ["infusenet-aes"], "accelerations": ["turbo"]}
                ]
            },
            "config cells[0].accelerations: unknown acceleration 'turbo'; known: eager",
        ),
        (
            {"accelerations": {"eager": {}}},
            "config accelerations.eager: the name eager means every switch off",
        ),
        ({"accelerations": {"x": {"compile": "max"}}}, "config accelerations.x.compile"),
        ({"accelerations": {"x": {"cache": "teacache"}}}, "config accelerations.x.cache: 'teacache' is not"),
        (
            {"accelerations": {"x": {"cache": "first_block", "cache_interval": 2}}},
            "config accelerations.x.cache_interval: only cache: taylorseer uses it, not cache: first_block; "
            "remove it or change the cache",
        ),
        (
            {"accelerations": {"x": {"compile": "regional", "cache_max_skips": 2}}},
            "config accelerations.x.cache_max_skips: only cache: mag uses it, not cache: none",
        ),
        (
            {"accelerations": {"x": {"cache": "taylorseer", "cache_warmup": 0}}},
            "config accelerations.x.cache_warmup: taylorseer extrapolates from computed steps",
        ),
    ],
)
def test_bad_accelerations_are_one_line_naming_the_key(raw_demo, edit, message):
    raw_demo.update(edit)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(raw_demo)


def test_each_cache_gets_its_own_keys_with_their_defaults_and_other_entries_stay_as_written(raw_demo):
    raw_demo["accelerations"] = {
        "taylor": {"cache": "taylorseer"},
        "mag": {"cache": "mag", "cache_warmup": 1, "cache_threshold": 0.1},
        "fast": {"compile": "regional", "fp8": "dynamic"},
    }
    accelerations = validate(raw_demo)["accelerations"]
    assert accelerations["taylor"] == {**OFF, "cache": "taylorseer", "cache_interval": 5, "cache_warmup": 3}
    assert accelerations["mag"] == {
        **OFF,
        "cache": "mag",
        "cache_threshold": 0.1,
        "cache_max_skips": 3,
        "cache_warmup": 1,
    }
    assert accelerations["fast"] == {**OFF, "compile": "regional", "fp8": "dynamic"}  # cell hashes unchanged


def test_a_block_cache_on_an_sd_backbone_is_one_line_naming_the_key(raw_demo):
    raw_demo["accelerations"] = {"cached": {"cache": "first_block"}}
    raw_demo["cells"][1]["accelerations"] = ["eager", "cached"]
    with pytest.raises(
        ConfigError,
        match="^config accelerations.cached.cache: sd15 backbones do not take first_block; they take "
        "taylorseer; set none",
    ):
        Grid(study_of(validate(raw_demo)))


def test_fp8_on_a_cpu_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="fp8: dynamic needs a CUDA GPU of compute capability >= 8.9"):
        acceleration.check_fp8(CPU)


def test_fp8_leaves_the_text_and_identity_streams_in_the_compute_dtype(tiny_config):
    parts = load(tiny_config)
    kept = {
        n
        for n, m in parts.infusenet.named_modules()
        if isinstance(m, torch.nn.Linear) and acceleration.keeps_compute_dtype(n)
    }
    # InfuseNet's 8 identity tokens flow through the context embedder and every block's context stream
    assert "context_embedder" in kept
    assert "transformer_blocks.0.attn.add_q_proj" in kept and "transformer_blocks.0.ff_context.net.2" in kept
    assert not any(
        acceleration.keeps_compute_dtype(n) for n in ("transformer_blocks.0.attn.to_q", "proj_out")
    )


def test_fp8_leaves_inductor_settings_alone(monkeypatch):
    """torchao would turn on coordinate-descent tuning process-wide: minutes of compile per block."""
    quant_api = pytest.importorskip("torchao.quantization.quant_api")
    from torch._inductor import config as inductor

    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)  # a CPU here
    before = (inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions)
    layers = torch.nn.Sequential(torch.nn.Linear(32, 32, dtype=torch.bfloat16))
    acceleration.quantize_fp8(layers)
    assert type(layers[0].weight).__name__ == "Float8Tensor"
    assert (inductor.coordinate_descent_tuning, inductor.coordinate_descent_check_all_directions) == before


@pytest.mark.slow
def test_cache_threshold_zero_is_the_uncached_image_bit_for_bit(tiny_config, cond):
    eager = latents(load(tiny_config), cond)
    parts = load(tiny_config)
    cached = acceleration.Accelerated(parts, {**OFF, "cache": "first_block", "cache_threshold": 0.0}, CPU)
    assert torch.equal(latents(parts, cond, cached), eager)
    assert torch.equal(latents(parts, cond, cached), eager)  # the cache is reset between images


def test_a_cache_hit_counts_infusenet_residuals_once(tiny_config, cond):
    """Two calls with identical inputs: the second is a hit and must repeat the first's output."""
    parts = load(tiny_config)
    transformer, infusenet = parts.transformer, parts.infusenet
    inputs = {
        "hidden_states": torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(1)),
        "timestep": torch.tensor([0.5]),
        "guidance": torch.tensor([3.5]),
        "pooled_projections": cond.pooled_prompt_embeds,
        "img_ids": torch.zeros(16, 3),
    }
    double, single = infusenet(
        controlnet_cond=cond.control_latents[:, :16],
        encoder_hidden_states=cond.identity_tokens,
        txt_ids=torch.zeros(8, 3),
        return_dict=False,
        **inputs,
    )
    text = {"encoder_hidden_states": cond.prompt_embeds, "txt_ids": torch.zeros(16, 3), "return_dict": False}
    residuals = {"controlnet_block_samples": double, "controlnet_single_block_samples": single}
    with torch.no_grad():
        full = transformer(**inputs, **text, **residuals)[0]
        cached = acceleration.Accelerated(parts, {**OFF, "cache": "first_block", "cache_threshold": 0.0}, CPU)
        outputs = []
        for _ in range(2):
            with cached.denoiser_call(residuals) as passed:
                outputs.append(transformer(**inputs, **text, **passed)[0])
        assert torch.equal(outputs[0], full)
        torch.testing.assert_close(outputs[1], full, rtol=0, atol=1e-5)
        # diffusers' own path (residuals handed to the transformer) adds them again on the hit
        plain = load(tiny_config)
        plain.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))
        with plain.transformer.cache_context("cond"):
            first = plain.transformer(**inputs, **text, **residuals)[0]
            doubled = plain.transformer(**inputs, **text, **residuals)[0]
        assert torch.equal(first, full) and (doubled - full).abs().max() > 1e-2


def test_a_high_threshold_skips_the_blocks_after_the_first_step(tiny_config, cond):
    parts = load(tiny_config)
    calls = []
    parts.transformer.single_transformer_blocks[-1].register_forward_pre_hook(lambda *a: calls.append(1))
    cached = acceleration.Accelerated(parts, {**OFF, "cache": "first_block", "cache_threshold": 1e9}, CPU)
    skipped = latents(parts, cond, cached)
    assert len(calls) == 4  # the hooked call still happens; its block's work does not:
    assert not torch.equal(skipped, latents(load(tiny_config), cond)) and torch.isfinite(skipped).all()


#: caches that never skip: every step computed (TaylorSeer's interval 1, MagCache's 0 skips in a row)
NEVER_SKIP = {
    "first_block": {"cache": "first_block", "cache_threshold": 0.0},
    "taylorseer": {"cache": "taylorseer", "cache_interval": 1, "cache_warmup": 1},
    "mag": {"cache": "mag", "cache_max_skips": 0, "cache_warmup": 0},
}
#: 6 steps: TaylorSeer computes 0, 1 and 3; MagCache (FLUX's ratios) 0, 3 and 5
SKIPPING = {
    "taylorseer": {"cache": "taylorseer", "cache_interval": 3, "cache_warmup": 2},
    "mag": {"cache": "mag", "cache_threshold": 0.06, "cache_max_skips": 2, "cache_warmup": 1},
}


def switches(**cache):
    """An ``accelerations`` entry as validation leaves it (the cache's own defaults filled in)."""
    accelerations = {"x": {**OFF, **cache}}
    check_caches(accelerations)
    return accelerations["x"]


@pytest.mark.parametrize("cache", sorted(NEVER_SKIP))
def test_a_cache_that_never_skips_is_eager_bit_for_bit(tiny_config, cond, cache):
    eager = latents(load(tiny_config), cond, steps=6)
    parts = load(tiny_config)
    cached = acceleration.Accelerated(parts, switches(**NEVER_SKIP[cache]), CPU)
    assert torch.equal(latents(parts, cond, cached, steps=6), eager)
    assert torch.equal(latents(parts, cond, cached, steps=6), eager)  # the cache is reset between images
    assert cached.tally == {"calls": 12, "computed": 12, "infusenet": 12}


def recorded(parts, cond, accelerated, steps):
    """Each step's velocity and transformer keyword arguments, and InfuseNet's calls' arguments."""
    calls, adapter, velocities = [], [], []
    parts.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(dict(kw)), with_kwargs=True)
    parts.infusenet.register_forward_pre_hook(lambda m, a, kw: adapter.append(dict(kw)), with_kwargs=True)
    settings = pipeline.Settings(steps=steps, height=64, width=64, seeds=(0,), guidance=3.5)
    result = pipeline.denoise(
        parts, cond, settings, CPU, torch.float32, lambda s: velocities.append(s.velocity), accelerated
    )
    return result, velocities, calls, adapter


def assert_computed_steps_are_eager(tiny_config, computed, velocities, calls, adapter):
    """Each computed step's velocity is eager's for the same inputs (InfuseNet run as eager runs it)."""
    eager = load(tiny_config)
    assert len(adapter) == sum(computed)  # InfuseNet ran exactly on the computed steps
    for step, inputs in zip([s for s, c in enumerate(computed) if c], adapter, strict=True):
        with torch.no_grad():
            double, single = eager.infusenet(**inputs)
            residuals = {"controlnet_block_samples": double, "controlnet_single_block_samples": single}
            assert torch.equal(velocities[step], eager.transformer(**(calls[step] | residuals))[0])


def run_schedule(tiny_config, cond, parts, cache: str, plan: str) -> list:
    """Six steps under `cache`'s skipping switches: the steps computed are `plan`'s 1s, InfuseNet runs
    on exactly those, and each of them equals an eager call; returns every step's velocity."""
    cached = acceleration.Accelerated(parts, switches(**SKIPPING[cache]), CPU)
    result, velocities, calls, adapter = recorded(parts, cond, cached, 6)
    computed = [c == "1" for c in plan]
    assert cached.schedule == computed and result.adapter_active == computed
    assert cached.tally == {"calls": 6, "computed": 3, "infusenet": 3}
    assert_computed_steps_are_eager(tiny_config, computed, velocities, calls, adapter)
    return velocities


def test_taylorseer_computes_its_schedule_and_extrapolates_the_velocity_between(tiny_config, cond):
    velocities = run_schedule(tiny_config, cond, load(tiny_config), "taylorseer", "110100")

    def first_order(last, before, distance, offset):  # diffusers' arithmetic, float32 factors
        slope = (velocities[last] - velocities[before]) / distance
        return torch.zeros_like(velocities[last]) + velocities[last] * 1.0 + slope * float(offset)

    assert torch.equal(velocities[2], first_order(1, 0, 1, 1))
    assert torch.equal(velocities[4], first_order(3, 1, 2, 1))
    assert torch.equal(velocities[5], first_order(3, 1, 2, 2))
    assert not torch.equal(velocities[5], velocities[4])


def test_magcache_reuses_the_last_computed_residual_of_the_block_stack(tiny_config, cond):
    """A skipped step: the last block's output is this step's input plus the last computed step's
    residual (its InfuseNet additions inside it, the last block's included, none added again)."""
    parts = load(tiny_config)
    transformer = parts.transformer
    heads, tails = [], []
    transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, kw: heads.append(kw["hidden_states"]), with_kwargs=True
    )
    transformer.norm_out.register_forward_pre_hook(lambda m, a: tails.append(a[0]))
    run_schedule(tiny_config, cond, parts, "mag", "100101")
    for step, last in ((1, 0), (2, 0), (4, 3)):
        assert torch.equal(tails[step], heads[step] + (tails[last] - heads[last]))


def test_a_cache_whose_hooks_leave_its_schedule_stops_the_job(tiny_config, cond):
    parts = load(tiny_config)
    cached = acceleration.Accelerated(parts, switches(**SKIPPING["taylorseer"]), CPU)
    cached.cache.start = lambda steps: [True] * steps  # InfuseNet would run on steps the blocks skip
    with pytest.raises(RuntimeError, match="taylorseer cache skipped step 2, against its schedule"):
        latents(parts, cond, cached, steps=6)


def test_row_major_restrides_a_batch_one_slice_without_copying_and_copies_a_strided_batch():
    joint = torch.randn(1, 8 + 16, 4)
    image = joint[:, 8:]  # what a single block returns: contiguous for torch, batch stride 24 x 4
    assert image.is_contiguous() and image.stride() == (96, 4, 1)
    restrided = acceleration.row_major(image)
    assert restrided.stride() == (64, 4, 1) and restrided.data_ptr() == image.data_ptr()
    assert torch.equal(restrided, image)
    batch = torch.randn(2, 8 + 16, 4)[:, 8:]
    copied = acceleration.row_major(batch)
    assert copied.stride() == (64, 4, 1) and torch.equal(copied, batch)


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["none", "first_block", "taylorseer", "mag"])
def test_regional_compile_traces_the_same_arithmetic_once_per_block_class(tiny_config, cond, cache):
    """Dynamo over every compiled region (backend eager: the inductor kernels are the GPU's business).

    With the caches' and InfuseNet's hooks on the blocks, the hooks stay outside the compiled code:
    no recompile per block, so as many graphs as without them, and the same images as the same
    cache uncompiled, skipped steps included. Transformer and InfuseNet share the block classes;
    their inputs are restrided, so a single block after another (a slice of the joint tensor)
    reuses the graph: one per block class and token count.
    """
    from torch._dynamo.utils import counters

    cache_switches = {"none": {}, "first_block": NEVER_SKIP["first_block"], **SKIPPING}[cache]
    reference = load(tiny_config)
    uncompiled = acceleration.Accelerated(reference, switches(**cache_switches), CPU)
    expected = latents(reference, cond, uncompiled, steps=6)
    torch._dynamo.reset()
    counters.clear()
    parts = load(tiny_config)
    regional = switches(**cache_switches, compile="regional")
    compiled = acceleration.Accelerated(parts, regional, CPU, {"backend": "eager"})
    assert torch.equal(latents(parts, cond, compiled, steps=6), expected)
    assert compiled.tally == uncompiled.tally
    # double and single blocks, each for the prompt's and InfuseNet's token counts (6 with the
    # slices' strides, 11 with the hooks inside the compiled code)
    assert counters["stats"]["unique_graphs"] == 4


def test_an_accelerated_job_writes_paired_cells_and_threshold_zero_matches_eager(embedded, tmp_path):
    config = copy.deepcopy(embedded)
    config["results_dir"] = str(tmp_path)
    config["accelerations"] = {"cached": {**OFF, "cache": "first_block", "cache_threshold": 0.0}}
    config["cells"][0]["accelerations"] = ["eager", "cached"]
    config = validate(config)
    shutil.copytree(
        Paths(study_of(embedded)).root / "embeddings", Paths(study_of(config)).root / "embeddings"
    )
    for job in ("flux-schnell/infusenet-aes", "flux-schnell/infusenet-aes+cached"):
        generate.run_job(study_of(config), job, progress=False)
    paths = Paths(study_of(config))
    for item in Grid(study_of(config)).items:
        eager = paths.image("flux-schnell/infusenet-aes/2", item.id)
        cached = paths.image("flux-schnell/infusenet-aes+cached/2", item.id)
        assert np.array_equal(_pixels(eager), _pixels(cached))


def _pixels(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


@pytest.mark.slow
def test_a_mag_cache_job_follows_its_schedule_at_every_step_count(embedded, tmp_path):
    """One job runs steps 1, 2 and 4 with one set of hooks: each image on its own step count's
    ratios (MagCache, FLUX's ratios interpolated: 4 steps compute 0, 2 and 3; 2 steps both)."""
    import pandas as pd

    config = copy.deepcopy(embedded)
    config["results_dir"] = str(tmp_path)
    config["accelerations"] = {"mag": SKIPPING["mag"]}
    config["cells"][0]["accelerations"] = ["eager", "mag"]
    config = validate(config)
    shutil.copytree(
        Paths(study_of(embedded)).root / "embeddings", Paths(study_of(config)).root / "embeddings"
    )
    generate.run_job(study_of(config), "flux-schnell/infusenet-aes+mag", progress=False)
    paths = Paths(study_of(config))
    calls = {
        steps: sorted(
            set(pd.read_parquet(paths.manifest(f"flux-schnell/infusenet-aes+mag/{steps}"))["adapter_steps"])
        )
        for steps in (1, 2, 4)
    }
    assert calls == {1: [1], 2: [2], 4: [3]}
