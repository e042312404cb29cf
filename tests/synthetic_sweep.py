"""A synthetic sweep with known answers: scores, images and trajectories written where the
workflow would write them, so aggregate and report run on them without generating anything.

Known structure (every number below is what the tests expect back):
- flux-dev / infusenet-aes, steps 1 2 4 8 16: id_sim = 0.6 * min(steps, 4) / 4 + identity and prompt
  effects (their means are 0 over the sweep) + nothing else: a piecewise-linear curve, knee at 4.
- flux-schnell / infusenet-aes, steps 1 2 4: id_sim = the dev-16 value of the same item + 0.03.
- flux-dev / none (ablation): id_sim = 0.1 + the same effects.
- lpips_ref = 0.5 - id_sim / 2, so every lpips difference is minus half the id_sim difference.
- latency_s = 0.2 * steps + 0.1 for dev, 0.15 * steps + 0.2 for schnell, the same for every item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

IDENTITY_EFFECTS = {"astronaut": 0.05, "chelsea": -0.05, "coffee": 0.02, "camera": -0.02}
PROMPT_EFFECTS = {"p0": 0.01, "p1": -0.01, "p2": 0.0}
SEEDS = [0, 1]
SHIFT = 0.03


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


def true_id_sim(backbone: str, adapter: str, steps: int) -> float:
    """Mean id_sim of a cell over the sweep (the effects average to zero)."""
    if adapter == "none":
        return 0.1
    return dev_curve(16) + SHIFT if backbone == "flux-schnell" else dev_curve(steps)


def latency(backbone: str, steps: int) -> float:
    return 0.2 * steps + 0.1 if backbone == "flux-dev" else 0.15 * steps + 0.2


def write_scores(config: dict, lpips: bool = True, images: bool = True) -> pd.DataFrame:
    """One scores table per cell (and a tiny PNG per image when `images`)."""
    from fewstep.grid import Grid, image_keys
    from fewstep.paths import Paths

    grid, paths = Grid(config), Paths(config)
    frames = []
    for cell in grid.cells:
        rows = []
        for item in grid.items:
            effect = IDENTITY_EFFECTS[item.identity] + PROMPT_EFFECTS[item.prompt]
            id_sim = true_id_sim(cell.backbone, cell.adapter, cell.steps) + effect
            row = {
                **image_keys(cell, item),
                "image": f"images/{item.id}.png",
                "latency_s": latency(cell.backbone, cell.steps),
                "weights": "tiny",
                "config_hash": "synthetic",
                "git_commit": "synthetic",
                "face_detected": True,
                "id_sim": id_sim,
            }
            if lpips:
                row["lpips_ref"] = 0.5 - id_sim / 2
            rows.append(row)
            if images:
                shade = int(255 * min(max(id_sim, 0), 1))
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
    from fewstep.grid import Cell, Grid, image_keys
    from fewstep.paths import Paths

    grid, paths = Grid(config), Paths(config)
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
