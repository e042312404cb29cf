"""The FLUX denoising loop with an optional InfuseNet identity adapter, and its loaders.

Written against diffusers' components (transformer, FluxControlNetModel, VAE,
FlowMatchEulerDiscreteScheduler) rather than a pipeline object, so a job can
time every step, switch the adapter on a guidance window, decode the predicted
clean image at any step and never hold a text encoder. The arithmetic follows
diffusers' FluxControlNetPipeline and InfiniteYou's InfuseNet pipeline:

- backbone: embedded guidance only when its transformer has guidance embeds
  (dev: 3.5, schnell: None); sigmas ``linspace(1, 1/n, n)`` through the
  scheduler, with the resolution-dependent shift ``mu`` when it shifts
  dynamically (dev) and none otherwise (schnell: 4 steps -> 1, .75, .5, .25);
- InfuseNet: identity tokens where a ControlNet would get T5 text (``txt_ids``
  of their length), the CLIP pooled prompt, the packed VAE latents of the
  control image (black when none), its own guidance 1.0, residuals scaled by
  ``conditioning_scale`` and active on ``[guidance_start, guidance_end]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fewstep.core.study import Study
from fewstep.families.base import Denoised, StepTimer, rms
from fewstep.families.flux.models import INFINITEYOU, INFU_VERSION
from fewstep.families.flux1 import apply_memory_options
from fewstep.registry.catalog import model_folder
from fewstep.registry.load import default_dtype, load_component
from fewstep.registry.prepare import missing_weights

ADAPTER_GUIDANCE = 1.0  # InfuseNet's own embedded guidance in InfiniteYou


@dataclass
class Conditioning:
    """One row per image of the batch."""

    prompt_embeds: torch.Tensor  # [B, L, joint_attention_dim]
    pooled_prompt_embeds: torch.Tensor  # [B, pooled_projection_dim]
    identity_tokens: torch.Tensor | None = None  # [B, 8, joint_attention_dim]
    control_latents: torch.Tensor | None = None  # packed [B, seq, 64]

    @staticmethod
    def stack(rows: list[Conditioning]) -> Conditioning:
        """Concatenate single-image conditionings into one batch."""

        def cat(name: str) -> torch.Tensor | None:
            parts = [getattr(r, name) for r in rows]
            return None if parts[0] is None else torch.cat(parts)

        return Conditioning(
            *(cat(f) for f in ("prompt_embeds", "pooled_prompt_embeds", "identity_tokens", "control_latents"))
        )


@dataclass
class Settings:
    steps: int
    height: int
    width: int
    seeds: tuple[int, ...]  # one per image of the batch
    guidance: float | None = None
    adapter_scale: float = 1.0
    adapter_start: float = 0.0
    adapter_end: float = 1.0
    adapter_first_steps: int | None = None  # InfuseNet on the first k steps only


@dataclass
class StepInfo:
    index: int
    sigma: float
    sigma_next: float
    latents: torch.Tensor  # x_t before the step (packed)
    velocity: torch.Tensor  # model output
    adapter_active: bool
    probes: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_clean(self) -> torch.Tensor:
        """x0 estimate of flow matching: x_t = (1 - s) x0 + s noise, v = noise - x0."""
        return self.latents - self.sigma * self.velocity


def vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def adapter_window(steps: int, start: float, end: float, first_steps: int | None = None) -> list[bool]:
    """Steps on which the adapter runs: diffusers' `controlnet_keep` rule, cut after `first_steps`."""
    limit = steps if first_steps is None else first_steps
    return [not (i / steps < start or (i + 1) / steps > end) and i < limit for i in range(steps)]


