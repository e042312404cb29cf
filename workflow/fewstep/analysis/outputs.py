"""What the analysis writes, by name: the aggregate tables and the report's figure sections.

Plain names with no pandas behind them: the rules read them while Snakemake parses the workflow.
"""

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

#: figure folders under reports/<sweep>/figures/, each one Snakemake report category
SECTIONS = ("regime", "cost", "ablation", "trajectory", "grids", "sd")
