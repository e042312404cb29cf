"""The FLUX.1 Kontext denoising loop over loaded components, as diffusers' FluxKontextPipeline
computes it (0.42.1), without text encoders and with a per-step callback:

- the reference picture is resized as the pipeline's ``_auto_resize`` does (to the preferred
  Kontext resolution nearest its aspect ratio, floored to multiples of 16, by diffusers'
  own `VaeImageProcessor`), VAE-encoded (posterior mode), shifted, scaled and packed; its tokens
  carry position ids with first coordinate 1 (the output's have 0);
- every step the transformer sees the noisy latents followed by the reference tokens and its
  prediction is cut back to the latents' length; embedded guidance (2.5 on the model card);
- sigmas ``linspace(1, 1/n, n)`` with the resolution-dependent shift ``mu`` of the output's
  sequence length (the reference's tokens do not count).

Its loader (`load_kontext`) reads the registry's folders, as FLUX's and klein's `pipeline` modules do;
the text encoders and config ``memory`` load as FLUX's (`fewstep.families.flux1`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fewstep.families.base import Denoised, Step, StepTimer, rms
from fewstep.families.flux1 import apply_memory_options
from fewstep.registry.catalog import model_folder
from fewstep.registry.load import load_component

if TYPE_CHECKING:
    from fewstep.core.study import Study


@dataclass
class Conditioning:
    """One row per image; the reference's tokens are None for the bare model (text only)."""

    prompt_embeds: torch.Tensor  # [B, L, joint_attention_dim]
    pooled_prompt_embeds: torch.Tensor  # [B, pooled_projection_dim]
    reference_latents: torch.Tensor | None = None  # packed [B, n, 64]
    reference_ids: torch.Tensor | None = None  # [n, 3], first coordinate 1

    @staticmethod
    def stack(rows: list[Conditioning]) -> Conditioning:
        """Rows as one batch; their references must have one size (they share position ids)."""
        sizes = {None if r.reference_latents is None else tuple(r.reference_latents.shape[1:]) for r in rows}
        if len(sizes) > 1:
            raise ValueError(
                "config generation.batch_size: Kontext references of different sizes cannot share a "
                "batch (each keeps its aspect ratio); set generation.batch_size: 1"
            )
        references = (
            None if rows[0].reference_latents is None else torch.cat([r.reference_latents for r in rows])
        )
        return Conditioning(
            torch.cat([r.prompt_embeds for r in rows]),
            torch.cat([r.pooled_prompt_embeds for r in rows]),
            references,
            rows[0].reference_ids,
        )


def vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def reference_pixels(image: Any, vae: Any) -> torch.Tensor:
    """A PIL picture as FluxKontextPipeline preprocesses its ``image=``: [1, 3, h, w] in [-1, 1]."""
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    multiple_of = vae_scale_factor(vae) * 2
    processor = VaeImageProcessor(vae_scale_factor=multiple_of)
    height, width = processor.get_default_height_width(image)
    _, width, height = min((abs(width / height - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    width, height = width // multiple_of * multiple_of, height // multiple_of * multiple_of
    return processor.preprocess(processor.resize(image, height, width), height, width)


def encode_reference(
    vae: Any, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed reference latents [1, n, 64] and their position ids [n, 3]."""
    from diffusers import FluxKontextPipeline

    with torch.no_grad():
        latents = vae.encode(pixels.to(device, dtype)).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    b, c, h, w = latents.shape
    ids = FluxKontextPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    ids[..., 0] = 1
    return FluxKontextPipeline._pack_latents(latents, b, c, h, w), ids


def initial_noise(
    seeds: tuple[int, ...],
    height: int,
    width: int,
    channels: int,
    scale: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Packed latent noise, one image per seed, drawn on the CPU (the same noise on every device)."""
    from diffusers import FluxKontextPipeline

    h, w = 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    noise = torch.cat(
        [torch.randn((1, channels, h, w), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    )
    return FluxKontextPipeline._pack_latents(noise, len(seeds), channels, h, w).to(device, dtype)


def schedule(scheduler: Any, steps: int, image_seq_len: int, device: torch.device) -> list[float]:
    """Set the scheduler's timesteps for `steps` (dynamic shift of the output's length)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    mu = calculate_shift(
        image_seq_len,
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", 1.15),
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=mu, device=device)
    scheduler.set_begin_index(0)
    return [float(s) for s in scheduler.sigmas[:-1]]


def denoise(
    components: dict[str, Any],
    cond: Conditioning,
    seeds: tuple[int, ...],
    steps: int,
    size: tuple[int, int],
    guidance: float,
    device: torch.device,
    dtype: torch.dtype,
    on_step: Callable[[Step], None] | None = None,
) -> Denoised:
    """Sample one batch of `size` (width, height) images; queue the work and wait for nothing."""
    from diffusers import FluxKontextPipeline

    transformer, scheduler = components["transformer"], components["scheduler"]
    width, height = size
    scale = vae_scale_factor(components["vae"])
    batch = len(seeds)
    latents = initial_noise(seeds, height, width, transformer.config.in_channels // 4, scale, device, dtype)
    h, w = 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    ids = FluxKontextPipeline._prepare_latent_image_ids(batch, h // 2, w // 2, device, dtype)
    referenced = cond.reference_latents is not None
    if referenced:
        ids = torch.cat([ids, cond.reference_ids.to(device, dtype)])
    text_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=device, dtype=dtype)
    sigmas = schedule(scheduler, steps, latents.shape[1], device)
    embedded = None
    if transformer.config.guidance_embeds:
        embedded = torch.full([1], guidance, device=device, dtype=torch.float32).expand(batch)

    timer = StepTimer(device)
    timer.mark()
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            hidden = torch.cat([latents, cond.reference_latents], dim=1) if referenced else latents
            velocity = transformer(
                hidden_states=hidden,
                timestep=t.expand(batch).to(latents.dtype) / 1000,
                guidance=embedded,
                pooled_projections=cond.pooled_prompt_embeds,
                encoder_hidden_states=cond.prompt_embeds,
                txt_ids=text_ids,
                img_ids=ids,
                return_dict=False,
            )[0][:, : latents.size(1)]
            if on_step is not None:
                sigma = sigmas[i]
                on_step(
                    Step(
                        index=i,
                        sigma=sigma,
                        sigma_next=float(scheduler.sigmas[i + 1]),
                        prediction=velocity,
                        predicted_clean=latents - sigma * velocity,
                        adapter_active=referenced,
                        probes={"velocity_rms": float(rms(velocity))},
                    )
                )
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0].to(dtype)
            timer.mark()
    return Denoised(latents, sigmas, [referenced] * steps, timer)


def decode_pixels(vae: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed latents [B, seq, 64] -> [B, H, W, 3] uint8 on the latents' device (nothing waits)."""
    from diffusers import FluxKontextPipeline

    unpacked = FluxKontextPipeline._unpack_latents(latents, height, width, vae_scale_factor(vae))
    unpacked = unpacked / vae.config.scaling_factor + vae.config.shift_factor
    with torch.no_grad():
        pixels = vae.decode(unpacked.to(vae.dtype), return_dict=False)[0]
    pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
    return (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


def load_kontext(config: Study, model: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The transformer, VAE and scheduler of a generation job (never the text encoders)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    weights, folder = config.weights, model_folder(config, model)
    components = {
        "transformer": load_component(
            FluxTransformer2DModel, folder / "transformer", weights, device, dtype, model=model
        ),
        "vae": load_component(AutoencoderKL, folder / "vae", weights, device, dtype, model=model),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
    }
    apply_memory_options([components["transformer"]], components["vae"], config.memory, device, dtype)
    return components
