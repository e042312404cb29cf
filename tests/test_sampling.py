"""The FLUX + InfuseNet sampler on tiny models: the behaviours the study depends on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.families.flux import pipeline
from fewstep.families.flux1 import load_text_encoders
from tests.conftest import study_of

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dev(tiny_config):
    return pipeline.load_flux(
        study_of(tiny_config), "flux-dev", tiny_config["adapters"]["infusenet-aes"], CPU, torch.float32
    )


@pytest.fixture(scope="module")
def cond(tiny_config, dev):
    from diffusers import FluxPipeline

    pipe = load_text_encoders(FluxPipeline, study_of(tiny_config), "flux-schnell", CPU, torch.float32)
    embeds, pooled, _ = pipe.encode_prompt(
        prompt="a portrait", prompt_2="a portrait", device=CPU, max_sequence_length=512
    )
    torch.manual_seed(0)
    tokens = dev.resampler(torch.nn.functional.normalize(torch.randn(1, 1, 512), dim=-1))
    black = pipeline.encode_control(dev.vae, np.zeros((64, 64, 3), np.uint8), CPU, torch.float32)
    return pipeline.Conditioning(embeds, pooled, tokens, black)


def render(parts, cond, **kw) -> np.ndarray:
    kw["seeds"] = (kw.pop("seed", 0),)
    settings = pipeline.Settings(**{"steps": 4, "height": 64, "width": 64, "guidance": 3.5, **kw})
    result = pipeline.denoise(parts, cond, settings, CPU, torch.float32)
    return pipeline.decode(parts, result.latents, 64, 64)[0]


def test_identity_tokens_shape(dev, cond):
    assert cond.identity_tokens.shape == (1, 8, dev.infusenet.config.joint_attention_dim)


def test_adapter_scale_zero_is_exactly_the_backbone_alone(dev, cond):
    backbone_only = pipeline.FluxParts(dev.transformer, dev.vae, dev.scheduler)
    assert np.array_equal(render(dev, cond, adapter_scale=0.0), render(backbone_only, cond))
    assert not np.array_equal(render(dev, cond, adapter_scale=1.0), render(backbone_only, cond))


def test_guidance_window_switches_infusenet_at_the_right_steps(dev, cond, monkeypatch):
    calls = []
    original = dev.infusenet.forward
    monkeypatch.setattr(dev.infusenet, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    steps_seen = []
    settings = pipeline.Settings(
        steps=8, height=64, width=64, seeds=(0,), guidance=3.5, adapter_start=0.25, adapter_end=0.75
    )
    result = pipeline.denoise(dev, cond, settings, CPU, torch.float32, on_step=lambda s: steps_seen.append(s))
    # diffusers' rule: step i runs when i/n >= start and (i+1)/n <= end
    assert result.adapter_active == [False, False, True, True, True, True, False, False]
    assert len(calls) == 4
    assert [bool(s.probes) for s in steps_seen] == result.adapter_active
    assert pipeline.adapter_window(4, 0.0, 1.0) == [True] * 4
    assert pipeline.adapter_window(4, 0.0, 0.5) == [True, True, False, False]


def test_first_steps_window_runs_infusenet_on_the_first_k_steps_only(dev, cond, monkeypatch):
    calls = []
    original = dev.infusenet.forward
    monkeypatch.setattr(dev.infusenet, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    settings = pipeline.Settings(
        steps=4, height=64, width=64, seeds=(0,), guidance=3.5, adapter_first_steps=2
    )
    result = pipeline.denoise(dev, cond, settings, CPU, torch.float32)
    assert result.adapter_active == [True, True, False, False] and len(calls) == 2
    assert pipeline.adapter_window(8, 0.25, 1.0, first_steps=3) == [False, False, True] + [False] * 5
    # after the window the backbone runs alone: a window of k differs from the full adapter and from none
    full = render(dev, cond, steps=4)
    window = render(dev, cond, steps=4, adapter_first_steps=2)
    alone = render(pipeline.FluxParts(dev.transformer, dev.vae, dev.scheduler), cond, steps=4)
    assert not np.array_equal(window, full) and not np.array_equal(window, alone)


def test_dev_gets_guidance_and_schnell_none(tiny_config, cond, monkeypatch):
    seen = {}
    for name in ("flux-dev", "flux-schnell"):
        parts = pipeline.load_flux(study_of(tiny_config), name, {"kind": "none"}, CPU, torch.float32)
        original = parts.transformer.forward

        def spy(*args, _name=name, _original=original, **kwargs):
            seen[_name] = kwargs["guidance"]
            return _original(*args, **kwargs)

        monkeypatch.setattr(parts.transformer, "forward", spy)
        schnell_cond = pipeline.Conditioning(cond.prompt_embeds, cond.pooled_prompt_embeds)
        render(parts, schnell_cond, guidance=3.5)
    assert seen["flux-schnell"] is None
    assert seen["flux-dev"].tolist() == [3.5]


def test_same_seed_is_bit_identical_and_seeds_differ(dev, cond):
    first, again = render(dev, cond, seed=7), render(dev, cond, seed=7)
    assert first.dtype == np.uint8 and first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, render(dev, cond, seed=8))


def test_predicted_clean_image_ends_at_the_final_latents(dev, cond):
    """At the last step, x_t - sigma * v equals the Euler step to sigma = 0."""
    infos = []
    settings = pipeline.Settings(steps=4, height=64, width=64, seeds=(0,), guidance=3.5)
    result = pipeline.denoise(dev, cond, settings, CPU, torch.float32, on_step=infos.append)
    assert [round(i.sigma, 6) for i in infos] == [round(s, 6) for s in result.sigmas]
    assert infos[-1].sigma_next == 0.0
    assert torch.allclose(infos[-1].predicted_clean, result.latents, atol=1e-5)


def test_a_batch_gives_each_seed_its_own_image(dev, cond):
    """Noise is drawn per seed, so a batch holds the same images as one-by-one sampling
    (up to float rounding of batched matrix products)."""
    alone = [render(dev, cond, seed=s) for s in (3, 9)]
    pair = pipeline.Conditioning.stack([cond, cond])
    settings = pipeline.Settings(steps=4, height=64, width=64, seeds=(3, 9), guidance=3.5)
    result = pipeline.denoise(dev, pair, settings, CPU, torch.float32)
    batched = pipeline.decode(dev, result.latents, 64, 64)
    assert len(batched) == 2
    for one, other in zip(alone, batched, strict=True):
        assert np.abs(one.astype(int) - other.astype(int)).max() <= 1
    assert not np.array_equal(batched[0], batched[1])
