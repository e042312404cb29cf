"""The benchmark commands keep running: each one end to end on tiny models on the CPU.

They measure GPU latency with full-size random weights; here only that they still call the
workflow's code as it is (a renamed entry point would otherwise surface on the next GPU run).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO


def run_benchmark(script: str, *args: str) -> None:
    command = [
        sys.executable,
        str(REPO / "benchmarks" / script),
        *args,
        "--weights",
        "tiny",
        "--device",
        "cpu",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_latency_benchmark_runs_every_cell_and_names_the_machine(tmp_path):
    out = tmp_path / "out"
    run_benchmark(
        "latency.py",
        *("--out", str(out), "--work", str(tmp_path / "work"), "--images", "2", "--size", "64"),
        *("--dev-steps", "2", "--schnell-steps", "1", "--variants", "base"),
    )
    summary = pd.read_csv(out / "latency_summary.csv")
    assert sorted(summary["cell"]) == [
        "flux-dev/infusenet-aes/2",
        "flux-dev/none/2",
        "flux-schnell/infusenet-aes/1",
        "flux-schnell/none/1",
    ]
    assert (summary["images"] == 2).all() and (summary["latency_s"] > 0).all()
    meta = json.loads((out / "latency_meta.json").read_text())
    assert meta["card"] == "CPU" and meta["date"]


@pytest.mark.slow
def test_kontext_latency_benchmark_runs_kontext_beside_dev_and_schnell(tmp_path):
    out = tmp_path / "out"
    run_benchmark(
        "kontext_latency.py",
        *("--out", str(out), "--work", str(tmp_path / "work"), "--images", "2", "--size", "64"),
        *("--dev-steps", "2", "--schnell-steps", "1", "--kontext-steps", "1", "2"),
    )
    summary = pd.read_csv(out / "kontext_latency_summary.csv").set_index("cell")
    assert sorted(summary.index) == [
        "flux-dev/infusenet-aes/2",
        "flux-schnell/infusenet-aes/1",
        "kontext/kontext-photo/1",
        "kontext/kontext-photo/2",
    ]
    assert (summary["images"] == 2).all() and (summary["per_step_s"] > 0).all()
    meta = json.loads((out / "kontext_latency_meta.json").read_text())
    ratio = (
        summary.loc["kontext/kontext-photo/2", "latency_s"]
        / summary.loc["flux-dev/infusenet-aes/2", "latency_s"]
    )
    assert meta["ratios"]["kontext/kontext-photo/2 over flux-dev/infusenet-aes/2"] == pytest.approx(ratio)
    assert meta["card"] == "CPU"


@pytest.mark.slow
def test_klein_latency_benchmark_times_klein_beside_flux_in_one_run(tmp_path):
    out = tmp_path / "out"
    run_benchmark(
        "klein_latency.py",
        *("--out", str(out), "--work", str(tmp_path / "work"), "--images", "2", "--size", "64"),
        *("--dev-steps", "2", "--schnell-steps", "1", "--klein-steps", "1", "2", "--card-steps", "2"),
    )
    summary = pd.read_csv(out / "klein_latency_summary.csv")
    assert list(summary["cell"]) == [
        "flux-dev/infusenet-aes/2",
        "flux-schnell/infusenet-aes/1",
        "klein/reference/1",
        "klein/reference/2",
        "klein/none/2",
    ]
    assert (summary["images"] == 2).all() and (summary["per_step_s"] > 0).all()
    meta = json.loads((out / "klein_latency_meta.json").read_text())
    latency = summary.set_index("cell")["latency_s"]
    assert meta["card"] == "CPU" and meta["ratios"]["flux-dev-2/klein-2"] == pytest.approx(
        latency["flux-dev/infusenet-aes/2"] / latency["klein/reference/2"]
    )
    # only what the images need is prepared: no scoring network (dlib's files may be absent offline)
    prepared = {p.name for p in (tmp_path / "work" / "models" / "tiny").iterdir()}
    assert "FLUX.2-klein-4B" in prepared and "dlib" not in prepared


@pytest.mark.slow
def test_acceleration_benchmark_counts_the_calls_and_adapter_calls_each_cache_computes(tmp_path):
    out = tmp_path / "out"
    run_benchmark(
        "acceleration.py",
        *("--out", str(out), "--work", str(tmp_path / "work"), "--size", "64", "--sd-size", "64"),
        *("--dev-images", "1", "--schnell-images", "1", "--sd-images", "2"),
        *("--variants", "eager", "taylorseer", "mag"),
    )
    record = json.loads((out / "acceleration.json").read_text())
    assert record["card"] == "CPU" and record["date"]
    counts = {
        (r["backbone"], r["variant"]): (r["calls"], r["steps_computed"], r["adapter_calls"])
        for r in record["rows"]
    }
    # the study's schedules: TaylorSeer every 5th call after 3, MagCache's FLUX ratios (fewstep's
    # caches); a UNet takes TaylorSeer only (no mag rows), and SD1.5's PNDM calls it once more than
    # its 25 steps
    assert counts == {
        ("flux-dev", "eager"): (28, 28, 28),
        ("flux-dev", "taylorseer"): (28, 8, 8),
        ("flux-dev", "mag"): (28, 14, 14),
        ("flux-schnell", "eager"): (4, 4, 4),
        ("flux-schnell", "taylorseer"): (4, 3, 3),
        ("flux-schnell", "mag"): (4, 3, 3),
        ("sd15", "eager"): (26, 26, 26),
        ("sd15", "taylorseer"): (26, 8, 8),
        ("sdxl", "eager"): (30, 30, 30),
        ("sdxl", "taylorseer"): (30, 9, 9),
    }
    assert all(r["per_image_s"] > 0 and r["peak_mem_gib"] > 0 for r in record["rows"])
    sd = {r["backbone"]: r for r in record["rows"] if r["variant"] == "taylorseer"}
    assert sd["sd15"]["max_pixel_diff"] > 0 and sd["sdxl"]["images"] == 2  # extrapolated, paired
    table = (out / "acceleration.md").read_text()
    # nothing to compile: no compile time, whatever the warm-up image's noise
    assert re.search(r"\| flux-dev-28 \| taylorseer \| [0-9.]+ s \| [0-9.]+ s \| [0-9.]+x \| – \|", table)
    assert re.search(r"\| flux-schnell-4 \| eager \| [0-9.]+ s \| [0-9.]+ s \| 1.00x \| – \|", table)
    assert re.search(r"\| sd15-25 \| taylorseer \| .* \| 8/26 \| 8/26 \| [0-9]+ \|", table)


@pytest.mark.slow
def test_identity_margins_measure_each_encoders_same_photo_spread(tmp_path):
    """The demo's photos: the astronaut and her mirror image hold one face each; t1's crowd is left
    out (a copy may choose another of its people). dlib's trained model loses at most 0.008 on them."""
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "benchmarks" / "identity_margins.py")]
    command += ["--config", str(REPO / "config" / "demo.yaml"), "--out", str(out)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["encoder"]: row for row in json.loads((out / "identity_margins.json").read_text())}
    assert set(rows) == {"identity", "identity_dlib"}
    dlib = rows["identity_dlib"]
    assert (dlib["photos"], dlib["single_face_photos"], dlib["copies_scored"]) == (3, 2, 18)
    assert 0.005 < dlib["max_drop"] < 0.01 and dlib["suggested_margin"] == 0.01
    assert dlib["heldout_sim"] > 0.99  # the mirrored stand-in is the same photo
    assert "| identity_dlib | 3 | 2 | 18 |" in (out / "identity_margins.md").read_text()


