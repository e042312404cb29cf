"""Tiny stand-ins for every model, built offline with seeded random weights.

Each builder instantiates the *same* diffusers/transformers classes as the real
models from a tiny config and saves them in the *published on-disk layout*;
the workflow then loads them through its real loading code (`fewstep.families.flux.models`).
Images made this way are noise with the right shapes: they test the plumbing,
never the science, and every output says `weights=tiny`.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import torch

from fewstep.families.flux.models import FLUX_TRANSFORMER, FLUX_VAE

# Shared by the tiny text encoders, transformers and adapters.
JOINT_DIM = 32  # T5 d_model -> transformer joint_attention_dim
POOLED_DIM = 32  # CLIP hidden size -> pooled_projection_dim
HEADS, HEAD_DIM, ROPE_AXES = 2, 16, [4, 6, 6]

# The published configs (fewstep.families.flux.models) with only the sizes shrunk.
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

CORPUS = """
A photo of a person, portrait, studio lighting, 35mm film, close-up, smiling.
An astronaut in a white spacesuit standing in front of an American flag.
A woman wearing a red coat walking in the snow at night, cinematic.
A man with glasses reading a book in a library, warm light, bokeh.
Oil painting of a child in a garden, impressionist style, soft colours.
Headshot of a scientist in a laboratory, sharp focus, high detail.
A chef cooking in a busy kitchen; steam, motion blur, photorealistic!
Watercolor portrait of an old fisherman by the sea, "golden hour".
Selfie on a mountain summit with clouds below, wide angle, 4k.
Anime style drawing of a girl with blue hair under cherry blossoms.
"""


def _seed(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode())


def _manual_seed(name: str) -> None:
    torch.manual_seed(_seed(name))


def _corpus_lines() -> list[str]:
    lines = [line.strip() for line in CORPUS.strip().splitlines()]
    return lines + [line.lower() for line in lines] + [line.upper() for line in lines]


def _words(lines: list[str], pattern: str) -> Counter[str]:
    import regex

    return Counter(w for line in lines for w in regex.findall(pattern, line))


def _bpe_merges(words: Counter[tuple[str, ...]], count: int) -> list[tuple[str, str]]:
    """Plain byte-pair merges; ties go to the alphabetically first pair, so the result
    never depends on hash order (the `tokenizers` trainer's does)."""
    merges = []
    words = Counter(words)
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, freq in words.items():
            out, k = [], 0
            while k < len(symbols):
                if symbols[k : k + 2] == best:
                    out.append(best[0] + best[1])
                    k += 2
                else:
                    out.append(symbols[k])
                    k += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def build_clip_tokenizer(folder: Path):
    """A byte-level BPE CLIP tokenizer learnt from a small corpus, saved and reloaded."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    byte_level = ByteLevel(add_prefix_space=False)
    counts = _words([line.lower() for line in _corpus_lines()], r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
    words: Counter[tuple[str, ...]] = Counter()
    for word, freq in counts.items():
        mapped = byte_level.pre_tokenize_str(word)[0][0]
        words[(*mapped[:-1], mapped[-1] + "</w>")] += freq
    merges = _bpe_merges(words, 150)
    alphabet = sorted(ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]
    tokens += [a + b for a, b in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def build_t5_tokenizer(folder: Path):
    """A Unigram T5 tokenizer: every corpus word and character as a piece, scored by
    log frequency (deterministic), saved and reloaded."""
    import math

    from transformers import T5TokenizerFast

    counts = _words(_corpus_lines(), r"\S+")
    chars = Counter(c for word, freq in counts.items() for c in word for _ in range(freq))
    total = sum(counts.values()) + sum(chars.values())
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", math.log(len(counts) / total))]
    pieces += [(f"▁{w}", math.log(f / total)) for w, f in sorted(counts.items())]
    pieces += [(c, math.log(f / total) - 5.0) for c, f in sorted(chars.items())]  # fallback pieces
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


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
    staging = folder.with_name(folder.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = build_clip_tokenizer(staging / "tokenizer")
    tokenizer_2 = build_t5_tokenizer(staging / "tokenizer_2")

    _manual_seed("tiny-clip")
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
    _manual_seed("tiny-t5")
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
    _manual_seed("tiny-vae")
    vae = AutoencoderKL(**TINY_VAE)
    _manual_seed(f"tiny-transformer-guidance={guidance_embeds}")
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
    _replace_dir(staging, folder)


def build_infiniteyou(folder: Path, variants: list[str]) -> None:
    """Tiny `infu_flux_v1.0/<variant>/{InfuseNetModel/, image_proj_model.bin}`.

    InfuseNet is saved in two safetensors shards with an index, as published.
    """
    from diffusers import FluxControlNetModel

    from fewstep.families.flux.resampler import Resampler, ResamplerConfig, save_resampler

    folder = Path(folder)
    for variant in variants:
        target = folder / "infu_flux_v1.0" / variant
        _manual_seed(f"tiny-infusenet-{variant}")
        infusenet = FluxControlNetModel(**TINY_INFUSENET)
        _randomise_zero_init(infusenet)
        size_mb = sum(p.numel() * p.element_size() for p in infusenet.parameters()) / 1e6
        staging = target.with_name(target.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        infusenet.save_pretrained(
            staging / "InfuseNetModel",
            safe_serialization=True,
            max_shard_size=f"{size_mb * 0.6:.3f}MB",
        )
        _manual_seed(f"tiny-resampler-{variant}")
        save_resampler(Resampler(ResamplerConfig(**TINY_RESAMPLER)), staging / "image_proj_model.bin")
        _replace_dir(staging, target)


def _randomise_zero_init(module: torch.nn.Module, std: float = 0.05) -> None:
    """ControlNets start with zero output layers; a tiny stand-in needs a visible effect."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.normal_(0.0, std)


def _replace_dir(staging: Path, target: Path) -> None:
    """Move a finished folder into place (a half-built one never carries the final name)."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
