"""SD1.5 / SDXL model pieces: published configurations, tiny stand-ins in the published
layouts, random mode, loading through diffusers' own loaders."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep.families.sd import specs, tiny
from fewstep.families.sd.pipeline import load_pipeline
from fewstep.families.sd.random_weights import write_random_ip_adapter, write_random_pipeline

CPU = torch.device("cpu")
FAMILIES = list(specs.FAMILIES.values())


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("family", "unet", "vae", "text"),
    [
        (specs.SD15, 859_520_964, 83_653_863, [123_060_480]),
        (specs.SDXL, 2_567_463_684, 83_653_863, [123_060_480, 694_659_840]),
    ],
    ids=["sd15", "sdxl"],
)
def test_random_mode_builds_the_published_architectures(tmp_path, family, unet, vae, text):
    """Parameter counts of the published checkpoints, built from the configs random mode writes."""
    write_random_pipeline(family, tmp_path / family.folder)
    pipe = load_pipeline(
        family,
        tmp_path / family.folder,
        weights="random",
        device=torch.device("meta"),
        dtype=torch.float16,
        text_encoders=True,
    )
    assert _count(pipe.unet) == unet
    assert _count(pipe.vae) == vae
    assert [_count(getattr(pipe, name)) for name in family.text_encoders] == text
    assert type(pipe.scheduler).__name__ == family.scheduler["_class_name"]


@pytest.mark.parametrize(
    ("family", "kind", "processors", "first", "proj"),
    [
        (specs.SD15, "plain", 16, (320, 768), {"proj.weight": (3072, 1024)}),
        (specs.SD15, "plus", 16, (320, 768), {"latents": (1, 16, 768), "proj_in.weight": (768, 1280)}),
        (specs.SDXL, "plain", 70, (640, 2048), {"proj.weight": (8192, 1280)}),
        (specs.SDXL, "plus", 70, (640, 2048), {"latents": (1, 16, 1280), "proj_out.weight": (2048, 1280)}),
    ],
)
def test_adapter_state_dicts_have_h94s_keys_and_shapes(family, kind, processors, first, proj):
    """Cross-attention layers numbered 1, 3, ... over diffusers' processor order, published shapes."""
    import diffusers

    adapter = family.adapters[kind]
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**family.unet)
        vision = family.encoders[adapter.encoder_path]
        state = tiny.ip_adapter_state_dict(unet, adapter, vision, adapter.plus_width)
    keys = {f"{n}.to_{kv}_ip.weight" for n in range(1, 2 * processors, 2) for kv in "kv"}
    assert set(state["ip_adapter"]) == keys
    assert tuple(state["ip_adapter"]["1.to_k_ip.weight"].shape) == first
    for key, shape in proj.items():
        assert tuple(state["image_proj"][key].shape) == shape
    if adapter.plus:
        assert state["image_proj"]["layers.0.0.to_q.weight"].shape[0] // 64 == adapter.plus_width // 64
        assert {k.split(".")[1] for k in state["image_proj"] if k.startswith("layers.")} == set("0123")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_tiny_folders_use_the_published_layout(tiny_sd, family):
    folder = tiny_sd / family.folder
    index = json.loads((folder / "model_index.json").read_text())
    assert {k: v for k, v in index.items() if not k.startswith("_")} == {
        k: v for k, v in family.model_index.items() if not k.startswith("_")
    }
    for name in ("unet", "vae"):
        assert (folder / name / "diffusion_pytorch_model.fp16.safetensors").is_file()
    for name in family.text_encoders:
        assert (folder / name / "model.fp16.safetensors").is_file()
    assert not list(folder.rglob("*.bin")), "no pickles: the hub folders are fetched as safetensors"
    for adapter in family.adapters.values():
        assert (tiny_sd / "IP-Adapter" / adapter.subfolder / adapter.weight_name).is_file()
        assert (tiny_sd / "IP-Adapter" / adapter.encoder_path / "model.safetensors").is_file()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_tiny_models_differ_from_the_published_only_in_size(tiny_sd, family):
    pipe = load_pipeline(
        family, tiny_sd / family.folder, weights="tiny", device=CPU, dtype=torch.float32, text_encoders=True
    )
    shrunk = tiny.TINY_UNETS[family.name]
    for key, value in family.unet.items():
        expected = shrunk.get(key, value)
        assert pipe.unet.config[key] == (list(expected) if isinstance(expected, tuple) else expected), key
    for key, value in family.vae.items():
        assert pipe.vae.config[key] == tiny.TINY_VAE.get(key, value), key
    assert dict(pipe.scheduler.config) | family.scheduler == dict(pipe.scheduler.config)
    for name, (class_name, published) in family.text_encoders.items():
        encoder = getattr(pipe, name)
        assert type(encoder).__name__ == class_name
        assert encoder.config.hidden_act == published["hidden_act"]
        assert encoder.config.num_hidden_layers == tiny.TINY_TEXT["num_hidden_layers"]
    if family is specs.SDXL:
        assert pipe.tokenizer_2.pad_token == "!"
    assert pipe.unet.dtype == torch.float32  # the fp16 files are upcast on the CPU


