"""GPU latency of FLUX.1 Kontext [dev] beside FLUX.1 dev/schnell + InfuseNet, in one run.

Full-size transformers, InfuseNet and VAEs with *random* weights (latency does not depend on
weight values), built from the published configs by the workflow's `random` mode and run through
the same prepare -> embed -> generate code as the Snakemake rules, one cell after another on one
card. Kontext's input image is the identity's photo (512 px, so Kontext's preferred 1024x1024:
4096 reference tokens beside the 4096 of a 1024² output). Each cell's line is printed as it
finishes; ratios are taken between cells of this run.

    python benchmarks/kontext_latency.py --out bench    # one 80 GB GPU, bf16, ~5 minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from latency import summarise
from timing import card_name, free_memory, require_device, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from fewstep.core.study import Study, parse_config  # noqa: E402
from fewstep.grid import Grid  # noqa: E402
from fewstep.jobs import generate, precompute  # noqa: E402
from fewstep.jobs.prepare import prepare_model  # noqa: E402


def config_for(args: argparse.Namespace) -> Study:
    root = args.work
    return parse_config(
        {
            "sweep": "kontext-latency",
            "weights": args.weights,
            "device": args.device,
            "dtype": "bfloat16",
            "results_dir": str(root / "results"),
            "models_dir": str(root / "models"),
            "reports_dir": str(root / "reports"),
            "resolution": {"width": args.size, "height": args.size},
            "identities": [{"id": "astronaut", "image": "builtin:astronaut"}],
            "prompts": [{"id": "portrait", "text": "A studio portrait photo of the person"}],
            "seeds": list(range(args.images)),
            "backbones": {
                "flux-dev": {"model": "flux-dev", "steps": [args.dev_steps], "guidance": 3.5},
                "flux-schnell": {
                    "model": "flux-schnell",
                    "steps": [args.schnell_steps],
                    "guidance": None,
                    "max_sequence_length": 256,
                },
                "kontext": {
                    "family": "kontext",
                    "model": "flux-kontext-dev",
                    "steps": args.kontext_steps,  # guidance: the family's (the card's 2.5)
                },
            },
            "adapters": {
                "infusenet-aes": {"kind": "infusenet"},
                "kontext-photo": {"kind": "native_reference"},
            },
            "cells": [
                {"backbones": ["flux-dev", "flux-schnell"], "adapters": ["infusenet-aes"]},
                {"backbones": ["kontext"], "adapters": ["kontext-photo"]},
            ],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fewstep-kontext-latency"))
    parser.add_argument("--images", type=int, default=3, help="images per cell (the first is warm-up)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dev-steps", type=int, default=28)
    parser.add_argument("--schnell-steps", type=int, default=4)
    parser.add_argument("--kontext-steps", type=int, nargs="+", default=[28])
    parser.add_argument(
        "--weights", default="random", choices=["random", "tiny"], help="tiny: a CPU smoke run"
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    require_device(args.device, "benchmarks/kontext_latency.py")
    args.out.mkdir(parents=True, exist_ok=True)
    config = config_for(args)
    grid = Grid.of(config)
    for name in grid.image_models:  # no scoring network: nothing is scored
        prepare_model(config, name)
    precompute.embed_prompts(config)
    precompute.embed_identities(config)
    frames = []
    for cell in grid.cells:
        start = time.perf_counter()
        manifest = pd.read_parquet(generate.run(config, cell.id, progress=False))
        manifest["job_s"], manifest["variant"] = time.perf_counter() - start, "base"
        frames.append(manifest)
        free_memory()
        row = summarise(manifest).iloc[0]
        print(
            f"{cell.id}: {row['latency_s']:.3f} s/image, {row['per_step_s']:.4f} s/step, "
            f"decode {row['decode_s']:.3f} s, peak {row['peak_mem_gib']:.1f} GiB",
            flush=True,
        )
    per_image = pd.concat(frames, ignore_index=True)
    table = summarise(per_image).drop(columns="variant")
    latency = dict(zip(table["cell"], table["latency_s"], strict=True))
    kontext = f"kontext/kontext-photo/{max(args.kontext_steps)}"
    ratios = {
        f"{kontext} over {base}": latency[kontext] / latency[base]
        for base in (
            f"flux-dev/infusenet-aes/{args.dev_steps}",
            f"flux-schnell/infusenet-aes/{args.schnell_steps}",
        )
    }
    card = card_name(args.device)
    meta = {
        "card": card,
        "torch": torch.__version__,
        "size": args.size,
        "ratios": ratios,
        "date": time.strftime("%Y-%m-%d"),
    }
    header = f"{card}, torch {torch.__version__}, {args.size}x{args.size}, {args.weights} weights, bf16"
    write_report(args.out, "kontext_latency", per_image, table, meta, header, digits=4)
    print("latency ratios:", {k: round(v, 2) for k, v in ratios.items()})


if __name__ == "__main__":
    main()
