"""Join every cell's scores and summarise each metric per cell with an interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fewstep.grid import Grid
from fewstep.io import atomic_write_with
from fewstep.paths import Paths
from fewstep.stats import bootstrap_mean_ci

#: metric column -> how it reads in tables and figures
METRICS = {
    "id_sim": "identity similarity (ArcFace cosine)",
    "face_detected": "face detection rate",
    "lpips_ref": "LPIPS to the reference (lower = closer)",
    "lpips_anchor": "LPIPS to the anchor cell (lower = closer)",
    "clip_score": "CLIPScore (100 x CLIP-L cosine to the prompt)",
    "pick_score": "PickScore",
    "clip_i": "CLIP-I (CLIP-L cosine to the reference)",
    "dino": "DINO (DINOv2 cosine to the reference)",
    "csd": "CSD style similarity to the reference",
    "latency_s": "latency per image (s)",
    "denoise_s": "denoising time per image (s)",
    "peak_mem_mb": "peak memory (MiB)",
}


def load_scores(config: dict[str, Any]) -> pd.DataFrame:
    grid, paths = Grid(config), Paths(config)
    return pd.concat([pd.read_parquet(paths.scores(c.id)) for c in grid.cells], ignore_index=True)


def summarise(scores: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """One row per cell and metric: mean, std, n, missing and a bootstrap interval."""
    report = config["report"]
    rows = []
    for cell in Grid(config).cells:
        frame = scores[scores["cell_id"] == cell.id]
        for metric in METRICS:
            if metric not in frame:
                continue
            values = frame[metric].astype(float).to_numpy()
            present = values[~np.isnan(values)]
            low, high = bootstrap_mean_ci(values, report["bootstrap_samples"], report["confidence"])
            rows.append(
                {
                    "cell_id": cell.id,
                    "backbone": cell.backbone,
                    "adapter": cell.adapter,
                    "steps": cell.steps,
                    "metric": metric,
                    "mean": float(present.mean()) if present.size else np.nan,
                    "std": float(present.std(ddof=1)) if present.size > 1 else np.nan,
                    "n": int(present.size),
                    "n_missing": int(values.size - present.size),
                    "ci_low": low,
                    "ci_high": high,
                    "confidence": report["confidence"],
                    "weights": config["weights"],
                }
            )
    return pd.DataFrame(rows)


def run(config: dict[str, Any], out: Path | None = None) -> Path:
    paths = Paths(config)
    out = Path(out or paths.summary)
    scores = load_scores(config)
    summary = summarise(scores, config)
    atomic_write_with(paths.per_image, lambda tmp: scores.to_parquet(tmp, index=False))
    atomic_write_with(out, lambda tmp: summary.to_csv(tmp, index=False))
    print(f"aggregated {len(scores)} images over {summary['cell_id'].nunique()} cells -> {out}")
    return out
