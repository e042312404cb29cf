"""One generation job = every step count of one backbone x adapter x acceleration: load (and
compile) the pipeline once, loop over cells and items.

Images are written atomically and recorded in an append-only journal the
moment they exist, so a job killed at any point resumes where it stopped: an
image is kept only if its journal row carries the current item key and its
bytes still hash to the recorded sha256. The key covers the cell's parameters,
the item, the digests of its input embeddings and of the weights files loaded,
the device name, the compute dtype and the configured batch size (in bf16 the
batch changes pixels). Each cell's manifest, listing each item exactly once,
is written once its last image is recorded; the job's record (the rule's
output) last.

Latency columns per image: ``latency_s`` (denoise + decode, the batch's time
over its size), ``end_to_end_s`` (that + the prompt's encoding and the
identity's embedding as the embedding jobs timed them + the resampler and
control-image encoding timed here once per identity, after a warm-up call), and ``warmup`` (the
job's first batch after loading the model, which pays one-off costs such as
compiling).
"""

from __future__ import annotations

import functools
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from fewstep.core import provenance
from fewstep.core.config import fingerprint
from fewstep.core.io import (
    append_line,
    atomic_write_bytes,
    encode_png,
    remove_stale_temporaries,
    sha256_bytes,
    sha256_file,
    write_table,
)
from fewstep.core.paths import Paths
from fewstep.core.study import Study
from fewstep.families.base import Denoised, ItemInputs
from fewstep.grid import Cell, Grid, Item, image_keys
from fewstep.jobs.image_writer import PNG_COMPRESS_LEVEL, ImageWriter
from fewstep.jobs.precompute import content_digest, load_tensors


def _encode_seconds(metadata: dict[str, str]) -> float:
    """How long an embedding job took for this file (NaN for files written before it timed them)."""
    return float(metadata.get("encode_s", "nan"))


