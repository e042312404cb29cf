"""Speed of each acceleration switch, side by side in one run on one GPU, through the generation job.

    python benchmarks/acceleration.py --out bench               # a CUDA GPU of compute capability >= 8.9
    python benchmarks/acceleration.py --out bench --backbones flux-schnell --variants eager fast
    python benchmarks/acceleration.py --out b --variants eager fast taylorseer fast-taylorseer mag fast-mag
    python benchmarks/acceleration.py --out b --backbones sd15 sdxl --variants eager compile fast taylorseer
    python benchmarks/acceleration.py --out /tmp/b --weights tiny --device cpu --variants eager cache

Every family: FLUX.1-dev (28 steps) and FLUX.1-schnell (4 steps) with InfuseNet, SD1.5 (25 steps,
InstantStyle style adapter) and SDXL (30 steps, IP-Adapter Plus object adapter), full size with
random weights (latency does not depend on weight values), built by the workflow's `random` mode. A
variant whose switches a family does not take (the block caches on a UNet) is left out of its
backbone, said on stdout. Cache variants take each backbone's schedule from `SCHEDULES` (the study
config's). FLUX's prompt and identity embeddings are drawn at random in their real shapes and
files, so no T5 or face model is needed; SD's come from the workflow's own embedding jobs
(random text and image encoders, small). Every (backbone, variant) is one generation job,
`fewstep.jobs.generate.run_job`, as the generate rule runs it (load, accelerate, render, writer
thread, manifests), one after the other in this process. Per job:

- ``per_step_s``: an image's denoising time over its steps (a mean: a cache's skipped steps are
  short), ``per_image_s``: end-to-end latency; medians over the images after the warm-up batch;
- ``compile_s``: the warm-up image's latency minus a warm image's (compiling, autotuning);
- ``job_s``: the whole job, model load included; ``peak_mem_gib``: CUDA's peak allocation;
- ``gpu_busy``: mean NVML utilisation sampled every 20 ms from the first recorded image to the
  job's end (the part of a job after loading and compiling);
- ``calls``: denoiser calls per image (SD1.5's PNDM: one more than its steps); ``steps_computed``:
  those that ran the transformer's blocks or the UNet (the caches' own decisions, counted by the
  families' `Accelerated.tally`; eager and compile/fp8 compute every call). TaylorSeer's and
  MagCache's schedules do not depend on the weights, so their speed here is what real weights get;
  the first-block cache decides from the outputs, which random weights never let it skip;
- ``adapter_calls``: adapter calls per image (manifest ``adapter_steps``: InfuseNet, or the UNet's
  IP-Adapter layers): a scheduled cache skips the adapter with the blocks;
- ``graphs``: graphs dynamo compiled (recompiles show here);
- ``max_pixel_diff``: largest 0-255 difference to the eager job's image of the same item (tiny
  weights only: random weights are drawn afresh by every job, so their images differ anyway);
- ``gaps`` (``--profile``): GPU busy and idle seconds over batches 2-4 as torch.profiler saw them,
  and what held the CPU in the idle gaps (`benchmarks/gpu_gaps.py`), largest first.

Writes ``acceleration.json`` and ``acceleration.md`` (the table) under ``--out``, naming the card.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_gaps  # noqa: E402

from fewstep.core.paths import Paths  # noqa: E402
from fewstep.core.study import parse_config  # noqa: E402
from fewstep.families import FAMILIES  # noqa: E402
from fewstep.families.flux import acceleration  # noqa: E402
from fewstep.families.flux.models import max_sequence_length  # noqa: E402
from fewstep.families.sd import acceleration as sd_acceleration  # noqa: E402
from fewstep.grid import Cell, Grid  # noqa: E402
from fewstep.jobs import generate, precompute  # noqa: E402
from fewstep.jobs.prepare import prepare_model  # noqa: E402
from fewstep.registry import catalog  # noqa: E402

VARIANTS = {
    "eager": {},
    "compile": {"compile": "regional"},
    "fp8": {"fp8": "dynamic"},
    "cache": {"cache": "first_block"},
    "fast": {"compile": "regional", "fp8": "dynamic"},
    "fast-cache": {"compile": "regional", "fp8": "dynamic", "cache": "first_block"},
    "taylorseer": {"cache": "taylorseer"},
    "mag": {"cache": "mag"},
    "fast-taylorseer": {"compile": "regional", "fp8": "dynamic", "cache": "taylorseer"},
    "fast-mag": {"compile": "regional", "fp8": "dynamic", "cache": "mag"},
    "compile-full": {"compile": "full"},  # SD: the whole UNet, one CUDA graph
    "full-taylorseer": {"compile": "full", "cache": "taylorseer"},
}
STEPS = {"flux-dev": 28, "flux-schnell": 4, "sd15": 25, "sdxl": 30}
#: each backbone's adapter (the study config's SD operating points: sd15 style, sdxl object-plus)
ADAPTERS = {
    "flux-dev": ("infusenet-aes", {"kind": "infusenet"}),
    "flux-schnell": ("infusenet-aes", {"kind": "infusenet"}),
    "sd15": ("style", {"kind": "ip_adapter", "role": "style", "file": "plain", "scale": "style"}),
    "sdxl": ("object-plus", {"kind": "ip_adapter", "role": "object", "file": "plus", "scale": 1.0}),
}
#: the weight-independent schedules of each backbone, as the study config runs them (config.yaml:
#: taylorseer/magcache at dev-28, taylorseer-few/magcache-few at schnell-4); steps computed in a comment
SCHEDULES = {
    "flux-dev": {
        "taylorseer": {"cache_interval": 5, "cache_warmup": 3},  # 8 of 28
        "mag": {"cache_threshold": 0.06, "cache_max_skips": 3, "cache_warmup": 3},  # 14 of 28
    },
    "flux-schnell": {
        "taylorseer": {"cache_interval": 2, "cache_warmup": 2},  # 3 of 4
        "mag": {"cache_threshold": 0.06, "cache_max_skips": 3, "cache_warmup": 1},  # 3 of 4
    },
    "sd15": {"taylorseer": {"cache_interval": 5, "cache_warmup": 3}},  # 8 of PNDM's 26 UNet calls
    "sdxl": {"taylorseer": {"cache_interval": 5, "cache_warmup": 3}},  # 9 of 30
}
SWITCHES = ("compile", "fp8", "cache")


def family_of(backbone: str) -> str:
    return "flux" if backbone.startswith("flux") else backbone


def takes(backbone: str, variant: str) -> bool:
    """Whether the backbone's family implements every switch of `variant` (`Family.acceleration_switches`)."""
    taken = FAMILIES[family_of(backbone)].acceleration_switches
    return all(k in taken or f"{k}:{v}" in taken for k, v in VARIANTS[variant].items() if k in SWITCHES)


