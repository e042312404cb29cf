"""Distilled SD backbones: config keys, defaults from the model cards, pinned files, schedulers, bad files."""

from __future__ import annotations

import shutil

import pytest
import torch

from fewstep.core.config import validate
from fewstep.core.errors import ConfigError
from fewstep.families.sd.distillations import DISTILLATIONS, PUBLISHERS
from fewstep.families.sd.family import SD_FAMILIES
from fewstep.registry.catalog import lookup
from fewstep.registry.spec import Usage
from tests.conftest import demo_yaml, study_of

SD15, SDXL = SD_FAMILIES["sd15"], SD_FAMILIES["sdxl"]
CPU = torch.device("cpu")


def test_a_distillation_brings_its_cards_scheduler_guidance_and_resolution():
    lightning = {"family": "sdxl", "model": "sdxl", "distillation": "lightning-4step-unet"}
    assert (SDXL.scheduler(lightning), SDXL.guidance(lightning), SDXL.resolution(lightning)) == (
        "euler_trailing",
        0.0,
        1024,
    )
    turbo = {"family": "sdxl", "model": "sdxl", "distillation": "turbo"}
    assert (SDXL.scheduler(turbo), SDXL.guidance(turbo), SDXL.resolution(turbo)) == ("default", 0.0, 512)
    lcm = {"family": "sd15", "model": "sd15", "distillation": "lcm-lora"}
    assert (SD15.scheduler(lcm), SD15.guidance(lcm)) == ("lcm", 1.0)
    hyper = {"family": "sd15", "model": "sd15", "distillation": "hyper-1step"}
    assert (SD15.scheduler(hyper), DISTILLATIONS["sd15"]["hyper-1step"].eta) == ("tcd", 1.0)
    # the backbone's own keys override the card
    override = dict(lcm, scheduler="ddim_trailing", guidance=2.0, resolution=256)
    assert (SD15.scheduler(override), SD15.guidance(override), SD15.resolution(override)) == (
        "ddim_trailing",
        2.0,
        256,
    )
    # a base backbone hashes the same settings as before distillations existed
    assert "distillation" not in SDXL.settings({"family": "sdxl", "model": "sdxl"})
    assert SDXL.settings(lightning)["distillation"] == "lightning-4step-unet"
    assert SDXL.settings(lightning)["scheduler"] == "euler_trailing"


def test_a_distilled_cell_loads_its_publishers_pinned_file():
    lightning = {"family": "sdxl", "model": "sdxl", "distillation": "lightning-8step-lora"}
    object_adapter = {"kind": "ip_adapter", "role": "object", "file": "plus", "scale": 1.0}
    assert SDXL.cell_models(lightning, object_adapter) == ["sdxl", "sdxl-lightning", "ip-adapter"]
    assert SDXL.cell_weights(lightning, {"kind": "none"})["sdxl-lightning"] == (
        "sdxl_lightning_8step_lora.safetensors",
    )
    hyper = {"family": "sd15", "model": "sd15", "distillation": "hyper-2step"}
    assert SD15.cell_weights(hyper, {"kind": "none"})["hyper-sd"] == ("Hyper-SD15-2steps-lora.safetensors",)
    turbo = {"family": "sdxl", "model": "sdxl", "distillation": "turbo"}
    assert SDXL.cell_weights(turbo, {"kind": "none"})["sdxl-turbo"] == (
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "scheduler/scheduler_config.json",
    )


