"""Tiny stand-ins for every model, built offline with seeded random weights.

Each builder instantiates the *same* diffusers/transformers classes as the real
models from a tiny config and saves them in the *published on-disk layout*;
the workflow then loads them through its real loading code (`fewstep.families.flux.pipeline`).
Images made this way are noise with the right shapes: they test the plumbing,
never the science, and every output says `weights=tiny`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fewstep.core.io import staged_dir
from fewstep.families.base import TinyCell
from fewstep.families.flux.specs import FLUX_TRANSFORMER, FLUX_VAE
from fewstep.registry.tiny import build_clip_tokenizer, build_t5_tokenizer, manual_seed

# Shared by the tiny text encoders, transformers and adapters.
JOINT_DIM = 32  # T5 d_model -> transformer joint_attention_dim
POOLED_DIM = 32  # CLIP hidden size -> pooled_projection_dim
HEADS, HEAD_DIM, ROPE_AXES = 2, 16, [4, 6, 6]

# The published configs (fewstep.families.flux.specs) with only the sizes shrunk.
TINY_TRANSFORMER = dict(
    FLUX_TRANSFORMER,
    num_layers=4,
    num_single_layers=4,
    attention_head_dim=HEAD_DIM,
    num_attention_heads=HEADS,
    joint_attention_dim=JOINT_DIM,
    pooled_projection_dim=POOLED_DIM,
    axes_dims_rope=ROPE_AXES,
)
# InfuseNet-shaped: fewer blocks than the backbone, so diffusers' interval logic
# spreads each residual over several backbone blocks, as 4/10 over 19/38 does.
TINY_INFUSENET = dict(TINY_TRANSFORMER, num_layers=2, num_single_layers=2, guidance_embeds=True)
TINY_VAE = dict(
    FLUX_VAE, block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64
)
# The resampler loader infers its shape from the checkpoint with dim_head fixed
# at the published 64, so the tiny one keeps dim_head=64.
TINY_RESAMPLER = dict(
    dim=32,
    depth=1,
    dim_head=64,
    heads=1,
    num_queries=8,
    embedding_dim=512,
    output_dim=JOINT_DIM,
    ff_mult=2,
)


def build_flux_backbone(folder: Path, *, guidance_embeds: bool, scheduler_config: dict) -> None:
    """A tiny FLUX.1 folder in the diffusers layout (model_index.json + subfolders).

    Text encoders and VAE are seeded by role, so the tiny dev and schnell share
    them exactly, as the real two do; only the transformers differ.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    folder = Path(folder)
    with staged_dir(folder) as staging:
        tokenizer = build_clip_tokenizer(staging / "tokenizer")
        tokenizer_2 = build_t5_tokenizer(staging / "tokenizer_2")

        manual_seed("tiny-clip")
        text_encoder = CLIPTextModel(
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
        manual_seed("tiny-t5")
        text_encoder_2 = T5EncoderModel(
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
        manual_seed("tiny-vae")
        vae = AutoencoderKL(**TINY_VAE)
        manual_seed(f"tiny-transformer-guidance={guidance_embeds}")
        transformer = FluxTransformer2DModel(**TINY_TRANSFORMER, guidance_embeds=guidance_embeds)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
        pipe.save_pretrained(staging, safe_serialization=True)


def build_infiniteyou(folder: Path, variants: list[str]) -> None:
    """Tiny `infu_flux_v1.0/<variant>/{InfuseNetModel/, image_proj_model.bin}`.

    InfuseNet is saved in two safetensors shards with an index, as published.
    """
    from diffusers import FluxControlNetModel

    from fewstep.families.resampler import Resampler, ResamplerConfig, save_resampler

    folder = Path(folder)
    for variant in variants:
        target = folder / "infu_flux_v1.0" / variant
        manual_seed(f"tiny-infusenet-{variant}")
        infusenet = FluxControlNetModel(**TINY_INFUSENET)
        _randomise_zero_init(infusenet)
        size_mb = sum(p.numel() * p.element_size() for p in infusenet.parameters()) / 1e6
        with staged_dir(target) as staging:
            infusenet.save_pretrained(
                staging / "InfuseNetModel",
                safe_serialization=True,
                max_shard_size=f"{size_mb * 0.6:.3f}MB",
            )
            manual_seed(f"tiny-resampler-{variant}")
            save_resampler(Resampler(ResamplerConfig(**TINY_RESAMPLER)), staging / "image_proj_model.bin")


def _randomise_zero_init(module: torch.nn.Module, std: float = 0.05) -> None:
    """ControlNets start with zero output layers; a tiny stand-in needs a visible effect."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.normal_(0.0, std)


def tiny_cell(config: Mapping[str, Any], backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> TinyCell:
    """A FLUX cell's tiny components built in memory, seeded (transformer, VAE, the backbone's
    scheduler and, with InfuseNet, InfuseNet and the resampler), and an identity embedding file's
    tensors of their shapes: the ArcFace vector and 5 keypoints on a 64 px picture."""
    import diffusers

    from fewstep.families.resampler import Resampler, ResamplerConfig
    from fewstep.registry.catalog import lookup

    manual_seed(f"tiny-cell:{backbone['model']}:{adapter['kind']}")
    spec = lookup(backbone["model"]).extra
    components = {
        "transformer": diffusers.FluxTransformer2DModel(
            **TINY_TRANSFORMER, guidance_embeds=spec["guidance_embeds"]
        ),
        "vae": diffusers.AutoencoderKL(**TINY_VAE),
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(spec["scheduler"]),
    }
    if adapter["kind"] == "none":
        return TinyCell(components, None, {})
    components["infusenet"] = diffusers.FluxControlNetModel(**TINY_INFUSENET)
    components["resampler"] = Resampler(ResamplerConfig(**TINY_RESAMPLER))
    kps = torch.tensor([[20, 24], [44, 24], [32, 34], [24, 46], [40, 46]], dtype=torch.float32)
    reference = {"arcface_irse50": torch.randn(512), "kps": kps}
    return TinyCell(components, reference, {"width": "64", "height": "64"})
