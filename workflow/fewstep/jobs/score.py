"""Score the cells of one generation job: every image of each manifest through its metrics.

The job loads each scoring network once for all its cells (`run_job`) and rescores only
the cells whose inputs changed: each table keeps the digest of what it was computed
from (`scored_inputs`), so a job rerun for one cell's sake, or after a kill, leaves
the other tables as they are. A metric is an object with a `name`, a `version`, and `score(batch)` returning
one dict of columns per image; it is built with `(study, JobModels)` and loads
its network once per job; `fewstep.scoring.specs` lists every metric. The output is one parquet table
per cell: the manifest's keys plus one column per metric value, with the metric
versions in the table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from fewstep.core.config import fingerprint
from fewstep.core.errors import InputError
from fewstep.core.io import atomic_write_bytes, sha256_file, write_table
from fewstep.core.paths import Paths
from fewstep.core.provenance import stamp
from fewstep.core.study import Study
from fewstep.grid import IMAGE_KEYS, Cell, Grid
from fewstep.scoring.base import JobModels, Metric, Sample
from fewstep.scoring.specs import SPECS

KEY_COLUMNS = [
    *IMAGE_KEYS,
    "image",
    "sha256",
    "latency_s",
    "denoise_s",
    "decode_s",
    "end_to_end_s",
    "prompt_encode_s",
    "identity_embed_s",
    "conditioning_s",
    "warmup",
    "peak_mem_mb",
    "weights",
    "weights_digest",
    "device_name",
    "dtype",
    "batch_size",
    "config_hash",
    "git_commit",
]


#: metric name -> its scorer class (`fewstep.scoring.specs`)
METRICS = {spec.name: spec.scorer_class() for spec in SPECS}


def build_metrics(study: Study, names: list[str], models: JobModels | None = None) -> list[Metric]:
    models = models or JobModels(study)
    return [METRICS[name](study, models) for name in names]


def scored_inputs(grid: Grid, paths: Paths, cell: Cell) -> str:
    """Digest of everything a cell's table is computed from: its score settings (the grid's
    `score_hash`), the bytes of its images and, for anchor-paired metrics, of the anchor
    cell's images (read from disk: an image torn after generation is scored again, and
    its error names the fix)."""
    anchor = grid.score_anchor(cell)
    images = {}
    for source in (cell, anchor) if anchor is not None else (cell,):
        manifest = read_manifest(paths, source, columns=["item_id", "image"])
        folder = paths.cell_dir(source.id)
        images[source.id] = {row.item_id: _file_digest(folder / row.image) for row in manifest.itertuples()}
    return fingerprint({"score_hash": grid.score_hash(cell), "images": images})


def _file_digest(path: Path) -> str | None:
    """The file's sha256; None for a missing one (scoring it gives the one-line error)."""
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return None


def is_current(table: Path, digest: str) -> bool:
    """Whether `table` exists and was computed from the inputs `digest` names."""
    try:
        stored = pd.read_parquet(table, columns=["scored_inputs"])["scored_inputs"]
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return False
    return len(stored) > 0 and bool((stored == digest).all())


def run_job(
    study: Study,
    job_id: str,
    progress: bool = True,
    batch_size: int | None = None,
    take_card: Callable[[], None] = lambda: None,
) -> Path:
    """Score every cell of one generation job, the networks loaded once; returns the job's
    record (the score rule's output), which lists each cell's table and whether it was
    rescored. Cells whose table is current are kept as they are (and a job that rescores
    nothing takes no card)."""
    grid, paths = Grid.of(study), Paths(study)
    fresh = {}
    for cell in grid.job(job_id):
        table, digest = paths.scores(cell.id), scored_inputs(grid, paths, cell)
        if is_current(table, digest):
            print(f"{cell.id}: scores are current, kept -> {table}")
        else:
            fresh[cell.id] = (table, digest)
    _score_cells(study, fresh, progress, batch_size, take_card)
    cells = {
        cell.id: {
            "scores": str(paths.scores(cell.id)),
            "sha256": sha256_file(paths.scores(cell.id)),
            "rescored": cell.id in fresh,
        }
        for cell in grid.job(job_id)
    }
    record = {"job": job_id, "score_hash": grid.job_score_hash(job_id), "cells": cells}
    atomic_write_bytes(paths.score_record(job_id), json.dumps(record, indent=1).encode())
    return paths.score_record(job_id)


