"""Every file the workflow reads or writes, built from the config in one place.

Methods take plain strings so the Snakefile can pass wildcard patterns
(``"{backbone}/{adapter}/{steps}"``) and the CLI real ids through the same code.
"""

from __future__ import annotations

import re
from pathlib import Path

from fewstep.core.study import Study

CELL_PATTERN = "{backbone}/{adapter}/{steps}"
JOB_PATTERN = "{backbone}/{adapter}"


def one_of(names: list[str]) -> str:
    """A wildcard constraint matching exactly these names (none: a pattern that matches nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


class Paths:
    def __init__(self, config: Study):
        self.root = Path(config.results_dir) / config.sweep
        self.report_dir = Path(config.reports_dir) / config.sweep
        self.models_root = Path(config.models_dir) / config.weights

    def model_marker(self, name: str) -> Path:
        """The file that says registry model `name` is ready (the prepare rule's output)."""
        return self.models_root / ".ready" / f"{name}.json"

    # configuration and inputs
    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def cache_dir(self) -> Path:
        """Where libraries that would write under $HOME or /tmp keep their files (onnxruntime's id,
        inductor's compiled kernels)."""
        return self.root / "cache"

    def prompt_variant_embedding(self, family: str, prompt: str, variant: str) -> Path:
        """A prompt embedded as the family's prompt variant `variant` (`Family.prompt_variant`)."""
        return self.root / "embeddings" / "prompts" / family / f"{prompt}.{variant}.safetensors"

    def prompt_embedding(self, family: str, prompt: str, length: int | str) -> Path:
        """A prompt at T5 sequence length `length` (FLUX's variant ``L<length>``)."""
        return self.prompt_variant_embedding(family, prompt, f"L{length}")

    def reference_embedding(self, family: str, file: str, reference: str) -> Path:
        """One reference picture through the image encoder of an adapter file (`Family.reference_file`)."""
        return self.root / "embeddings" / "references" / family / file / f"{reference}.safetensors"

    def identity_embedding(self, identity: str) -> Path:
        return self.root / "embeddings" / "identities" / f"{identity}.safetensors"

    # per cell
    def cell_dir(self, cell_id: str) -> Path:
        return self.root / "cells" / cell_id

    def generation_record(self, job_id: str) -> Path:
        """What one generation job (every step count of a backbone x adapter) made; the rule output."""
        return self.root / "cells" / job_id / "generation.json"

    def manifest(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "manifest.parquet"

    def journal(self, cell_id: str) -> Path:
        """Append-only record of finished images; what lets a killed job resume."""
        return self.cell_dir(cell_id) / "journal.jsonl"

    def image(self, cell_id: str, item_id: str) -> Path:
        return self.cell_dir(cell_id) / "images" / f"{item_id}.png"

    def scores(self, cell_id: str) -> Path:
        return self.root / "scores" / cell_id / "scores.parquet"

    def score_record(self, job_id: str) -> Path:
        """What one score job (the cells of one generation job) wrote; the rule output."""
        return self.root / "scores" / job_id / "scoring.json"

    def trajectory(self, cell_id: str) -> Path:
        """One row per (item, step): x0 decoded at every step and norm probes (trajectory rule)."""
        return self.root / "trajectories" / cell_id / "trajectory.parquet"

    def trajectory_image(self, cell_id: str, item_id: str, step: int) -> Path:
        return self.root / "trajectories" / cell_id / "images" / item_id / f"step{step:03d}.png"

    # sweep level
    @property
    def aggregate_dir(self) -> Path:
        return self.root / "aggregate"

    @property
    def summary(self) -> Path:
        return self.aggregate_dir / "summary.csv"

    @property
    def per_image(self) -> Path:
        return self.aggregate_dir / "per_image.parquet"

    def table(self, name: str) -> Path:
        """An aggregate table (summary, regime, marginal, pareto, comparison, ablation, trajectory)."""
        return self.aggregate_dir / f"{name}.csv"

    @property
    def report_index(self) -> Path:
        return self.report_dir / "index.html"

    def report_figures(self, section: str) -> Path:
        """Figures of one report section, PNG and SVG (one Snakemake report category each)."""
        return self.report_dir / "figures" / section

    @property
    def report_tables(self) -> Path:
        return self.report_dir / "tables"

    # experiment tracking (fewstep.tracking.runs)
    @property
    def wandb_root(self) -> Path:
        return self.root / "wandb"

    def wandb_job(self, job_type: str, name: str) -> Path:
        """One folder per tracked job: its W&B run files, wandb's cache, staging and temp files."""
        return self.wandb_root / job_type / name.replace("/", "__")

    @property
    def wandb_sockets(self) -> Path:
        """Short folder for wandb-core's Unix sockets (a socket path must stay under 108 bytes)."""
        return self.wandb_root / "sock"

    @property
    def wandb_aggregate_record(self) -> Path:
        """What the aggregate W&B run logged (the wandb_aggregate rule's output)."""
        return self.wandb_root / "aggregate.json"

    def log(self, rule: str, name: str = "") -> Path:
        """One log per job; a cell id's slashes become `__` to keep one folder per rule."""
        return self.root / "logs" / rule / f"{(name or rule).replace('/', '__')}.log"

    def no_retry_note(self, rule: str, name: str = "") -> Path:
        """A job's error that a retry cannot fix, next to its log (read by the next attempt)."""
        return self.log(rule, name).with_suffix(".no-retry")

    def benchmark(self, rule: str, name: str = "") -> Path:
        return self.root / "benchmarks" / rule / f"{(name or rule).replace('/', '__')}.tsv"
