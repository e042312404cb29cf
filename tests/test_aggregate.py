"""The aggregate tables on a synthetic sweep whose answers are known (tests/synthetic_sweep.py):
image noise, jittered latencies with a slow warm-up batch, and images without a face."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import synthetic_sweep as synth

from fewstep.analysis import aggregate, coverage
from fewstep.analysis.metric_registry import metric_columns, spec
from fewstep.core.config import validate
from fewstep.core.paths import Paths
from tests.conftest import study_of

DEV = "flux-dev/infusenet-aes"
ANCHOR, CANDIDATE = f"{DEV}/16", "flux-schnell/infusenet-aes/4"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Synthetic scores plus a trajectory for schnell-4, aggregated once."""
    config = validate(synth.raw_config(tmp_path_factory.mktemp("synth")))
    scores = synth.write_scores(config, images=False)
    synth.write_trajectory(config, CANDIDATE)
    aggregate.run(study_of(config))
    paths = Paths(study_of(config))
    return config, scores, {name: pd.read_csv(paths.table(name)) for name in aggregate.TABLES}


def row(table: pd.DataFrame, **keys) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for key, value in keys.items():
        mask &= table[key] == value
    assert mask.sum() == 1, keys
    return table[mask].iloc[0]


def cell(scores: pd.DataFrame, cell_id: str) -> pd.DataFrame:
    return scores[scores["cell_id"] == cell_id]


def test_every_table_is_written_with_its_columns(sweep):
    config, _, tables = sweep
    summary = tables["summary"]
    metrics = {
        "id_sim_zero",
        "id_sim",
        "face_detected",
        "lpips_ref",
        "lpips_anchor",
        "end_to_end_s",
        "latency_s",
    }
    assert set(summary["metric"]) == metrics
    assert len(summary) == 13 * len(metrics)  # cells x metrics; provenance columns are no metrics
    assert Paths(study_of(config)).per_image.exists()
    for name in aggregate.TABLES:
        assert not tables[name].empty, name


def test_summary_means_intervals_and_paired_differences_to_the_anchor(sweep):
    _, scores, tables = sweep
    summary = tables["summary"]
    for backbone, adapter, steps in [
        ("flux-dev", "infusenet-aes", 4),
        ("flux-dev", "none", 8),
        ("flux-schnell", "infusenet-aes", 1),
    ]:
        cell_id = f"{backbone}/{adapter}/{steps}"
        r = row(summary, cell_id=cell_id, metric="id_sim")
        expected = synth.true_id_sim(backbone, adapter, steps)
        assert r["mean"] == pytest.approx(cell(scores, cell_id)["id_sim"].mean())
        assert r["ci_low"] <= expected <= r["ci_high"]
        assert r["n"] == 24 and r["n_missing"] == 0 and (r["n_identities"], r["n_prompts"]) == (4, 3)
        assert r["device_name"] == "synthetic-gpu"
        # paired to the anchor, the identity and prompt effects cancel: a narrow interval at the shift
        shift = expected - synth.dev_curve(16)
        assert r["diff_ci_low"] <= shift <= r["diff_ci_high"] and r["diff_ci_high"] - r["diff_ci_low"] < 0.05
        assert (r["n_pairs"], r["n_paired_images"]) == (24, 24)
        # the unpaired interval carries the identity and prompt effects
        assert r["ci_high"] - r["ci_low"] > 2 * (r["diff_ci_high"] - r["diff_ci_low"])


def test_missing_faces_face_only_and_zero_filled_identity(sweep):
    _, scores, tables = sweep
    summary = tables["summary"]
    one = cell(scores, f"{DEV}/1")
    faces = row(summary, cell_id=f"{DEV}/1", metric="id_sim")
    assert (faces["n"], faces["n_missing"]) == (12, 12)  # astronaut and coffee show no face
    assert faces["mean"] == pytest.approx(one["id_sim"].mean())
    zero = row(summary, cell_id=f"{DEV}/1", metric="id_sim_zero")
    assert zero["n"] == 24 and zero["mean"] == pytest.approx(one["id_sim"].fillna(0).mean())
    assert zero["mean"] < faces["mean"]  # the face-only mean is the survivors'
    rate = row(summary, cell_id=f"{DEV}/1", metric="face_detected")
    assert rate["mean"] == pytest.approx(synth.face_rate(f"{DEV}/1")) == 0.5
    # the paired difference says how many pairs of how many images it used
    assert (faces["n_pairs"], faces["n_paired_images"]) == (12, 24)
    assert (zero["n_pairs"], zero["n_paired_images"]) == (24, 24)


