"""Identity similarity: ArcFace cosine between a generated face and the reference face."""

from __future__ import annotations

import json
from importlib.metadata import version as package_version
from typing import Any

import numpy as np

from fewstep.scoring.base import JobModels, Sample


class IdentitySimilarity:
    """ArcFace cosine between the generated face and the reference face (insightface).

    A generated image without a face gets `id_sim = NaN` and `face_detected =
    False`: it counts against the detection rate, never as a similarity of 0.
    """

    name = "identity"

    def __init__(self, config: dict[str, Any], models: JobModels):
        from fewstep.faces.models import face_analyzer

        self.analyzer = models.get("insightface", lambda: face_analyzer(config))
        self.policy = config["face"]["policy"]
        pack, weights = config["face"]["pack"], config["weights"]
        self.version = f"insightface-{package_version('insightface')}:{pack}:weights={weights}"
        self._references: dict[int, np.ndarray | None] = {}

    def _embed(self, rgb: np.ndarray):
        from fewstep.core.images import rgb_to_bgr

        found = self.analyzer.analyze(rgb_to_bgr(rgb), self.policy)
        return (None, 0) if found is None else (found.face, found.n_faces)

    def _reference(self, sample: Sample) -> np.ndarray | None:
        key = id(sample.reference)
        if key not in self._references:
            face, _ = self._embed(sample.reference)
            self._references[key] = None if face is None else face.embedding
        return self._references[key]

    def score(self, batch: list[Sample]) -> list[dict[str, Any]]:
        from fewstep.faces.analyzer import cosine

        out = []
        for sample in batch:
            face, n_faces = self._embed(sample.pixels)
            reference = self._reference(sample)
            similarity = np.nan if face is None or reference is None else cosine(face.embedding, reference)
            out.append(
                {
                    "face_detected": face is not None,
                    "n_faces": n_faces,
                    "det_score": np.nan if face is None else float(face.det_score),
                    "face_bbox": None
                    if face is None
                    else json.dumps([round(float(v), 2) for v in face.bbox]),
                    "id_sim": similarity,
                }
            )
        return out