def test_a_publisher_fetches_only_the_files_the_sweep_uses():
    used = Usage(
        backbones=(
            {"family": "sdxl", "distillation": "hyper-4step"},
            {"family": "sd15", "distillation": "hyper-8step"},
            {"family": "sdxl", "distillation": "hyper-4step"},
            {"family": "sdxl", "distillation": "lightning-2step-unet"},
            {"family": "sdxl"},
        )
    )
    hyper = lookup("hyper-sd")
    assert hyper.repo_id == PUBLISHERS["hyper-sd"].repo_id == "ByteDance/Hyper-SD"
    assert hyper.recipe.patterns({}, hyper, used) == [
        "Hyper-SD15-8steps-lora.safetensors",
        "Hyper-SDXL-4steps-lora.safetensors",
    ]
    assert hyper.recipe.required({}, hyper, used) == hyper.recipe.patterns({}, hyper, used)
    lightning = lookup("sdxl-lightning")
    assert lightning.recipe.patterns({}, lightning, used) == ["sdxl_lightning_2step_unet.safetensors"]
    assert lookup("lcm-lora-sdxl").recipe.patterns({}, lookup("lcm-lora-sdxl"), used) == []


def test_unknown_or_foreign_distillations_and_schedulers_are_refused_with_one_line():
    with pytest.raises(
        ConfigError, match=r"^config backbones\.b\.distillation: 'lightning-4step-unet' is not"
    ) as e:
        SD15.check_backbone("b", {"model": "sd15", "distillation": "lightning-4step-unet"})
    assert "use one of hyper-1step, hyper-2step, hyper-4step, hyper-8step, lcm-lora" in str(e.value)
    SDXL.check_backbone("b", {"model": "sdxl", "distillation": "turbo", "scheduler": "tcd"})


def test_the_schema_refuses_an_unknown_scheduler_and_the_grid_a_flux_distillation(raw_demo):
    from fewstep.core.config import validate
    from fewstep.grid import Grid

    raw = dict(raw_demo, backbones=dict(raw_demo["backbones"]))
    raw["backbones"]["sd15"] = dict(raw["backbones"]["sd15"], scheduler="heun_trailing")
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert "\n" not in str(err.value) and "backbones.sd15.scheduler" in str(err.value)
    raw["backbones"]["sd15"] = dict(raw_demo["backbones"]["sd15"])
    raw["backbones"]["flux-dev"] = dict(raw["backbones"]["flux-dev"], distillation="lcm-lora")
    with pytest.raises(
        ConfigError, match=r"^config backbones\.flux-dev\.distillation: not a setting of flux backbones"
    ):
        Grid(study_of(validate(raw)))


@pytest.mark.parametrize(
    ("scheduler", "steps", "timesteps"),
    [("euler_trailing", 2, [999, 499]), ("ddim_trailing", 4, [999, 749, 499, 249]), ("lcm", 2, [999, 499])],
)
def test_the_card_schedulers_run_trailing_timesteps(tiny_sd, scheduler, steps, timesteps):
    from fewstep.families.sd import specs
    from fewstep.families.sd.pipeline import load_pipeline, set_scheduler

    pipe = load_pipeline(
        specs.SDXL, tiny_sd / specs.SDXL.folder, weights="tiny", device=CPU, dtype=torch.float32
    )
    set_scheduler(pipe, scheduler)
    pipe.scheduler.set_timesteps(steps)
    assert [round(float(t)) for t in pipe.scheduler.timesteps] == timesteps