def test_latency_leaves_out_the_warm_up_batch(sweep):
    _, scores, tables = sweep
    r = row(tables["summary"], cell_id=ANCHOR, metric="latency_s")
    timed = cell(scores, ANCHOR).query("not warmup")["latency_s"]
    assert (r["n"], r["n_missing"]) == (24 - synth.BATCH, synth.BATCH)
    assert r["mean"] == pytest.approx(timed.mean())
    assert r["ci_low"] <= synth.latency("flux-dev", 16) <= r["ci_high"]
    e2e = row(tables["summary"], cell_id=ANCHOR, metric="end_to_end_s")
    assert e2e["mean"] == pytest.approx(timed.mean() + synth.ENCODE_S)


def test_regime_tested_knee_and_effective_steps(sweep):
    _, _, tables = sweep
    regime = tables["regime"]
    assert set(regime["metric"]) == {"id_sim_zero", "id_sim", "face_detected", "lpips_ref", "lpips_anchor"}
    dev = row(regime, backbone="flux-dev", adapter="infusenet-aes", metric="id_sim_zero")
    assert dev["knee_steps"] == 4 and dev["knee_verdict"] == "knee"
    assert dev["knee_ci_low"] <= 4 <= dev["knee_ci_high"] and dev["rise_ci_low"] > 0
    assert dev["knee_value"] == pytest.approx(0.6, abs=0.01)
    # non-inferiority: from 4 steps on every step count is within 0.02 of the anchor
    assert dev["effective_steps"] == 4 and dev["margin"] == 0.02 and "non-inferior" in dev["effective_rule"]
    assert dev["anchor_value"] == pytest.approx(0.6, abs=0.01) and dev["anchor"] == ANCHOR
    lpips = row(regime, backbone="flux-dev", adapter="infusenet-aes", metric="lpips_ref")
    assert lpips["knee_steps"] == 4 and lpips["effective_steps"] == 4 and lpips["better"] == "lower"
    # anchor-relative: LPIPS to the anchor is 0 at the anchor, within 0.1 from 4 steps on
    relative = row(regime, backbone="flux-dev", adapter="infusenet-aes", metric="lpips_anchor")
    assert relative["effective_steps"] == 4 and relative["effective_rule"] == "upper bound <= 0.1"
    schnell = row(regime, backbone="flux-schnell", adapter="infusenet-aes", metric="id_sim_zero")
    assert np.isnan(schnell["knee_steps"]) and schnell["knee_verdict"].startswith("no knee")
    assert schnell["effective_steps"] == 1  # 0.03 above the anchor from the first step
    none = row(regime, backbone="flux-dev", adapter="none", metric="id_sim_zero")
    assert np.isnan(none["knee_steps"]) and np.isnan(none["effective_steps"])  # 0.1 never comes near 0.6


def test_margins_come_from_the_config(tmp_path):
    raw = synth.raw_config(tmp_path)
    raw["report"]["margins"] = {"id_sim": 0.55}
    config = validate(raw)
    scores = synth.write_scores(config, images=False)
    regime = aggregate.regime(aggregate.Context(study_of(config), scores))
    dev = row(regime, backbone="flux-dev", adapter="infusenet-aes", metric="id_sim")
    assert dev["margin"] == 0.55 and dev["effective_steps"] == 1  # 0.45 below at one step: within 0.55


def test_marginal_gain_of_each_extra_step(sweep):
    _, _, tables = sweep
    marginal = tables["marginal"]
    first = row(marginal, backbone="flux-dev", adapter="infusenet-aes", metric="id_sim_zero", from_steps=4)
    assert first["to_steps"] == 8 and first["gain_ci_low"] <= 0 <= first["gain_ci_high"]
    second = row(marginal, backbone="flux-dev", adapter="infusenet-aes", metric="id_sim", from_steps=2)
    assert second["to_steps"] == 4 and second["gain_ci_low"] <= 0.3 <= second["gain_ci_high"]
    assert (second["n_pairs"], second["n_paired_images"]) == (18, 24)  # coffee has no face at 2 steps
    assert second["extra_latency_s"] == pytest.approx(0.4, rel=0.1)  # end to end, warm-up excluded
    assert len(marginal[(marginal["backbone"] == "flux-dev") & (marginal["metric"] == "id_sim")]) == 8