def regenerate_hint(record: Path) -> str:
    """The fix for a generated file that is gone or damaged: forcing its generation job's record
    (Snakemake checks only the record), which makes exactly the missing or damaged images again."""
    return (
        f"rerun with `--forcerun {record}` added to your snakemake command (its cell's other images are kept)"
    )


def read_manifest(paths: Paths, cell: Cell, columns: list[str] | None = None) -> pd.DataFrame:
    """A cell's manifest; a missing or unreadable one stops the job with one line and the fix."""
    path = paths.manifest(cell.id)
    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        problem = "is missing"
    except (OSError, ValueError) as err:
        problem = f"cannot be read ({type(err).__name__})"
    record = paths.generation_record(cell.job)
    raise InputError(f"manifest {path} of cell {cell.id} {problem}; {regenerate_hint(record)}")


def read_generated(path: Path, record: Path) -> np.ndarray:
    """Decode a generated PNG fully; a missing or corrupt one stops the job with one line naming
    it and the command that regenerates it."""
    from fewstep.core.images import load_rgb

    try:
        return load_rgb(path)
    except InputError:
        problem = "is missing" if not path.exists() else "is corrupt"
        raise InputError(f"generated image {path} {problem}; {regenerate_hint(record)}") from None


def _anchor_images(grid: Grid, paths: Paths, cell: Cell) -> tuple[dict[str, Path], Path | None]:
    """item id -> the anchor cell's image, when a metric compares to it and this is another
    cell; and the generation record of the job that made them."""
    anchor = grid.score_anchor(cell)
    if anchor is None:
        return {}, None
    manifest = read_manifest(paths, anchor, columns=["item_id", "image"])
    images = {row.item_id: paths.cell_dir(anchor.id) / row.image for row in manifest.itertuples()}
    return images, paths.generation_record(anchor.job)


