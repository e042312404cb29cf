"""The basis of each identity encoder's non-inferiority margin, measured on a sweep's own photos.

    python benchmarks/identity_margins.py --config config.yaml --out bench
    python benchmarks/identity_margins.py --config config/demo.yaml --out /tmp/m --weights tiny --device cpu

For every identity encoder in the config's `scoring.metrics` (`identity`: insightface ArcFace,
`identity_dlib`: dlib's ResNet) and every photo of every identity (conditioning and held-out)
in which the encoder finds exactly one face (in a crowd a copy may choose another person), the
photo's own copies (`fewstep.faces.augment`: flip, crop, scale, colour jitter) are scored
against it through the score job's metric, as generated images are. Per encoder:

- ``max_drop``, ``p95_drop``: the largest and 95th-percentile 1 - cosine of a copy to its photo;
- ``suggested_margin``: ``max_drop`` rounded up to 0.005 (docs/statistics.md);
- ``heldout_sim``: mean cosine of the conditioning photo to the identity's held-out photos;
- ``other_max``: the highest cosine between the conditioning photos of two identities.

Margins are in each encoder's own cosine scale: set them with ``report.margins`` (e.g.
``id_sim_zero``, ``id_sim_dlib_zero``). Tiny face packs give meaningless ArcFace numbers: run
with the real pack (``weights: real``) for ArcFace's basis. Writes ``identity_margins.json`` and
``identity_margins.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from fewstep.core.images import load_rgb  # noqa: E402
from fewstep.core.io import atomic_write_json, atomic_write_text  # noqa: E402
from fewstep.core.study import load_study  # noqa: E402
from fewstep.faces.augment import augmentations, suggested_margin  # noqa: E402
from fewstep.grid import Grid  # noqa: E402
from fewstep.jobs.score import build_metrics  # noqa: E402
from fewstep.registry.prepare import prepare  # noqa: E402
from fewstep.scoring.base import Sample  # noqa: E402
from fewstep.scoring.networks import scoring_models  # noqa: E402
from fewstep.scoring.specs import face_metrics  # noqa: E402


def _sim(metric, pixels: np.ndarray, reference: np.ndarray) -> float:
    (row,) = metric.score([Sample({}, pixels, reference)])
    return float(row[f"id_sim{metric.suffix}"])


def _faces(metric, photo: np.ndarray) -> int:
    (row,) = metric.score([Sample({}, photo, photo)])
    return int(row[f"n_faces{metric.suffix}"])


def measure(config: dict) -> list[dict]:
    """One row per identity encoder of the config (see the module docstring)."""
    grid = Grid(config)
    names = [m for m in face_metrics() if m in config["scoring"]["metrics"]]
    for model in scoring_models(config, names):
        prepare(config, model, grid.model_usage(model))
    identities = {
        i["id"]: (load_rgb(i["image"]), [load_rgb(p) for p in i.get("heldout", [])])
        for i in config["identities"]
    }
    rows = []
    for metric in build_metrics(config, names):
        start = time.perf_counter()
        photos = [p for conditioning, heldout in identities.values() for p in [conditioning, *heldout]]
        single = [p for p in photos if _faces(metric, p) == 1]  # in a crowd a copy may pick another face
        drops = [
            1.0 - _sim(metric, copy, photo) for photo in single for copy in augmentations(photo).values()
        ]
        heldout_sims = [_sim(metric, h, c) for c, held in identities.values() for h in held]
        conditioning = [c for c, _ in identities.values()]
        others = [_sim(metric, a, b) for i, a in enumerate(conditioning) for b in conditioning[i + 1 :]]
        finite = [d for d in drops if np.isfinite(d)]
        rows.append(
            {
                "encoder": metric.name,
                "version": metric.version,
                "photos": len(photos),
                "single_face_photos": len(single),
                "copies_scored": len(finite),
                "copies_without_face": len(drops) - len(finite),
                "max_drop": max(finite) if finite else float("nan"),
                "p95_drop": float(np.percentile(finite, 95)) if finite else float("nan"),
                "suggested_margin": suggested_margin(drops),
                "heldout_sim": float(np.nanmean(heldout_sims)) if heldout_sims else float("nan"),
                "other_max": float(np.nanmax(others)) if others else float("nan"),
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def markdown(rows: list[dict], config: dict) -> str:
    columns = ["encoder", "photos", "single_face_photos", "copies_scored", "max_drop", "p95_drop"]
    columns += ["suggested_margin"]
    columns += ["heldout_sim", "other_max"]
    lines = [
        f"Identity margins, weights: {config['weights']}, {time.strftime('%Y-%m-%d')}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="config file(s), later ones win")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", choices=["real", "tiny", "random"])
    parser.add_argument("--device")
    args = parser.parse_args()
    overrides = {k: v for k, v in {"weights": args.weights, "device": args.device}.items() if v}
    config = load_study(args.config, overrides)
    rows = measure(config)
    atomic_write_json(args.out / "identity_margins.json", rows)
    atomic_write_text(args.out / "identity_margins.md", markdown(rows, config))
    print(markdown(rows, config))


if __name__ == "__main__":
    main()
