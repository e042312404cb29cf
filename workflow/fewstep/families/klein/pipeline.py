"""FLUX.2 [klein]'s sampling loop over loaded components, step for step as `Flux2KleinPipeline`
runs it (diffusers 0.42.1), on precomputed prompt embeddings and reference latents.

The pipeline object (`reference_pipeline`, without text encoder) lends its own helpers for the
reference image's preprocessing and encoding, the latent ids and the (un)packing, so only the
loop is written here: it takes a batch of seeds, marks a `StepTimer` per step without waiting,
and reports each step's prediction for trajectories. The distilled model runs without
classifier-free guidance (``is_distilled``), as the pipeline does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fewstep.core.errors import WeightsError
from fewstep.core.study import Study
from fewstep.families.base import Denoised, StepTimer
from fewstep.families.klein.specs import REFERENCE_MAX_AREA
from fewstep.registry.catalog import model_folder
from fewstep.registry.load import load_component


@dataclass
class Conditioning:
    """Rows of prompt embeddings [B, L, D] and, with a reference, its packed latents [B, N, C] and
    ids [B, N, 4] (one tensor per row: photos of different sizes give different N)."""

    prompt_embeds: torch.Tensor
    references: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @staticmethod
    def stack(rows: Sequence[Conditioning]) -> Conditioning:
        references = None
        if rows[0].references is not None:
            references = [reference for row in rows for reference in row.references]
        return Conditioning(torch.cat([row.prompt_embeds for row in rows]), references)


@dataclass
class StepInfo:
    """One step of `denoise`, for the per-step callback."""

    index: int
    sigma: float
    sigma_next: float
    velocity: torch.Tensor
    predicted_clean: torch.Tensor


def reference_pipeline(transformer: Any, vae: Any, scheduler: Any) -> Any:
    """A `Flux2KleinPipeline` over the job's components, without text encoder and tokenizer."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        is_distilled=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode_reference(pipe: Any, image: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed latents [1, N, C] and ids [1, N, 4] of one reference picture (PIL), prepared as the
    pipeline prepares its ``image=``: at most 1024² pixels, sides floored to a multiple of 16."""
    pipe.image_processor.check_image_input(image)
    if image.width * image.height > REFERENCE_MAX_AREA:
        image = pipe.image_processor._resize_to_target_area(image, REFERENCE_MAX_AREA)
    multiple = pipe.vae_scale_factor * 2
    width, height = image.width // multiple * multiple, image.height // multiple * multiple
    pixels = pipe.image_processor.preprocess(image, height=height, width=width, resize_mode="crop")
    with torch.no_grad():
        return pipe.prepare_image_latents(
            images=[pixels], batch_size=1, generator=None, device=device, dtype=pipe.vae.dtype
        )


def initial_noise(
    pipe: Any, seeds: Sequence[int], height: int, width: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed noise [B, S, C] and its ids, one image per seed, drawn on the CPU (a seed means the
    same noise on every device and in every batch)."""
    scale = pipe.vae_scale_factor * 2
    shape = (1, pipe.transformer.config.in_channels, height // scale, width // scale)
    noise = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])
    ids = pipe._prepare_latent_ids(noise).to(device)
    packed = pipe._pack_latents(noise)
    if device.type == "cuda":  # pinned: the copy waits for nothing the GPU is still doing
        packed = packed.pin_memory().to(device, non_blocking=True)
    return packed.to(device, dtype), ids


def schedule(pipe: Any, steps: int, image_seq_len: int, device: torch.device) -> list[float]:
    """Set the scheduler's timesteps as the pipeline does (its empirical `mu`); the sigmas taken."""
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

    sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = compute_empirical_mu(image_seq_len=image_seq_len, num_steps=steps)
    retrieve_timesteps(pipe.scheduler, steps, device, sigmas=sigmas, mu=mu)
    pipe.scheduler.set_begin_index(0)
    return [float(s) for s in pipe.scheduler.sigmas[:-1]]


def _runs(references: list[tuple[torch.Tensor, torch.Tensor]]) -> list[slice]:
    """Consecutive rows whose references have the same token count: one transformer call each."""
    runs, start = [], 0
    for row in range(1, len(references) + 1):
        if row == len(references) or references[row][0].shape != references[start][0].shape:
            runs.append(slice(start, row))
            start = row
    return runs