def config_for(args: argparse.Namespace, backbone: str) -> dict:
    """One backbone, its adapter, every variant it takes as an acceleration of the sweep."""
    backbones = {
        "flux-dev": {"model": "flux-dev", "guidance": 3.5},
        "flux-schnell": {"model": "flux-schnell", "guidance": None, "max_sequence_length": 256},
        "sd15": {"family": "sd15", "model": "sd15", "resolution": args.sd_size or None},
        "sdxl": {"family": "sdxl", "model": "sdxl", "resolution": args.sd_size or None},
    }
    entry = {k: v for k, v in backbones[backbone].items() if v is not None or k == "guidance"}
    adapter, setting = ADAPTERS[backbone]
    variants = [v for v in args.variants if takes(backbone, v)]
    accelerations = {
        name: {
            "cache_threshold": args.cache_threshold,
            **VARIANTS[name],
            **SCHEDULES[backbone].get(VARIANTS[name].get("cache"), {}),
        }
        for name in variants
        if VARIANTS[name]
    }
    role = setting.get("role", "style")
    return parse_config(
        {
            "sweep": "acceleration",
            "weights": args.weights,
            "device": args.device,
            "dtype": "bfloat16",
            "results_dir": str(args.work / "results"),
            "models_dir": str(args.work / "models"),
            "reports_dir": str(args.work / "reports"),
            "resolution": {"width": args.size, "height": args.size},
            "identities": [{"id": "random", "image": "builtin:astronaut"}],
            "references": [{"id": "random", "image": "builtin:coffee", "role": role}],
            "prompts": [{"id": "random", "text": "a photo of a red cup on a table (benchmark)"}],
            "seeds": list(range(args.images[backbone])),
            "backbones": {backbone: {**entry, "steps": [STEPS[backbone]]}},
            "adapters": {adapter: setting},
            "accelerations": accelerations,
            "cells": [{"backbones": [backbone], "adapters": [adapter], "accelerations": variants}],
            "wandb": {"mode": "disabled"},
        }
    )


