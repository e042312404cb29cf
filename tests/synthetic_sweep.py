"""A synthetic sweep with known answers: scores, images and trajectories written where the
workflow would write them, so aggregate and report run on them without generating anything.

Known structure (the population values the tests expect back, within intervals; `noise=False`
makes every number exact):
- flux-dev / infusenet-aes, steps 1 2 4 8 16: id_sim = 0.6 * min(steps, 4) / 4 + identity and prompt
  effects (their means are 0 over the sweep) + image noise (sd 0.01): knee at 4.
- flux-schnell / infusenet-aes, steps 1 2 4: id_sim = the dev-16 value of the same item + 0.03.
- flux-dev / none (ablation): id_sim = 0.1 + the same effects.
- no face (id_sim NaN, face_detected False) in the images listed in NO_FACE: dev at 1 and 2 steps.
- lpips_ref = 0.5 - id_sim / 2 (also where no face was found, from the undisturbed value);
  lpips_anchor = 0.6 - the cell's curve value (0 at the anchor) + |noise|.
- latency_s = 0.2 * steps + 0.1 for dev, 0.15 * steps + 0.2 for schnell, x (1 + 2% noise), three
  times that for the first batch of each cell (warmup); end_to_end_s = latency_s + 0.05 (encoders).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tests.conftest import study_of

IDENTITY_EFFECTS = {"astronaut": 0.05, "chelsea": -0.05, "coffee": 0.02, "camera": -0.02}
PROMPT_EFFECTS = {"p0": 0.01, "p1": -0.01, "p2": 0.0}
SEEDS = [0, 1]
SHIFT = 0.03
BATCH = 4  # images per batch: the first BATCH items of every cell are its warm-up batch
ENCODE_S = 0.05
#: (cell, identity) pairs whose images show no face
NO_FACE = {
    ("flux-dev/infusenet-aes/1", "astronaut"),
    ("flux-dev/infusenet-aes/1", "coffee"),
    ("flux-dev/infusenet-aes/2", "coffee"),
}


def raw_config(root: Path) -> dict:
    return {
        "sweep": "synth",
        "weights": "tiny",
        "device": "cpu",
        "dtype": "float32",
        "results_dir": str(root / "results"),
        "models_dir": str(root / "models"),
        "reports_dir": str(root / "reports"),
        "resolution": {"width": 32, "height": 32},
        "identities": [{"id": name, "image": f"builtin:{name}"} for name in IDENTITY_EFFECTS],
        "prompts": [{"id": p, "text": f"prompt {p}"} for p in PROMPT_EFFECTS],
        "seeds": SEEDS,
        "backbones": {
            "flux-dev": {"model": "flux-dev", "steps": [1, 2, 4, 8, 16]},
            "flux-schnell": {
                "model": "flux-schnell",
                "steps": [1, 2, 4],
                "guidance": None,
                "max_sequence_length": 256,
            },
        },
        "adapters": {"infusenet-aes": {"kind": "infusenet"}, "none": {"kind": "none"}},
        "cells": [
            {"backbones": ["flux-dev"], "adapters": ["infusenet-aes", "none"]},
            {"backbones": ["flux-schnell"], "adapters": ["infusenet-aes"]},
        ],
        "anchor": "flux-dev/infusenet-aes/16",
        "comparison": {"baseline": "flux-dev/infusenet-aes/16", "candidate": "flux-schnell/infusenet-aes/4"},
        "report": {"bootstrap_samples": 300},
    }


def dev_curve(steps: int) -> float:
    return 0.6 * min(steps, 4) / 4


def face_rate(cell_id: str) -> float:
    return 1 - sum(c == cell_id for c, _ in NO_FACE) / len(IDENTITY_EFFECTS)


def true_id_sim(backbone: str, adapter: str, steps: int) -> float:
    """Mean id_sim of a cell over the sweep (the effects average to zero)."""
    if adapter == "none":
        return 0.1
    return dev_curve(16) + SHIFT if backbone == "flux-schnell" else dev_curve(steps)


def latency(backbone: str, steps: int) -> float:
    return 0.2 * steps + 0.1 if backbone == "flux-dev" else 0.15 * steps + 0.2


def write_scores(config: dict, lpips: bool = True, images: bool = True, noise: bool = True) -> pd.DataFrame:
    """One scores table per cell (and a tiny PNG per image when `images`), with the manifest's
    provenance and timing columns (warmup, device_name, dtype, batch_size, weights_digest)."""
    from fewstep.core.paths import Paths
    from fewstep.grid import Grid, image_keys

    grid = Grid(study_of(config))

    paths = Paths(grid.study)
    rng = np.random.default_rng(0)
    frames = []
    for cell in grid.cells:
        rows = []
        for index, item in enumerate(grid.items):
            effect = IDENTITY_EFFECTS[item.identity] + PROMPT_EFFECTS[item.prompt]
            mean = true_id_sim(cell.backbone, cell.adapter, cell.steps)
            id_sim = mean + effect + (rng.normal(0, 0.01) if noise else 0.0)
            face = (cell.id, item.identity) not in NO_FACE
            warmup = index < BATCH
            seconds = latency(cell.backbone, cell.steps) * (1 + (rng.normal(0, 0.02) if noise else 0.0))
            seconds *= 3 if warmup else 1
            row = {
                **image_keys(cell, item),
                "image": f"images/{item.id}.png",
                "latency_s": seconds,
                "end_to_end_s": seconds + ENCODE_S,
                "warmup": warmup,
                "device_name": "synthetic-gpu",
                "dtype": "float32",
                "batch_size": BATCH,
                "weights_digest": "synthetic",
                "weights": "tiny",
                "config_hash": "synthetic",
                "git_commit": "synthetic",
                "face_detected": face,
                "id_sim": id_sim if face else np.nan,
            }
            if lpips:
                row["lpips_ref"] = 0.5 - id_sim / 2
                gap = 0.6 - (mean if cell.adapter != "none" else 0.1)
                row["lpips_anchor"] = 0.0 if cell == grid.anchor else abs(gap) + abs(rng.normal(0, 0.01))
            rows.append(row)
            if images:
                shade = int(255 * min(max(mean + effect, 0), 1))  # the noise-free value
                path = paths.image(cell.id, item.id)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 32), (shade, 40, 255 - shade)).save(path)
        frame = pd.DataFrame(rows)
        target = paths.scores(cell.id)
        target.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(target, index=False)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_trajectory(config: dict, cell_id: str) -> pd.DataFrame:
    """A trajectory table in the shared format: id_sim of x0 rises linearly to the final value,
    the residual RMS halves every step while the velocity RMS stays 1; one PNG per (item, step)."""
    from fewstep.core.paths import Paths
    from fewstep.grid import Cell, Grid, image_keys

    grid = Grid(study_of(config))

    paths = Paths(grid.study)
    cell = Cell.parse(cell_id)
    folder = paths.trajectory(cell_id).parent
    rows = []
    for item in grid.items:
        for step in range(1, cell.steps + 1):
            image = f"x0/{item.id}/step{step:03d}.png"
            (folder / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (20 * step, 100, 100)).save(folder / image)
            rows.append(
                {
                    **image_keys(cell, item),
                    "step": step,
                    "sigma": 1 - (step - 1) / cell.steps,
                    "adapter_active": True,
                    "residual_rms_double": 2.0**-step,
                    "residual_rms_single": 0.5 * 2.0**-step,
                    "velocity_rms": 1.0,
                    "hidden_rms_double": 1.0,
                    "hidden_rms_single": 1.0,
                    "relative_double": 2.0**-step,
                    "relative_single": 0.5 * 2.0**-step,
                    # per backbone block: later blocks get a weaker push
                    "block_relative_double": [2.0**-step / (1 + b) for b in range(3)],
                    "block_relative_single": [0.5 * 2.0**-step / (1 + b) for b in range(5)],
                    "id_sim": 0.6 * step / cell.steps,
                    "face_detected": step > 1,
                    "image": image,
                }
            )
    frame = pd.DataFrame(rows)
    frame.to_parquet(paths.trajectory(cell_id), index=False)
    config["trajectory"]["cells"].append(cell_id)  # as if the config had asked for it
    return frame


def rng_frame(n_identities: int, n_prompts: int, n_seeds: int, rng: np.random.Generator, mean: float = 5.0):
    """Crossed random effects: value = mean + a_identity + b_prompt + noise, all N(0, 1)."""
    a = rng.normal(0, 1, n_identities)
    b = rng.normal(0, 1, n_prompts)
    i, p, s = np.meshgrid(range(n_identities), range(n_prompts), range(n_seeds), indexing="ij")
    value = mean + a[i] + b[p] + rng.normal(0, 1, i.shape)
    return pd.DataFrame(
        {
            "identity": [f"id{k}" for k in i.ravel()],
            "prompt_id": [f"p{k}" for k in p.ravel()],
            "seed": s.ravel(),
            "value": value.ravel(),
        }
    )


def curve_frame(
    steps,
    curve,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    identity_sd: float = 0.08,
    prompt_sd: float = 0.04,
    slope_sd: float = 0.01,
    noise_sd: float = 0.03,
) -> pd.DataFrame:
    """One row per item (identity, prompt, seed), one column `s<steps>` per step count: the value
    `curve(steps)` + identity and prompt effects shared by every step count + an identity x step
    effect (an identity's own curve shape) + image noise of each step count, ArcFace-like sizes."""
    n_i, n_p, n_s = shape
    i, p, s = (a.ravel() for a in np.meshgrid(range(n_i), range(n_p), range(n_s), indexing="ij"))
    shared = rng.normal(0, identity_sd, n_i)[i] + rng.normal(0, prompt_sd, n_p)[p]
    frame = pd.DataFrame({"identity": [f"id{k}" for k in i], "prompt_id": [f"p{k}" for k in p], "seed": s})
    for step in steps:
        own = rng.normal(0, slope_sd, n_i)[i] + rng.normal(0, noise_sd, i.size)
        frame[f"s{step}"] = curve(step) + shared + own
    return frame
