"""GPU latency of the study's configurations through fewstep's own pipeline.

Full-size FLUX.1-dev and FLUX.1-schnell transformers, InfuseNet and VAE with
*random* weights (latency and memory do not depend on weight values), built
from the published configs by the workflow's `random` mode, then run through
the same prepare -> embed -> generate code the Snakemake rules call. Every
number comes from the cells' manifests (latency per image, denoise, decode,
peak CUDA memory); ratios are taken between cells of the same run.

    python benchmarks/latency.py --out bench            # needs a CUDA GPU (~80 GB for 'base')

Variants: base (bf16, all on the GPU), fp8 (transformer + InfuseNet weights
stored in float8 e4m3, see config memory.fp8_weights), offload (group offload,
config memory.offload: group).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from timing import card_name, free_memory, require_device, warm_images, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from fewstep.core.study import parse_config  # noqa: E402
from fewstep.grid import Grid  # noqa: E402
from fewstep.jobs import generate, precompute  # noqa: E402
from fewstep.jobs.prepare import prepare_model  # noqa: E402

VARIANTS = {
    "base": {"fp8_weights": False, "offload": "none"},
    "fp8": {"fp8_weights": True, "offload": "none"},
    "offload": {"fp8_weights": False, "offload": "group"},
}


def config_for(variant: str, args: argparse.Namespace) -> dict:
    root, images, size = args.work, args.images, args.size
    dev_steps, schnell_steps = args.dev_steps, args.schnell_steps
    adapters = ["infusenet-aes", "none"] if variant == "base" else ["infusenet-aes"]
    backbones = {
        "flux-dev": {"model": "flux-dev", "steps": [dev_steps], "guidance": 3.5, "max_sequence_length": 512},
        "flux-schnell": {
            "model": "flux-schnell",
            "steps": [schnell_steps],
            "guidance": None,
            "max_sequence_length": 256,
        },
    }
    cells = [
        {"backbones": ["flux-schnell"] if variant == "offload" else list(backbones), "adapters": adapters}
    ]
    return parse_config(
        {
            "sweep": f"latency-{variant}",
            "weights": args.weights,
            "device": args.device,
            "dtype": "bfloat16",
            "results_dir": str(root / "results"),
            "models_dir": str(root / "models"),
            "reports_dir": str(root / "reports"),
            "resolution": {"width": size, "height": size},
            "identities": [{"id": "astronaut", "image": "builtin:astronaut"}],
            "prompts": [{"id": "portrait", "text": "A studio portrait photo of the person"}],
            "seeds": list(range(images)),
            "backbones": backbones,
            "adapters": {"infusenet-aes": {"kind": "infusenet"}, "none": {"kind": "none"}},
            "cells": cells,
            "memory": VARIANTS[variant],
        }
    )


def run_variant(config: dict) -> pd.DataFrame:
    grid = Grid(config)
    # no scoring network: nothing is scored, and an offline GPU host may lack the trained files
    for name in grid.image_models:
        prepare_model(config, name)
    precompute.embed_prompts(config)
    precompute.embed_identities(config)
    frames = []
    for cell in grid.cells:
        start = time.perf_counter()
        manifest = pd.read_parquet(generate.run(config, cell.id))
        manifest["job_s"] = time.perf_counter() - start
        frames.append(manifest)
        free_memory()
    return pd.concat(frames, ignore_index=True)


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Median over images after the first (which pays one-off CUDA/cuBLAS set-up)."""
    cell_keys = ["variant", "cell_id"]
    warm_cells = warm_images(frame, cell_keys).groupby(cell_keys, sort=False)
    rows = []
    for (variant, cell), group in frame.groupby(cell_keys, sort=False):
        warm = warm_cells.get_group((variant, cell))
        steps = int(group["steps"].iloc[0])
        rows.append(
            {
                "variant": variant,
                "cell": cell,
                "images": len(group),
                "first_image_s": group["latency_s"].iloc[0],
                "latency_s": warm["latency_s"].median(),
                "denoise_s": warm["denoise_s"].median(),
                "per_step_s": warm["denoise_s"].median() / steps,
                "decode_s": warm["decode_s"].median(),
                "peak_mem_gib": group["peak_mem_mb"].max() / 1024,
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fewstep-latency"))
    parser.add_argument("--images", type=int, default=3, help="images per cell (the first is warm-up)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dev-steps", type=int, default=28)
    parser.add_argument("--schnell-steps", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--weights", default="random", choices=["random", "tiny"], help="tiny: a CPU smoke run"
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    require_device(args.device, "benchmarks/latency.py")
    args.out.mkdir(parents=True, exist_ok=True)
    frames = []
    for variant in args.variants:
        config = config_for(variant, args)
        try:
            frame = run_variant(config)
        except torch.OutOfMemoryError as err:
            print(f"{variant}: out of memory ({str(err).splitlines()[0]})")
            continue
        frame["variant"] = variant
        frames.append(frame)
    per_image = pd.concat(frames, ignore_index=True)
    table = summarise(per_image)
    card = card_name(args.device)
    ratios = {}
    for variant, group in table.groupby("variant"):
        by_cell = dict(zip(group["cell"], group["latency_s"], strict=True))
        dev = by_cell.get(f"flux-dev/infusenet-aes/{args.dev_steps}")
        schnell = by_cell.get(f"flux-schnell/infusenet-aes/{args.schnell_steps}")
        if dev and schnell:
            ratios[variant] = dev / schnell
    meta = {
        "card": card,
        "torch": torch.__version__,
        "size": args.size,
        "ratios_dev_over_schnell": ratios,
        "date": time.strftime("%Y-%m-%d"),
    }
    header = f"{card}, torch {torch.__version__}, {args.size}x{args.size}, {args.weights} weights"
    write_report(args.out, "latency", per_image, table, meta, header, digits=3)
    print("dev/schnell latency ratio per variant:", {k: round(v, 2) for k, v in ratios.items()})


if __name__ == "__main__":
    main()
