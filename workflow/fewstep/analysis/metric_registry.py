"""The one registry of metric columns: how each reads, which way is better, its unit.

Aggregation and reports work over whatever metric columns the scores tables hold:
a registered column gets its label and direction from here, any other numeric
column that is not a key is summarised with its own name and no direction (no
knee, no "better"). The metrics' columns come from their specs (`fewstep.scoring.specs`,
the one place a metric is defined); this module adds the generation's cost columns and the
trajectory tables' probes. `kind` decides where a column appears:

- ``quality``: what the steps buy (effective regime, knee, ablation, study table);
- ``cost``: what the steps cost (latency vs steps, Pareto);
- ``diagnostic``: summarised in the tables only;
- ``probe``: a per-step column of the trajectory tables (not of the scores).

`margin` is the default non-inferiority margin of a quality metric (in its own unit;
`report.margins` in the config overrides it): a step count is "as good as the anchor" when the
lower bound of (cell - anchor), taken in the better direction, is >= -margin. An
`anchor_relative` metric measures the distance to the anchor's own image (0 at the anchor): it
counts as reached where its upper bound is <= margin.

`limits` is the range a metric's values can take; every interval of it is computed on a scale where
the range holds (fewstep.analysis.stats.Bounds) and the report checks it. Unset, it follows the unit:
a cosine lies in [-1, 1], a fraction in [0, 1], a time or memory is positive; a metric with neither
is unbounded. A metric column gets its range in its spec and nowhere else.

Tables list the columns in `METRICS` order: headline quality columns, the other quality columns,
costs, diagnostics (each in the specs' order), then the probes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from fewstep.analysis.stats import Bounds
from fewstep.grid import KEYS
from fewstep.scoring.specs import SPECS, Column

INF = np.inf
#: the range a unit implies where a metric does not give its own
UNIT_LIMITS = {"cosine": (-1.0, 1.0), "fraction": (0.0, 1.0), "s": (0.0, INF), "MiB": (0.0, INF)}


@dataclass(frozen=True)
class ColumnSpec(Column):
    """A column as the analysis reads it: its range, direction and axis label."""

    @classmethod
    def of(cls, column: Column) -> ColumnSpec:
        return cls(**{f.name: getattr(column, f.name) for f in fields(column)})

    @property
    def bounds(self) -> Bounds:
        """The range of the metric's values (of a mean too; a difference's is `bounds.difference()`)."""
        low, high = self.limits or UNIT_LIMITS.get(self.unit, (-INF, INF))
        return Bounds(low, high)

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower is better, NaN without direction."""
        return {"higher": 1.0, "lower": -1.0}.get(self.better or "", float("nan"))

    @property
    def axis_label(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else self.label


#: what a generation job measures per image (the score tables carry it over)
COSTS = (
    ColumnSpec("latency_s", "denoise + decode time per image", "s", "lower", "cost"),
    ColumnSpec("denoise_s", "denoising time per image", "s", "lower", "cost"),
    ColumnSpec("decode_s", "VAE decode time per image", "s", "lower", "cost"),
    ColumnSpec("end_to_end_s", "end-to-end time per image (encoders, denoise, decode)", "s", "lower", "cost"),
    ColumnSpec("prompt_encode_s", "prompt encoding time", "s", "lower", "cost"),
    ColumnSpec("identity_embed_s", "identity embedding time", "s", "lower", "cost"),
    ColumnSpec("conditioning_s", "resampler + control encoding time", "s", "lower", "cost"),
    ColumnSpec("peak_mem_mb", "peak memory", "MiB", "lower", "cost"),
)
#: per-step probes of the trajectory tables
PROBES = (
    ColumnSpec("adapter_active", "share of items with the adapter on", "fraction", None, "probe"),
    ColumnSpec(
        "residual_rms_double", "InfuseNet residual RMS, double blocks", "", None, "probe", limits=(0, INF)
    ),
    ColumnSpec(
        "residual_rms_single", "InfuseNet residual RMS, single blocks", "", None, "probe", limits=(0, INF)
    ),
    ColumnSpec("velocity_rms", "velocity RMS", "", None, "probe", limits=(0.0, INF)),
    ColumnSpec(
        "relative_double",
        "InfuseNet residual / backbone block RMS, double stream",
        "",
        None,
        "probe",
        limits=(0, INF),
    ),
    ColumnSpec(
        "relative_single",
        "InfuseNet residual / backbone block RMS, single stream",
        "",
        None,
        "probe",
        limits=(0, INF),
    ),
)


def _registry() -> list[ColumnSpec]:
    scored = [ColumnSpec.of(column) for metric in SPECS for column in metric.columns]
    quality = [c for c in scored if c.kind == "quality"]
    return [
        *(c for c in quality if c.headline),
        *(c for c in quality if not c.headline),
        *COSTS,
        *(c for c in scored if c.kind == "diagnostic"),
        *PROBES,
    ]


METRICS: dict[str, ColumnSpec] = {column.name: column for column in _registry()}
#: a score column -> the metric (config ``scoring.metrics`` name) that writes it
METRIC_OF: dict[str, str] = {column.name: metric.name for metric in SPECS for column in metric.columns}


def spec(column: str) -> ColumnSpec:
    """The registered spec, or a direction-less diagnostic one for an unknown column."""
    return METRICS.get(column) or ColumnSpec(column, column, better=None, kind="diagnostic")


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Metric columns of a scores table: registered ones first (registry order), then others."""
    numeric = [
        c
        for c in frame.columns
        if c not in KEYS and (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    return [c for c in METRICS if c in numeric] + sorted(c for c in numeric if c not in METRICS)


def of_kind(columns: list[str], kind: str) -> list[str]:
    return [c for c in columns if spec(c).kind == kind]


def margin(column: str, overrides: dict[str, float]) -> float:
    """The non-inferiority margin of a metric: the config's, else the registry's, else NaN."""
    value = overrides.get(column, spec(column).margin)
    return float("nan") if value is None else float(value)
