"""GPU latency of the distilled SD backbones beside their base, under the same IP-Adapter (issue 25).

Every backbone runs through the workflow's own generation path: the family's `cell_pipeline`
loads the base model, the distillation (`fewstep.families.sd.distilled`) and the adapter from
folders the registry recipes prepare (`random`: the published architectures drawn on the device,
latency does not depend on weight values; a fused LoRA or a distilled UNet keeps the base's
shapes, so only steps, guidance, scheduler and resolution differ), with prompt and reference
embeddings precomputed as the embed jobs make them. Base and distilled cells of a family run
side by side in one process, one card, so `vs_base` is a ratio within one run.

    python benchmarks/sd_distilled_latency.py --out bench                              # a CUDA GPU
    python benchmarks/sd_distilled_latency.py --out bench --weights tiny --device cpu  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from timing import card_name, free_memory, require_device, warm_images, write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from fewstep.core.study import Study, parse_config  # noqa: E402
from fewstep.families.base import ItemInputs, synchronize  # noqa: E402
from fewstep.families.sd.distillations import DISTILLATIONS  # noqa: E402
from fewstep.families.sd.family import ADAPTER_KIND, SD_FAMILIES  # noqa: E402
from fewstep.registry.catalog import lookup, model_folder  # noqa: E402
from fewstep.registry.spec import Usage  # noqa: E402

#: the distillations timed by default, each at its card's steps (one of each form and scheduler)
DEFAULT = {
    "sd15": ["lcm-lora", "hyper-2step", "hyper-1step"],
    "sdxl": [
        "lightning-4step-unet",
        "lightning-4step-lora",
        "hyper-4step",
        "hyper-1step",
        "lcm-lora",
        "turbo",
    ],
}
ADAPTERS = {
    "none": {"kind": "none"},
    "plus": {"kind": ADAPTER_KIND, "role": "object", "file": "plus", "scale": 1.0},
}
EAGER = {"compile": "none", "fp8": "none", "cache": "none"}


def backbones(family: str, args: argparse.Namespace) -> list[tuple[dict, list[int]]]:
    """(backbone settings, steps) of the base and each distillation timed."""
    base = {"family": family, "model": family, "negative_prompt": "blurry"}
    if args.size:
        base["resolution"] = args.size
    cells = [(base, args.base_steps)]
    for name in args.distillations or DEFAULT[family]:
        if name in DISTILLATIONS[family]:
            cells.append((dict(base, distillation=name), list(DISTILLATIONS[family][name].steps)))
    return cells


def prepare_models(config: Study, family: str, cells: list[tuple[dict, list[int]]]) -> None:
    """The base, h94's files and the publishers' files, built by the registry's own recipes."""
    sd = SD_FAMILIES[family]
    used = [backbone for backbone, _ in cells]
    adapters = tuple((family, a) for a in ADAPTERS.values())
    models = {family} | {m for b in used for a in ADAPTERS.values() for m in sd.cell_models(b, a)}
    for name in sorted(models):
        recipe = lookup(name).recipe
        build = recipe.tiny if config.weights == "tiny" else (recipe.random or recipe.tiny)
        usage = Usage(embeds_text=name == family, family_adapters=adapters, backbones=tuple(used))
        build(config, lookup(name), model_folder(config, name), usage)


