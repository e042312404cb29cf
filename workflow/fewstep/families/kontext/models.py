"""FLUX.1 Kontext [dev]'s registered model (``flux-kontext-dev``); its loaders are in `pipeline`.

Its recipe has the three sources of every model (`fewstep.registry.spec.Recipe`): ``real``
fetches the published diffusers folders (the single-file checkpoints at the repo's root are
skipped); ``tiny`` builds seeded stand-ins in the same layout (`fewstep.families.kontext.tiny`);
``random`` writes the published configs, from which the loaders build full-size modules with
random weights on the device (honest latency, meaningless images). Importing this module
registers the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewstep.families.flux1 import BACKBONE_GB
from fewstep.families.kontext.specs import (
    KONTEXT_MODEL_INDEX,
    KONTEXT_SCHEDULER,
    KONTEXT_TRANSFORMER,
    KONTEXT_VAE,
    T5_XXL,
)
from fewstep.registry.catalog import register
from fewstep.registry.hub import fetch_snapshot
from fewstep.registry.spec import ModelSpec, Recipe, Usage
from fewstep.registry.text_encoders import CLIP_L_TEXT

#: what a generation job loads (transformer, VAE, scheduler) and, when it embeds prompts, the rest
GENERATION_PATTERNS = ["model_index.json", "scheduler/*", "transformer/*", "vae/*"]
TEXT_PATTERNS = ["text_encoder/*", "text_encoder_2/*", "tokenizer/*", "tokenizer_2/*"]
GENERATION_REQUIRED = ["model_index.json", "transformer/config.json", "vae/config.json"]
TEXT_REQUIRED = ["text_encoder/config.json", "text_encoder_2/config.json", "tokenizer_2/tokenizer.json"]


def _patterns(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return GENERATION_PATTERNS + (TEXT_PATTERNS if usage.embeds_text else [])


def _required(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return GENERATION_REQUIRED + (TEXT_REQUIRED if usage.embeds_text else [])


def _tiny(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.kontext import tiny

    tiny.build_kontext(folder)


def _random(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """Only configs: the loaders build full-size modules on the device."""
    from transformers import CLIPTextConfig, T5Config

    from fewstep.core.io import atomic_write_json as write
    from fewstep.registry.tiny import build_clip_tokenizer, build_t5_tokenizer

    write(folder / "transformer" / "config.json", KONTEXT_TRANSFORMER)
    write(folder / "vae" / "config.json", KONTEXT_VAE)
    write(folder / "scheduler" / "scheduler_config.json", KONTEXT_SCHEDULER)
    write(folder / "model_index.json", KONTEXT_MODEL_INDEX)
    CLIPTextConfig(**CLIP_L_TEXT).save_pretrained(folder / "text_encoder")
    T5Config(**T5_XXL).save_pretrained(folder / "text_encoder_2")
    # Tokenizers only turn text into ids; tiny ones keep random mode offline.
    build_clip_tokenizer(folder / "tokenizer")
    build_t5_tokenizer(folder / "tokenizer_2")


KONTEXT_DEV = ModelSpec(
    "flux-kontext-dev",
    "FLUX.1-Kontext-dev",
    "black-forest-labs/FLUX.1-Kontext-dev",
    gated=True,  # the FLUX.1 [dev] non-commercial licence must be accepted on the hub
    extra={"published_gb": BACKBONE_GB},  # FLUX.1 [dev]'s components and sizes
    recipe=Recipe(fetch=fetch_snapshot, tiny=_tiny, required=_required, random=_random, patterns=_patterns),
)
BACKBONES = {KONTEXT_DEV.name: KONTEXT_DEV}
register(KONTEXT_DEV)

#: config ``backbones.<id>.max_sequence_length`` unless set: the T5 length Kontext was trained with
MAX_SEQUENCE_LENGTH = 512


def max_sequence_length(backbone: Mapping[str, Any]) -> int:
    """The T5 tokens of a backbone's prompt embeddings (`MAX_SEQUENCE_LENGTH` unless set)."""
    length = backbone.get("max_sequence_length")
    return MAX_SEQUENCE_LENGTH if length is None else int(length)


#: the folders of the model a generation job reads (their digest is in every image's resume key)
GENERATION_FOLDERS = ("transformer/", "vae/", "scheduler/")
