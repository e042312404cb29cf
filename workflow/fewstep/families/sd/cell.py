"""The SD families' job side of the contract: `SDPromptEncoder` and `SDCellPipeline`.

Both run diffusers' own pipelines (`pipeline`): the prompt encoder holds only the text
towers, the cell pipeline the UNet (with the adapter's projection and attention layers),
VAE and scheduler, never a text or image encoder. The precomputed prompt embeddings (with
their CFG negatives) and reference image embeddings (``image_embeds``: cat[negative,
positive]) go in as `prompt_embeds` / `ip_adapter_image_embeds`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fewstep.core.errors import ConfigError
from fewstep.families.base import Denoised, ItemInputs, Step
from fewstep.families.sd import faceid, pipeline
from fewstep.families.sd.models import ADAPTER_KIND, IP_ADAPTER_MODEL, negative_prompt
from fewstep.families.sd.specs import SDXL, SDFamily
from fewstep.registry.catalog import model_folder


class SDPromptEncoder:
    """The base model's tokenizers and text towers (no UNet, no VAE)."""

    def __init__(self, config: Mapping[str, Any], spec: SDFamily, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.pipe = pipeline.load_pipeline(
            spec,
            model_folder(dict(config), spec.name),
            weights=config["weights"],
            device=device,
            dtype=dtype,
            text_encoders=True,
            denoiser=False,
        )

    def encode(self, text: str, backbone: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The prompt and the backbone's negative prompt, as the pipeline's own arguments."""
        return pipeline.encode_prompt(self.pipe, text, negative_prompt(backbone), self.device)


class ReferenceEncoder:
    """The image encoder of one adapter file (with the UNet that tells plain from Plus)."""

    def __init__(
        self, config: Mapping[str, Any], spec: SDFamily, file: str, device: torch.device, dtype: torch.dtype
    ):
        self.device = device
        self.pipe = pipeline.load_pipeline(
            spec, model_folder(dict(config), spec.name), weights=config["weights"], device=device, dtype=dtype
        )
        pipeline.attach_ip_adapter(
            self.pipe,
            spec,
            file,
            model_folder(dict(config), IP_ADAPTER_MODEL),
            weights=config["weights"],
            with_encoder=True,
        )

    def encode(self, image: Any) -> torch.Tensor:
        """cat[negative, positive] image embeddings of one picture (one adapter loaded)."""
        (embeds,) = pipeline.encode_reference(self.pipe, image, self.device)
        return embeds


def load_components(
    config: Mapping[str, Any],
    spec: SDFamily,
    backbone: Mapping[str, Any],
    adapter: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The components an `SDCellPipeline` takes, loaded from the prepared weights: the UNet
    (with the IP-Adapter's projection and attention layers when `adapter` has one), the VAE and
    the backbone's scheduler."""
    if config["memory"]["offload"] != "none" or config["memory"]["fp8_weights"]:
        raise ConfigError(f"config memory: {spec.name} backbones take no offload or fp8_weights")
    weights = config["weights"]
    pipe = pipeline.load_pipeline(
        spec, model_folder(dict(config), spec.name), weights=weights, device=device, dtype=dtype
    )
    pipeline.set_scheduler(pipe, backbone.get("scheduler", "default"))
    if faceid.is_faceid(adapter):
        faceid.attach_faceid(pipe, spec, model_folder(dict(config), faceid.FACEID_MODEL), weights=weights)
    elif adapter["kind"] == ADAPTER_KIND:
        pipeline.attach_ip_adapter(
            pipe,
            spec,
            adapter.get("file", "plain"),
            model_folder(dict(config), IP_ADAPTER_MODEL),
            weights=weights,
            with_encoder=False,
        )
    return {"unet": pipe.unet, "vae": pipe.vae, "scheduler": pipe.scheduler}


class SDCellPipeline:
    """One SD generation job's UNet, VAE, scheduler and IP-Adapter layers, eager.

    Built from loaded components as diffusers' pipelines are (`load_components` reads them from
    the prepared weights; a test may pass its own) into the family's diffusers pipeline, without
    text or image encoders. `scale` is the adapter's `set_ip_adapter_scale` argument (presets
    resolved): given exactly when the UNet carries IP-Adapter layers. `faces`: the adapter is FaceID,
    conditioned on each identity's face embedding (`faceid.image_embeds`) instead of a reference's
    image embeddings.
    """

    def __init__(
        self,
        *,
        unet: Any,
        vae: Any,
        scheduler: Any,
        spec: SDFamily,
        scale: float | dict | None,
        guidance: float,
        side: int,
        device: torch.device,
        dtype: torch.dtype,
        faces: bool = False,
    ):
        import diffusers

        self.device, self.dtype, self.faces = device, dtype, faces
        self.with_adapter = scale is not None
        if self.with_adapter != (unet.encoder_hid_proj is not None):
            raise ValueError(
                "an SD cell pipeline takes a scale exactly when its UNet carries IP-Adapter layers"
            )
        self.guidance, self.side = guidance, side
        encoders = {name: None for name in (*spec.text_encoders, *spec.tokenizers)}
        if spec is not SDXL:  # SD1.5's pipeline also takes its (never loaded) safety checker
            encoders |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        pipeline_class = getattr(diffusers, spec.pipeline_class)
        self.pipe = pipeline_class(unet=unet, vae=vae, scheduler=scheduler, **encoders)
        self.pipe.set_progress_bar_config(disable=True)  # jobs show one bar per cell, not per image
        if self.with_adapter:
            pipeline.apply_scale(self.pipe, scale, "config adapters.<name>.scale")

    def condition(self, inputs: ItemInputs) -> tuple[pipeline.Condition, float]:
        embeds = None
        if self.with_adapter:
            tensor = faceid.image_embeds(inputs.reference[faceid.FACEID_EMBEDDING]) if self.faces else None
            tensor = inputs.reference["image_embeds"] if tensor is None else tensor
            embeds = [tensor.to(self.device, self.dtype)]
        return pipeline.Condition(dict(inputs.prompt), embeds), 0.0

    def stack(self, conditions: Sequence[pipeline.Condition]) -> list[pipeline.Condition]:
        return list(conditions)

    def denoise(
        self,
        condition: Sequence[pipeline.Condition] | pipeline.Condition,
        seeds: Sequence[int],
        steps: int,
        on_step: Callable[[Step], None] | None = None,
    ) -> Denoised:
        conditions = [condition] if isinstance(condition, pipeline.Condition) else list(condition)

        def report(index: int, timestep: float, eps: torch.Tensor, x0: torch.Tensor) -> None:
            timesteps = self.pipe.scheduler.timesteps
            following = float(timesteps[index + 1]) if index + 1 < len(timesteps) else 0.0
            on_step(
                Step(
                    index=index,
                    sigma=timestep,
                    sigma_next=following,
                    prediction=eps,
                    predicted_clean=x0,
                    adapter_active=self.with_adapter,
                )
            )

        result = pipeline.denoise(
            self.pipe,
            conditions,
            list(seeds),
            steps=steps,
            guidance_scale=self.guidance,
            height=self.side,
            width=self.side,
            on_step=report if on_step is not None else None,
        )
        active = [self.with_adapter] * len(result.timesteps)
        return Denoised(result.latents, result.timesteps, active, result.timer)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return pipeline.decode_uint8(self.pipe, latents)