def test_tiny_weights_are_seeded(tmp_path, tiny_sd):
    """A second build gives the same weights."""
    from safetensors.torch import load_file

    tiny.build_tiny_pipeline(specs.SD15, tmp_path / "again")
    for name in ("unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors"):
        first = load_file(tiny_sd / specs.SD15.folder / name)
        second = load_file(tmp_path / "again" / name)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_random_image_encoders_are_the_published_ones(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    write_random_ip_adapter(tmp_path, specs.SDXL, ["plain", "plus"])
    with torch.device("meta"):
        vit_h = CLIPVisionModelWithProjection(
            CLIPVisionConfig.from_pretrained(tmp_path / "models/image_encoder")
        )
        big_g = CLIPVisionModelWithProjection(
            CLIPVisionConfig.from_pretrained(tmp_path / "sdxl_models/image_encoder")
        )
    assert _count(vit_h) == 632_076_800
    assert round(_count(big_g), -7) == 1_840_000_000  # OpenCLIP ViT-bigG-14's image tower, 1.84B


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_instantstyle_on_the_published_unets(tmp_path, family):
    """Random mode on the meta device: h94's Plus adapter with its encoder attaches to the
    full-size UNet, and InstantStyle's dicts reach the same layers as on the tiny one."""
    from fewstep.core.errors import ConfigError
    from fewstep.families.sd.pipeline import apply_scale, attach_ip_adapter

    write_random_pipeline(family, tmp_path / family.folder)
    write_random_ip_adapter(tmp_path / "IP-Adapter", family, ["plus"])
    meta = torch.device("meta")
    pipe = load_pipeline(
        family, tmp_path / family.folder, weights="random", device=meta, dtype=torch.bfloat16
    )
    attach_ip_adapter(pipe, family, "plus", tmp_path / "IP-Adapter", weights="random", with_encoder=True)
    assert _count(pipe.image_encoder) == 632_076_800  # ViT-H/14 for both Plus adapters
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    style = apply_scale(pipe, specs.INSTANTSTYLE[family.name]["style"], "adapters.style.scale")
    if family is specs.SDXL:
        assert style == ["up_blocks.0.attentions.1"]
    else:
        assert style == [f"up_blocks.1.attentions.{i}" for i in range(3)]
        with pytest.raises(ConfigError, match="reaches no attention layer"):
            apply_scale(pipe, {"up": {"block_0": 1.0}}, "adapters.style.scale")


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_allow_patterns_fetch_exactly_what_the_jobs_load(tiny_sd, family):
    """The tiny folder is the published layout: every file in it is fetched, no pattern is idle."""
    from fnmatch import fnmatch

    folder = tiny_sd / family.folder
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    patterns = family.allow_patterns(text_encoders=True)
    assert [f for f in files if not any(fnmatch(f, p) for p in patterns)] == []
    assert [p for p in patterns if not any(fnmatch(f, p) for f in files)] == []
    denoiser_only = family.allow_patterns(text_encoders=False)
    assert not any(
        fnmatch(f, p) for p in denoiser_only for f in files if f.startswith(("text_", "tokenizer"))
    )
    assert all(p.endswith((".json", ".fp16.safetensors")) for p in denoiser_only)


def test_ip_adapter_patterns_name_only_the_files_used(tiny_sd):
    from fnmatch import fnmatch

    uses = [(specs.SDXL, "plus", True), (specs.SDXL, "plus", False), (specs.SD15, "plain", False)]
    patterns = specs.ip_adapter_patterns(uses)
    assert patterns == [
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
        "models/ip-adapter_sd15.bin",
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.bin",
    ]
    root = tiny_sd / "IP-Adapter"
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    assert all(any(fnmatch(f, p) for f in files) for p in patterns)