def run_family(family: str, args: argparse.Namespace) -> list[dict]:
    from PIL import Image

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = parse_config(
        {
            "sweep": "sd-distilled-latency",
            "weights": args.weights,
            "device": args.device,
            "dtype": "bfloat16" if args.device == "cuda" else "float32",
            **{key: str(args.work / key.removesuffix("_dir")) for key in ("results_dir", "reports_dir")},
            "models_dir": str(args.work),
            "references": [{"id": "picture", "image": "builtin:coffee", "role": "object"}],
            "prompts": [{"id": "lighthouse", "text": "a lighthouse, watercolor"}],
            "seeds": [0],
            "backbones": {family: {"family": family, "model": family, "steps": [1]}},
            "adapters": {"none": {"kind": "none"}},
            "cells": [{"backbones": [family], "adapters": ["none"]}],
        }
    )
    sd, cells = SD_FAMILIES[family], backbones(family, args)
    prepare_models(config, family, cells)
    prompt = sd.prompt_encoder(config, family, device, dtype).encode("a lighthouse, watercolor", cells[0][0])
    picture = Image.new("RGB", (512, 512), (200, 120, 40))
    reference = sd.reference_encoder(config, "plus", device, dtype).encode(picture)
    free_memory()
    rows = []
    for backbone, steps_list in cells:
        for adapter_name in args.adapters:
            adapter = ADAPTERS[adapter_name]
            cell = sd.cell_pipeline(config, backbone, adapter, EAGER, device, dtype)
            inputs = ItemInputs(
                prompt={k: v.to(device, dtype) for k, v in prompt.items()},
                reference_id="picture",
                reference={"image_embeds": reference} if adapter["kind"] == ADAPTER_KIND else None,
            )
            condition, _ = cell.condition(inputs)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for steps in steps_list:
                for image in range(args.images):
                    start = time.perf_counter()
                    denoised = cell.denoise(cell.stack([condition]), [image], steps)
                    synchronize(device)
                    denoise_s = time.perf_counter() - start
                    cell.decode(denoised.latents)
                    synchronize(device)
                    rows.append(
                        {
                            "family": family,
                            "backbone": backbone.get("distillation", "base"),
                            "adapter": adapter_name,
                            "steps": steps,
                            "image": image,
                            "size": cell.side,
                            "guidance": cell.guidance,
                            "scheduler": type(cell.pipe.scheduler).__name__,
                            "unet_calls": len(denoised.sigmas),
                            "denoise_s": denoise_s,
                            "latency_s": time.perf_counter() - start,
                            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda"
                            else float("nan"),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
            del cell
            free_memory()
    return rows


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Medians over the images after the first of each cell; `vs_base`: the base cell (same family
    and adapter, at the base steps) over this one."""
    keys = ["family", "backbone", "adapter", "steps"]
    table = (
        warm_images(frame, keys)
        .groupby(keys, sort=False)
        .agg(
            size=("size", "first"),
            guidance=("guidance", "first"),
            scheduler=("scheduler", "first"),
            unet_calls=("unet_calls", "first"),
            latency_s=("latency_s", "median"),
            denoise_s=("denoise_s", "median"),
            peak_mem_gib=("peak_mem_gib", "max"),
        )
        .reset_index()
    )
    base = table[table["backbone"] == "base"].groupby(["family", "adapter"])["latency_s"].max()
    table["vs_base"] = [
        base.get((r.family, r.adapter), float("nan")) / r.latency_s for r in table.itertuples()
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fewstep-sd-distilled"))
    parser.add_argument("--families", nargs="+", default=list(SD_FAMILIES), choices=list(SD_FAMILIES))
    parser.add_argument(
        "--distillations", nargs="+", help="names of backbones.<id>.distillation (default: a set)"
    )
    parser.add_argument("--base-steps", nargs="+", type=int, default=[30], help="the base backbones' steps")
    parser.add_argument("--adapters", nargs="+", default=list(ADAPTERS), choices=list(ADAPTERS))
    parser.add_argument("--images", type=int, default=3, help="images per cell (the first is warm-up)")
    parser.add_argument("--size", type=int, default=0, help="image side; 0: each backbone's (card or base)")
    parser.add_argument(
        "--weights", default="random", choices=["random", "tiny"], help="tiny: a CPU smoke run"
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    require_device(args.device, "benchmarks/sd_distilled_latency.py")
    args.out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([row for family in args.families for row in run_family(family, args)])
    table = summarise(frame)
    import diffusers

    card = card_name(args.device)
    meta = {
        "card": card,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "weights": args.weights,
        "dtype": "bfloat16" if args.device == "cuda" else "float32",
        "date": time.strftime("%Y-%m-%d"),
    }
    header = f"{card}, torch {torch.__version__}, diffusers {diffusers.__version__}, {args.weights} weights"
    write_report(args.out, "sd_distilled_latency", frame, table, meta, header, digits=4)


if __name__ == "__main__":
    main()