def decoded_ahead(batches: Iterable[Any], decode: Callable[[Any], Any]) -> Iterator[Any]:
    """`decode(batch)` of each batch, in order, the next one decoded in a thread while the
    caller scores this one (PNG inflate releases the GIL): the networks do not wait for it.
    A decoding error is raised when its batch's turn comes."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        pending: Future | None = None
        for batch in batches:
            following = pool.submit(decode, batch)
            if pending is not None:
                yield pending.result()
            pending = following
        if pending is not None:
            yield pending.result()


def run(
    study: Study,
    cell_id: str,
    out: Path | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    take_card: Callable[[], None] = lambda: None,
) -> Path:
    """Score every image of a cell, `batch_size` at a time (config scoring.batch_size unless
    given), into `out` (default: the workflow's table)."""
    out = Path(out or Paths(study).scores(cell_id))
    _score_cells(study, {cell_id: (out, None)}, progress, batch_size, take_card)
    return out


def _score_cells(
    study: Study,
    tables: dict[str, tuple[Path, str | None]],
    progress: bool,
    batch_size: int | None,
    take_card: Callable[[], None],
) -> None:
    """Score each cell of `tables` (cell id -> its table and `scored_inputs` digest, None:
    computed here) with one load of each network: the metrics that compute off the card
    (`Metric.needs_card`) for every cell first and the torch networks of the others read into CPU
    memory, then `take_card()`, those networks moved to the card, and the metrics on it."""
    if not tables:
        return
    grid, models = Grid.of(study), JobModels(study, staged=True)
    names = {cell_id: grid.cell_metrics(grid.cell(cell_id)) for cell_id in tables}
    on_card = {
        cell_id: [n for n in metrics if METRICS[n].needs_card(study)] for cell_id, metrics in names.items()
    }
    started = time.monotonic()
    rows = {cell_id: read_manifest(Paths(study), grid.cell(cell_id)).to_dict("records") for cell_id in tables}
    columns = {}
    for cell_id in tables:
        off_card = [name for name in names[cell_id] if name not in on_card[cell_id]]
        columns[cell_id] = _metric_columns(
            study, cell_id, rows[cell_id], off_card, models, batch_size, progress
        )
    before = sorted({name for scored in columns.values() for name in scored})
    staged = sorted({name for cell in on_card.values() for name in cell if METRICS[name].loads_before_card})
    build_metrics(study, staged, models)  # their networks read from disk into CPU memory
    done = [f"{', '.join(group)} {verb}" for group, verb in ((before, "scored"), (staged, "loaded")) if group]
    if done and any(on_card.values()):
        print(f"{' and '.join(done)} before taking a card ({time.monotonic() - started:.1f} s)")
    take_card()
    models.to_card()
    for cell_id, (out, inputs) in tables.items():
        scored = columns[cell_id]
        scored.update(
            _metric_columns(study, cell_id, rows[cell_id], on_card[cell_id], models, batch_size, progress)
        )
        _write_scores(
            study, cell_id, rows[cell_id], out, {name: scored[name] for name in names[cell_id]}, inputs
        )


def _samples(study: Study, cell: Cell) -> Callable[[dict[str, Any]], Sample]:
    """Makes the `Sample` of a manifest row of `cell`: its image (decoded when asked), the
    identity's pictures and, for anchor-paired metrics, the anchor cell's image."""
    from fewstep.core.images import load_rgb

    grid, paths = Grid.of(study), Paths(study)
    identities = {item.identity for item in grid.items_of(cell)}
    heldout = {  # an identity's held-out photos (style and object references have none)
        ref: []
        if grid.reads_references(cell)
        else [load_rgb(p) for p in grid.identity(ref).get("heldout", [])]
        for ref in identities
    }
    references = {ref: load_rgb(grid.reference_picture(cell, ref)) for ref in identities}
    anchor_images, anchor_record = _anchor_images(grid, paths, cell)
    record = paths.generation_record(cell.job)

    def sample(row: dict[str, Any]) -> Sample:
        anchor = anchor_images.get(row["item_id"])
        return Sample(
            row,
            read_generated(paths.cell_dir(cell.id) / row["image"], record),
            references[row["identity"]],
            prompt=grid.prompt(row["prompt_id"])["text"],
            anchor=None if anchor is None else read_generated(anchor, anchor_record),
            is_anchor=grid.is_anchor(cell),
            heldout=heldout[row["identity"]],
        )

    return sample


def _metric_columns(
    study: Study,
    cell_id: str,
    rows: list[dict[str, Any]],
    names: list[str],
    models: JobModels,
    batch_size: int | None,
    progress: bool,
) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """metric name -> (its version, its columns for each of the cell's manifest `rows`), the
    images `batch_size` at a time, the next batch decoded while this one is scored."""
    if not names:
        return {}
    cell = Grid.of(study).cell(cell_id)
    metrics = build_metrics(study, names, models)
    sample = _samples(study, cell)
    batch_size = batch_size or study.scoring.batch_size
    scored: dict[str, list[dict[str, Any]]] = {metric.name: [] for metric in metrics}
    # The bar closes (ending its line) before an error line is printed.
    desc = f"score {cell.id} ({', '.join(names)})"
    with tqdm(total=len(rows), desc=desc, unit="img", disable=not progress) as bar:
        chunks = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
        for batch in decoded_ahead(chunks, lambda chunk: [sample(row) for row in chunk]):
            for metric in metrics:
                scored[metric.name] += metric.score(batch)
            bar.update(len(batch))
    return {metric.name: (metric.version, scored[metric.name]) for metric in metrics}


def _write_scores(
    study: Study,
    cell_id: str,
    rows: list[dict[str, Any]],
    out: Path,
    scored: dict[str, tuple[str, list[dict[str, Any]]]],
    inputs: str | None,
) -> None:
    """One cell's table: the keys of its manifest `rows` and each metric's columns per image (in
    `scored`'s order: metric name -> version and columns), the metric versions and the digest
    of the inputs."""
    grid, paths = Grid.of(study), Paths(study)
    cell = grid.cell(cell_id)
    table = []
    for index, row in enumerate(rows):
        values = {k: row.get(k) for k in KEY_COLUMNS}
        for _, columns in scored.values():
            values.update(columns[index])
        table.append(values)
    frame = pd.DataFrame(table)
    versions = {name: version for name, (version, _) in scored.items()}
    frame["metric_versions"] = json.dumps(versions, sort_keys=True)
    frame["scored_inputs"] = inputs or scored_inputs(grid, paths, cell)
    write_table(out, stamp(frame, study, [*grid.cell_models(cell), *grid.score_models(cell)]))
    detected = frame["face_detected"].mean() if "face_detected" in frame else float("nan")
    print(f"{cell.id}: scored {len(frame)} images, face detection rate {detected:.2f} -> {out}")
