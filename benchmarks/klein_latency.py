"""GPU latency of FLUX.2 [klein] 4B beside FLUX.1-dev and FLUX.1-schnell with InfuseNet, in one run.

Full-size modules with *random* weights (latency and memory do not depend on weight values),
built from the published configs by the workflow's `random` mode and run through the same
prepare -> embed -> generate code the Snakemake rules call (`latency.run_variant`). klein takes
the identity's photo natively as its reference image (adapter kind native_reference), so its
cells pay for the photo's tokens in every step; its bare cell shows what they cost. Every number
comes from the cells' manifests; ratios are between cells of this run, on this card.

    python benchmarks/klein_latency.py --out bench             # needs a CUDA GPU (~40 GB)
    python benchmarks/klein_latency.py --out bench --weights tiny --device cpu --size 64   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from latency import run_variant, summarise
from timing import card_name, require_device, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from fewstep.core.study import Study, parse_config  # noqa: E402


def config_for(args: argparse.Namespace) -> Study:
    """FLUX dev and schnell with InfuseNet at the study's steps, klein at its card's steps and
    around them with its reference, and bare at the card's steps."""
    return parse_config(
        {
            "sweep": "klein-latency",
            "weights": args.weights,
            "device": args.device,
            "dtype": "bfloat16",
            "results_dir": str(args.work / "results"),
            "models_dir": str(args.work / "models"),
            "reports_dir": str(args.work / "reports"),
            "resolution": {"width": args.size, "height": args.size},
            "identities": [{"id": "person", "image": args.identity}],
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
                "klein": {"family": "klein", "model": "flux2-klein-4b", "steps": args.klein_steps},
            },
            "adapters": {
                "infusenet-aes": {"kind": "infusenet"},
                "reference": {"kind": "native_reference"},
                "none": {"kind": "none"},
            },
            "cells": [
                {"backbones": ["flux-dev", "flux-schnell"], "adapters": ["infusenet-aes"]},
                {"backbones": ["klein"], "adapters": ["reference"]},
                {"backbones": ["klein"], "adapters": ["none"], "steps": [args.card_steps]},
            ],
        }
    )


def ratios(table: pd.DataFrame, args: argparse.Namespace) -> dict[str, float]:
    """Per-image latency of FLUX dev and schnell (InfuseNet) over klein at the card's steps."""
    latency = dict(zip(table["cell"], table["latency_s"], strict=True))
    klein = latency[f"klein/reference/{args.card_steps}"]
    return {
        f"flux-dev-{args.dev_steps}/klein-{args.card_steps}": latency[
            f"flux-dev/infusenet-aes/{args.dev_steps}"
        ]
        / klein,
        f"flux-schnell-{args.schnell_steps}/klein-{args.card_steps}": latency[
            f"flux-schnell/infusenet-aes/{args.schnell_steps}"
        ]
        / klein,
        "reference/bare (klein)": klein / latency[f"klein/none/{args.card_steps}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fewstep-klein-latency"))
    parser.add_argument("--images", type=int, default=3, help="images per cell (the first is warm-up)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dev-steps", type=int, default=28)
    parser.add_argument("--schnell-steps", type=int, default=4)
    parser.add_argument("--klein-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--card-steps", type=int, default=4, help="klein's recommended steps (one of --klein-steps)"
    )
    parser.add_argument(
        "--identity", default="builtin:astronaut", help="the reference photo (builtin:astronaut is 512x512)"
    )
    parser.add_argument(
        "--weights", default="random", choices=["random", "tiny"], help="tiny: a CPU smoke run"
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    require_device(args.device, "benchmarks/klein_latency.py")
    if args.card_steps not in args.klein_steps:
        sys.exit(f"--card-steps {args.card_steps} is not one of --klein-steps {args.klein_steps}; add it")
    args.out.mkdir(parents=True, exist_ok=True)
    per_image = run_variant(config_for(args))
    per_image["variant"] = "base"
    table = summarise(per_image).drop(columns="variant")
    card = card_name(args.device)
    meta = {
        "card": card,
        "torch": torch.__version__,
        "size": args.size,
        "identity": args.identity,
        "ratios": ratios(table, args),
        "date": time.strftime("%Y-%m-%d"),
    }
    dtype = "bf16" if args.device == "cuda" else "float32"  # the CPU computes in float32
    header = f"{card}, torch {torch.__version__}, {args.size}x{args.size}, {args.weights} weights, {dtype}"
    write_report(args.out, "klein_latency", per_image, table, meta, header, digits=3)
    print("latency ratios:", {k: round(v, 2) for k, v in meta["ratios"].items()})


if __name__ == "__main__":
    main()