@pytest.fixture(scope="module")
def wrong_files(tiny_sd, tmp_path_factory):
    """A models folder whose distillation files are the other family's (or otherwise broken)."""
    from safetensors.torch import load_file, save_file

    from fewstep.families.sd.tiny import build_tiny_distillation

    tmp_path = tmp_path_factory.mktemp("wrong-files")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for folder in ("stable-diffusion-v1-5", "stable-diffusion-xl-base-1.0"):
        (tiny / folder).symlink_to(tiny_sd / folder)
    source = tmp_path / "built"
    for family, name in (("sdxl", "hyper-2step"), ("sdxl", "lightning-2step-unet"), ("sd15", "hyper-2step")):
        build_tiny_distillation(DISTILLATIONS[family][name], source)
    hyper = tiny / "Hyper-SD"
    hyper.mkdir()
    # an SDXL LoRA where SD1.5's belongs, and the reverse
    shutil.copy(source / "Hyper-SDXL-2steps-lora.safetensors", hyper / "Hyper-SD15-2steps-lora.safetensors")
    shutil.copy(source / "Hyper-SD15-2steps-lora.safetensors", hyper / "Hyper-SDXL-4steps-lora.safetensors")
    # a LoRA that also adapts a text encoder
    state = load_file(source / "Hyper-SDXL-2steps-lora.safetensors")
    down = next(k for k in state if k.endswith(".lora_down.weight"))
    stem = "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    state[f"{stem}.lora_down.weight"] = state[down].clone()
    state[f"{stem}.lora_up.weight"] = state[down.replace("lora_down", "lora_up")].clone()
    state[f"{stem}.alpha"] = state[down.replace(".lora_down.weight", ".alpha")].clone()
    save_file(state, hyper / "Hyper-SDXL-8steps-lora.safetensors")
    # a UNet checkpoint with keys missing
    lightning = tiny / "SDXL-Lightning"
    lightning.mkdir()
    unet = load_file(source / "sdxl_lightning_2step_unet.safetensors")
    save_file(dict(list(unet.items())[:-3]), lightning / "sdxl_lightning_2step_unet.safetensors")
    return study_of(validate(dict(demo_yaml(), models_dir=str(tmp_path))))


@pytest.mark.parametrize(
    ("family", "distillation", "problem"),
    [
        ("sd15", "hyper-2step", "takes 64 inputs, its input is 32 wide"),
        ("sdxl", "hyper-4step", "no such module"),
        ("sdxl", "hyper-8step", "it adapts more than the UNet, e.g. text_encoder"),
        pytest.param(
            "sdxl",
            "lightning-2step-unet",
            "3 keys missing, 0 unknown, 0 of other shapes",
            marks=pytest.mark.slow,  # reads the whole UNet file: ~5 s on 2 shared cores
        ),
    ],
)
def test_a_file_that_does_not_fit_its_base_stops_with_one_line(wrong_files, family, distillation, problem):
    pytest.importorskip("peft", reason="diffusers loads LoRAs through peft")
    from fewstep.families.sd.cell import load_components

    file = DISTILLATIONS[family][distillation].file
    backbone = _Backbone("fast", {"family": family, "model": family, "distillation": distillation})
    with pytest.raises(ConfigError) as err:
        load_components(wrong_files, backbone, {"kind": "none"}, CPU, torch.float32)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("config backbones.fast.distillation: ") and file in message
    assert problem in message


class _Backbone(dict):
    """A backbone mapping with its id, as the typed `Backbone` section carries it."""

    def __init__(self, id: str, settings: dict):
        super().__init__(settings)
        self.id = id


def test_random_mode_times_the_base_architecture_with_the_cards_scheduler(tiny_sd, tmp_path):
    """Random weights read no distillation file (a fused LoRA or a distilled UNet keeps the base's
    shapes); SDXL-Turbo's scheduler comes from the config its random recipe writes."""
    from fewstep.families.sd import distilled, specs
    from fewstep.families.sd.pipeline import load_pipeline

    pipe = load_pipeline(
        specs.SDXL, tiny_sd / specs.SDXL.folder, weights="tiny", device=CPU, dtype=torch.float32
    )
    before = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    turbo = lookup("sdxl-turbo")
    usage = Usage(backbones=({"family": "sdxl", "distillation": "turbo"},))
    turbo.recipe.random({}, turbo, tmp_path / "turbo", usage)
    assert [p.name for p in (tmp_path / "turbo").rglob("*") if p.is_file()] == ["scheduler_config.json"]
    distilled.load_unet(pipe, DISTILLATIONS["sdxl"]["turbo"], tmp_path / "turbo", weights="random", key="k")
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    for name in ("lightning-2step-unet", "hyper-2step"):
        distillation = DISTILLATIONS["sdxl"][name]
        distilled.load_unet(pipe, distillation, tmp_path / "absent", weights="random", key="k")
        distilled.fuse_lora(pipe, distillation, tmp_path / "absent", weights="random", key="k")
    assert all(torch.equal(before[name], tensor) for name, tensor in pipe.unet.state_dict().items())
