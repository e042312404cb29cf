"""Kontext's job side of the family contract: `KontextPromptEncoder`, `KontextPhotoEncoder` and
`KontextCellPipeline`.

The cell pipeline holds one job's transformer, VAE and scheduler and runs `pipeline.denoise`.
With the native reference (adapter kind ``native_reference``), the identity's conditioning
photo (its pixels, which `KontextPhotoEncoder` put in the identity embedding file) is resized
and VAE-encoded once per identity, timed on a second call as FLUX's control image is, so one-off
costs stay out of every image's end-to-end time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fewstep.core.study import Study
from fewstep.families.base import Denoised, IdentityEmbedding, ItemInputs, Step, timed
from fewstep.families.flux1 import load_text_encoders
from fewstep.families.kontext import pipeline
from fewstep.families.kontext.models import max_sequence_length
from fewstep.families.kontext.specs import PHOTO, PROMPT_TEMPLATE


def edit_prompt(text: str, template: str) -> str:
    """The study's prompt phrased as a Kontext edit of the reference photo."""
    return template.format(prompt=text)


class KontextPromptEncoder:
    """CLIP-L pooled + T5 sequence embeddings of the edit prompt, through a text-only pipeline."""

    def __init__(self, config: Study, model: str, device: torch.device, dtype: torch.dtype):
        from diffusers import FluxKontextPipeline

        self.device = device
        self.pipe = load_text_encoders(FluxKontextPipeline, config, model, device, dtype)

    def encode(self, text: str, backbone: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        edit = edit_prompt(text, PROMPT_TEMPLATE)
        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=edit,
                prompt_2=edit,
                device=self.device,
                max_sequence_length=max_sequence_length(backbone),
            )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


class KontextPhotoEncoder:
    """What Kontext reads of an identity: the photo itself, as it is (the cell pipeline resizes
    and VAE-encodes it as FluxKontextPipeline does), once insightface's detector finds a face in
    it (the identity metrics compare the images with that face). Keeping the pixels in the file
    puts the photo's content into every image's resume key, as the face embeddings do for FLUX."""

    def __init__(self, config: Study):
        from fewstep.faces.models import CONDITIONING_FACE_PACK, face_analyzer

        self.device = torch.device("cpu")  # one detection per identity
        self.analyzer = face_analyzer(config, CONDITIONING_FACE_PACK)

    def encode(self, rgb: Any) -> IdentityEmbedding | None:
        from fewstep.core.images import rgb_to_bgr

        faces, _ = self.analyzer.detect(rgb_to_bgr(rgb))
        if not faces:
            return None
        return IdentityEmbedding({PHOTO: torch.from_numpy(rgb.copy())}, {"kontext_faces": str(len(faces))})


def photo_of(reference: Mapping[str, torch.Tensor]) -> Any:
    """The identity's photo as a PIL image, from its identity embedding file's tensors (the file
    stores it as float32, exact for 0..255)."""
    from PIL import Image

    return Image.fromarray(reference[PHOTO].to(torch.uint8).numpy())


def load_components(
    config: Study,
    backbone: Mapping[str, Any],
    adapter: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The components a `KontextCellPipeline` takes (transformer, vae, scheduler), loaded from the
    prepared weights; the native reference needs no adapter weights."""
    return pipeline.load_kontext(config, backbone["model"], device, dtype)


class KontextCellPipeline:
    """One Kontext generation job's models; see the module docstring.

    `adapter` is the job's config ``adapters`` entry (kind ``native_reference``: the identity
    photo is the input image; ``none``: text only), `guidance` the embedded guidance.
    """

    def __init__(
        self,
        *,
        transformer: Any,
        vae: Any,
        scheduler: Any,
        adapter: Mapping[str, Any],
        width: int,
        height: int,
        guidance: float,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.device, self.dtype = device, dtype
        self.components = {"transformer": transformer, "vae": vae, "scheduler": scheduler}
        self.referenced = adapter["kind"] == "native_reference"
        self.width, self.height, self.guidance = width, height, guidance
        self._references: dict[str, tuple[tuple[torch.Tensor, torch.Tensor], float]] = {}

    def _reference(self, inputs: ItemInputs) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
        """The identity photo's packed latents and ids, and the device seconds they cost."""
        if inputs.reference_id not in self._references:
            pixels = pipeline.reference_pixels(photo_of(inputs.reference), self.components["vae"])

            def encode() -> tuple[torch.Tensor, torch.Tensor]:
                return pipeline.encode_reference(self.components["vae"], pixels, self.device, self.dtype)

            encode()  # the first call pays one-off costs
            self._references[inputs.reference_id] = timed(self.device, encode)
        return self._references[inputs.reference_id]

    def condition(self, inputs: ItemInputs) -> tuple[pipeline.Conditioning, float]:
        prompt = pipeline.Conditioning(inputs.prompt["prompt_embeds"], inputs.prompt["pooled_prompt_embeds"])
        if not self.referenced:
            return prompt, 0.0
        (prompt.reference_latents, prompt.reference_ids), seconds = self._reference(inputs)
        return prompt, seconds

    def stack(self, conditions: Sequence[pipeline.Conditioning]) -> pipeline.Conditioning:
        return pipeline.Conditioning.stack(list(conditions))

    def denoise(
        self,
        condition: pipeline.Conditioning,
        seeds: Sequence[int],
        steps: int,
        on_step: Callable[[Step], None] | None = None,
    ) -> Denoised:
        return pipeline.denoise(
            self.components,
            condition,
            tuple(seeds),
            steps,
            (self.width, self.height),
            self.guidance,
            self.device,
            self.dtype,
            on_step,
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return pipeline.decode_pixels(self.components["vae"], latents, self.height, self.width)
