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
from fewstep.core.study import Study
from fewstep.families.base import Denoised, ItemInputs, Step
from fewstep.families.sd import distilled, faceid, pipeline
from fewstep.families.sd.models import ADAPTER_KIND, IP_ADAPTER_MODEL, distillation_of, negative_prompt
from fewstep.families.sd.specs import FAMILIES, SDXL, SDFamily
from fewstep.registry.catalog import model_folder


class SDPromptEncoder:
    """The base model's tokenizers and text towers (no UNet, no VAE)."""

    def __init__(self, config: Study, spec: SDFamily, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.pipe = pipeline.load_pipeline(
            spec,
            model_folder(config, spec.name),
            weights=config.weights,
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

    def __init__(self, config: Study, spec: SDFamily, file: str, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.pipe = pipeline.load_pipeline(
            spec, model_folder(config, spec.name), weights=config.weights, device=device, dtype=dtype
        )
        pipeline.attach_ip_adapter(
            self.pipe,
            spec,
            file,
            model_folder(config, IP_ADAPTER_MODEL),
            weights=config.weights,
            with_encoder=True,
        )

    def encode(self, image: Any) -> torch.Tensor:
        """cat[negative, positive] image embeddings of one picture (one adapter loaded)."""
        (embeds,) = pipeline.encode_reference(self.pipe, image, self.device)
        return embeds


def load_components(
    config: Study,
    backbone: Mapping[str, Any],
    adapter: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    *,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """The components an `SDCellPipeline` takes, loaded from the prepared weights: the UNet
    (a distillation's weights in it, the IP-Adapter's projection and attention layers when
    `adapter` has one, the distillation's LoRA fused after them), the VAE and the `scheduler`
    (default: the backbone's ``scheduler`` key)."""
    spec = FAMILIES[backbone["family"]]
    if config.memory.offload != "none" or config.memory.fp8_weights:
        raise ConfigError(f"config memory: {spec.name} backbones take no offload or fp8_weights")
    weights = config.weights
    pipe = pipeline.load_pipeline(
        spec, model_folder(config, spec.name), weights=weights, device=device, dtype=dtype
    )
    distillation = distillation_of(backbone)
    where = {"weights": weights, "key": f"backbones.{getattr(backbone, 'id', '<backbone>')}.distillation"}
    if distillation is not None:
        folder = model_folder(config, distillation.publisher)
        distilled.load_unet(pipe, distillation, folder, **where)
    pipeline.set_scheduler(pipe, scheduler or backbone.get("scheduler", "default"))
    if faceid.is_faceid(adapter):
        faceid.attach_faceid(pipe, spec, model_folder(config, faceid.FACEID_MODEL), weights=weights)
    elif adapter["kind"] == ADAPTER_KIND:
        pipeline.attach_ip_adapter(
            pipe,
            spec,
            adapter.get("file", "plain"),
            model_folder(config, IP_ADAPTER_MODEL),
            weights=weights,
            with_encoder=False,
        )
    if distillation is not None:
        distilled.fuse_lora(pipe, distillation, folder, **where)
    return {"unet": pipe.unet, "vae": pipe.vae, "scheduler": pipe.scheduler}


class SDCellPipeline:
    """One SD generation job's UNet, VAE, scheduler and IP-Adapter layers, eager.

    Built from loaded components as diffusers' pipelines are (`load_components` reads them from
    the prepared weights; a test may pass its own) into the family's diffusers pipeline, without
    text or image encoders. `scale` is the adapter's `set_ip_adapter_scale` argument (presets
    resolved): given exactly when the UNet carries IP-Adapter layers. `acceleration`: the job's
    config ``accelerations`` switches (`fewstep.families.sd.acceleration`; None or all off: eager).
    `faces`: the adapter is FaceID, conditioned on each identity's face embedding
    (`faceid.image_embeds`) instead of a reference's image embeddings.
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
        acceleration: Mapping[str, Any] | None = None,
        eta: float = 0.0,
        faces: bool = False,
    ):
        import diffusers

        self.device, self.dtype, self.faces = device, dtype, faces
        self.with_adapter = scale is not None
        if self.with_adapter != (unet.encoder_hid_proj is not None):
            raise ValueError(
                "an SD cell pipeline takes a scale exactly when its UNet carries IP-Adapter layers"
            )
        self.guidance, self.side, self.eta = guidance, side, eta
        encoders = {name: None for name in (*spec.text_encoders, *spec.tokenizers)}
        if spec is not SDXL:  # SD1.5's pipeline also takes its (never loaded) safety checker
            encoders |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
        pipeline_class = getattr(diffusers, spec.pipeline_class)
        self.pipe = pipeline_class(unet=unet, vae=vae, scheduler=scheduler, **encoders)
        self.pipe.set_progress_bar_config(disable=True)  # jobs show one bar per cell, not per image
        if self.with_adapter:
            pipeline.apply_scale(self.pipe, scale, "config adapters.<name>.scale")
        self.accelerated = None
        if acceleration is not None and any(acceleration[k] != "none" for k in ("compile", "fp8", "cache")):
            from fewstep.families.sd.acceleration import Accelerated

            self.accelerated = Accelerated(self.pipe, dict(acceleration), device)

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
                    adapter_active=self._adapter_ran(index + 1)[index],
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
            eta=self.eta,
        )
        active = self._adapter_ran(len(result.timesteps))
        return Denoised(result.latents, result.timesteps, active, result.timer)

    def _adapter_ran(self, calls: int) -> list[bool]:
        """Whether the adapter ran in each of a run's first `calls` UNet calls: a cache's skipped
        calls skip the UNet's adapter layers too."""
        computed = self.accelerated.computed(calls) if self.accelerated is not None else [True] * calls
        return [self.with_adapter and ran for ran in computed]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return pipeline.decode_uint8(self.pipe, latents)
