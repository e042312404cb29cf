"""FLUX.2 [klein]'s job side of the family contract: `KleinPromptEncoder` and `KleinCellPipeline`.

The prompt encoder runs the pipeline's own Qwen3 encoding (chat template, hidden states 9, 18
and 27 stacked); the cell pipeline holds the transformer, VAE and scheduler and, with the native
reference (adapter kind ``native_reference``), encodes each identity's conditioning photo once,
as the pipeline encodes its ``image=``, and appends its tokens to every step's input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fewstep.core.study import Study
from fewstep.families.base import Denoised, ItemInputs, Step, timed
from fewstep.families.klein import pipeline
from fewstep.families.klein.specs import MAX_SEQUENCE_LENGTH, TEXT_ENCODER_OUT_LAYERS


class KleinPromptEncoder:
    """Qwen3 prompt embeddings through a text-only Flux2KleinPipeline."""

    def __init__(self, config: Study, model: str, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.pipe = pipeline.load_klein_text_encoder(config, model, device, dtype)

    def encode(self, text: str, backbone: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            embeds, _ = self.pipe.encode_prompt(
                prompt=text,
                device=self.device,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                text_encoder_out_layers=TEXT_ENCODER_OUT_LAYERS,
            )
        return {"prompt_embeds": embeds}


def load_components(
    config: Study, backbone: Mapping[str, Any], device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """The components a `KleinCellPipeline` takes, from the prepared weights: transformer, vae, scheduler."""
    return pipeline.load_klein(config, backbone["model"], device, dtype)


class KleinCellPipeline:
    """One klein generation job's transformer, VAE and scheduler, eager.

    `pictures` maps an identity id to its conditioning photo (a path or ``builtin:<name>``): given
    exactly when the cells take the reference natively; None for the bare backbone.
    """

    def __init__(
        self,
        *,
        transformer: Any,
        vae: Any,
        scheduler: Any,
        pictures: Mapping[str, str] | None,
        width: int,
        height: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.device, self.dtype = device, dtype
        self.pipe = pipeline.reference_pipeline(transformer, vae, scheduler)
        self.pictures = None if pictures is None else dict(pictures)
        self.width, self.height = width, height
        self._references: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], float]] = {}

    def _reference(self, reference_id: str) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
        """The photo's packed latents and ids, and their device seconds timed on a second call
        (the first pays one-off costs); computed once per identity."""
        if reference_id not in self._references:
            from PIL import Image

            from fewstep.core.images import load_rgb

            image = Image.fromarray(load_rgb(self.pictures[reference_id]))
            pipeline.encode_reference(self.pipe, image, self.device)
            self._references[reference_id] = timed(
                self.device, pipeline.encode_reference, self.pipe, image, self.device
            )
        return self._references[reference_id]

    def condition(self, inputs: ItemInputs) -> tuple[pipeline.Conditioning, float]:
        embeds = inputs.prompt["prompt_embeds"]
        if self.pictures is None:
            return pipeline.Conditioning(embeds), 0.0
        reference, seconds = self._reference(inputs.reference_id)
        return pipeline.Conditioning(embeds, [reference]), seconds

    def stack(self, conditions: Sequence[pipeline.Conditioning]) -> pipeline.Conditioning:
        return pipeline.Conditioning.stack(conditions)

    def denoise(
        self,
        condition: pipeline.Conditioning,
        seeds: Sequence[int],
        steps: int,
        on_step: Callable[[Step], None] | None = None,
    ) -> Denoised:
        active = condition.references is not None

        def report(info: pipeline.StepInfo) -> None:
            on_step(
                Step(info.index, info.sigma, info.sigma_next, info.velocity, info.predicted_clean, active)
            )

        return pipeline.denoise(
            self.pipe,
            condition,
            seeds,
            steps,
            self.height,
            self.width,
            self.device,
            self.dtype,
            on_step=report if on_step is not None else None,
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return pipeline.decode_pixels(self.pipe, latents, self.height, self.width)
