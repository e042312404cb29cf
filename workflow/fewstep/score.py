"""Score one cell: every image of its manifest through every configured metric.

A metric is an object with a `name`, a `version`, and `score(batch)` returning
one dict of columns per image; it is built with `(config, JobModels)` and loads
its network once per job (`fewstep.metrics`). The output is one parquet table
per cell: the manifest's keys plus one column per metric value, with the metric
versions in the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from fewstep.grid import IMAGE_KEYS, Cell, Grid
from fewstep.io import write_table
from fewstep.metrics import (
    CLIPImageSimilarity,
    CLIPScore,
    CSDStyleSimilarity,
    DINOSimilarity,
    JobModels,
    PerceptualDistance,
    PickScore,
)
from fewstep.paths import Paths
from fewstep.provenance import stamp

KEY_COLUMNS = [
    *IMAGE_KEYS,
    "image",
    "sha256",
    "latency_s",
    "denoise_s",
    "decode_s",
    "end_to_end_s",
    "prompt_encode_s",
    "identity_embed_s",
    "conditioning_s",
    "warmup",
    "peak_mem_mb",
    "weights",
    "weights_digest",
    "device_name",
    "dtype",
    "batch_size",
    "config_hash",
    "git_commit",
]


@dataclass
class Sample:
    """One generated image with what metrics compare it to."""

    row: dict[str, Any]
    pixels: np.ndarray  # HxWx3 uint8 RGB
    reference: np.ndarray  # the identity's reference picture, RGB
    prompt: str = ""  # the prompt's text
    anchor: np.ndarray | None = None  # the anchor cell's image of this item (other cells only)
    is_anchor: bool = False  # this image belongs to the anchor cell


class Metric(Protocol):
    name: str
    version: str

    def score(self, batch: list[Sample]) -> list[dict[str, Any]]: ...


class IdentitySimilarity:
    """ArcFace cosine between the generated face and the reference face (insightface).

    A generated image without a face gets `id_sim = NaN` and `face_detected =
    False`: it counts against the detection rate, never as a similarity of 0.
    """

    name = "identity"

    def __init__(self, config: dict[str, Any], models: JobModels):
        from fewstep.models import face_analyzer

        self.analyzer = models.get("insightface", lambda: face_analyzer(config))
        self.policy = config["face"]["policy"]
        pack, weights = config["face"]["pack"], config["weights"]
        self.version = f"insightface-{package_version('insightface')}:{pack}:weights={weights}"
        self._references: dict[int, np.ndarray | None] = {}

    def _embed(self, rgb: np.ndarray):
        from fewstep.images import rgb_to_bgr

        found = self.analyzer.analyze(rgb_to_bgr(rgb), self.policy)
        return (None, 0) if found is None else (found.face, found.n_faces)

    def _reference(self, sample: Sample) -> np.ndarray | None:
        key = id(sample.reference)
        if key not in self._references:
            face, _ = self._embed(sample.reference)
            self._references[key] = None if face is None else face.embedding
        return self._references[key]

    def score(self, batch: list[Sample]) -> list[dict[str, Any]]:
        from fewstep.faces import cosine

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


METRICS = {
    "identity": IdentitySimilarity,
    "lpips": PerceptualDistance,
    "clip_score": CLIPScore,
    "pick_score": PickScore,
    "clip_i": CLIPImageSimilarity,
    "dino": DINOSimilarity,
    "csd": CSDStyleSimilarity,
}


def build_metrics(config: dict[str, Any]) -> list[Metric]:
    models = JobModels(config)
    return [METRICS[name](config, models) for name in config["scoring"]["metrics"]]


def read_generated(path: Path, manifest: Path) -> np.ndarray:
    """Decode a generated PNG fully; a corrupt one stops the job with one line naming it and
    the command that regenerates it (a missing manifest alone would not: Snakemake skips a
    missing intermediate file while everything after it is up to date)."""
    from fewstep.images import InputError, load_rgb

    try:
        return load_rgb(path)
    except InputError:
        raise InputError(
            f"generated image {path} is corrupt; delete it, then rerun with `--forcerun {manifest}` "
            "added to your snakemake command (its cell's other images are kept)"
        ) from None


def _anchor_images(config: dict[str, Any], paths: Paths, cell: Cell) -> tuple[dict[str, Path], Path | None]:
    """item id -> the anchor cell's image, when a metric compares to it and this is another
    cell; and the anchor's manifest."""
    from fewstep.scoring_models import score_anchor

    anchor = score_anchor(config, cell.id)
    if anchor is None:
        return {}, None
    manifest = pd.read_parquet(paths.manifest(anchor), columns=["item_id", "image"])
    images = {row.item_id: paths.cell_dir(anchor) / row.image for row in manifest.itertuples()}
    return images, paths.manifest(anchor)


def run(
    config: dict[str, Any],
    cell_id: str,
    out: Path | None = None,
    progress: bool = True,
    batch_size: int | None = None,
) -> Path:
    """Score every image of a cell, `batch_size` at a time (config scoring.batch_size unless given)."""
    from fewstep.images import load_rgb

    grid, paths = Grid(config), Paths(config)
    cell = grid.cell(cell_id)
    out = Path(out or paths.scores(cell.id))
    manifest = pd.read_parquet(paths.manifest(cell.id))
    references = {i["id"]: load_rgb(i["image"]) for i in config["identities"]}
    metrics = build_metrics(config)
    anchor_images, anchor_manifest = _anchor_images(config, paths, cell)
    batch_size = batch_size or config["scoring"]["batch_size"]
    rows = manifest.to_dict("records")
    scored: list[dict[str, Any]] = []

    def sample(row: dict[str, Any]) -> Sample:
        anchor = anchor_images.get(row["item_id"])
        return Sample(
            row,
            read_generated(paths.cell_dir(cell.id) / row["image"], paths.manifest(cell.id)),
            references[row["identity"]],
            prompt=grid.prompt(row["prompt_id"])["text"],
            anchor=None if anchor is None else read_generated(anchor, anchor_manifest),
            is_anchor=cell == grid.anchor,
        )

    # The bar closes (ending its line) before an error line is printed.
    with tqdm(total=len(rows), desc=f"score {cell.id}", unit="img", disable=not progress) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = [sample(row) for row in chunk]
            columns = [dict() for _ in chunk]
            for metric in metrics:
                for target, values in zip(columns, metric.score(batch), strict=True):
                    target.update(values)
            for row, values in zip(chunk, columns, strict=True):
                scored.append({**{k: row.get(k) for k in KEY_COLUMNS}, **values})
            bar.update(len(chunk))
    frame = pd.DataFrame(scored)
    frame["metric_versions"] = json.dumps({m.name: m.version for m in metrics}, sort_keys=True)
    write_table(out, stamp(frame, config))
    detected = frame["face_detected"].mean() if "face_detected" in frame else float("nan")
    print(f"{cell.id}: scored {len(frame)} images, face detection rate {detected:.2f} -> {out}")
    return out
