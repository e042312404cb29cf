"""Tiny SD1.5 / SDXL pipelines and h94/IP-Adapter stand-ins, in the published layouts.

The published configurations (`specs`) with only the widths shrunk: the same
block types, layers per block and attention layout, so InstantStyle's block
scales reach the same places as on the real UNets. Component folders carry the
fp16 safetensors variant names the hub repos use, the adapter files are the
published `{"image_proj", "ip_adapter"}` pickles, and everything is loaded back
through diffusers' own `from_pretrained` / `load_ip_adapter`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fewstep.core.io import staged_dir
from fewstep.families.base import TinyCell
from fewstep.families.sd.distillations import SDXL_TURBO_SCHEDULER, Distillation
from fewstep.families.sd.specs import (
    FAMILIES,
    PLAIN_TOKENS,
    PLUS_RESAMPLER,
    SD15,
    SDXL,
    VARIANT,
    IPAdapterFile,
    SDFamily,
)
from fewstep.registry.tiny import build_clip_tokenizer, manual_seed

TEXT_WIDTH = 32  # every tiny text tower's hidden size and projection
TINY_TEXT = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_VAE = dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64)
TINY_UNETS = {
    "sd15": dict(
        block_out_channels=[32, 32, 64, 64], cross_attention_dim=TEXT_WIDTH, norm_num_groups=8, sample_size=8
    ),
    "sdxl": dict(
        block_out_channels=[32, 64, 64],
        attention_head_dim=[2, 2, 4],
        transformer_layers_per_block=[1, 1, 2],
        cross_attention_dim=2 * TEXT_WIDTH,  # both encoders' hidden states side by side
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=TEXT_WIDTH + 6 * 8,  # pooled text + 6 time ids
        norm_num_groups=8,
        sample_size=8,
    ),
}
#: Stand-ins for the ViT-H (`models/`) and ViT-bigG (`sdxl_models/`) image encoders.
TINY_ENCODERS = {
    "models/image_encoder": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=8,
        image_size=32,
        projection_dim=24,
    ),
    "sdxl_models/image_encoder": dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=8,
        image_size=32,
        projection_dim=40,
    ),
}
TINY_PLUS_WIDTH = 64  # one head of diffusers' fixed 64


def tiny_unet_config(family: SDFamily) -> dict[str, Any]:
    return dict(family.unet, **TINY_UNETS[family.name])


def tiny_text_config(published: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    return dict(
        published,
        **TINY_TEXT,
        hidden_size=TEXT_WIDTH,
        projection_dim=TEXT_WIDTH,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_pipeline(
    family: SDFamily, folder: Path, *, unet_seed: str | None = None, scheduler: dict | None = None
) -> None:
    """A tiny `family` folder: component subfolders in fp16 safetensors and the published model_index.

    `unet_seed` and `scheduler` make a distilled model's full repo (sdxl-turbo): the base's
    text encoders and VAE, its own UNet and scheduler."""
    import diffusers
    import transformers
    from transformers import CLIPTokenizer

    folder = Path(folder)
    with staged_dir(folder) as staging:
        components: dict[str, Any] = {}
        for encoder, (class_name, published) in family.text_encoders.items():
            tokenizer_name = encoder.replace("text_encoder", "tokenizer")
            tokenizer = build_clip_tokenizer(staging / tokenizer_name)
            if family is SDXL and encoder == "text_encoder_2":  # OpenCLIP's tokenizer pads with "!"
                tokenizer = CLIPTokenizer.from_pretrained(staging / tokenizer_name, pad_token="!")
            cls = getattr(transformers, class_name)
            manual_seed(f"tiny-{family.name}-{encoder}")
            components[encoder] = cls(cls.config_class(**tiny_text_config(published, tokenizer)))
            components[tokenizer_name] = tokenizer
        manual_seed(unet_seed or f"tiny-{family.name}-unet")
        components["unet"] = diffusers.UNet2DConditionModel(**tiny_unet_config(family))
        manual_seed(f"tiny-{family.name}-vae")
        components["vae"] = diffusers.AutoencoderKL(**dict(family.vae, **TINY_VAE))
        scheduler = scheduler or family.scheduler
        components["scheduler"] = getattr(diffusers, scheduler["_class_name"]).from_config(scheduler)
        pipeline_class = getattr(diffusers, family.pipeline_class)
        if family is SD15:
            components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe = pipeline_class(**components).to(torch.float16)
        pipe.save_pretrained(staging, safe_serialization=True, variant=VARIANT)
        # The published files verbatim: the index names a safety checker and feature extractor that
        # are never fetched, and a scheduler config leaves out keys (SD1.5: timestep_spacing) whose
        # defaults then differ between scheduler classes, as diffusers' `_use_default_values` tracks.
        index = dict(family.model_index, scheduler=["diffusers", scheduler["_class_name"]])
        (staging / "model_index.json").write_text(json.dumps(index, indent=2))
        (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))


def ip_adapter_state_dict(
    unet: Any, adapter: IPAdapterFile, vision: dict[str, Any], plus_width: int, std: float = 0.02
) -> dict[str, dict[str, torch.Tensor]]:
    """Random weights in h94's file format for `unet` (which may sit on the meta device).

    `ip_adapter` numbers the UNet's attention processors from 1 in diffusers' order,
    and only cross-attention layers (odd numbers) carry `to_k_ip` / `to_v_ip`, shaped
    like the layer's own `to_k` / `to_v`. `image_proj` is the plain linear projection
    to 4 tokens, or for Plus the perceiver resampler IP-Adapter Plus and InfiniteYou
    share (16 queries over the encoder's penultimate hidden states).
    """
    from fewstep.families.resampler import Resampler, ResamplerConfig

    cross = unet.config.cross_attention_dim
    ip_layers: dict[str, torch.Tensor] = {}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            attention = unet.get_submodule(name.removesuffix(".processor"))
            for kind in ("k", "v"):
                shape = getattr(attention, f"to_{kind}").weight.shape
                ip_layers[f"{key_id}.to_{kind}_ip.weight"] = torch.randn(shape) * std
            key_id += 2
    if adapter.plus:
        resampler = Resampler(
            ResamplerConfig(
                dim=plus_width,
                heads=plus_width // PLUS_RESAMPLER["dim_head"],
                embedding_dim=vision["hidden_size"],
                output_dim=cross,
                **PLUS_RESAMPLER,
            )
        )
        image_proj = resampler.state_dict()
    else:
        image_proj = {
            "proj.weight": torch.randn(PLAIN_TOKENS * cross, vision["projection_dim"]) * std,
            "proj.bias": torch.randn(PLAIN_TOKENS * cross) * std,
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        }
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


def build_tiny_ip_adapter(folder: Path, families: list[SDFamily], kinds: list[str]) -> None:
    """The h94/IP-Adapter files `kinds` ("plain", "plus") of `families` need, and their encoders."""
    import diffusers
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from fewstep.core.io import atomic_torch_save

    folder = Path(folder)
    for family in families:
        for kind in kinds:
            adapter = family.adapters[kind]
            published = family.encoders[adapter.encoder_path]
            vision = dict(published, **TINY_ENCODERS[adapter.encoder_path])
            encoder_folder = folder / adapter.encoder_path
            if not (encoder_folder / "config.json").exists():
                manual_seed(f"tiny-{adapter.encoder_path}")
                encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
                with staged_dir(encoder_folder) as staging:
                    encoder.save_pretrained(staging, safe_serialization=True)
            with torch.device("meta"):
                unet = diffusers.UNet2DConditionModel(**tiny_unet_config(family))
            manual_seed(f"tiny-{family.name}-{adapter.weight_name}")
            state = ip_adapter_state_dict(unet, adapter, vision, TINY_PLUS_WIDTH, std=0.2)
            target = folder / adapter.subfolder / adapter.weight_name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(state, target)


#: the attention-block linears a tiny distillation LoRA adapts (those the published LoRAs adapt)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TINY_LORA_RANK = 4


def tiny_lora_state_dict(unet: Any, rank: int = TINY_LORA_RANK, std: float = 0.2) -> dict[str, torch.Tensor]:
    """Random LoRA weights in kohya's layout (`lora_unet_<module path with _>.lora_down/lora_up
    .weight`, `.alpha`), the layout SDXL-Lightning's and Hyper-SD's files use and diffusers'
    `load_lora_weights` converts."""
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS) and "attentions" in name:
            stem = "lora_unet_" + name.replace(".", "_")
            state[f"{stem}.lora_down.weight"] = torch.randn(rank, module.in_features) * std
            state[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, rank) * std
            state[f"{stem}.alpha"] = torch.tensor(float(rank))
    return state


def build_tiny_distillation(distillation: Distillation, folder: Path) -> None:
    """A distillation's file in its publisher's layout, for the tiny base UNet: a LoRA, a UNet
    state dict (fp16, as published) or a whole repo whose UNet and scheduler differ (sdxl-turbo)."""
    import diffusers
    from safetensors.torch import save_file

    from fewstep.core.io import atomic_path

    family = FAMILIES[distillation.family]
    seed = f"tiny-{distillation.publisher}-{distillation.file}"
    if distillation.form == "unet_folder":
        build_tiny_pipeline(family, folder, unet_seed=seed, scheduler=SDXL_TURBO_SCHEDULER)
        return
    manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**tiny_unet_config(family))
    if distillation.form == "unet":
        state = {name: tensor.to(torch.float16).contiguous() for name, tensor in unet.state_dict().items()}
    else:
        state = {name: tensor.to(torch.float16) for name, tensor in tiny_lora_state_dict(unet).items()}
    target = Path(folder) / distillation.file
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as staging:
        save_file(state, str(staging))


def tiny_cell(config: Mapping[str, Any], backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> TinyCell:
    """An SD cell's tiny components built in memory, seeded (the UNet, with the IP-Adapter's
    layers loaded by diffusers' `load_ip_adapter` from a state dict of the tiny shapes; the VAE;
    the base model's scheduler), and the item's reference tensors of their shape: a reference
    embedding file's ``image_embeds`` (cat[negative, positive]), or for FaceID the identity
    embedding file's normed face embedding."""
    import diffusers

    from fewstep.families.sd import faceid

    family = FAMILIES[backbone["family"]]
    manual_seed(f"tiny-cell:{family.name}:{adapter['kind']}:{adapter.get('file', 'plain')}")
    components = {
        "unet": diffusers.UNet2DConditionModel(**tiny_unet_config(family)),
        "vae": diffusers.AutoencoderKL(**dict(family.vae, **TINY_VAE)),
        "scheduler": getattr(diffusers, family.scheduler["_class_name"]).from_config(family.scheduler),
    }
    if adapter["kind"] == "none":
        return TinyCell(components, None, {})
    none = {name: None for name in (*family.text_encoders, *family.tokenizers)}
    if family is not SDXL:
        none |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    holder = getattr(diffusers, family.pipeline_class)(**components, **none)
    if faceid.is_faceid(adapter):
        state = faceid.faceid_state_dict(components["unet"], rank=4, std=0.2)
        weight_name = faceid.FACEID_FILES[family.name].weight_name
        holder.load_ip_adapter(state, subfolder=None, weight_name=weight_name, image_encoder_folder=None)
        face = torch.nn.functional.normalize(torch.randn(1, faceid.EMBEDDING_DIM), dim=-1)
        return TinyCell(components, {faceid.FACEID_EMBEDDING: face}, {})
    file = family.adapters[adapter.get("file", "plain")]
    vision = dict(family.encoders[file.encoder_path], **TINY_ENCODERS[file.encoder_path])
    state = ip_adapter_state_dict(components["unet"], file, vision, TINY_PLUS_WIDTH)
    holder.load_ip_adapter(
        state, subfolder=file.subfolder, weight_name=file.weight_name, image_encoder_folder=None
    )
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    shape = (2, 1, tokens, vision["hidden_size"]) if file.plus else (2, 1, vision["projection_dim"])
    return TinyCell(components, {"image_embeds": torch.randn(shape)}, {})