def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """Latest journal row per item id; a torn last line (killed mid-write) is ignored."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[row["item_id"]] = row
    return rows


def append_journal(path: Path, row: dict[str, Any]) -> None:
    append_line(path, json.dumps(row, sort_keys=True, default=str))


def reusable(row: dict[str, Any] | None, key: str, image: Path) -> bool:
    return bool(row) and row["item_key"] == key and image.exists() and sha256_file(image) == row["sha256"]


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


@dataclass
class Batch:
    """One batch on its way: queued on the GPU, its pixels copied to the host when done."""

    cell: Cell
    rows: list[tuple[Item, str, dict[str, float]]]  # item, item key, its input seconds
    pixels: torch.Tensor  # [B, H, W, 3] uint8 on the host (pinned while the copy runs)
    copied: Any  # a CUDA event recorded after the copy, None on the CPU
    result: Denoised
    peak: tuple[float, str]
    warmup: bool  # the job's first batch after loading (and compiling) the model

    def images(self) -> list[np.ndarray]:
        """Wait for the batch (the writer thread does, never the GPU's thread)."""
        if self.copied is not None:
            self.copied.synchronize()
        return list(self.pixels.numpy())

    def timing(self) -> dict[str, Any]:
        """Per-image timings (batch time over batch size) from the batch's timer marks."""
        intervals = self.result.timer.seconds()
        step_s, decode_s = intervals[:-1], intervals[-1]
        batch = len(self.rows)
        return {
            "batch_size": batch,
            "sigmas": json.dumps([round(s, 6) for s in self.result.sigmas]),
            "adapter_steps": int(sum(self.result.adapter_active)),
            "denoise_s": sum(step_s) / batch,
            "decode_s": decode_s / batch,
            "latency_s": (sum(step_s) + decode_s) / batch,
            "step_s_median": float(np.median(step_s)) / batch,
            "peak_mem_mb": self.peak[0],
            "peak_mem_kind": self.peak[1],
            "warmup": self.warmup,
        }


class JobGenerator:
    """One generation job's pipeline (its family's `CellPipeline`, loaded and accelerated once)
    and the precomputed inputs it reads.

    A job is one backbone x adapter x acceleration; every cell it renders differs only in
    its number of steps, so all of them share the loaded, compiled model.
    """

    def __init__(self, study: Study, cell: Cell):
        from fewstep.registry.load import resolve_device, resolve_dtype
        from fewstep.registry.prepare import weights_digest

        self.study = study
        self.grid, self.paths = Grid.of(study), Paths(study)
        self.device = resolve_device(study.device)
        self.dtype = resolve_dtype(study.dtype, self.device)
        self.width, self.height = self.grid.resolution(cell)
        self.weights_digest = weights_digest(study, self.grid.generation_weights(cell))
        self.pipeline = self.grid.family(cell).cell_pipeline(
            study,
            self.grid.backbone(cell),
            self.grid.adapter(cell),
            self.grid.acceleration(cell),
            self.device,
            self.dtype,
        )
        self.runtime = {
            "weights_digest": self.weights_digest,
            "device_name": provenance.device_name(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "batch_size": study.generation.batch_size,
        }
        self._files: dict[Path, tuple[dict[str, torch.Tensor], dict[str, str], str]] = {}

    def _read(self, path: Path, to_device: bool) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
        """An embedding file's tensors (on the device in compute dtype if `to_device`), metadata
        and content digest, read once per job."""
        if path not in self._files:
            tensors, meta = load_tensors(path)
            if to_device:
                tensors = {k: v.to(self.device, self.dtype) for k, v in tensors.items()}
            self._files[path] = (tensors, meta, content_digest(path))
        return self._files[path]

    def item_inputs(self, cell: Cell, item: Item) -> tuple[str, Any, dict[str, float]]:
        """The item's key, its conditioning, and the seconds its inputs cost outside the sampler."""
        prompt, prompt_meta, prompt_sha = self._read(
            self.grid.prompt_embedding(self.paths, cell, item.prompt), to_device=True
        )
        reference_file = self.grid.reference_embedding(self.paths, cell, item.identity)
        reference, reference_meta, reference_sha = (
            self._read(reference_file, to_device=False) if reference_file else (None, {}, "")
        )
        inputs = ItemInputs(prompt, item.identity, reference, reference_meta)
        with torch.no_grad():
            condition, conditioning_s = self.pipeline.condition(inputs)
        key = fingerprint(
            {
                "cell": self.grid.cell_spec(cell),
                "item": self.grid.item_spec(item, cell),
                "inputs": [prompt_sha, reference_sha],
                "runtime": self.runtime,
            }
        )
        seconds = {
            "prompt_encode_s": _encode_seconds(prompt_meta),
            "identity_embed_s": _encode_seconds(reference_meta) if reference_file else 0.0,
            "conditioning_s": conditioning_s,
        }
        return key, condition, seconds

    def launch(self, cell: Cell, rows: list, condition: Any, warmup: bool) -> Batch:
        """Queue one batch on the device and the copy of its pixels to the host; wait for nothing."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        seeds = [row[0].seed for row in rows]
        with torch.no_grad():
            result = self.pipeline.denoise(condition, seeds, cell.steps)
            pixels = self.pipeline.decode(result.latents)
        result.timer.mark()
        copied = None
        if self.device.type == "cuda":
            host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
            host.copy_(pixels, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            pixels = host
        return Batch(cell, rows, pixels, copied, result, peak_memory_mb(self.device), warmup)


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run(
    study: Study,
    cell_id: str,
    manifest_path: Path | None = None,
    progress: bool = True,
    batch_size: int | None = None,
) -> Path:
    """Generate every item of `cell_id` (resuming), then write the cell's manifest."""
    cell = Grid.of(study).cell(cell_id)
    out = {cell: Path(manifest_path)} if manifest_path else {}
    return run_cells(study, [cell], out, progress, batch_size)[cell]


def run_job(study: Study, job_id: str, progress: bool = True, batch_size: int | None = None) -> Path:
    """Every cell of one generation job with one model load; returns the job's record.

    Each cell keeps its own journal, images and manifest, exactly as if it ran alone; the
    record (the generate rule's output) lists the cells' manifests and their hashes.
    """
    grid, paths = Grid.of(study), Paths(study)
    manifests = run_cells(study, grid.job(job_id), {}, progress, batch_size)
    record = {
        "job": job_id,
        "job_hash": grid.job_hash(job_id),
        "cells": {
            cell.id: {"manifest": str(path), "sha256": sha256_file(path)} for cell, path in manifests.items()
        },
    }
    atomic_write_bytes(paths.generation_record(job_id), json.dumps(record, indent=1).encode())
    return paths.generation_record(job_id)


def run_cells(
    study: Study,
    cells: list[Cell],
    manifest_paths: dict[Cell, Path],
    progress: bool = True,
    batch_size: int | None = None,
) -> dict[Cell, Path]:
    """Generate every item of `cells` (one job: same backbone, adapter, acceleration), resuming.

    Items go through the sampler `batch_size` at a time (config generation.batch_size
    unless given: the rule halves it on each retry after running out of memory). The GPU's
    thread only queues work: PNG encoding, writing and the journal run in the writer thread,
    which also writes each cell's manifest once its last image is recorded.
    """
    grid, paths = Grid.of(study), Paths(study)
    batch_size = batch_size or study.generation.batch_size
    generator = JobGenerator(study, cells[0])
    prov = provenance.record(
        study,
        grid.cell_models(cells[0]),  # the job's cells share them; what else is prepared does not matter
        device=str(generator.device),
        device_name=generator.runtime["device_name"],
        dtype=generator.runtime["dtype"],
        weights_digest=generator.weights_digest,
    )
    journals, pending = {}, {}
    for cell in cells:
        remove_stale_temporaries(paths.cell_dir(cell.id))
        journals[cell] = read_journal(paths.journal(cell.id))
        pending[cell] = []
        for item in grid.items_of(cell):
            key, cond, seconds = generator.item_inputs(cell, item)
            if not reusable(journals[cell].get(item.id), key, paths.image(cell.id, item.id)):
                pending[cell].append((item, key, cond, seconds))
    total = sum(len(grid.items_of(cell)) for cell in cells)
    reused = total - sum(len(p) for p in pending.values())
    name = cells[0].id if len(cells) == 1 else f"{cells[0].job} ({len(cells)} cells)"
    manifests = {cell: Path(manifest_paths.get(cell) or paths.manifest(cell.id)) for cell in cells}

    def record(batch: Batch) -> None:
        """Encode, write and journal one finished batch (writer thread)."""
        cell, timing = batch.cell, batch.timing()
        for (item, key, seconds), pixels in zip(batch.rows, batch.images(), strict=True):
            image_path = paths.image(cell.id, item.id)
            png = encode_png(
                pixels,
                {"fewstep": json.dumps({"cell": cell.id, "item": item.id, "item_key": key, **prov})},
                compress_level=PNG_COMPRESS_LEVEL,
            )
            atomic_write_bytes(image_path, png)
            row = {
                **image_keys(cell, item),
                "prompt": grid.prompt(item.prompt)["text"],
                "image": str(image_path.relative_to(paths.cell_dir(cell.id))),
                "sha256": sha256_bytes(png),
                "item_key": key,
                "width": generator.width,
                "height": generator.height,
                "guidance": grid.guidance(cell),
                "rng": "torch.Generator(cpu).manual_seed(seed), noise drawn in float32",
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **timing,
                **seconds,
                "end_to_end_s": sum(seconds.values()) + timing["latency_s"],
                **provenance.columns(prov),
            }
            append_journal(paths.journal(cell.id), row)
            journals[cell][item.id] = row
            bar.update(1)

    def write_manifest(cell: Cell) -> None:
        frame = pd.DataFrame([journals[cell][item.id] for item in grid.items_of(cell)])
        frame["cell_hash"] = grid.cell_hash(cell)
        write_table(manifests[cell], frame)
        kept = len(grid.items_of(cell)) - len(pending[cell])
        print(f"{cell.id}: {len(frame)} images ({kept} kept from an earlier run) -> {manifests[cell]}")

    bar = tqdm(total=total, initial=reused, desc=f"generate {name}", unit="img", disable=not progress)
    with bar, ImageWriter() as writer:  # the bar closes (its line ends) before an error line is printed
        launched = 0
        for cell in cells:
            # prepared ahead: every batch's conditioning is stacked before the first is launched
            ready = [
                (
                    [(item, key, s) for item, key, _, s in batch],
                    generator.pipeline.stack([b[2] for b in batch]),
                )
                for batch in batches(pending[cell], batch_size)
            ]
            for rows, cond in ready:
                batch = generator.launch(cell, rows, cond, warmup=launched == 0)
                writer.submit(functools.partial(record, batch))
                launched += 1
            writer.submit(functools.partial(write_manifest, cell))
    return manifests
