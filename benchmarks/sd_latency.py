"""GPU latency of SD1.5 and SDXL steps with and without IP-Adapter (plain, Plus, FaceID with its
LoRA), random full-size weights.

The published architectures (UNet, VAE, text encoders, h94's adapters and image
encoders) built on the device by the `random` mode of `fewstep.families.sd`
(latency and memory do not depend on weight values), run through the same
`generate` the workflow calls: diffusers' own pipeline, timed per step by
`callback_on_step_end`. All cells of a family run side by side in one process,
so the adapter's cost is a ratio within one run.

    python benchmarks/sd_latency.py --out bench                   # needs a CUDA GPU
    python benchmarks/sd_latency.py --out bench --weights tiny --device cpu   # CPU smoke run
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

from fewstep.families.sd import faceid, specs, tiny  # noqa: E402
from fewstep.families.sd.pipeline import (  # noqa: E402
    apply_scale,
    attach_ip_adapter,
    encode_prompt,
    encode_reference,
    generate,
    load_pipeline,
)
from fewstep.families.sd.random_weights import write_random_ip_adapter, write_random_pipeline  # noqa: E402

ADAPTERS = ["none", "plain", "plus", "faceid"]
FACEID_FOLDER = "IP-Adapter-FaceID"


def prepare(family: specs.SDFamily, root: Path, weights: str) -> None:
    if weights == "tiny":
        tiny.build_tiny_pipeline(family, root / family.folder)
        tiny.build_tiny_ip_adapter(root / "IP-Adapter", [family], ["plain", "plus"])
        faceid.write_faceid_file(root / FACEID_FOLDER, family, tiny.tiny_unet_config(family), rank=4, std=0.2)
    else:
        write_random_pipeline(family, root / family.folder)
        write_random_ip_adapter(root / "IP-Adapter", family, ["plain", "plus"])


def run_family(family: specs.SDFamily, args: argparse.Namespace) -> list[dict]:
    from PIL import Image

    device, dtype = torch.device(args.device), torch.bfloat16 if args.device == "cuda" else torch.float32
    root = args.work / args.weights
    prepare(family, root, args.weights)
    folder, size = root / family.folder, args.size or family.resolution
    if args.weights == "tiny":
        size = 64
    load = dict(weights=args.weights, device=device, dtype=dtype)
    text = load_pipeline(family, folder, text_encoders=True, denoiser=False, **load)
    prompt = encode_prompt(text, "a watercolor painting of a lighthouse", "blurry", device)
    del text
    reference = Image.new("RGB", (512, 512), (200, 120, 40))
    rows = []
    for adapter in ADAPTERS:
        pipe = load_pipeline(family, folder, **load)
        embeds = None
        if adapter == "faceid":  # the face embedding's documented ip_adapter_image_embeds; LoRA via PEFT
            faceid.attach_faceid(pipe, family, root / FACEID_FOLDER, weights=args.weights)
            face = torch.nn.functional.normalize(torch.randn(1, faceid.EMBEDDING_DIM), dim=-1)
            embeds = [faceid.image_embeds(face).to(device, dtype)]
            apply_scale(pipe, 1.0, "benchmark.faceid")
        elif adapter != "none":
            attach_ip_adapter(
                pipe, family, adapter, root / "IP-Adapter", weights=args.weights, with_encoder=True
            )
            embeds = encode_reference(pipe, reference, device)
            pipe.image_encoder = None  # generation jobs hold no encoder
            apply_scale(pipe, 1.0, f"benchmark.{adapter}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for steps in args.steps:
            for image in range(args.images):
                result = generate(
                    pipe,
                    prompt=prompt,
                    image_embeds=embeds,
                    steps=steps,
                    guidance_scale=family.guidance_scale,
                    seed=image,
                    height=size,
                    width=size,
                )
                rows.append(
                    {
                        "family": family.name,
                        "adapter": adapter,
                        "steps": steps,
                        "image": image,
                        "size": size,
                        "unet_calls": len(result.timesteps),
                        "denoise_s": sum(result.step_seconds),
                        "later_step_s": pd.Series(result.step_seconds[1:]).median(),
                        "decode_s": result.decode_seconds,
                        "latency_s": sum(result.step_seconds) + result.decode_seconds,
                        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30
                        if device.type == "cuda"
                        else float("nan"),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        del pipe
        free_memory()
    return rows


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Medians over the images after the first of each cell (which pays one-off set-up)."""
    cell_keys = ["family", "adapter", "steps"]
    table = (
        warm_images(frame, cell_keys)
        .groupby(cell_keys, sort=False)
        .agg(
            unet_calls=("unet_calls", "first"),
            latency_s=("latency_s", "median"),
            denoise_s=("denoise_s", "median"),
            step_s=("later_step_s", "median"),
            decode_s=("decode_s", "median"),
            peak_mem_gib=("peak_mem_gib", "max"),
        )
        .reset_index()
    )
    none = table[table["adapter"] == "none"].set_index(["family", "steps"])["step_s"]
    table["step_vs_none"] = [
        row.step_s / none.get((row.family, row.steps), float("nan")) for row in table.itertuples()
    ]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fewstep-sd-latency"))
    parser.add_argument("--families", nargs="+", default=list(specs.FAMILIES), choices=list(specs.FAMILIES))
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 30, 50])
    parser.add_argument("--images", type=int, default=3, help="images per cell (the first is warm-up)")
    parser.add_argument("--size", type=int, default=0, help="image side; 0: the family's (512 / 1024)")
    parser.add_argument(
        "--weights", default="random", choices=["random", "tiny"], help="tiny: a CPU smoke run"
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    require_device(args.device, "benchmarks/sd_latency.py")
    args.out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        [row for family in args.families for row in run_family(specs.FAMILIES[family], args)]
    )
    table = summarise(frame)
    card = card_name(args.device)
    meta = {
        "card": card,
        "torch": torch.__version__,
        "weights": args.weights,
        "dtype": "bfloat16" if args.device == "cuda" else "float32",
        "date": time.strftime("%Y-%m-%d"),
    }
    import diffusers

    meta["diffusers"] = diffusers.__version__
    header = f"{card}, torch {torch.__version__}, diffusers {diffusers.__version__}, {args.weights} weights"
    write_report(args.out, "sd_latency", frame, table, meta, header, digits=4)


if __name__ == "__main__":
    main()