def test_pareto_frontier_over_all_cells(sweep):
    _, _, tables = sweep
    pareto = tables["pareto"].set_index("cell_id")
    assert set(pareto["cost_metric"]) == {"end_to_end_s"} and set(pareto["value_metric"]) == {"id_sim_zero"}
    # schnell-1 (0.63 at 0.4 s) beats every dev cell with InfuseNet from 2 steps (0.3 at 0.55 s) on
    front = pareto[pareto["on_front"]].sort_values("cost")
    assert "flux-schnell/infusenet-aes/1" in front.index
    assert not any(c.startswith(DEV) and not c.endswith("/1") for c in front.index)
    assert front["value"].is_monotonic_increasing
    assert pareto.loc["flux-schnell/infusenet-aes/1", "cost"] == pytest.approx(0.4, rel=0.02)


def test_study_comparison_table(sweep):
    _, _, tables = sweep
    comparison = tables["comparison"].set_index("metric")
    unscored = ["id_sim_heldout", "id_sim_dlib_zero", "id_sim_heldout_dlib"]  # rows the synthetic sweep lacks
    assert comparison.drop(unscored)["available"].all() and not comparison.loc[unscored, "available"].any()
    assert set(comparison["baseline_device"]) == {"synthetic-gpu"}
    ratio = comparison.loc["end_to_end_s"]
    true = (synth.latency("flux-dev", 16) + synth.ENCODE_S) / (
        synth.latency("flux-schnell", 4) + synth.ENCODE_S
    )
    assert ratio["ci_low"] <= true <= ratio["ci_high"] and ratio["study"] == 5.9
    assert ratio["note"] == "warm-up batch excluded" and ratio["n_pairs"] == 24 - synth.BATCH
    inner = comparison.loc["latency_s"]
    assert inner["ci_low"] <= 3.3 / 0.8 <= inner["ci_high"] and np.isnan(inner["study"])
    identity = comparison.loc["id_sim_zero"]
    assert identity["ci_low"] <= synth.SHIFT <= identity["ci_high"] and identity["study"] == 0.028
    assert "no face = 0" in identity["quantity"] and "faces only" in comparison.loc["id_sim", "quantity"]
    lpips = comparison.loc["lpips_ref"]
    assert lpips["ci_low"] <= -synth.SHIFT / 2 <= lpips["ci_high"] and lpips["study"] == -0.016
    assert comparison.loc["id_sim_zero", "n_pairs"] == 24


def test_latency_across_devices_is_not_comparable(tmp_path):
    config = validate(synth.raw_config(tmp_path))
    scores = synth.write_scores(config, images=False)
    scores.loc[scores["cell_id"] == CANDIDATE, "device_name"] = "other-gpu"
    comparison = aggregate.comparison(aggregate.Context(study_of(config), scores)).set_index("metric")
    for metric in ("end_to_end_s", "latency_s"):
        assert np.isnan(comparison.loc[metric, "estimate"])
        assert (
            comparison.loc[metric, "note"]
            == "not comparable: baseline on synthetic-gpu, candidate on other-gpu"
        )
    assert np.isfinite(comparison.loc["id_sim_zero", "estimate"])  # quality is still compared


def test_old_tables_without_the_new_columns(tmp_path):
    """Scores from before end-to-end timing, warm-up flags and device names: sensible fallbacks."""
    config = validate(synth.raw_config(tmp_path))
    scores = synth.write_scores(config, images=False, noise=False)
    scores = scores.drop(
        columns=["end_to_end_s", "warmup", "device_name", "dtype", "batch_size", "weights_digest"]
    )
    ctx = aggregate.Context(study_of(config), scores)
    comparison = aggregate.comparison(ctx).set_index("metric")
    assert not comparison.loc["end_to_end_s", "available"]
    assert comparison.loc["latency_s", "note"] == ""  # nothing to exclude, nothing to compare devices by
    pareto = aggregate.pareto(ctx)
    assert set(pareto["cost_metric"]) == {"latency_s"}
    # without noise the shift is exact: a point interval
    identity = comparison.loc["id_sim_zero"]
    assert (
        identity["estimate"] == pytest.approx(synth.SHIFT) and identity["ci_high"] - identity["ci_low"] < 1e-9
    )


