"""Watch the conditioning form: decode the predicted clean image at every step, with probes.

For a few items of a cell, the family's x0 estimate is decoded and scored for identity after
every step of the generation jobs' own `CellPipeline.denoise` (its per-step callback), and the
family's `Step.probes` become columns. FLUX's probes say how strong the adapter's push is
relative to the backbone's own activations: the RMS of InfuseNet's residuals over the RMS of
the transformer block outputs they are added to, per stream (double / single blocks). The
study's claims that identity "enters an effective regime within 4-8 steps" and that "the
relative conditioning contribution falls as sampling proceeds" are read off this table.
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
from fewstep.faces.models import INSIGHTFACE
from fewstep.families.base import Step
from fewstep.grid import Grid, image_keys
from fewstep.jobs.generate import JobGenerator


def run(study: Study, cell_id: str, out: Path | None = None, progress: bool = True) -> Path:
    """Write trajectories/<cell>/trajectory.parquet and the per-step x0 images."""
    from fewstep.core.images import identity_images
    from fewstep.scoring.base import JobModels, Sample
    from fewstep.scoring.identity import IdentitySimilarity

    grid, paths = Grid.of(study), Paths(study)
    cell = grid.cell(cell_id)
    out = Path(out or paths.trajectory(cell.id))
    generator = JobGenerator(study, cell)
    scorer = IdentitySimilarity(study, JobModels(study))
    references = identity_images(study)
    models = [*grid.cell_models(cell), INSIGHTFACE.name]  # what made and scored its x0 images
    prov = provenance.record(study, models)
    items = grid.items_of(cell)[: study.trajectory.max_items]
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
            for step in recorded:
                with torch.no_grad():
                    pixels = generator.pipeline.decode(step.predicted_clean)[0].cpu().numpy()
                image = paths.trajectory_image(cell.id, item.id, step.index + 1)
                atomic_write_bytes(
                    image,
                    encode_png(
                        pixels,
                        {
                            "fewstep": json.dumps(
                                {"cell": cell.id, "item": item.id, "step": step.index + 1, **prov}
                            )
                        },
                    ),
                )
                score = scorer.score([Sample({}, pixels, references[item.identity])])[0]
                rows.append(
                    {
                        **image_keys(cell, item),
                        "step": step.index + 1,
                        "sigma": step.sigma,
                        "adapter_active": step.adapter_active,
                        **step.probes,
                        "id_sim": score["id_sim"],
                        "face_detected": score["face_detected"],
                        "image": str(image.relative_to(paths.trajectory(cell.id).parent)),
                        "weights": study.weights,
                        **generator.runtime,
                        "batch_size": 1,  # one item at a time
                    }
                )
    frame = pd.DataFrame(rows)
    write_table(out, provenance.stamp(frame, study, models))
    print(f"{cell.id}: trajectories of {len(items)} items x {cell.steps} steps -> {out}")
    return out
