"""Perceptual, prompt-alignment and reference-similarity metrics (behind `score.Metric`).

Each metric loads its network once per job through `JobModels` (metrics that
share a network, CLIPScore and CLIP-I, share one copy), scores a whole batch in
one forward pass, and returns one dict of columns per image. Networks come from
`fewstep.scoring.networks`, which knows the real, tiny and random sources.
"""

from __future__ import annotations

from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps

from fewstep.core.study import Study
from fewstep.scoring import networks as sm
from fewstep.scoring.specs import CLIP_I, CLIP_SCORE, CSD, DINO, LPIPS, PICK_SCORE, MetricSpec

if TYPE_CHECKING:
    from fewstep.scoring.base import JobModels, Sample


def _version(config: Study, *parts: str) -> str:
    return ":".join([*parts, f"weights={config.weights}"])


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to the target aspect ratio, then resize (bicubic); a no-op at that size."""
    if image.shape[:2] == (height, width):
        return image
    fitted = ImageOps.fit(Image.fromarray(image), (width, height), method=Image.Resampling.BICUBIC)
    return np.asarray(fitted)


class _Scorer:
    """A metric's scorer: its name and columns come from its spec (`fewstep.scoring.specs`)."""

    spec: ClassVar[MetricSpec]
    #: its torch network loads on the CPU before the job takes a card and then moves to it
    loads_before_card: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def needs_card(cls, config: Study) -> bool:
        """Its torch network runs on the job's device: the card, unless the config says cpu."""
        return config.device != "cpu"

    @property
    def device(self) -> torch.device:
        """Where its inputs go: the job's device by the time it scores (`JobModels.to_card`)."""
        return self.models.device