def write_embeddings(config: dict, backbone: str) -> None:
    """FLUX: prompt and identity embedding files with the real names, shapes and keys, random
    values; SD: the workflow's prompt and reference embedding jobs, on the random encoders."""
    if family_of(backbone) != "flux":
        precompute.embed_prompts(config)
        precompute.embed_references(config)
        return
    paths, generator = Paths(config), torch.Generator().manual_seed(0)
    note = {"synthetic": "random normal values: a latency benchmark, not a picture"}
    for backbone in config["backbones"].values():
        folder = catalog.model_folder(config, backbone["model"])
        shape = json.loads((folder / "transformer" / "config.json").read_text())
        length = max_sequence_length(backbone)
        precompute.save_tensors(
            paths.prompt_embedding("flux", "random", length),
            {
                "prompt_embeds": torch.randn(1, length, shape["joint_attention_dim"], generator=generator),
                "pooled_prompt_embeds": torch.randn(1, shape["pooled_projection_dim"], generator=generator),
            },
            note,
        )
    embedding = torch.nn.functional.normalize(torch.randn(1, 512, generator=generator), dim=-1)
    precompute.save_tensors(
        paths.identity_embedding("random"), {"arcface_irse50": embedding, "kps": torch.zeros(5, 2)}, note
    )


class BusySampler:
    """NVML GPU utilisation every 20 ms from the moment `started()` is true (a journal row exists)."""

    def __init__(self, started) -> None:
        self.started, self.samples, self.stop = started, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        while not self.stop.wait(0.02):
            if self.started():
                self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def __enter__(self) -> BusySampler:
        if torch.cuda.is_available():
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    @property
    def busy(self) -> float | None:
        return statistics.fmean(self.samples) / 100 if self.samples else None


class Tallies:
    """Every `Accelerated` (FLUX's or SD's) a job builds, to read its counts of calls and computed calls."""

    CLASSES = (acceleration.Accelerated, sd_acceleration.Accelerated)

    def __enter__(self) -> Tallies:
        self.made: list = []
        self.originals = [cls.__init__ for cls in self.CLASSES]
        made = self.made

        def counting(original):
            def init(accelerated, *args, **kwargs):
                original(accelerated, *args, **kwargs)
                made.append(accelerated)

            return init

        for cls, original in zip(self.CLASSES, self.originals, strict=True):
            cls.__init__ = counting(original)
        return self

    def __exit__(self, *exc) -> None:
        for cls, original in zip(self.CLASSES, self.originals, strict=True):
            cls.__init__ = original

    def count(self, key: str) -> int | None:
        """The sum over the job's accelerations that count (SD counts only with a cache); None: none."""
        counts = [a.tally[key] for a in self.made if a.tally is not None]
        return sum(counts) if counts else None


def pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image).astype(np.int16)


