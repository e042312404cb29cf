"""What a W&B run shows of a job's outputs: metric summaries, sample grids, tables, charts.

Plain builders over the job's tables; `fewstep.tracking.runs` logs what they return. wandb and
PIL are imported inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fewstep.grid import KEYS

#: columns of manifests/score tables that are parameters or keys, not measurements (the
#: median step time is one: the aggregate leaves it out, a run's summary shows it)
NOT_METRICS = frozenset(KEYS - {"step_s_median"})
#: the x axis of each job type's history: W&B plots `<prefix>/*` against it
STEP_METRICS = {"trajectory": "trajectory/step", "aggregate": "sweep/steps"}


def summarise(frame: pd.DataFrame, exclude: frozenset[str] = NOT_METRICS) -> dict[str, Any]:
    """Per numeric/bool column: mean, std and count of present values (NaN = missing, e.g. no face)."""
    out: dict[str, Any] = {"images": int(len(frame))}
    for column in frame.columns:
        series = frame[column]
        if column in exclude or not pd.api.types.is_numeric_dtype(series):
            continue
        values = series.astype(float).to_numpy()
        present = values[~np.isnan(values)]
        out[column] = float(present.mean()) if present.size else None
        out[f"{column}_std"] = float(present.std(ddof=1)) if present.size > 1 else None
        out[f"{column}_n"] = int(present.size)
    return out


def _thumbnail(path: Path, size: int, enlarge: bool = False):
    """The image at `path` fitted into a size x size box (enlarged only when asked)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
    scale = size / max(image.size)
    if scale < 1 or enlarge:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return image


def sample_grid(frame: pd.DataFrame, cell_dir: Path, identities: int, columns: int, tile: int):
    """Rows = identities, columns = their first images; each tile labelled prompt, seed and id_sim."""
    from PIL import Image, ImageDraw

    rows = [group.head(columns) for _, group in frame.groupby("identity", sort=False)][:identities]
    label_h = 14
    width = tile * max(len(row) for row in rows)
    canvas = Image.new("RGB", (width, (tile + label_h) * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for y, row in enumerate(rows):
        top = y * (tile + label_h)
        for x, record in enumerate(row.to_dict("records")):
            canvas.paste(
                _thumbnail(cell_dir / record["image"], tile, enlarge=True), (x * tile, top + label_h)
            )
            label = f"{record['identity']} {record['prompt_id']} s{record['seed']}"
            sim = record.get("id_sim")
            if sim is not None and not np.isnan(sim):
                label += f" id_sim {sim:.3f}"
            draw.text((x * tile + 2, top + 1), label, fill="black")
    return canvas


def scores_table(frame: pd.DataFrame, cell_dir: Path, thumbnail: int):
    """The per-image scores as a wandb.Table, a thumbnail of each image in the first column."""
    import wandb

    columns = ["thumbnail", *frame.columns]
    data = [
        [wandb.Image(_thumbnail(cell_dir / row["image"], thumbnail)), *_plain(row.values())]
        for row in frame.to_dict("records")
    ]
    return wandb.Table(columns=columns, data=data)


def _plain(values: Any) -> list[Any]:
    """numpy scalars -> Python; NaN -> None (W&B tables show it as empty)."""
    out = []
    for value in values:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and np.isnan(value):
            value = None
        out.append(value)
    return out


def steps_charts(summary: pd.DataFrame) -> dict[str, Any]:
    """One W&B line chart per metric: mean vs denoising steps, a line per backbone/adapter."""
    import wandb

    needed = {"metric", "backbone", "adapter", "steps", "mean"}
    if not needed <= set(summary.columns):
        return {}
    charts = {}
    for metric, frame in summary.groupby("metric", sort=False):
        series = [group.sort_values("steps") for _, group in frame.groupby(["backbone", "adapter"])]
        charts[f"charts/{metric}_vs_steps"] = wandb.plot.line_series(
            xs=[s["steps"].tolist() for s in series],
            ys=[s["mean"].tolist() for s in series],
            keys=[f"{s['backbone'].iloc[0]}/{s['adapter'].iloc[0]}" for s in series],
            title=f"{metric} vs denoising steps",
            xname="denoising steps",
        )
    return charts


def sweep_history(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """History rows of the aggregate run, one per number of steps, ascending:
    `sweep/<metric>/<backbone>/<adapter>` means, drawn against `sweep/steps`."""
    rows: dict[int, dict[str, Any]] = {}
    for record in summary.dropna(subset=["mean"]).to_dict("records"):
        steps = int(record["steps"])
        row = rows.setdefault(steps, {STEP_METRICS["aggregate"]: steps})
        row[f"sweep/{record['metric']}/{record['backbone']}/{record['adapter']}"] = float(record["mean"])
    return [rows[steps] for steps in sorted(rows)]
