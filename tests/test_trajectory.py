"""Trajectories: x0 decoded and scored after every step, with adapter-strength probes."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from fewstep import generate, precompute, trajectory
from fewstep.images import load_rgb
from fewstep.paths import Paths


def test_one_row_per_item_and_step_ending_at_the_generated_image(embedded):
    config = copy.deepcopy(embedded)
    config["trajectory"]["max_items"] = 2
    cell = "flux-schnell/infusenet-aes/4"
    table = pd.read_parquet(trajectory.run(config, cell, progress=False))
    assert len(table) == 2 * 4
    assert list(table["step"]) == [1, 2, 3, 4] * 2
    assert list(table["sigma"][:4]) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert table["adapter_active"].all()
    ratio = table["residual_rms_double"] / table["hidden_rms_double"]
    assert np.allclose(table["relative_double"], ratio) and (table["relative_double"] > 0).all()
    assert table["id_sim"].between(-1, 1).all() and table["face_detected"].all()
    # the last x0 estimate is the final sample: its picture is the cell's image
    paths = Paths(config)
    manifest = pd.read_parquet(generate.run(config, cell, progress=False))
    last = table[table["step"] == 4].iloc[0]
    final = load_rgb(paths.cell_dir(cell) / manifest.set_index("item_id").loc[last["item_id"], "image"])
    x0 = load_rgb(paths.trajectory(cell).parent / last["image"])
    assert np.abs(final.astype(int) - x0.astype(int)).mean() < 1.0


def test_probes_are_missing_where_the_adapter_is_off(embedded):
    config = copy.deepcopy(embedded)
    config["trajectory"]["max_items"] = 1
    config["adapters"]["infusenet-aes"]["guidance_end"] = 0.5
    config["results_dir"] = str(Paths(embedded).root.parent / "window")
    precompute.embed_prompts(config)
    precompute.embed_identities(config)
    table = pd.read_parquet(trajectory.run(config, "flux-dev/infusenet-aes/4", progress=False))
    assert list(table["adapter_active"]) == [True, True, False, False]
    assert table["relative_single"][:2].notna().all() and table["relative_single"][2:].isna().all()
    assert table["hidden_rms_single"].notna().all()