def run_job(config: dict, backbone: str, variant: str, profile: Path | None = None) -> dict:
    grid, paths = Grid(config), Paths(config)
    adapter = ADAPTERS[backbone][0]
    cell = Cell.of(backbone, adapter, variant, STEPS[backbone])
    journal = paths.journal(cell.id)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # each job compiles afresh, as in its own process
    counters.clear()
    print(f"{time.strftime('%H:%M:%S')} {cell.job}", flush=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trace = profile / f"trace_{backbone}_{variant}.json.gz" if profile else None
    with (
        BusySampler(lambda: journal.exists() and journal.stat().st_size > 0) as sampler,
        Tallies() as tallies,
        gpu_gaps.profiled(generate.JobGenerator, trace) if trace else contextlib.nullcontext(),
    ):
        generate.run_job(config, cell.job, progress=False)
    job_s = time.perf_counter() - start
    manifest = pd.read_parquet(paths.manifest(cell.id))
    warm = manifest[~manifest["warmup"]] if (~manifest["warmup"]).any() else manifest
    eager = Cell.of(backbone, adapter, "eager", STEPS[backbone])
    diffs = [
        int(np.abs(pixels(paths.image(cell.id, item.id)) - pixels(paths.image(eager.id, item.id))).max())
        for item in grid.items
        if paths.image(eager.id, item.id).exists() and config["weights"] != "random"
    ]
    per_image = float(warm["latency_s"].median())
    images = len(manifest)
    adapter_calls = float(manifest["adapter_steps"].mean())
    counted = tallies.count("calls")  # eager: no wrapper; the adapter runs on every call
    calls = adapter_calls if counted is None else counted / images
    computed = tallies.count("computed")
    return {
        "backbone": backbone,
        "steps": STEPS[backbone],
        "variant": variant,
        "switches": dict(grid.acceleration(cell)),
        "images": images,
        "per_step_s": float(warm["denoise_s"].median()) / STEPS[backbone],
        "per_image_s": per_image,
        "compile_s": float(manifest.loc[manifest["warmup"], "latency_s"].max() - per_image),
        "job_s": job_s,
        "peak_mem_gib": float(manifest["peak_mem_mb"].max()) / 1024,
        "gpu_busy": None if trace else sampler.busy,  # the trace's export stalls the job: `gaps` says
        "calls": calls,
        "steps_computed": calls if computed is None else computed / images,
        "adapter_calls": adapter_calls,
        "graphs": counters["stats"]["unique_graphs"],
        "max_pixel_diff": max(diffs) if diffs else None,
        **({"gaps": gpu_gaps.gaps(trace)} if trace and trace.exists() else {}),
    }


def table(rows: list[dict], card: str) -> str:
    lines = [
        f"Card: {card}. Speed-up = eager per-image latency / this variant's, same backbone, same run.",
        "",
        "| backbone | variant | per step | per image | speed-up | compile | peak memory | GPU busy "
        "| calls computed | adapter calls | max pixel diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    eager = {r["backbone"]: r["per_image_s"] for r in rows if r["variant"] == "eager"}

    def fmt(value, pattern):
        return "-" if value is None else pattern.format(value)

    for r in rows:
        speedup = eager[r["backbone"]] / r["per_image_s"] if r["backbone"] in eager else None
        # nothing compiled: warm-up minus warm image is first-image noise (0-1 s, at times negative)
        compiled = r["switches"].get("compile", "none") != "none"
        compile_s = f"{r['compile_s']:.0f} s" if compiled else "–"
        lines.append(
            f"| {r['backbone']}-{r['steps']} | {r['variant']} | {r['per_step_s']:.3f} s "
            f"| {r['per_image_s']:.2f} s "
            f"| {fmt(speedup, '{:.2f}x')} | {compile_s} "
            f"| {r['peak_mem_gib']:.1f} GiB "
            f"| {fmt(r['gpu_busy'], '{:.0%}')} | {r['steps_computed']:.3g}/{r['calls']:.3g} "
            f"| {r['adapter_calls']:.3g}/{r['calls']:.3g} "
            f"| {fmt(r['max_pixel_diff'], '{}')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fewstep-acceleration"))
    parser.add_argument("--backbones", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--dev-images", type=int, default=3, help="images per flux-dev job (the first warms up)"
    )
    parser.add_argument("--schnell-images", type=int, default=8, help="images per flux-schnell job")
    parser.add_argument("--sd-images", type=int, default=4, help="images per sd15 or sdxl job")
    parser.add_argument("--sd-size", type=int, default=0, help="SD image side; 0: the family's (512 / 1024)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--cache-threshold", type=float, default=0.08)
    parser.add_argument(
        "--weights", default="random", choices=["random", "tiny"], help="tiny: a CPU smoke run"
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--profile",
        action="store_true",
        help="trace batches 2-4 of each job with torch.profiler (trace_*.json.gz under --out) and add "
        "their GPU idle gaps and causes to the row (`gaps`); those batches' timings carry profiler cost",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "benchmarks/acceleration.py needs a CUDA GPU (or --weights tiny --device cpu for a smoke run)"
        )
    if "eager" not in args.variants:
        args.variants.insert(0, "eager")  # every ratio and pixel difference is against eager
    args.images = {
        "flux-dev": args.dev_images,
        "flux-schnell": args.schnell_images,
        "sd15": args.sd_images,
        "sdxl": args.sd_images,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    rows: list[dict] = []
    for backbone in args.backbones:
        config = config_for(args, backbone)
        eager = Cell.of(backbone, ADAPTERS[backbone][0], "eager", STEPS[backbone])
        for name in Grid(config).generation_models(eager):
            prepare_model(config, name)
        write_embeddings(config, backbone)
        for variant in args.variants:
            if not takes(backbone, variant):
                print(f"{backbone} {variant}: not taken by its family (acceleration_switches)", flush=True)
                continue
            try:
                rows.append(run_job(config, backbone, variant, args.out if args.profile else None))
            except torch.OutOfMemoryError as err:
                print(f"{backbone} {variant}: out of memory ({str(err).splitlines()[0]})", flush=True)
                continue
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            print(json.dumps(rows[-1]), flush=True)
            record = {
                "card": card,
                "torch": torch.__version__,
                "command": " ".join(sys.argv),
                "date": time.strftime("%Y-%m-%d"),
                "size": args.size,
                "rows": rows,
            }
            (args.out / "acceleration.json").write_text(json.dumps(record, indent=1))
            (args.out / "acceleration.md").write_text(table(rows, card))
    print(table(rows, card))


if __name__ == "__main__":
    main()
