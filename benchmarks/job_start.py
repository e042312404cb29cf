"""Where a GPU job's start goes: imports, the CUDA context, full-size random modules on the card.

    python benchmarks/job_start.py          # on a GPU host, twice: the second run has bytecode cached

Prints the seconds of each phase as a generation job meets them: torch, diffusers and
transformers, the diffusers model classes (their subpackages pull in torch._dynamo and peft), the
job's own modules, the CUDA context, and the FLUX.1 transformer (12B parameters, bf16) and the
SD1.5 UNet built from their configs on the card, as the workflow's `random` weights build them.
`fewstep.core.gpus.warm_imports` moves the imports before the card is taken.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

FLUX_TRANSFORMER = {  # FLUX.1-dev's transformer/config.json
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}


class Laps:
    def __init__(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        print(f"{phase}: {now - self.last:.2f} s", flush=True)
        self.last = now


def main() -> None:
    lap = Laps()
    import torch

    lap("import torch")
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    lap("import diffusers, transformers")
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    lap("diffusers model classes")
    import fewstep.jobs.generate  # noqa: F401
    import fewstep.jobs.score  # noqa: F401

    lap("fewstep job modules")
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: the rest times the card")
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    lap("CUDA context")
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        FluxTransformer2DModel.from_config(FLUX_TRANSFORMER)
        torch.cuda.synchronize()
        lap("FLUX.1 transformer from its config on the card, bf16")
        UNet2DConditionModel()
        torch.cuda.synchronize()
        lap("SD1.5 UNet from its config on the card, bf16")


if __name__ == "__main__":
    main()
