"""FLUX.2 [klein] 4B's registered model.

One `ModelSpec` (``flux2-klein-4b``) with its recipe (`fewstep.registry.spec.Recipe`): ``real``
fetches the diffusers folders of black-forest-labs/FLUX.2-klein-4B (the single-file checkpoint
at the repo's root is skipped), ``tiny`` builds the seeded stand-ins in that layout
(`fewstep.families.klein.tiny`), ``random`` writes the published configs, which the loaders build
full-size with random weights on the device (honest latency, meaningless images; the loaders are
in `fewstep.families.klein.pipeline`). Importing this module registers the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewstep.families.klein.specs import MODEL_INDEX, QWEN3_4B, SCHEDULER, TRANSFORMER, VAE
from fewstep.registry.catalog import register
from fewstep.registry.hub import fetch_snapshot
from fewstep.registry.spec import ModelSpec, Recipe, Usage

#: what a generation job loads from the repo
PATTERNS = ["model_index.json", "scheduler/*", "transformer/*", "vae/*"]
#: the Qwen3 text encoder and its tokenizer, fetched only when the sweep embeds prompts with it
TEXT_PATTERNS = ["text_encoder/*", "tokenizer/*"]
REQUIRED = [
    "model_index.json",
    "transformer/config.json",
    "vae/config.json",
    "scheduler/scheduler_config.json",
]
TEXT_REQUIRED = ["text_encoder/config.json", "tokenizer/tokenizer.json"]


def _patterns(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return PATTERNS + (TEXT_PATTERNS if usage.embeds_text else [])


def _required(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return REQUIRED + (TEXT_REQUIRED if usage.embeds_text else [])


def _tiny(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.klein.tiny import build_klein

    build_klein(folder)


def _random(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """Only configs (and a tiny tokenizer, which only turns text into ids): the loaders build
    full-size modules on the device."""
    from transformers import Qwen3Config

    from fewstep.core.io import atomic_write_json as write
    from fewstep.registry.tiny import build_qwen_tokenizer

    write(folder / "transformer" / "config.json", TRANSFORMER)
    write(folder / "vae" / "config.json", VAE)
    write(folder / "scheduler" / "scheduler_config.json", SCHEDULER)
    write(folder / "model_index.json", MODEL_INDEX)
    Qwen3Config(**QWEN3_4B).save_pretrained(folder / "text_encoder")
    build_qwen_tokenizer(folder / "tokenizer")


KLEIN_4B = ModelSpec(
    "flux2-klein-4b",
    "FLUX.2-klein-4B",
    "black-forest-labs/FLUX.2-klein-4B",
    # GB of the download estimate, bf16 parameter counts x 2 bytes: the 3.9B transformer, the 84M
    # VAE, the Qwen3-4B text encoder
    extra={"published_gb": {"transformer/*": 7.75, "vae/*": 0.17, "text_encoder/*": 8.04}},
    recipe=Recipe(fetch=fetch_snapshot, tiny=_tiny, required=_required, random=_random, patterns=_patterns),
)
BACKBONES = {KLEIN_4B.name: KLEIN_4B}
register(*BACKBONES.values())


def generation_weights(model: str) -> dict[str, tuple[str, ...]]:
    """Registry model -> the folders inside it that a generation job reads (`pipeline.load_klein`)."""
    return {model: ("transformer/", "vae/", "scheduler/")}
