"""FLUX's job side of the family contract: `FluxPromptEncoder` and `FluxCellPipeline`.

The cell pipeline holds one job's transformer, VAE, scheduler and (with an adapter) InfuseNet
and the identity resampler, accelerated as the job's switches say, and runs `pipeline.denoise`:
the generation and trajectory jobs share that one loop. Identity tokens and control latents are
computed once per identity and timed on a second call, so one-off costs (kernel selection, lazy
initialisation) stay out of every image's end-to-end time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fewstep.core.study import Study
from fewstep.families.base import Denoised, IdentityEmbedding, ItemInputs, Step, rms, timed
from fewstep.families.flux import control, pipeline
from fewstep.families.flux.models import max_sequence_length
from fewstep.families.flux.pipeline import FluxParts, load_flux
from fewstep.families.flux1 import load_text_encoders


class FluxPromptEncoder:
    """CLIP-L pooled + T5 sequence embeddings through a text-only FluxPipeline."""

    def __init__(self, config: Study, model: str, device: torch.device, dtype: torch.dtype):
        from diffusers import FluxPipeline

        self.device = device
        self.pipe = load_text_encoders(FluxPipeline, config, model, device, dtype)

    def encode(self, text: str, backbone: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=text,
                prompt_2=text,
                device=self.device,
                max_sequence_length=max_sequence_length(backbone),
            )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


class InfiniteYouFaceEncoder:
    """InfiniteYou's face pipeline: insightface detection (det sizes 640, 320, 160, the face
    config ``face.policy`` picks), its 5 keypoints, ``norm_crop`` to 112 px and the IR-SE50 ArcFace
    embedding, which InfuseNet's resampler reads; the box and keypoints (keypoint control) too."""

    def __init__(self, config: Study):
        from fewstep.faces.models import CONDITIONING_FACE_PACK, face_analyzer, load_arcface_irse

        self.device = torch.device("cpu")  # a handful of 112 px faces: CPU is enough
        self.policy = config.face.policy
        self.analyzer = face_analyzer(config, CONDITIONING_FACE_PACK)
        self.arcface = load_arcface_irse(config, self.device)

    def encode(self, rgb: np.ndarray) -> IdentityEmbedding | None:
        from fewstep.core.images import rgb_to_bgr
        from fewstep.faces.analyzer import aligned_crop
        from fewstep.faces.arcface_irse import embed_aligned_bgr

        bgr = rgb_to_bgr(rgb)
        found = self.analyzer.analyze(bgr, self.policy)
        if found is None:
            return None
        face = found.face
        embedding = embed_aligned_bgr(self.arcface, aligned_crop(bgr, face.kps))
        return IdentityEmbedding(
            {
                "arcface_irse50": torch.from_numpy(np.asarray(embedding, dtype=np.float32))[None],
                "bbox": torch.tensor(face.bbox, dtype=torch.float32),
                "kps": torch.tensor(face.kps, dtype=torch.float32),
                "det_score": torch.tensor([face.det_score], dtype=torch.float32),
            },
            {"n_faces": str(found.n_faces), "policy": self.policy},
        )


