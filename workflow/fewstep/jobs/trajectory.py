"""Watch the conditioning form: decode the predicted clean image at every step, with probes.

For a few items of a cell of any family, the family's x0 estimate (`Step.predicted_clean`) is
decoded and scored after every step of the generation jobs' own `CellPipeline.denoise` (its
per-step callback), with the cell's own metrics that compare an image with the adapter's picture
(`Grid.trajectory_metrics`: identity for identity cells, CSD and CLIP-I for style, DINO and
CLIP-I for object), and the family's `Step.probes` become columns. FLUX's probes say how strong
the adapter's push is relative to the backbone's own activations: the RMS of InfuseNet's
residuals over the RMS of the transformer block outputs they are added to, per stream (double /
single blocks). The study's claims that identity "enters an effective regime within 4-8 steps"
and that "the relative conditioning contribution falls as sampling proceeds" are read off this
table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from fewstep.core import provenance
from fewstep.core.io import atomic_write_bytes, encode_png, write_table
from fewstep.core.paths import Paths
from fewstep.core.study import Study
from fewstep.families.base import Step
from fewstep.grid import Grid, image_keys
from fewstep.jobs.generate import JobGenerator
from fewstep.jobs.score import build_metrics


def run(study: Study, cell_id: str, out: Path | None = None, progress: bool = True) -> Path:
    """Write trajectories/<cell>/trajectory.parquet and the per-step x0 images."""
    from fewstep.core.images import load_rgb
    from fewstep.scoring.base import JobModels, Sample

    grid, paths = Grid.of(study), Paths(study)
    cell = grid.cell(cell_id)
    out = Path(out or paths.trajectory(cell.id))
    generator = JobGenerator(study, cell)
    metrics = build_metrics(study, grid.trajectory_metrics(cell), JobModels(study))
    items = grid.items_of(cell)[: study.trajectory.max_items]
    pictures = {
        ref: load_rgb(grid.reference_picture(cell, ref)) for ref in dict.fromkeys(i.identity for i in items)
    }
    heldout = {  # an identity's held-out photos (style and object references have none)
        ref: [] if grid.reads_references(cell) else [load_rgb(p) for p in grid.identity(ref).heldout]
        for ref in pictures
    }
    models = [*grid.cell_models(cell), *grid.trajectory_score_models(cell)]  # what made and scored its x0
    prov = provenance.record(study, models)
    rows: list[dict[str, Any]] = []
    progress_bar = tqdm(total=len(items) * cell.steps, desc=f"trajectory {cell.id}", unit="step")
    progress_bar.disable = not progress
    with progress_bar as bar:  # closed (its line ended) before an error line is printed
        for item in items:
            _, condition, _ = generator.item_inputs(cell, item)
            recorded: list[Step] = []

            def on_step(step: Step, recorded=recorded) -> None:
                recorded.append(step)
                bar.update(1)

            with torch.no_grad():
                generator.pipeline.denoise(condition, [item.seed], cell.steps, on_step=on_step)
            keys = image_keys(cell, item)
            for step in recorded:
                with torch.no_grad():
                    pixels = generator.pipeline.decode(step.predicted_clean)[0].cpu().numpy()
                image = paths.trajectory_image(cell.id, item.id, step.index + 1)
                meta = {"cell": cell.id, "item": item.id, "step": step.index + 1, **prov}
                atomic_write_bytes(image, encode_png(pixels, {"fewstep": json.dumps(meta)}))
                sample = Sample(
                    keys,
                    pixels,
                    pictures[item.identity],
                    prompt=grid.prompt(item.prompt).text,
                    heldout=heldout[item.identity],
                )
                scores: dict[str, Any] = {}
                for metric in metrics:
                    scores.update(metric.score([sample])[0])
                rows.append(
                    {
                        **keys,
                        "step": step.index + 1,
                        "sigma": step.sigma,
                        "adapter_active": step.adapter_active,
                        **step.probes,
                        **scores,
                        "image": str(image.relative_to(paths.trajectory(cell.id).parent)),
                        "weights": study.weights,
                        **generator.runtime,
                        "batch_size": 1,  # one item at a time
                    }
                )
    frame = pd.DataFrame(rows)
    frame["metric_versions"] = json.dumps({m.name: m.version for m in metrics}, sort_keys=True)
    write_table(out, provenance.stamp(frame, study, models))
    print(f"{cell.id}: trajectories of {len(items)} items x {cell.steps} steps -> {out}")
    return out
