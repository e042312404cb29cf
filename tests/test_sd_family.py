"""The grid side of the sd15 / sdxl families: config checks without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fewstep.core.errors import ConfigError
from fewstep.families.sd.family import SD_FAMILIES
from fewstep.families.sd.specs import INSTANTSTYLE, SD15, SDXL, ip_adapter_patterns

SD15_FAMILY, SDXL_FAMILY = SD_FAMILIES["sd15"], SD_FAMILIES["sdxl"]
STYLE = {"kind": "ip_adapter", "role": "style", "file": "plain", "scale": "style"}
OBJECT = {"kind": "ip_adapter", "role": "object", "file": "plus", "scale": 0.6}


def test_one_style_entry_resolves_to_each_familys_instantstyle_dict():
    assert SDXL_FAMILY.scale("style", STYLE) == INSTANTSTYLE["sdxl"]["style"]
    assert SD15_FAMILY.scale("style", STYLE) == INSTANTSTYLE["sd15"]["style"]
    assert SD15_FAMILY.scale("object", OBJECT) == 0.6
    for family in SD_FAMILIES.values():
        family.check_adapter("style", STYLE)
        family.check_adapter("object", OBJECT)
        family.check_adapter("none", {"kind": "none"})


@pytest.mark.parametrize(
    ("family", "adapter", "message"),
    [
        (
            SD15_FAMILY,
            dict(STYLE, scale={"up": {"block_0": 1.0}}),
            r"^config adapters\.bad\.scale: .*reaches no",
        ),
        (
            SDXL_FAMILY,
            dict(STYLE, scale={"up": {"block_0": [1.0] * 2}}),
            r"^config adapters\.bad\.scale\.up\.block_0: 3",
        ),
        (SDXL_FAMILY, dict(STYLE, scale="sketch"), r"^config adapters\.bad\.scale: unknown preset 'sketch'"),
        (SDXL_FAMILY, dict(STYLE, role=None), r"^config adapters\.bad\.role: set style, object or identity"),
        (
            SD15_FAMILY,
            dict(STYLE, file="plus-face"),
            r"^config adapters\.bad\.file: 'plus-face' is not one of plain, plus, faceid",
        ),
        (
            SD15_FAMILY,
            dict(STYLE, file="faceid"),
            r"^config adapters\.bad\.role: file faceid conditions on a face",
        ),
        (SD15_FAMILY, {"kind": "infusenet"}, r"^config adapters\.bad\.kind: 'infusenet' cannot run on sd15"),
    ],
)
def test_bad_adapters_are_refused_with_one_line_naming_the_key(family, adapter, message):
    with pytest.raises(ConfigError, match=message) as err:
        family.check_adapter("bad", adapter)
    assert "\n" not in str(err.value)


def test_backbone_checks_and_defaults():
    SDXL_FAMILY.check_backbone("sdxl", {"model": "sdxl", "scheduler": "dpmpp_2m"})
    with pytest.raises(
        ConfigError, match=r"^config backbones\.b\.scheduler: 'lms' is not one of default, ddim"
    ):
        SDXL_FAMILY.check_backbone("b", {"model": "sdxl", "scheduler": "lms"})
    with pytest.raises(ConfigError, match=r"^config backbones\.b\.model: 'sdxl' is not a sd15 model"):
        SD15_FAMILY.check_backbone("b", {"model": "sdxl"})
    assert (SD15_FAMILY.guidance({}), SDXL_FAMILY.guidance({"guidance": None})) == (7.5, 5.0)
    assert SDXL_FAMILY.guidance({"guidance": 3}) == 3.0
    assert (SD15_FAMILY.resolution(), SDXL_FAMILY.resolution()) == (512, 1024)


def test_the_grid_side_of_the_family_protocol():
    """Every grid-side member `fewstep.families.base.Family` names exists on the SD families."""
    import inspect

    from fewstep.families.base import Family

    grid_side = [
        "name",
        "backbones",
        "adapter_kinds",
        "check_backbone",
        "check_adapter",
        "guidance",
        "cell_models",
        "needs_identity_embeddings",
        "prompt_model",
    ]
    assert set(grid_side) <= {*Family.__annotations__, *dict(inspect.getmembers(Family))}
    for family in SD_FAMILIES.values():
        assert all(hasattr(family, member) for member in grid_side)
        (spec,) = family.backbones.values()
        assert (spec.name, spec.repo_id) == (family.name, family.spec.repo_id)
        assert family.adapter_kinds == {"ip_adapter", "none"}
        assert family.prompt_model([family.name]) == family.name


def test_cells_need_only_their_models_and_adapter_files():
    assert SDXL_FAMILY.cell_models({}, {"kind": "none"}) == ["sdxl"]
    assert SDXL_FAMILY.cell_models({}, OBJECT) == ["sdxl", "ip-adapter"]
    uses = SDXL_FAMILY.adapter_files([OBJECT, {"kind": "none"}]) + SD15_FAMILY.adapter_files([STYLE])
    assert ip_adapter_patterns(uses) == [
        "models/image_encoder/config.json",  # ViT-H: SD1.5's encoder and SDXL Plus's
        "models/image_encoder/model.safetensors",
        "models/ip-adapter_sd15.bin",
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.bin",
    ]
    assert SDXL.allow_patterns(text_encoders=False) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert "text_encoder_2/model.fp16.safetensors" in SDXL.allow_patterns(text_encoders=True)
    assert "text_encoder_2/config.json" not in SD15.allow_patterns(text_encoders=True)


def test_the_grid_side_imports_no_torch():
    adapter = {"kind": "ip_adapter", "role": "style", "scale": "style"}
    code = (
        "import sys; import fewstep.families.sd.family as f\n"
        f"f.SD_FAMILIES['sd15'].check_adapter('s', {adapter!r})\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_sd_cell_pipeline_takes_a_scale_exactly_with_adapter_layers():
    """A scale for a UNet without IP-Adapter layers (or none for one with them) would be ignored."""
    import torch
    from conftest import demo_yaml

    from fewstep.core.config import validate
    from fewstep.families import FAMILIES
    from fewstep.families.sd.cell import SDCellPipeline
    from fewstep.families.sd.tiny import tiny_cell

    config = validate(demo_yaml())
    backbone, style = config["backbones"]["sd15"], config["adapters"]["sd-style"]
    family = FAMILIES["sd15"]
    settings = {
        "spec": family.spec,
        "guidance": family.guidance(backbone),
        "side": family.resolution(backbone),
        "device": torch.device("cpu"),
        "dtype": torch.float32,
    }
    bare = tiny_cell(config, backbone, {"kind": "none"}).components
    adapted = tiny_cell(config, backbone, style).components
    for components, scale in ((bare, 1.0), (adapted, None)):
        with pytest.raises(ValueError, match="takes a scale exactly when its UNet carries IP-Adapter layers"):
            SDCellPipeline(**components, **settings, scale=scale)