class PerceptualDistance(_Scorer):
    """LPIPS (lower = closer) to the identity's reference picture and to the anchor cell's image.

    Both images of every pair are brought to one fixed size first, ``scoring.lpips_size``
    (S, default 256) square: centre-cropped to a square, then resized (bicubic) to S x S.
    LPIPS averages per-pixel feature distances, so its value depends on the pixel
    scale: at the output size, a 1152 px study image, a 64 px demo image and a
    reference upscaled to either would not be comparable. ``lpips_ref``: the
    reference picture. ``lpips_anchor``: the same identity/prompt/seed image of the
    anchor cell (``config anchor``, the study's dev-28 baseline); exactly 0 for the
    anchor cell itself, NaN when the config names no anchor.
    """

    spec = LPIPS

    def __init__(self, config: Study, models: JobModels):
        net = config.scoring.lpips_net
        self.size = config.scoring.lpips_size
        self.models = models
        (network,) = self.spec.models(config)
        self.model = models.get(network, lambda: sm.load_lpips(config, net, models.device))
        self.version = _version(config, f"lpips-{package_version('lpips')}", net, "v0.1", f"{self.size}px")

    @torch.inference_mode()
    def distances(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
        """LPIPS of each pair, both images fitted to `size` x `size` first."""
        if not pairs:
            return []
        first = [fit(a, self.size, self.size) for a, _ in pairs]
        second = [fit(b, self.size, self.size) for _, b in pairs]
        return [float(v) for v in self.model(self._tensor(first), self._tensor(second)).flatten().tolist()]

    def _tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        return (batch / 127.5 - 1.0).to(self.device)  # LPIPS takes [-1, 1]

    def score(self, batch: list[Sample]) -> list[dict[str, Any]]:
        to_reference = self.distances([(s.pixels, s.reference) for s in batch])
        against = [i for i, s in enumerate(batch) if s.anchor is not None]
        to_anchor = self.distances([(batch[i].pixels, batch[i].anchor) for i in against])
        anchor_values = dict(zip(against, to_anchor, strict=True))
        rows = []
        for index, (sample, ref) in enumerate(zip(batch, to_reference, strict=True)):
            anchor = 0.0 if sample.is_anchor else anchor_values.get(index, np.nan)
            rows.append({"lpips_ref": ref, "lpips_anchor": anchor})
        return rows


def _pil(images: list[np.ndarray]) -> list[Image.Image]:
    return [Image.fromarray(image) for image in images]


def _pooled(output: Any) -> torch.Tensor:
    """transformers 5 returns model outputs from get_*_features; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _PromptAlignment(_Scorer):
    """Cosine of CLIP-type image and prompt embeddings, one forward pass per batch."""

    def __init__(self, config: Study, models: JobModels):
        self.models = models
        (network,) = self.spec.models(config)
        self.model, self.processor = models.get(network, lambda: sm.load_clip(config, network, models.device))
        repo = sm.SCORING_MODELS[network].repo_id
        self.version = _version(config, repo, f"transformers-{package_version('transformers')}")

    @torch.inference_mode()
    def cosines(self, batch: list[Sample]) -> torch.Tensor:
        inputs = self.processor(
            text=[s.prompt for s in batch],
            images=_pil([s.pixels for s in batch]),
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        output = self.model(**inputs)  # image_embeds, text_embeds: L2-normalised projections
        return (output.image_embeds * output.text_embeds).sum(dim=-1).cpu()

    def value(self, cosine: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, batch: list[Sample]) -> list[dict[str, Any]]:
        values = self.value(self.cosines(batch)).tolist()
        return [{self.spec.column: float(v)} for v in values]


class CLIPScore(_PromptAlignment):
    """CLIPScore with CLIP ViT-L/14: max(100 x cos(image, prompt), 0), per image.

    torchmetrics' convention (``CLIPScore(model_name_or_path='openai/clip-vit-large-patch14')``);
    higher = the image matches its prompt better. Prompts are cut at CLIP's 77 tokens.
    """

    spec = CLIP_SCORE

    def value(self, cosine: torch.Tensor) -> torch.Tensor:
        return torch.clamp(100.0 * cosine, min=0.0)


class PickScore(_PromptAlignment):
    """PickScore v1 (CLIP-H tuned on human preferences): logit_scale.exp() x cos; higher = preferred."""

    spec = PICK_SCORE

    def value(self, cosine: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale.exp().cpu() * cosine


class _ReferenceSimilarity(_Scorer):
    """Cosine between image embeddings of the generated picture and the identity's reference.

    The reference (for style/object sweeps: the style or object image given as
    the identity's picture) is embedded once per identity and job.
    """

    def __init__(self, config: Study, models: JobModels):
        self.models = models
        (self.network,) = self.spec.models(config)
        self._references: dict[str, torch.Tensor] = {}

    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, batch: list[Sample]) -> list[dict[str, Any]]:
        missing = {s.row["identity"]: s.reference for s in batch if s.row["identity"] not in self._references}
        if missing:
            embedded = self.embed(list(missing.values()))
            self._references.update(zip(missing, embedded, strict=True))
        generated = self.embed([s.pixels for s in batch])
        references = torch.stack([self._references[s.row["identity"]] for s in batch])
        cosines = torch.nn.functional.cosine_similarity(generated, references, dim=-1)
        return [{self.spec.column: float(v)} for v in cosines.tolist()]


class CLIPImageSimilarity(_ReferenceSimilarity):
    """CLIP-I: cosine of CLIP ViT-L/14 image embeddings, generated vs reference; higher = closer."""

    spec = CLIP_I

    def __init__(self, config: Study, models: JobModels):
        super().__init__(config, models)
        self.model, self.processor = models.get(
            self.network, lambda: sm.load_clip(config, self.network, models.device)
        )
        repo = sm.SCORING_MODELS[self.network].repo_id
        self.version = _version(config, repo, f"transformers-{package_version('transformers')}")

    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        pixels = self.processor(images=_pil(images), return_tensors="pt")["pixel_values"].to(self.device)
        return _pooled(self.model.get_image_features(pixel_values=pixels)).cpu()


class DINOSimilarity(_ReferenceSimilarity):
    """DINO: cosine of DINOv2-base CLS embeddings (after the final layer norm); higher = closer."""

    spec = DINO

    def __init__(self, config: Study, models: JobModels):
        super().__init__(config, models)
        self.model, self.processor = models.get(self.network, lambda: sm.load_dinov2(config, models.device))
        repo = sm.SCORING_MODELS[self.network].repo_id
        self.version = _version(config, repo, f"transformers-{package_version('transformers')}")

    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        pixels = self.processor(images=_pil(images), return_tensors="pt")["pixel_values"].to(self.device)
        return self.model(pixel_values=pixels).pooler_output.cpu()


class CSDStyleSimilarity(_ReferenceSimilarity):
    """CSD: cosine of CSD style embeddings (CLIP ViT-L/14 + style head); higher = closer in style."""

    spec = CSD

    def __init__(self, config: Study, models: JobModels):
        super().__init__(config, models)
        self.model, self.processor = models.get(self.network, lambda: sm.load_csd(config, models.device))
        self.version = _version(config, sm.SCORING_MODELS[self.network].repo_id, "style-head")

    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        pixels = self.processor(images=_pil(images), return_tensors="pt")["pixel_values"].to(self.device)
        return self.model(pixels).cpu()
