"""The one registry of metric columns: how each reads, which way is better, its unit.

Aggregation and reports work over whatever metric columns the scores tables hold:
a registered column gets its label and direction from here, any other numeric
column that is not a key is summarised with its own name and no direction (no
knee, no "better"). `kind` decides where a metric appears:

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
is unbounded. A new metric gets its range here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fewstep.analysis.stats import Bounds
from fewstep.grid import KEYS

INF = np.inf
#: the range a unit implies where a metric does not give its own
UNIT_LIMITS = {"cosine": (-1.0, 1.0), "fraction": (0.0, 1.0), "s": (0.0, INF), "MiB": (0.0, INF)}


@dataclass(frozen=True)
class MetricSpec:
    column: str
    label: str
    unit: str = ""
    better: str | None = "higher"  # "higher", "lower" or None (no direction)
    kind: str = "quality"  # "quality", "cost" or "diagnostic"
    margin: float | None = None  # default non-inferiority margin (quality metrics)
    anchor_relative: bool = False
    limits: tuple[float, float] | None = None  # (low, high) the values can take; default from the unit

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


_SPECS = [
    MetricSpec("id_sim_zero", "ArcFace identity similarity, no face = 0", "cosine", margin=0.02),
    MetricSpec("id_sim", "ArcFace identity similarity, faces only", "cosine", margin=0.02),
    MetricSpec("face_detected", "face detection rate", "fraction", margin=0.05),
    MetricSpec("lpips_ref", "LPIPS to the reference image", better="lower", margin=0.02, limits=(0.0, INF)),
    MetricSpec("id_sim_heldout", "ArcFace similarity to held-out photos, faces only", "cosine", margin=0.02),
    MetricSpec("id_sim_dlib_zero", "dlib identity similarity, no face = 0", "cosine", margin=0.02),
    MetricSpec("id_sim_dlib", "dlib identity similarity, faces only", "cosine", margin=0.02),
    MetricSpec("face_detected_dlib", "dlib face detection rate", "fraction", margin=0.05),
    MetricSpec(
        "id_sim_heldout_dlib", "dlib similarity to held-out photos, faces only", "cosine", margin=0.02
    ),
    MetricSpec(
        "lpips_anchor",
        "LPIPS to the anchor cell's image",
        better="lower",
        margin=0.1,
        anchor_relative=True,
        limits=(0.0, INF),
    ),
    MetricSpec("clip_score", "CLIPScore (image-prompt)", "100 x cosine", margin=0.5, limits=(0.0, 100.0)),
    MetricSpec("pick_score", "PickScore", margin=0.1, limits=(-100.0, 100.0)),  # CLIP's logit scale <= 100
    MetricSpec("clip_i", "CLIP-I (image-reference)", "cosine", margin=0.01),
    MetricSpec("dino", "DINO (image-reference)", "cosine", margin=0.01),
    MetricSpec("csd", "CSD style similarity", "cosine", margin=0.01),
    MetricSpec("latency_s", "denoise + decode time per image", "s", "lower", "cost"),
    MetricSpec("denoise_s", "denoising time per image", "s", "lower", "cost"),
    MetricSpec("decode_s", "VAE decode time per image", "s", "lower", "cost"),
    MetricSpec("end_to_end_s", "end-to-end time per image (encoders, denoise, decode)", "s", "lower", "cost"),
    MetricSpec("prompt_encode_s", "prompt encoding time", "s", "lower", "cost"),
    MetricSpec("identity_embed_s", "identity embedding time", "s", "lower", "cost"),
    MetricSpec("conditioning_s", "resampler + control encoding time", "s", "lower", "cost"),
    MetricSpec("peak_mem_mb", "peak memory", "MiB", "lower", "cost"),
    MetricSpec("det_score", "face detector confidence", "", "higher", "diagnostic", limits=(0.0, 1.0)),
    MetricSpec("n_faces", "faces found per image", "", None, "diagnostic", limits=(0.0, INF)),
    # per-step probes of the trajectory tables
    MetricSpec("adapter_active", "share of items with the adapter on", "fraction", None, "probe"),
    MetricSpec(
        "residual_rms_double", "InfuseNet residual RMS, double blocks", "", None, "probe", limits=(0, INF)
    ),
    MetricSpec(
        "residual_rms_single", "InfuseNet residual RMS, single blocks", "", None, "probe", limits=(0, INF)
    ),
    MetricSpec("velocity_rms", "velocity RMS", "", None, "probe", limits=(0.0, INF)),
    MetricSpec(
        "relative_double",
        "InfuseNet residual / backbone block RMS, double stream",
        "",
        None,
        "probe",
        limits=(0, INF),
    ),
    MetricSpec(
        "relative_single",
        "InfuseNet residual / backbone block RMS, single stream",
        "",
        None,
        "probe",
        limits=(0, INF),
    ),
    MetricSpec("copy_paste", "ArcFace copy-paste score (MultiID-Bench)", "", "lower", "diagnostic"),
    MetricSpec("copy_paste_dlib", "dlib copy-paste score (MultiID-Bench)", "", "lower", "diagnostic"),
    MetricSpec("det_score_dlib", "dlib HOG detector score", "", "higher", "diagnostic"),
    MetricSpec("n_faces_dlib", "faces dlib finds per image", "", None, "diagnostic", limits=(0.0, INF)),
]
METRICS: dict[str, MetricSpec] = {spec.column: spec for spec in _SPECS}


def spec(column: str) -> MetricSpec:
    """The registered spec, or a direction-less diagnostic one for an unknown column."""
    return METRICS.get(column) or MetricSpec(column, column, better=None, kind="diagnostic")


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
