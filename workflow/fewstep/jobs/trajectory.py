"""Watch identity form: decode the predicted clean image at every step, with norm probes.

For a few items of a cell, the sampler's x0 estimate (x_t - sigma * v) is
decoded and scored for identity after every step, and each step records how
strong the adapter's push is relative to the backbone's own activations:
the RMS of InfuseNet's residuals over the RMS of the transformer block outputs
they are added to, per stream (double / single blocks). The study's claims
that identity "enters an effective regime within 4-8 steps" and that "the
relative conditioning contribution falls as sampling proceeds" are read off
this table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from fewstep.core import provenance
from fewstep.core.io import atomic_write_bytes, encode_png, write_table
from fewstep.core.paths import Paths
from fewstep.families.base import rms
from fewstep.families.flux import sampler
from fewstep.grid import Grid, image_keys
from fewstep.jobs.generate import JobGenerator


class BlockProbe:
    """Forward hooks that keep the RMS of each transformer block's image-stream output."""

    def __init__(self, transformer: Any):
        self.double: list[float] = []
        self.single: list[float] = []
        self._handles = [
            b.register_forward_hook(self._keep(self.double)) for b in transformer.transformer_blocks
        ]
        self._handles += [
            b.register_forward_hook(self._keep(self.single)) for b in transformer.single_transformer_blocks
        ]

    @staticmethod
    def _keep(store: list[float]):
        def hook(module, args, output):
            store.append(float(rms(output[1] if isinstance(output, tuple) else output)))

        return hook

    def take(self) -> tuple[list[float], list[float]]:
        double, single = list(self.double), list(self.single)
        self.double.clear()
        self.single.clear()
        return double, single

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def run(config: dict[str, Any], cell_id: str, out: Path | None = None, progress: bool = True) -> Path:
    """Write trajectories/<cell>/trajectory.parquet and the per-step x0 images."""
    from fewstep.core.images import identity_images
    from fewstep.scoring.base import JobModels, Sample
    from fewstep.scoring.identity import IdentitySimilarity

    grid, paths = Grid(config), Paths(config)
    cell = grid.cell(cell_id)
    out = Path(out or paths.trajectory(cell.id))
    generator = JobGenerator(config, cell)
    scorer = IdentitySimilarity(config, JobModels(config))
    references = identity_images(config)
    probe = BlockProbe(generator.parts.transformer)
    prov = provenance.record(config, grid.models)
    items = grid.items[: config["trajectory"]["max_items"]]
    rows: list[dict[str, Any]] = []
    progress_bar = tqdm(total=len(items) * cell.steps, desc=f"trajectory {cell.id}", unit="step")
    progress_bar.disable = not progress
    with progress_bar as bar:  # closed (its line ended) before an error line is printed
        for item in items:
            _, cond, _ = generator.item_inputs(cell, item)
            recorded: list[tuple[sampler.StepInfo, tuple[list[float], list[float]]]] = []

            def on_step(info: sampler.StepInfo, recorded=recorded) -> None:
                recorded.append((info, probe.take()))
                bar.update(1)

            settings = generator.settings(cell, (item.seed,))
            sampler.denoise(
                generator.parts,
                cond,
                settings,
                generator.device,
                generator.dtype,
                on_step=on_step,
                accelerated=generator.accelerated,
            )
            for info, (double, single) in recorded:
                pixels = sampler.decode(
                    generator.parts, info.predicted_clean, generator.height, generator.width
                )[0]
                image = paths.trajectory_image(cell.id, item.id, info.index + 1)
                atomic_write_bytes(
                    image,
                    encode_png(
                        pixels,
                        {
                            "fewstep": json.dumps(
                                {"cell": cell.id, "item": item.id, "step": info.index + 1, **prov}
                            )
                        },
                    ),
                )
                score = scorer.score([Sample({}, pixels, references[item.identity])])[0]
                rows.append(
                    {
                        **image_keys(cell, item),
                        "step": info.index + 1,
                        "sigma": info.sigma,
                        "adapter_active": info.adapter_active,
                        "velocity_rms": float(rms(info.velocity)),
                        **_relative(info.probes, double, single),
                        "id_sim": score["id_sim"],
                        "face_detected": score["face_detected"],
                        "image": str(image.relative_to(paths.trajectory(cell.id).parent)),
                        "weights": config["weights"],
                        **generator.runtime,
                        "batch_size": 1,  # one item at a time
                    }
                )
    probe.close()
    frame = pd.DataFrame(rows)
    write_table(out, provenance.stamp(frame, config, grid.models))
    print(f"{cell.id}: trajectories of {len(items)} items x {cell.steps} steps -> {out}")
    return out


def _relative(probes: dict[str, Any], double: list[float], single: list[float]) -> dict[str, Any]:
    """Adapter residual RMS over backbone block-output RMS, per stream and per block (NaN when off).

    Stream columns hold means over blocks; the ``block_*`` columns one value per
    transformer block, in block order (the step x block heatmap of the report).
    """
    out: dict[str, Any] = {}
    for stream, hidden in (("double", double), ("single", single)):
        residual = probes.get(f"residual_rms_{stream}", np.nan)
        hidden_mean = float(np.mean(hidden)) if hidden else np.nan
        each = _per_block(probes.get(f"residual_rms_{stream}_each", []), len(hidden))
        out |= {
            f"residual_rms_{stream}": residual,
            f"hidden_rms_{stream}": hidden_mean,
            f"relative_{stream}": residual / hidden_mean,
            f"block_hidden_rms_{stream}": list(hidden),
            f"block_relative_{stream}": [r / h for r, h in zip(each, hidden, strict=True)],
        }
    return out


def _per_block(residuals: list[float], blocks: int) -> list[float]:
    """The residual RMS each of `blocks` backbone blocks receives, by diffusers' interval rule
    (FluxTransformer2DModel adds sample ``i // ceil(blocks / len(residuals))`` to block i)."""
    if not residuals:
        return [np.nan] * blocks
    interval = math.ceil(blocks / len(residuals))
    return [residuals[i // interval] for i in range(blocks)]
