"""A saved W&B workspace for one sweep, built with the `wandb-workspaces` package.

`fewstep wandb-workspace` saves it to the sweep's project (online, with an API
key) or writes its spec as JSON (`--out`, no network). Its sections:

- identity vs steps: one line plot per backbone of the aggregate run's
  `sweep/id_sim/<backbone>/<adapter>` curves (drawn against `sweep/steps`), and
  every score run's mean identity similarity against its `steps` config;
- style and object vs steps (SD1.5 / SDXL IP-Adapter cells): per backbone and metric
  (CSD, DINO, CLIP-I, CLIPScore, LPIPS to the job's highest-step cell), the aggregate
  run's curves of every adapter scored with it;
- latency vs identity: each score run's mean latency against its identity similarity;
- trajectories: the trajectory runs' per-step identity, reference similarity (style and object
  cells) and conditioning norms;
- grids: every score run's `samples` grid of images.

The runs shown are the sweep's (its W&B group). Every panel title names the
weights mode, so a workspace of tiny-model runs does not pass for results.
"""

from __future__ import annotations

from typing import Any

from fewstep.core.study import Study
from fewstep.grid import Grid
from fewstep.scoring.specs import BY_NAME, IDENTITY, REFERENCE_ROLES, SPECS, MetricSpec
from fewstep.tracking.content import STEP_METRICS

#: trajectory curves the workspace draws (logged as `trajectory/<name>`)
TRAJECTORY_PANELS = {
    "identity similarity of x0": ["id_sim"],
    "reference similarity of x0 (style, object)": [
        spec.column
        for spec in SPECS
        if spec.roles & set(REFERENCE_ROLES) and spec.compares == "reference" and not spec.anchor_paired
    ],
    "relative conditioning norm": ["relative_double", "relative_single"],
}


def drawn_column(metric: MetricSpec) -> str:
    """The column a reference-scored cell's curve of `metric` draws: its distance to the anchor's
    image for an anchor-paired metric, else its one column."""
    anchored = [c.name for c in metric.columns if c.anchor_relative]
    return anchored[0] if metric.anchor_paired else metric.column


def workspace(study: Study, entity: str) -> Any:
    """The `wandb_workspaces.workspaces.Workspace` of the sweep (nothing is sent)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    grid, sweep = Grid.of(study), study.sweep
    mark = f" ({study.weights} weights)"
    steps = STEP_METRICS["aggregate"]
    by_backbone = [
        wr.LinePlot(
            title=f"identity similarity vs steps: {backbone}{mark}",
            x=steps,
            y=[f"sweep/id_sim/{backbone}/{adapter}" for adapter in sorted({c.adapter for c in cells})],
            title_x="denoising steps",
            title_y="ArcFace identity similarity",
        )
        for backbone, cells in _cells_by_backbone(grid).items()
    ]
    per_run = wr.ScatterPlot(
        title=f"identity similarity per cell{mark}",
        x=wr.Config("steps"),
        y=wr.SummaryMetric("id_sim"),
    )
    latency = wr.ScatterPlot(
        title=f"latency vs identity similarity{mark}",
        x=wr.SummaryMetric("latency_s"),
        y=wr.SummaryMetric("id_sim"),
    )
    by_reference = [
        wr.LinePlot(
            title=f"{column} vs steps: {backbone}{mark}",
            x=steps,
            y=[f"sweep/{column}/{backbone}/{adapter}" for adapter in adapters],
            title_x="denoising steps",
            title_y=column,
        )
        for (backbone, column), adapters in _reference_curves(grid).items()
    ]
    step = STEP_METRICS["trajectory"]
    trajectories = [
        wr.LinePlot(title=f"{title}{mark}", x=step, y=[f"trajectory/{name}" for name in names])
        for title, names in TRAJECTORY_PANELS.items()
    ]
    grids = wr.MediaBrowser(title=f"sample grids{mark}", media_keys=["samples"], num_columns=2)
    return ws.Workspace(
        entity=entity,
        project=study.wandb.project,
        name=f"fewstep {sweep}",
        sections=[
            ws.Section(name="identity vs steps", panels=[*by_backbone, per_run], is_open=True, pinned=True),
            ws.Section(name="style and object vs steps", panels=by_reference, is_open=True),
            ws.Section(name="latency vs identity", panels=[latency], is_open=True),
            ws.Section(name="trajectories", panels=trajectories, is_open=True),
            ws.Section(name="grids", panels=[grids], is_open=True),
        ],
        runset_settings=ws.RunsetSettings(filters=f"Metric('Group') == '{sweep}'"),
    )


def _cells_by_backbone(grid: Grid) -> dict[str, list[Any]]:
    """The identity-scored cells (FLUX's) by backbone: the panels draw their id_sim curves."""
    out: dict[str, list[Any]] = {}
    for cell in grid.cells:
        if IDENTITY.name in grid.cell_metrics(cell):
            out.setdefault(cell.backbone, []).append(cell)
    return out


def _reference_curves(grid: Grid) -> dict[tuple[str, str], list[str]]:
    """(backbone, column) -> the adapters whose reference-scored cells log that column."""
    out: dict[tuple[str, str], list[str]] = {}
    for cell in grid.cells:
        if grid.reads_references(cell):
            for name in grid.cell_metrics(cell):
                adapters = out.setdefault((cell.backbone, drawn_column(BY_NAME[name])), [])
                adapters += [cell.adapter] if cell.adapter not in adapters else []
    return dict(sorted(out.items()))


def spec(study: Study, entity: str) -> dict[str, Any]:
    """The workspace as the plain data W&B stores (its view spec), for offline inspection."""
    return workspace(study, entity)._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def save(study: Study, entity: str | None) -> str:
    """Save the workspace to W&B (needs the network and an API key); returns its URL."""
    import wandb

    from fewstep.tracking.runs import TrackingError, api_key_present

    if not api_key_present():
        from fewstep.core.jobenv import config_option

        raise TrackingError(
            "no W&B API key: set WANDB_API_KEY or run `wandb login`, then rerun "
            f"`fewstep wandb-workspace {config_option()}` (or pass --out FILE to write the spec offline)"
        )
    entity = entity or study.wandb.entity or wandb.Api().default_entity
    return workspace(study, entity).save().url