def denoise(
    pipe: Any,
    cond: Conditioning,
    seeds: Sequence[int],
    steps: int,
    height: int,
    width: int,
    device: torch.device,
    dtype: torch.dtype,
    on_step: Callable[[StepInfo], None] | None = None,
) -> Denoised:
    """Sample one batch; returns packed latents [B, S, C] with the sigmas and step marks."""
    scheduler = pipe.scheduler
    latents, latent_ids = initial_noise(pipe, seeds, height, width, device, dtype)
    text_ids = pipe._prepare_text_ids(cond.prompt_embeds).to(device)
    sigmas = schedule(pipe, steps, latents.shape[1], device)
    batch = latents.shape[0]
    runs = _runs(cond.references) if cond.references is not None else [slice(0, batch)]
    timer = StepTimer(device)
    timer.mark()
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            timestep = t.expand(batch).to(latents.dtype) / 1000
            velocity = torch.cat(
                [_predict(pipe, cond, latents, latent_ids, text_ids, timestep, r) for r in runs]
            )
            if on_step is not None:
                clean = latents - sigmas[i] * velocity
                on_step(StepInfo(i, sigmas[i], float(scheduler.sigmas[i + 1]), velocity, clean))
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            timer.mark()
    return Denoised(latents, sigmas, [cond.references is not None] * steps, timer)


def _predict(
    pipe: Any,
    cond: Conditioning,
    latents: torch.Tensor,
    latent_ids: torch.Tensor,
    text_ids: torch.Tensor,
    timestep: torch.Tensor,
    rows: slice,
) -> torch.Tensor:
    """The transformer's velocity for `rows`, their reference tokens appended after the image's."""
    hidden, ids = latents[rows], latent_ids[rows]
    if cond.references is not None:
        references = cond.references[rows]
        hidden = torch.cat([hidden, torch.cat([r[0] for r in references])], dim=1)
        ids = torch.cat([ids, torch.cat([r[1] for r in references])], dim=1)
    with pipe.transformer.cache_context("cond"):
        velocity = pipe.transformer(
            hidden_states=hidden.to(pipe.transformer.dtype),
            timestep=timestep[rows],
            guidance=None,
            encoder_hidden_states=cond.prompt_embeds[rows],
            txt_ids=text_ids[rows],
            img_ids=ids,
            return_dict=False,
        )[0]
    return velocity[:, : latents.shape[1]]


def decode_pixels(pipe: Any, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed latents [B, S, C] -> [B, H, W, 3] uint8 on the latents' device (nothing waits), by
    the pipeline's unpacking, batch-norm statistics and VAE."""
    vae, scale = pipe.vae, pipe.vae_scale_factor * 2
    ids = pipe._prepare_latent_ids(torch.empty(latents.shape[0], 1, height // scale, width // scale))
    grid = pipe._unpack_latents_with_ids(latents, ids.to(latents.device), height // scale, width // scale)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(
        grid.device, grid.dtype
    )
    unpatched = pipe._unpatchify_latents(grid * std + mean)
    with torch.no_grad():
        pixels = vae.decode(unpatched.to(vae.dtype), return_dict=False)[0]
    pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
    return (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


def load_klein(config: Study, model: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The transformer, VAE and scheduler of a prepared klein folder (never the text encoder)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    memory = config.memory
    if memory["offload"] != "none" or memory["fp8_weights"]:
        raise WeightsError(
            "config memory: FLUX.2 [klein] takes no offload or fp8_weights; set none and false"
        )
    weights, folder = config.weights, model_folder(config, model)
    return {
        "transformer": load_component(
            Flux2Transformer2DModel, folder / "transformer", weights, device, dtype, model=model
        ),
        "vae": load_component(AutoencoderKLFlux2, folder / "vae", weights, device, dtype, model=model),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
    }


def load_klein_text_encoder(config: Study, model: str, device: torch.device, dtype: torch.dtype) -> Any:
    """A text-only Flux2KleinPipeline (Qwen3 and its tokenizer), used once per sweep to embed prompts."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3ForCausalLM

    folder = model_folder(config, model)
    text_encoder = load_component(
        Qwen3ForCausalLM, folder / "text_encoder", config.weights, device, dtype, model=model
    )
    return Flux2KleinPipeline.from_pretrained(
        folder, transformer=None, vae=None, text_encoder=text_encoder, dtype=dtype
    )