def test_ablation_each_adapter_against_the_anchors(sweep):
    _, _, tables = sweep
    ablation = tables["ablation"]
    assert set(ablation["adapter"]) == {"none"} and set(ablation["reference_adapter"]) == {"infusenet-aes"}
    assert set(ablation["backbone"]) == {"flux-dev"}  # schnell runs one adapter
    r = row(ablation, steps=4, metric="id_sim")
    assert r["diff_ci_low"] <= 0.1 - 0.6 <= r["diff_ci_high"] and r["n_pairs"] == 24


def test_trajectory_summary(sweep):
    _, _, tables = sweep
    trajectory = tables["trajectory"]
    assert set(trajectory["cell_id"]) == {CANDIDATE}
    assert sorted(trajectory["step"].unique()) == [1, 2, 3, 4]
    assert row(trajectory, step=2, metric="id_sim")["mean"] == pytest.approx(0.3)
    assert row(trajectory, step=1, metric="face_detected")["mean"] == 0.0
    assert row(trajectory, step=1, metric="id_sim_zero")["mean"] == 0.0  # no face at step 1
    assert row(trajectory, step=2, metric="id_sim_zero")["mean"] == pytest.approx(0.3)
    assert row(trajectory, step=3, metric="relative_double")["mean"] == pytest.approx(0.125)
    assert row(trajectory, step=3, metric="relative_single")["mean"] == pytest.approx(0.0625)


def test_coverage_table_at_this_sweeps_size(sweep):
    _, _, tables = sweep
    coverage = tables["coverage"]
    own = coverage[coverage["this_sweep"]]
    assert set(zip(own["identities"], own["prompts"], own["seeds"], strict=True)) == {(4, 3, 2)}
    assert {(2, 8, 4), (4, 8, 4), (12, 12, 4)} <= set(
        zip(coverage["identities"], coverage["prompts"], coverage["seeds"], strict=True)
    )
    assert set(coverage["fewest_identities_for_90"]) == {4}


def test_widths_project_this_sweeps_spread_to_more_identities(sweep):
    _, _, tables = sweep
    widths = tables["widths"]
    assert set(widths["quantity"]) == {"cell mean", "paired difference"} and set(widths["metric"]) == {
        "id_sim_zero"
    }
    mean = widths[widths["quantity"] == "cell mean"].set_index("identities")
    assert mean["mean_width"].is_monotonic_decreasing and list(mean.index) == list(
        coverage.PROJECTED_IDENTITIES
    )
    assert mean["sd_identity"].iloc[0] == pytest.approx(
        np.std(list(synth.IDENTITY_EFFECTS.values()), ddof=1), rel=0.3
    )
    # at the sweep's own 4 identities the projection is about as wide as the anchor's own interval
    anchor = row(tables["summary"], cell_id=ANCHOR, metric="id_sim_zero")
    assert mean.loc[4, "mean_width"] == pytest.approx(anchor["ci_high"] - anchor["ci_low"], rel=0.6)
    paired = widths[widths["quantity"] == "paired difference"].set_index("identities")
    assert (paired["mean_width"] < mean["mean_width"]).all()  # the shared effects cancel


@pytest.mark.slow
def test_missing_metric_is_not_available(tmp_path):
    config = validate(synth.raw_config(tmp_path))
    scores = synth.write_scores(config, lpips=False, images=False)
    assert "lpips_ref" not in metric_columns(scores)
    tables = aggregate.tables(study_of(config), scores, None)
    lpips = tables["comparison"].set_index("metric").loc["lpips_ref"]
    assert not lpips["available"] and np.isnan(lpips["estimate"]) and lpips["n_pairs"] == 0
    assert "lpips_ref" not in set(tables["summary"]["metric"])
    assert tables["trajectory"].empty and list(tables["trajectory"].columns)[:2] == ["cell_id", "backbone"]


def test_metric_registry_directions_and_unknown_columns():
    assert spec("lpips_ref").better == "lower" and spec("id_sim").better == "higher"
    assert spec("latency_s").kind == "cost" and spec("end_to_end_s").kind == "cost"
    assert spec("lpips_anchor").anchor_relative and spec("id_sim_zero").margin == 0.02
    assert spec("my_new_metric").better is None and spec("my_new_metric").kind == "diagnostic"
    frame = pd.DataFrame(
        {
            "cell_id": ["c"],
            "seed": [0],
            "my_new_metric": [1.0],
            "id_sim": [0.5],
            "face_detected": [True],
            "batch_size": [4],
            "warmup": [False],
        }
    )
    assert metric_columns(frame) == ["id_sim", "face_detected", "my_new_metric"]