def schedule(scheduler: Any, steps: int, image_seq_len: int, device: torch.device) -> list[float]:
    """Set the scheduler's timesteps for `steps`; return the sigmas of the steps taken."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    mu = None
    if cfg.get("use_dynamic_shifting", False):
        mu = calculate_shift(
            image_seq_len,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
    sigmas = np.linspace(1.0, 1.0 / steps, steps)
    scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=device)
    scheduler.set_begin_index(0)
    return [float(s) for s in scheduler.sigmas[:-1]]


def initial_noise(
    seeds: tuple[int, ...],
    height: int,
    width: int,
    channels: int,
    scale: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Packed latent noise, one image per seed, drawn on the CPU: a seed means the same
    noise on every device and in every batch."""
    from diffusers import FluxPipeline

    h, w = 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    noise = torch.cat(
        [torch.randn((1, channels, h, w), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    )
    packed = FluxPipeline._pack_latents(noise, len(seeds), channels, h, w)
    if device.type == "cuda":  # pinned: the copy waits for nothing the GPU is still doing
        packed = packed.pin_memory().to(device, non_blocking=True)
    return packed.to(device, dtype)


def encode_control(vae: Any, image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Packed, shifted and scaled VAE latents of a control image (HxWx3 uint8).

    The posterior mean is used (not a sample) so the result is deterministic.
    """
    from diffusers import FluxPipeline

    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(device, dtype) / 127.5 - 1.0
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def denoise(
    parts: Any,
    cond: Conditioning,
    settings: Settings,
    device: torch.device,
    dtype: torch.dtype,
    on_step: Callable[[StepInfo], None] | None = None,
    accelerated: Any = None,
) -> Denoised:
    """Run the sampler; return final packed latents with per-step sigmas and timings.

    `accelerated` (a `fewstep.families.flux.acceleration.Accelerated` over these parts) wraps
    every transformer call; without it the loop is the plain eager one. ``Denoised.adapter_active``
    marks the steps InfuseNet ran on: inside its window, less the steps a cache schedule skips.
    """
    from diffusers import FluxPipeline

    transformer, scheduler, infusenet = parts.transformer, parts.scheduler, parts.infusenet
    scale = vae_scale_factor(parts.vae)
    channels = transformer.config.in_channels // 4
    batch = len(settings.seeds)
    latents = initial_noise(settings.seeds, settings.height, settings.width, channels, scale, device, dtype)
    h, w = 2 * (settings.height // (scale * 2)), 2 * (settings.width // (scale * 2))
    image_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)
    text_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=device, dtype=dtype)

    sigmas = schedule(scheduler, settings.steps, latents.shape[1], device)
    use_adapter = infusenet is not None and cond.identity_tokens is not None and settings.adapter_scale != 0
    active = adapter_window(
        settings.steps, settings.adapter_start, settings.adapter_end, settings.adapter_first_steps
    )
    active = [a and use_adapter for a in active]

    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full([batch], float(settings.guidance), device=device, dtype=torch.float32)
    adapter_guidance = None
    identity_ids = None
    if use_adapter:
        identity_ids = torch.zeros(cond.identity_tokens.shape[1], 3, device=device, dtype=dtype)
        if infusenet.config.guidance_embeds:
            adapter_guidance = torch.full([batch], ADAPTER_GUIDANCE, device=device, dtype=torch.float32)
        control = cond.control_latents
        if control is None:
            raise ValueError("the InfuseNet adapter needs control latents (a black image when none)")

    timer = StepTimer(device)
    timer.mark()
    if accelerated is not None:  # a cache that skips a step's blocks makes its InfuseNet call useless
        computed = accelerated.start(settings.steps)
        active = [a and c for a, c in zip(active, computed, strict=True)]
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            timestep = t.expand(batch).to(dtype) / 1000
            block_samples = single_block_samples = None
            if active[i]:
                block_samples, single_block_samples = infusenet(
                    hidden_states=latents,
                    controlnet_cond=control,
                    conditioning_scale=settings.adapter_scale,
                    encoder_hidden_states=cond.identity_tokens,
                    pooled_projections=cond.pooled_prompt_embeds,
                    timestep=timestep,
                    img_ids=image_ids,
                    txt_ids=identity_ids,
                    guidance=adapter_guidance,
                    return_dict=False,
                )
            residuals = {
                "controlnet_block_samples": block_samples,
                "controlnet_single_block_samples": single_block_samples,
            }
            call = accelerated.denoiser_call(residuals) if accelerated else contextlib.nullcontext(residuals)
            with call as residuals:
                velocity = transformer(
                    hidden_states=latents,
                    timestep=timestep,
                    guidance=guidance,
                    pooled_projections=cond.pooled_prompt_embeds,
                    encoder_hidden_states=cond.prompt_embeds,
                    txt_ids=text_ids,
                    img_ids=image_ids,
                    return_dict=False,
                    **residuals,
                )[0]
            if on_step is not None:
                info = StepInfo(i, sigmas[i], float(scheduler.sigmas[i + 1]), latents, velocity, active[i])
                if block_samples is not None:
                    info.probes = residual_probes(block_samples, single_block_samples, latents)
                on_step(info)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0].to(dtype)
            timer.mark()
    return Denoised(latents, sigmas, active, timer)


def residual_probes(
    block_samples: list[torch.Tensor],
    single_block_samples: list[torch.Tensor],
    latents: torch.Tensor,
) -> dict[str, Any]:
    """RMS of each of the adapter's residuals, per stream, and their mean (a conditioning-strength probe)."""
    double = [float(rms(t)) for t in block_samples]
    single = [float(rms(t)) for t in single_block_samples]
    return {
        "residual_rms_double": float(np.mean(double)),
        "residual_rms_single": float(np.mean(single)),
        "residual_rms_double_each": double,
        "residual_rms_single_each": single,
    }


def decode(parts: Any, latents: torch.Tensor, height: int, width: int) -> list[np.ndarray]:
    """Packed latents [B, seq, 64] -> B images, HxWx3 uint8."""
    return list(decode_pixels(parts, latents, height, width).cpu().numpy())


def decode_pixels(parts: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed latents [B, seq, 64] -> [B, H, W, 3] uint8 on the latents' device (nothing waits)."""
    from diffusers import FluxPipeline

    vae = parts.vae
    unpacked = FluxPipeline._unpack_latents(latents, height, width, vae_scale_factor(vae))
    unpacked = unpacked / vae.config.scaling_factor + vae.config.shift_factor
    with torch.no_grad():
        pixels = vae.decode(unpacked.to(vae.dtype), return_dict=False)[0]
    pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
    return (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


# --------------------------------------------------------------------------- loading


@dataclass
class FluxParts:
    """What a generation job holds: never the text encoders."""

    transformer: Any
    vae: Any
    scheduler: Any
    infusenet: Any = None
    resampler: Any = None


def load_flux(
    config: Study,
    backbone: str,
    adapter: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> FluxParts:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    weights = config.weights
    folder = model_folder(config, backbone)
    parts = FluxParts(
        transformer=load_component(
            FluxTransformer2DModel, folder / "transformer", weights, device, dtype, model=backbone
        ),
        vae=load_component(AutoencoderKL, folder / "vae", weights, device, dtype, model=backbone),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
    )
    if adapter["kind"] == "infusenet":
        parts.infusenet, parts.resampler = load_infiniteyou(config, adapter["variant"], device, dtype)
    big = [m for m in (parts.infusenet, parts.transformer) if m is not None]
    apply_memory_options(big, parts.vae, config.memory, device, dtype)
    return parts


def load_infiniteyou(
    config: Study, variant: str, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """InfuseNet (FluxControlNetModel) and the identity resampler of one variant."""
    import torch
    from diffusers import FluxControlNetModel

    from fewstep.families.resampler import PUBLISHED, Resampler, infer_config, load_resampler

    folder = model_folder(config, INFINITEYOU.name) / INFU_VERSION / variant
    infusenet = load_component(
        FluxControlNetModel,
        folder / "InfuseNetModel",
        config.weights,
        device,
        dtype,
        model=INFINITEYOU.name,
    )
    if config.weights == "random":
        with torch.device(device), default_dtype(dtype):
            resampler = Resampler(PUBLISHED).eval()
    else:
        path = folder / "image_proj_model.bin"
        if not path.exists():
            raise missing_weights(path, INFINITEYOU.name)
        resampler = load_resampler(path, infer_config(path)).to(device, dtype)
    return infusenet, resampler
