"""A tiny FLUX.2 [klein] folder in the published diffusers layout, with seeded random weights.

The same classes as the real model (Qwen3ForCausalLM, Flux2Transformer2DModel,
AutoencoderKLFlux2) from tiny configs, saved by `Flux2KleinPipeline.save_pretrained` and read back
through the family's real loaders (`fewstep.families.klein.pipeline`). Images made this way are
noise with the right shapes, and every output says ``weights=tiny``. `tiny_cell` makes the same
transformer, VAE and scheduler in memory for the contract test.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewstep.core.io import staged_dir
from fewstep.families.base import TinyCell
from fewstep.families.klein.specs import QWEN3_4B, SCHEDULER, TEXT_ENCODER_OUT_LAYERS, TRANSFORMER, VAE
from fewstep.registry.tiny import build_qwen_tokenizer, manual_seed

TEXT_HIDDEN = 16
#: the pipeline stacks hidden states 9, 18 and 27: the tiny encoder keeps enough layers for them
TEXT_LAYERS = max(TEXT_ENCODER_OUT_LAYERS) + 1
HEADS, HEAD_DIM = 2, 16

TINY_TRANSFORMER = dict(
    TRANSFORMER,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=HEAD_DIM,
    num_attention_heads=HEADS,
    joint_attention_dim=len(TEXT_ENCODER_OUT_LAYERS) * TEXT_HIDDEN,
    timestep_guidance_channels=32,
    axes_dims_rope=[4, 4, 4, 4],
)
# 4 channels x the 2x2 patch = the transformer's in_channels / 4 * 4 (the pipeline's packing)
TINY_VAE = dict(
    VAE,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=1,
    latent_channels=TINY_TRANSFORMER["in_channels"] // 4,
    norm_num_groups=4,
    sample_size=64,
)
TINY_QWEN3 = dict(
    QWEN3_4B,
    hidden_size=TEXT_HIDDEN,
    intermediate_size=32,
    num_hidden_layers=TEXT_LAYERS,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    max_position_embeddings=1024,
)


def tiny_generation_components() -> dict[str, Any]:
    """The seeded tiny transformer, VAE (with seeded latent statistics) and the published scheduler."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    manual_seed("tiny-flux2-vae")
    vae = AutoencoderKLFlux2(**TINY_VAE)
    with torch.no_grad():  # published statistics are not 0/1: seeded ones exercise the (de)normalising
        vae.bn.running_mean.normal_(0.0, 0.1)
        vae.bn.running_var.uniform_(0.5, 2.0)
    manual_seed("tiny-flux2-klein-transformer")
    transformer = Flux2Transformer2DModel(**TINY_TRANSFORMER)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(SCHEDULER)
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler}


def tiny_cell(config: Mapping[str, Any], backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> TinyCell:
    """A klein cell's tiny components in memory; no precomputed reference (None): the cell pipeline
    encodes the identity's photo, found through the config, itself."""
    return TinyCell(tiny_generation_components(), None, {})


def build_klein(folder: Path) -> None:
    """Tokenizer, Qwen3 text encoder, transformer, VAE and scheduler under `folder`, as published."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    with staged_dir(folder) as staging:
        tokenizer = build_qwen_tokenizer(staging / "tokenizer")
        manual_seed("tiny-qwen3")
        text_encoder = Qwen3ForCausalLM(
            Qwen3Config(
                **dict(TINY_QWEN3, vocab_size=len(tokenizer)),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            )
        )
        pipe = Flux2KleinPipeline(
            **tiny_generation_components(), text_encoder=text_encoder, tokenizer=tokenizer, is_distilled=True
        )
        pipe.save_pretrained(staging, safe_serialization=True)
