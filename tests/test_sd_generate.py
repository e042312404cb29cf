"""Generation through diffusers' SD pipelines: scheduler timesteps for N steps, per-step
timing and the x0 each step implies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewstep.core.errors import ConfigError
from fewstep.families.sd import specs
from fewstep.families.sd.pipeline import (
    Condition,
    denoise,
    encode_prompt,
    generate,
    load_pipeline,
    set_scheduler,
)

CPU = torch.device("cpu")


def leading(n: int) -> list[float]:
    """`timestep_spacing="leading"` with `steps_offset=1`, as both base models ship."""
    return [float(k * (1000 // n) + 1) for k in reversed(range(n))]


def pndm(n: int) -> list[float]:
    """PNDM without Runge-Kutta warm-up repeats its second timestep: n + 1 UNet calls."""
    t = leading(n)
    return t if n == 1 else [t[0], t[1], *t[1:]]


def linspace(n: int) -> list[float]:
    """Schedulers whose default spacing is "linspace" (SD1.5's config does not set one)."""
    return list(np.linspace(0, 999, n)[::-1])


def dpm_linspace(n: int) -> list[float]:
    """DPM-Solver spaces n + 1 points and drops the last (its final step goes to sigma 0)."""
    return [float(t) for t in np.linspace(0, 999, n + 1).round()[::-1][:-1]]


def dpm_leading(n: int) -> list[float]:
    ratio = 1000 // (n + 1)
    return [float(k * ratio + 1) for k in range(n, 0, -1)]


EXPECTED = {
    ("sd15", "default"): pndm,
    ("sd15", "ddim"): leading,
    ("sd15", "euler"): linspace,
    ("sd15", "euler_ancestral"): linspace,
    ("sd15", "dpmpp_2m"): dpm_linspace,
    ("sdxl", "default"): leading,
    ("sdxl", "ddim"): leading,
    ("sdxl", "euler"): leading,
    ("sdxl", "euler_ancestral"): leading,
    ("sdxl", "dpmpp_2m"): dpm_leading,
}


@pytest.fixture(scope="module")
def pipes(tiny_sd):
    out = {}
    for family in specs.FAMILIES.values():
        folder = tiny_sd / family.folder
        text = load_pipeline(
            family, folder, weights="tiny", device=CPU, dtype=torch.float32, text_encoders=True
        )
        prompt = encode_prompt(text, "a red bicycle", None, CPU)
        out[family.name] = (
            load_pipeline(family, folder, weights="tiny", device=CPU, dtype=torch.float32),
            prompt,
        )
    return out


def _generate(pipes, family, steps, **kwargs):
    pipe, prompt = pipes[family.name]
    options = dict(guidance_scale=family.guidance_scale, seed=1, height=64, width=64)
    return generate(pipe, prompt=prompt, image_embeds=None, steps=steps, **(options | kwargs))


@pytest.mark.parametrize(("family_name", "scheduler"), list(EXPECTED), ids=lambda v: str(v))
def test_the_pipeline_runs_the_schedulers_timesteps(pipes, family_name, scheduler):
    family = specs.FAMILIES[family_name]
    pipe, _ = pipes[family_name]
    shipped = pipe.scheduler
    try:
        set_scheduler(pipe, scheduler)
        assert type(pipe.scheduler).__name__ == (
            specs.SCHEDULERS[scheduler] or family.scheduler["_class_name"]
        )
        for steps in (1, 2, 4):
            result = _generate(pipes, family, steps)
            assert result.timesteps == pytest.approx(EXPECTED[family_name, scheduler](steps), abs=1e-3)
            assert len(result.step_seconds) == len(result.timesteps)
            assert all(s > 0 for s in result.step_seconds) and result.decode_seconds > 0
            assert result.image.shape == (64, 64, 3)
    finally:
        pipe.scheduler = shipped


def test_default_steps_list_evaluates_the_unet_once_per_step_except_pndm(pipes):
    pipe, _ = pipes["sdxl"]
    for steps in (1, 2, 4, 8, 12, 16, 25, 30, 50):
        pipe.scheduler.set_timesteps(steps)
        assert len(pipe.scheduler.timesteps) == steps
    pipe, _ = pipes["sd15"]
    pipe.scheduler.set_timesteps(50)
    assert len(pipe.scheduler.timesteps) == 51


def test_unknown_scheduler_is_refused(pipes):
    with pytest.raises(ConfigError, match="scheduler 'lms' is not one of default, ddim, euler"):
        set_scheduler(pipes["sd15"][0], "lms")


@pytest.mark.parametrize(
    ("family_name", "scheduler"), [("sd15", "ddim"), ("sdxl", "default"), ("sd15", "euler")]
)
def test_captured_x0_is_the_schedulers_own_prediction(pipes, family_name, scheduler):
    """x0 from the UNet's noise prediction equals `pred_original_sample` of the schedulers that
    report one, including Euler between training timesteps ("linspace")."""
    family = specs.FAMILIES[family_name]
    pipe, _ = pipes[family_name]
    shipped = pipe.scheduler
    set_scheduler(pipe, scheduler)
    reported = []
    step = pipe.scheduler.step

    def spy(*args, **kwargs):
        out = step(*args, **{**kwargs, "return_dict": True})
        reported.append(out.pred_original_sample.clone())
        return (out.prev_sample,)

    pipe.scheduler.step = spy
    try:
        result = _generate(pipes, family, 5, capture_x0=True)
    finally:
        del pipe.scheduler.step  # the spy goes ("default" keeps the shipped scheduler)
        pipe.scheduler = shipped
    assert len(result.x0) == len(reported) == 5
    for mine, theirs in zip(result.x0, reported, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_the_same_seed_gives_the_same_image_and_another_seed_another(pipes):
    family = specs.SDXL
    first, again = (_generate(pipes, family, 2).image for _ in range(2))
    other = _generate(pipes, family, 2, seed=2).image
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_guidance_one_runs_without_negatives(pipes):
    """At guidance 1 the pipeline skips the unconditional half (one UNet batch of 1)."""
    pipe, _ = pipes["sd15"]
    sizes = []
    handle = pipe.unet.register_forward_hook(lambda m, a, o: sizes.append(a[0].shape[0]))
    try:
        _generate(pipes, specs.SD15, 2, guidance_scale=1.0, capture_x0=True)
    finally:
        handle.remove()
    assert set(sizes) == {1}


def _denoise(pipes, family, steps, capture_x0):
    pipe, prompt = pipes[family.name]
    options = dict(guidance_scale=family.guidance_scale, height=64, width=64)
    return denoise(pipe, [Condition(prompt)], [1], steps=steps, capture_x0=capture_x0, **options)


@pytest.mark.parametrize(
    ("family_name", "scheduler", "last_is_final"),
    [
        ("sdxl", "default", "close"),  # Euler: the last step goes to sigma 0, x_0 = x + (x0 - x)
        ("sd15", "lcm", "equal"),  # LCM's last step returns its `denoised` as the sample
        ("sd15", "ddim_to_one", "equal"),  # DDIM with set_alpha_to_one: the last step lands on x0
        ("sd15", "default", "no"),  # PNDM (computed x0) stops at alphas_cumprod[0] < 1
        ("sdxl", "dpmpp_2m", "close"),  # DPM-Solver++ (computed x0): its last step goes to sigma 0
    ],
)
def test_recording_x0_changes_no_latent_and_the_last_x0_is_the_final_sample_where_true(
    pipes, family_name, scheduler, last_is_final
):
    """Trajectories read x0 off the steps without touching them: the latents with x0 recorded are
    the latents without, bit for bit; the last x0 is the final latents where the scheduler makes it so."""
    import diffusers

    family = specs.FAMILIES[family_name]
    pipe, _ = pipes[family_name]
    shipped = pipe.scheduler
    try:
        if scheduler == "lcm":
            pipe.scheduler = diffusers.LCMScheduler.from_config(shipped.config)
        elif scheduler == "ddim_to_one":
            pipe.scheduler = diffusers.DDIMScheduler.from_config(shipped.config, set_alpha_to_one=True)
        else:
            set_scheduler(pipe, scheduler)
        plain = _denoise(pipes, family, 4, capture_x0=False)
        recorded = _denoise(pipes, family, 4, capture_x0=True)
        assert "step" not in vars(pipe.scheduler)  # the step wrapper is gone after the call
    finally:
        pipe.scheduler = shipped
    assert torch.equal(plain.latents, recorded.latents)
    assert len(recorded.x0) == len(recorded.timesteps) >= 4
    last = recorded.x0[-1]
    if last_is_final == "equal":
        assert torch.equal(last, recorded.latents)
    elif last_is_final == "close":
        torch.testing.assert_close(last, recorded.latents, rtol=1e-4, atol=1e-4)
    else:
        assert not torch.allclose(last, recorded.latents, rtol=1e-4, atol=1e-4)
    for earlier in recorded.x0[:-1]:  # x0 moves along sampling
        assert not torch.allclose(earlier, last, rtol=1e-4, atol=1e-4)