def load_components(
    config: Study,
    backbone: Mapping[str, Any],
    adapter: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The components a `FluxCellPipeline` takes, loaded from the prepared weights (config
    ``memory`` options applied): transformer, vae, scheduler and, with InfuseNet, infusenet and
    resampler."""
    return vars(load_flux(config, backbone["model"], dict(adapter), device, dtype))


class FluxCellPipeline:
    """One FLUX generation job's models; see the module docstring.

    Built from loaded components as diffusers' pipelines are (`load_components` reads them from
    the prepared weights; a test may pass its own): `infusenet` and `resampler` only with the
    InfuseNet adapter. `adapter` is the job's config ``adapters`` entry, `acceleration` its
    switches (all ``none``: eager).
    """

    def __init__(
        self,
        *,
        transformer: Any,
        vae: Any,
        scheduler: Any,
        infusenet: Any = None,
        resampler: Any = None,
        adapter: Mapping[str, Any],
        acceleration: Mapping[str, Any],
        width: int,
        height: int,
        guidance: float | None,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.device, self.dtype = device, dtype
        self.adapter = dict(adapter)
        self.guidance = guidance
        self.width, self.height = width, height
        self.parts = FluxParts(transformer, vae, scheduler, infusenet, resampler)
        self.accelerated = None
        if any(acceleration[k] != "none" for k in ("compile", "fp8", "cache")):
            from fewstep.families.flux.acceleration import Accelerated

            self.accelerated = Accelerated(self.parts, dict(acceleration), device)
        self._identities: dict[str, tuple[torch.Tensor, float]] = {}
        self._controls: dict[str, tuple[torch.Tensor, float]] = {}

    # --- conditioning ---------------------------------------------------------
    def _timed(self, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
        """`compute()` and its device seconds, timed on a second call (the first pays one-off costs)."""
        with torch.no_grad():
            compute()
            return timed(self.device, compute)

    def _identity_tokens(self, inputs: ItemInputs) -> tuple[torch.Tensor, float]:
        if inputs.reference_id not in self._identities:
            embedding = inputs.reference["arcface_irse50"].reshape(1, -1, 512).to(self.device, self.dtype)
            self._identities[inputs.reference_id] = self._timed(lambda: self.parts.resampler(embedding))
        return self._identities[inputs.reference_id]

    def _control_latents(self, inputs: ItemInputs) -> tuple[torch.Tensor, float]:
        """Encoded control image: black (InfiniteYou's default) or the face's keypoints."""
        key = inputs.reference_id if self.adapter["control"] == "keypoints" else ""
        if key not in self._controls:
            target = (self.width, self.height)
            if key:
                source = (int(inputs.reference_meta["width"]), int(inputs.reference_meta["height"]))
                image = control.keypoint_image(inputs.reference["kps"].numpy(), source, target)
            else:
                image = control.black_image(target)
            self._controls[key] = self._timed(
                lambda: pipeline.encode_control(self.parts.vae, image, self.device, self.dtype)
            )
        return self._controls[key]

    def condition(self, inputs: ItemInputs) -> tuple[pipeline.Conditioning, float]:
        prompt = pipeline.Conditioning(inputs.prompt["prompt_embeds"], inputs.prompt["pooled_prompt_embeds"])
        if self.adapter["kind"] != "infusenet":
            return prompt, 0.0
        tokens, resampler_s = self._identity_tokens(inputs)
        latents, control_s = self._control_latents(inputs)
        prompt.identity_tokens, prompt.control_latents = tokens, latents
        return prompt, resampler_s + control_s

    def stack(self, conditions: Sequence[pipeline.Conditioning]) -> pipeline.Conditioning:
        return pipeline.Conditioning.stack(list(conditions))

    # --- sampling -------------------------------------------------------------
    def settings(self, steps: int, seeds: Sequence[int]) -> pipeline.Settings:
        return pipeline.Settings(
            steps=steps,
            height=self.height,
            width=self.width,
            seeds=tuple(seeds),
            guidance=self.guidance,
            adapter_scale=self.adapter.get("conditioning_scale", 0.0),
            adapter_start=self.adapter.get("guidance_start", 0.0),
            adapter_end=self.adapter.get("guidance_end", 1.0),
            adapter_first_steps=self.adapter.get("first_steps"),
        )

    def denoise(
        self,
        condition: pipeline.Conditioning,
        seeds: Sequence[int],
        steps: int,
        on_step: Callable[[Step], None] | None = None,
    ) -> Denoised:
        probe = BlockProbe(self.parts.transformer) if on_step is not None else None

        def report(info: pipeline.StepInfo) -> None:
            double, single = probe.take()
            probes = {"velocity_rms": float(rms(info.velocity)), **relative(info.probes, double, single)}
            on_step(
                Step(
                    index=info.index,
                    sigma=info.sigma,
                    sigma_next=info.sigma_next,
                    prediction=info.velocity,
                    predicted_clean=info.predicted_clean,
                    adapter_active=info.adapter_active,
                    probes=probes,
                )
            )

        try:
            return pipeline.denoise(
                self.parts,
                condition,
                self.settings(steps, seeds),
                self.device,
                self.dtype,
                on_step=report if on_step is not None else None,
                accelerated=self.accelerated,
            )
        finally:
            if probe is not None:
                probe.close()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return pipeline.decode_pixels(self.parts, latents, self.height, self.width)


class BlockProbe:
    """Forward hooks that keep the RMS of each transformer block's image-stream output."""

    def __init__(self, transformer: Any):
        self.double: list[float] = []
        self.single: list[float] = []
        self._handles = [
            b.register_forward_hook(self._keep(self.double)) for b in transformer.transformer_blocks
        ]
        self._handles += [
            b.register_forward_hook(self._keep(self.single)) for b in transformer.single_transformer_blocks
        ]

    @staticmethod
    def _keep(store: list[float]):
        def hook(module, args, output):
            store.append(float(rms(output[1] if isinstance(output, tuple) else output)))

        return hook

    def take(self) -> tuple[list[float], list[float]]:
        double, single = list(self.double), list(self.single)
        self.double.clear()
        self.single.clear()
        return double, single

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def relative(probes: dict[str, Any], double: list[float], single: list[float]) -> dict[str, Any]:
    """Adapter residual RMS over backbone block-output RMS, per stream and per block (NaN when off).

    Stream columns hold means over blocks; the ``block_*`` columns one value per
    transformer block, in block order (the step x block heatmap of the report).
    """
    out: dict[str, Any] = {}
    for stream, hidden in (("double", double), ("single", single)):
        residual = probes.get(f"residual_rms_{stream}", np.nan)
        hidden_mean = float(np.mean(hidden)) if hidden else np.nan
        each = per_block(probes.get(f"residual_rms_{stream}_each", []), len(hidden))
        out |= {
            f"residual_rms_{stream}": residual,
            f"hidden_rms_{stream}": hidden_mean,
            f"relative_{stream}": residual / hidden_mean,
            f"block_hidden_rms_{stream}": list(hidden),
            f"block_relative_{stream}": [r / h for r, h in zip(each, hidden, strict=True)],
        }
    return out


def per_block(residuals: list[float], blocks: int) -> list[float]:
    """The residual RMS each of `blocks` backbone blocks receives, by diffusers' interval rule
    (FluxTransformer2DModel adds sample ``i // ceil(blocks / len(residuals))`` to block i)."""
    if not residuals:
        return [np.nan] * blocks
    interval = math.ceil(blocks / len(residuals))
    return [residuals[i // interval] for i in range(blocks)]
