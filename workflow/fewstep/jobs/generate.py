"""One generation job = one cell: load the pipeline once, loop over the items.

Images are written atomically and recorded in an append-only journal the
moment they exist, so a job killed at any point resumes where it stopped: an
image is kept only if its journal row carries the current item key and its
bytes still hash to the recorded sha256. The key covers the cell's parameters,
the item, the digests of its input embeddings and of the weights files loaded,
the device name, the compute dtype and the configured batch size (in bf16 the
batch changes pixels). The manifest (the rule's output) is written last,
listing each item exactly once.

Latency columns per image: ``latency_s`` (denoise + decode, the batch's time
over its size), ``end_to_end_s`` (that + the prompt's encoding and the
identity's embedding as the embedding jobs timed them + the resampler and
control-image encoding timed here once per identity, after a warm-up call), and ``warmup`` (the
job's first batch after loading the model, which pays one-off costs).
"""

from __future__ import annotations

import json
import resource
import time
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
from fewstep.families.flux import sampler
from fewstep.grid import Cell, Grid, Item, image_keys
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


class CellGenerator:
    """Holds one cell's pipeline and conditioning caches."""

    def __init__(self, config: dict[str, Any], cell: Cell):
        from fewstep.families.flux.models import generation_weights, load_flux, weights_digest
        from fewstep.registry.load import resolve_device, resolve_dtype

        self.config, self.cell = config, cell
        self.grid, self.paths = Grid(config), Paths(config)
        self.backbone, self.adapter = self.grid.backbone(cell), self.grid.adapter(cell)
        self.device = resolve_device(config["device"])
        self.dtype = resolve_dtype(config["dtype"], self.device)
        self.width, self.height = config["resolution"]["width"], config["resolution"]["height"]
        self.weights_digest = weights_digest(config, generation_weights(self.backbone["model"], self.adapter))
        self.parts = load_flux(config, self.backbone["model"], self.adapter, self.device, self.dtype)
        self.cell_spec = self.grid.cell_spec(cell)
        self.runtime = {
            "weights_digest": self.weights_digest,
            "device_name": provenance.device_name(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "batch_size": config["generation"]["batch_size"],
        }
        self._prompts: dict[str, tuple[torch.Tensor, torch.Tensor, str, float]] = {}
        self._identities: dict[str, tuple[torch.Tensor | None, str, float]] = {}
        self._controls: dict[str, tuple[torch.Tensor, float]] = {}

    # --- inputs -------------------------------------------------------------
    def _timed(self, compute):
        """`compute()` and the seconds it took on this job's device, timed on a second call:
        a first call pays one-off costs (kernel selection, lazy initialisation) that would
        otherwise land in every image's end-to-end time."""
        with torch.no_grad():
            compute()
        sampler.synchronize(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            value = compute()
        sampler.synchronize(self.device)
        return value, time.perf_counter() - start

    def _prompt(self, prompt_id: str) -> tuple[torch.Tensor, torch.Tensor, str, float]:
        """Prompt embeddings on the device, their digest, and the seconds encoding them took."""
        if prompt_id not in self._prompts:
            path = self.paths.prompt_embedding(
                self.backbone["family"], prompt_id, self.backbone["max_sequence_length"]
            )
            tensors, meta = load_tensors(path)
            self._prompts[prompt_id] = (
                tensors["prompt_embeds"].to(self.device, self.dtype),
                tensors["pooled_prompt_embeds"].to(self.device, self.dtype),
                content_digest(path),
                _encode_seconds(meta),
            )
        return self._prompts[prompt_id]

    def _identity_tokens(self, identity: str) -> tuple[torch.Tensor | None, str, float, float]:
        """Identity tokens, the embedding's digest, the embedding job's seconds and the resampler's."""
        if self.adapter["kind"] != "infusenet":
            return None, "", 0.0, 0.0
        if identity not in self._identities:
            path = self.paths.identity_embedding(identity)
            tensors, meta = load_tensors(path)
            embedding = tensors["arcface_irse50"].reshape(1, -1, 512).to(self.device, self.dtype)
            tokens, seconds = self._timed(lambda: self.parts.resampler(embedding))
            self._identities[identity] = (tokens, content_digest(path), _encode_seconds(meta), seconds)
        return self._identities[identity]

    def _control_latents(self, identity: str) -> tuple[torch.Tensor | None, float]:
        """Encoded control image (black, InfiniteYou's default, or the face's keypoints) and its seconds."""
        from fewstep.families.flux import control

        if self.adapter["kind"] != "infusenet":
            return None, 0.0
        key = identity if self.adapter["control"] == "keypoints" else ""
        if key not in self._controls:
            target = (self.width, self.height)
            if key:
                tensors, meta = load_tensors(self.paths.identity_embedding(identity))
                source = (int(meta["width"]), int(meta["height"]))
                image = control.keypoint_image(tensors["kps"].numpy(), source, target)
            else:
                image = control.black_image(target)
            self._controls[key] = self._timed(
                lambda: sampler.encode_control(self.parts.vae, image, self.device, self.dtype)
            )
        return self._controls[key]

    def item_inputs(self, item: Item) -> tuple[str, sampler.Conditioning, dict[str, float]]:
        """The item's key, its conditioning, and the seconds its inputs cost outside the sampler."""
        embeds, pooled, prompt_sha, prompt_s = self._prompt(item.prompt)
        tokens, identity_sha, identity_s, resampler_s = self._identity_tokens(item.identity)
        control, control_s = self._control_latents(item.identity)
        key = fingerprint(
            {
                "cell": self.cell_spec,
                "item": self.grid.item_spec(item, self.cell),
                "inputs": [prompt_sha, identity_sha],
                "runtime": self.runtime,
            }
        )
        seconds = {
            "prompt_encode_s": prompt_s,
            "identity_embed_s": identity_s,
            "conditioning_s": resampler_s + control_s,
        }
        return key, sampler.Conditioning(embeds, pooled, tokens, control), seconds

    # --- generation -----------------------------------------------------------
    def settings(self, seeds: tuple[int, ...]) -> sampler.Settings:
        return sampler.Settings(
            steps=self.cell.steps,
            height=self.height,
            width=self.width,
            seeds=tuple(seeds),
            guidance=self.grid.guidance(self.cell),
            adapter_scale=self.adapter.get("conditioning_scale", 0.0),
            adapter_start=self.adapter.get("guidance_start", 0.0),
            adapter_end=self.adapter.get("guidance_end", 1.0),
            adapter_first_steps=self.adapter.get("first_steps"),
        )

    def render(self, items: list[Item], conds: list[sampler.Conditioning]) -> tuple[list[np.ndarray], dict]:
        """One batch: its images and per-image timings (batch time over batch size)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        settings = self.settings(tuple(item.seed for item in items))
        result = sampler.denoise(
            self.parts, sampler.Conditioning.stack(conds), settings, self.device, self.dtype
        )
        start = time.perf_counter()
        images = sampler.decode(self.parts, result.latents, self.height, self.width)
        sampler.synchronize(self.device)
        decode_s = time.perf_counter() - start
        peak, peak_kind = peak_memory_mb(self.device)
        batch = len(items)
        return images, {
            "batch_size": batch,
            "sigmas": json.dumps([round(s, 6) for s in result.sigmas]),
            "adapter_steps": int(sum(result.adapter_active)),
            "denoise_s": result.denoise_s / batch,
            "decode_s": decode_s / batch,
            "latency_s": (result.denoise_s + decode_s) / batch,
            "step_s_median": float(np.median(result.step_s)) / batch,
            "peak_mem_mb": peak,
            "peak_mem_kind": peak_kind,
        }


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run(
    config: dict[str, Any],
    cell_id: str,
    manifest_path: Path | None = None,
    progress: bool = True,
    batch_size: int | None = None,
) -> Path:
    """Generate every item of `cell_id` (resuming), then write the cell's manifest.

    Items go through the sampler `batch_size` at a time (config generation.batch_size
    unless given: the rule halves it on each retry after running out of memory).
    """
    grid, paths = Grid(config), Paths(config)
    cell = grid.cell(cell_id)
    batch_size = batch_size or config["generation"]["batch_size"]
    manifest_path = Path(manifest_path or paths.manifest(cell.id))
    journal_path = paths.journal(cell.id)
    remove_stale_temporaries(paths.cell_dir(cell.id))
    journal = read_journal(journal_path)
    generator = CellGenerator(config, cell)
    prov = provenance.record(
        config,
        device=str(generator.device),
        device_name=generator.runtime["device_name"],
        dtype=generator.runtime["dtype"],
        weights_digest=generator.weights_digest,
    )
    pending = []
    for item in grid.items:
        key, cond, seconds = generator.item_inputs(item)
        if not reusable(journal.get(item.id), key, paths.image(cell.id, item.id)):
            pending.append((item, key, cond, seconds))
    reused = len(grid.items) - len(pending)
    progress_bar = tqdm(
        total=len(grid.items), initial=reused, desc=f"generate {cell.id}", unit="img", disable=not progress
    )
    with progress_bar as bar:  # closed (its line ended) before an error line is printed
        for index, batch in enumerate(batches(pending, batch_size)):
            images, timing = generator.render([b[0] for b in batch], [b[2] for b in batch])
            timing["warmup"] = index == 0  # the first batch after loading pays one-off costs
            for (item, key, _, seconds), pixels in zip(batch, images, strict=True):
                image_path = paths.image(cell.id, item.id)
                png = encode_png(
                    pixels,
                    {"fewstep": json.dumps({"cell": cell.id, "item": item.id, "item_key": key, **prov})},
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
                    "guidance": generator.settings((item.seed,)).guidance,
                    "rng": "torch.Generator(cpu).manual_seed(seed), noise drawn in float32",
                    "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **timing,
                    **seconds,
                    "end_to_end_s": sum(seconds.values()) + timing["latency_s"],
                    **provenance.columns(prov),
                }
                append_journal(journal_path, row)
                journal[item.id] = row
                bar.update(1)
    frame = pd.DataFrame([journal[item.id] for item in grid.items])
    frame["cell_hash"] = grid.cell_hash(cell)
    write_table(manifest_path, frame)
    print(f"{cell.id}: {len(frame)} images ({reused} kept from an earlier run) -> {manifest_path}")
    return manifest_path