@pytest.mark.slow
def test_distilled_sd_benchmark_times_each_distillation_beside_its_base(tmp_path):
    out = tmp_path / "out"
    run_benchmark(
        "sd_distilled_latency.py",
        *("--out", str(out), "--work", str(tmp_path / "work"), "--images", "2", "--size", "64"),
        *("--families", "sdxl", "--distillations", "lightning-2step-unet", "turbo"),
        *("--base-steps", "3", "--adapters", "plus"),
    )
    summary = pd.read_csv(out / "sd_distilled_latency_summary.csv").set_index(["backbone", "steps"])
    assert sorted(summary.index) == [
        ("base", 3),
        ("lightning-2step-unet", 2),
        ("turbo", 1),
        ("turbo", 2),
        ("turbo", 4),
    ]
    assert summary.loc[("base", 3), "guidance"] == 5.0 and summary.loc[("base", 3), "vs_base"] == 1.0
    assert summary.loc[("lightning-2step-unet", 2), "scheduler"] == "EulerDiscreteScheduler"
    assert summary.loc[("turbo", 1), "scheduler"] == "EulerAncestralDiscreteScheduler"
    distilled = summary.drop(index=("base", 3))
    assert (distilled["guidance"] == 0.0).all() and (distilled["vs_base"] > 0).all()
    assert list(summary["unet_calls"]) == [steps for _, steps in summary.index]
    assert json.loads((out / "sd_distilled_latency_meta.json").read_text())["card"] == "CPU"
