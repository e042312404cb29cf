"""The aggregate tables on a synthetic sweep whose answers are known (tests/synthetic_sweep.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import synthetic_sweep as synth

from fewstep import aggregate
from fewstep.config import validate
from fewstep.metric_registry import metric_columns, spec
from fewstep.paths import Paths


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Synthetic scores plus a trajectory for schnell-4, aggregated once."""
    config = validate(synth.raw_config(tmp_path_factory.mktemp("synth")))
    synth.write_scores(config, images=False)
    synth.write_trajectory(config, "flux-schnell/infusenet-aes/4")
    aggregate.run(config)
    paths = Paths(config)
    return config, {name: pd.read_csv(paths.table(name)) for name in aggregate.TABLES}


def row(table: pd.DataFrame, **keys) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for key, value in keys.items():
        mask &= table[key] == value
    assert mask.sum() == 1, keys
    return table[mask].iloc[0]


def test_every_table_is_written_with_its_columns(sweep):
    config, tables = sweep
    summary = tables["summary"]
    assert set(summary["metric"]) == {"id_sim", "face_detected", "lpips_ref", "latency_s"}
    assert len(summary) == 13 * 4  # cells x metrics
    assert Paths(config).per_image.exists()
    for name in aggregate.TABLES:
        assert not tables[name].empty, name


def test_summary_means_intervals_and_paired_differences_to_the_anchor(sweep):
    _, tables = sweep
    summary = tables["summary"]
    for backbone, adapter, steps in [
        ("flux-dev", "infusenet-aes", 2),
        ("flux-dev", "none", 8),
        ("flux-schnell", "infusenet-aes", 1),
    ]:
        r = row(summary, cell_id=f"{backbone}/{adapter}/{steps}", metric="id_sim")
        expected = synth.true_id_sim(backbone, adapter, steps)
        assert r["mean"] == pytest.approx(expected)
        assert r["ci_low"] <= expected <= r["ci_high"]
        assert r["n"] == 24 and r["n_missing"] == 0
        assert (r["n_identities"], r["n_prompts"]) == (4, 3)
        # items differ from the anchor's by a constant: the paired difference is exact, its interval a point
        shift = expected - synth.dev_curve(16)
        assert r["diff_vs_anchor"] == pytest.approx(shift)
        assert r["diff_ci_low"] == pytest.approx(shift) and r["diff_ci_high"] == pytest.approx(shift)
        assert r["n_pairs"] == 24
    # the unpaired interval carries the identity and prompt effects: it is not a point
    r = row(summary, cell_id="flux-dev/infusenet-aes/2", metric="id_sim")
    assert r["ci_high"] - r["ci_low"] > 0.02


def test_regime_knee_and_fewest_steps_to_the_anchor(sweep):
    _, tables = sweep
    regime = tables["regime"]
    assert set(regime["metric"]) == {"id_sim", "face_detected", "lpips_ref"}  # quality metrics only
    dev = row(regime, backbone="flux-dev", adapter="infusenet-aes", metric="id_sim")
    assert dev["knee_steps"] == 4 and dev["knee_value"] == pytest.approx(0.6)
    assert dev["steps_to_target"] == 4  # 0.45 at 2 steps < 0.95 x 0.6
    assert dev["anchor_value"] == pytest.approx(0.6) and dev["anchor"] == "flux-dev/infusenet-aes/16"
    lpips = row(regime, backbone="flux-dev", adapter="infusenet-aes", metric="lpips_ref")
    assert lpips["knee_steps"] == 4  # a falling curve: the knee of its elbow
    assert lpips["steps_to_target"] == 4 and lpips["better"] == "lower"
    schnell = row(regime, backbone="flux-schnell", adapter="infusenet-aes", metric="id_sim")
    assert np.isnan(schnell["knee_steps"])  # flat at 0.63: no knee
    assert schnell["steps_to_target"] == 1
    none = row(regime, backbone="flux-dev", adapter="none", metric="id_sim")
    assert np.isnan(none["knee_steps"]) and np.isnan(none["steps_to_target"])  # 0.1 never reaches 0.57


