"""A tiny FLUX.1 Kontext [dev] with seeded random weights, in the published diffusers layout.

Built from the published configs (`fewstep.families.kontext.specs`) with only the sizes shrunk,
saved by `FluxKontextPipeline.save_pretrained` and loaded back through the family's real loaders
(`fewstep.families.kontext.models`). Its images are noise with the right shapes: they test the
plumbing, never the science, and every output says ``weights=tiny``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewstep.core.io import staged_dir
from fewstep.families.base import TinyCell
from fewstep.families.kontext.specs import KONTEXT_TRANSFORMER, KONTEXT_VAE
from fewstep.registry.tiny import build_clip_tokenizer, build_t5_tokenizer, manual_seed

JOINT_DIM = 32  # T5 d_model -> transformer joint_attention_dim
POOLED_DIM = 32  # CLIP hidden size -> pooled_projection_dim
TINY_TRANSFORMER = dict(
    KONTEXT_TRANSFORMER,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=JOINT_DIM,
    pooled_projection_dim=POOLED_DIM,
    axes_dims_rope=[4, 6, 6],
)
TINY_VAE = dict(
    KONTEXT_VAE, block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64
)


def tiny_text_encoders(tokenizer, tokenizer_2) -> tuple:
    """Seeded tiny CLIP-L and T5 encoders of the tokenizers' vocabularies."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    manual_seed("tiny-kontext-clip")
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=POOLED_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=POOLED_DIM,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    manual_seed("tiny-kontext-t5")
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=JOINT_DIM,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    return clip, t5


def build_kontext(folder: Path) -> None:
    """A tiny FLUX.1-Kontext-dev folder: model_index.json and the seven component subfolders."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )

    from fewstep.families.kontext.specs import KONTEXT_SCHEDULER

    with staged_dir(Path(folder)) as staging:
        tokenizer = build_clip_tokenizer(staging / "tokenizer")
        tokenizer_2 = build_t5_tokenizer(staging / "tokenizer_2")
        text_encoder, text_encoder_2 = tiny_text_encoders(tokenizer, tokenizer_2)
        manual_seed("tiny-kontext-vae")
        vae = AutoencoderKL(**TINY_VAE)
        manual_seed("tiny-kontext-transformer")
        transformer = FluxTransformer2DModel(**TINY_TRANSFORMER)
        pipe = FluxKontextPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(KONTEXT_SCHEDULER),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
        pipe.save_pretrained(staging, safe_serialization=True)


def tiny_cell(config: Mapping[str, Any], backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> TinyCell:
    """A Kontext cell's tiny components built in memory, seeded (transformer, VAE, scheduler), and,
    with the native reference, an identity embedding file's photo: seeded noise pixels, 48x40."""
    import diffusers
    import torch

    from fewstep.families.kontext.specs import KONTEXT_SCHEDULER, PHOTO

    manual_seed(f"tiny-cell:{backbone['model']}:{adapter['kind']}")
    components = {
        "transformer": diffusers.FluxTransformer2DModel(**TINY_TRANSFORMER),
        "vae": diffusers.AutoencoderKL(**TINY_VAE),
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(KONTEXT_SCHEDULER),
    }
    if adapter["kind"] == "none":
        return TinyCell(components, None, {})
    photo = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8)
    return TinyCell(components, {PHOTO: photo}, {})
