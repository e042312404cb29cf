"""What the analysis writes, by name: the aggregate tables and the report's figure sections.

Plain names with no pandas behind them: the rules read them while Snakemake parses the workflow.
"""

from fewstep.families import FAMILIES

#: CSV tables under results/<sweep>/aggregate/ (`Paths.table`), "summary" first
TABLES = (
    "summary",
    "regime",
    "marginal",
    "pareto",
    "comparison",
    "ablation",
    "trajectory",
    "coverage",
    "widths",
)

#: figure folders under reports/<sweep>/figures/, each one Snakemake report category: the generic
#: sections' and those the families draw their own sections in (`Family.report_folders`)
SECTIONS = tuple(
    dict.fromkeys(
        ("regime", "cost", "ablation", "trajectory", "grids")
        + tuple(folder for family in FAMILIES.values() for folder in family.report_folders)
    )
)

# Column order of the tables whose rows are built as dicts; an empty table keeps its header.
SUMMARY_COLUMNS = [
    "cell_id",
    "backbone",
    "adapter",
    "steps",
    "metric",
    "label",
    "better",
    "mean",
    "std",
    "n",
    "n_missing",
    "ci_low",
    "ci_high",
    "df",
    "confidence",
    "n_identities",
    "n_prompts",
    "anchor",
    "diff_vs_anchor",
    "diff_ci_low",
    "diff_ci_high",
    "n_pairs",
    "n_paired_images",
    "device_name",
    "weights",
]
REGIME_COLUMNS = [
    "backbone",
    "adapter",
    "metric",
    "label",
    "better",
    "steps",
    "means",
    "knee_steps",
    "knee_ci_low",
    "knee_ci_high",
    "knee_value",
    "knee_verdict",
    "knee_candidate",
    "rise",
    "rise_ci_low",
    "rise_ci_high",
    "flattening",
    "flattening_ci_low",
    "flattening_ci_high",
    "kneedle_sensitivity",
    "anchor",
    "anchor_value",
    "margin",
    "effective_rule",
    "effective_steps",
]
MARGINAL_COLUMNS = [
    "backbone",
    "adapter",
    "metric",
    "better",
    "from_steps",
    "to_steps",
    "from_mean",
    "to_mean",
    "gain",
    "gain_ci_low",
    "gain_ci_high",
    "gain_per_step",
    "extra_latency_s",
    "gain_per_second",
    "n_pairs",
    "n_paired_images",
]
COMPARISON_COLUMNS = [
    "quantity",
    "metric",
    "baseline",
    "candidate",
    "baseline_mean",
    "candidate_mean",
    "estimate",
    "ci_low",
    "ci_high",
    "n_pairs",
    "n_paired_images",
    "study",
    "available",
    "baseline_device",
    "candidate_device",
    "family",
    "effective_steps",
    "effective_rule",
    "note",
]