def test_marginal_gain_of_each_extra_step(sweep):
    _, tables = sweep
    marginal = tables["marginal"]
    first = row(marginal, backbone="flux-dev", adapter="infusenet-aes", metric="id_sim", from_steps=1)
    assert first["to_steps"] == 2
    assert first["gain"] == pytest.approx(0.15) and first["gain_per_step"] == pytest.approx(0.15)
    assert first["extra_latency_s"] == pytest.approx(0.2)
    assert first["gain_per_second"] == pytest.approx(0.75)
    late = row(marginal, backbone="flux-dev", adapter="infusenet-aes", metric="id_sim", from_steps=8)
    assert late["gain"] == pytest.approx(0.0) and late["extra_latency_s"] == pytest.approx(1.6)
    assert len(marginal[(marginal["backbone"] == "flux-dev") & (marginal["metric"] == "id_sim")]) == 8


def test_pareto_frontier_over_all_cells(sweep):
    _, tables = sweep
    pareto = tables["pareto"].set_index("cell_id")
    # schnell-1 (0.63 at 0.35 s) beats every slower cell; only dev-1 (0.15 at 0.3 s) is faster
    assert set(pareto.index[pareto["on_front"]]) == {
        "flux-dev/infusenet-aes/1",
        "flux-schnell/infusenet-aes/1",
    }
    assert pareto.loc["flux-schnell/infusenet-aes/1", "latency_s"] == pytest.approx(0.35)


def test_study_comparison_table(sweep):
    _, tables = sweep
    comparison = tables["comparison"].set_index("metric")
    assert comparison["available"].all()
    ratio = comparison.loc["latency_s"]
    assert ratio["estimate"] == pytest.approx(3.3 / 0.8)  # dev-16 latency over schnell-4 latency
    assert ratio["ci_low"] == pytest.approx(3.3 / 0.8) and ratio["study"] == 5.9
    assert comparison.loc["id_sim", "estimate"] == pytest.approx(synth.SHIFT)
    assert comparison.loc["id_sim", "study"] == 0.028
    assert comparison.loc["lpips_ref", "estimate"] == pytest.approx(-synth.SHIFT / 2)
    assert comparison.loc["lpips_ref", "study"] == -0.016
    assert (comparison["n_pairs"] == 24).all()


def test_ablation_each_adapter_against_the_anchors(sweep):
    _, tables = sweep
    ablation = tables["ablation"]
    assert set(ablation["adapter"]) == {"none"} and set(ablation["reference_adapter"]) == {"infusenet-aes"}
    assert set(ablation["backbone"]) == {"flux-dev"}  # schnell runs one adapter
    r = row(ablation, steps=2, metric="id_sim")
    assert r["diff"] == pytest.approx(0.1 - 0.3) and r["diff_ci_low"] == pytest.approx(-0.2)


def test_trajectory_summary(sweep):
    _, tables = sweep
    trajectory = tables["trajectory"]
    assert set(trajectory["cell_id"]) == {"flux-schnell/infusenet-aes/4"}
    assert sorted(trajectory["step"].unique()) == [1, 2, 3, 4]
    assert row(trajectory, step=2, metric="id_sim")["mean"] == pytest.approx(0.3)
    assert row(trajectory, step=1, metric="face_detected")["mean"] == 0.0
    assert row(trajectory, step=3, metric="relative_double")["mean"] == pytest.approx(0.125)
    assert row(trajectory, step=3, metric="relative_single")["mean"] == pytest.approx(0.0625)


def test_missing_metric_is_not_available(tmp_path):
    config = validate(synth.raw_config(tmp_path))
    scores = synth.write_scores(config, lpips=False, images=False)
    assert "lpips_ref" not in metric_columns(scores)
    tables = aggregate.tables(config, scores, None)
    lpips = tables["comparison"].set_index("metric").loc["lpips_ref"]
    assert not lpips["available"] and np.isnan(lpips["estimate"]) and lpips["n_pairs"] == 0
    assert "lpips_ref" not in set(tables["summary"]["metric"])
    assert tables["trajectory"].empty and list(tables["trajectory"].columns)[:2] == ["cell_id", "backbone"]


def test_metric_registry_directions_and_unknown_columns():
    assert spec("lpips_ref").better == "lower" and spec("id_sim").better == "higher"
    assert spec("latency_s").kind == "cost"
    assert spec("my_new_metric").better is None and spec("my_new_metric").kind == "diagnostic"
    frame = pd.DataFrame(
        {"cell_id": ["c"], "seed": [0], "my_new_metric": [1.0], "id_sim": [0.5], "face_detected": [True]}
    )
    assert metric_columns(frame) == ["id_sim", "face_detected", "my_new_metric"]
