"""Distilled SD backbones, as their publishers' model cards load them in diffusers (plain data).

A distillation changes a base model's UNet: a LoRA fused once per job (SDXL-Lightning, Hyper-SD,
LCM-LoRA), a UNet state dict for the base config (SDXL-Lightning's `*_unet.safetensors`) or a
whole UNet folder (stabilityai/sdxl-turbo's `unet/`). Each names the scheduler, guidance, steps and
resolution its card uses; config ``backbones.<id>.distillation`` picks one, and the backbone's own
``scheduler`` / ``guidance`` / ``resolution`` override them. Sources are cited in docs/sd.md. No
torch here: the grid reads these while Snakemake parses.
"""

from __future__ import annotations

from dataclasses import dataclass

from fewstep.families.sd.specs import SDXL_SCHEDULER

#: what the tiny and random sdxl-turbo folders write as its shipped scheduler (jobs on real weights read
#: the repo's own file): Euler ancestral, "trailing" as diffusers' SDXL-Turbo page asks
SDXL_TURBO_SCHEDULER = dict(
    SDXL_SCHEDULER, _class_name="EulerAncestralDiscreteScheduler", timestep_spacing="trailing"
)


@dataclass(frozen=True)
class Publisher:
    """One hub repo holding distillations (one registry model)."""

    name: str  # registry model name
    repo_id: str
    folder: str
    published_gb: tuple[tuple[str, float], ...] = ()  # file -> size (the sweep's download estimate)


@dataclass(frozen=True)
class Distillation:
    """One published distillation of an SD base model."""

    name: str  # config value of backbones.<id>.distillation
    family: str  # the base model it was distilled from: sd15 or sdxl
    publisher: str  # registry model holding its file
    file: str  # the pinned file (LoRA or UNet state dict) or folder (a UNet folder) in the repo
    form: str  # "lora", "unet" (state dict for the base UNet config) or "unet_folder"
    scheduler: str  # a `specs.SCHEDULERS` name ("default": the scheduler its repo ships)
    guidance: float  # classifier-free guidance (<= 1: none, as diffusers' pipelines decide)
    steps: tuple[int, ...]  # the steps its card runs
    resolution: int | None = None  # None: the base model's
    eta: float = 0.0  # the pipeline's `eta` (TCD's gamma, DDIM's eta)

    @property
    def files(self) -> tuple[str, ...]:
        """What a generation job reads of its publisher's folder (the fetch patterns too)."""
        if self.form == "unet_folder":  # the repo's UNet folder and the scheduler it ships
            weights = f"{self.file}/diffusion_pytorch_model.fp16.safetensors"
            return (f"{self.file}/config.json", weights, "scheduler/scheduler_config.json")
        return (self.file,)


PUBLISHERS = {
    p.name: p
    for p in (
        # sizes: Hyper-SD's and lcm-lora-sdv1-5's file listings; fp16 SDXL UNets as the base's (5.14 GB);
        # lcm-lora-sdxl's 197M parameters in fp16
        Publisher(
            "sdxl-lightning",
            "ByteDance/SDXL-Lightning",
            "SDXL-Lightning",
            tuple((f"sdxl_lightning_{n}step_unet.safetensors", 5.14) for n in (2, 4, 8)),
        ),
        Publisher(
            "hyper-sd",
            "ByteDance/Hyper-SD",
            "Hyper-SD",
            tuple(
                (f"Hyper-SD{v}-{n}-lora.safetensors", gb)
                for v, gb in (("15", 0.27), ("XL", 0.79))
                for n in ("1step", "2steps", "4steps", "8steps")
            ),
        ),
        Publisher(
            "lcm-lora-sdxl",
            "latent-consistency/lcm-lora-sdxl",
            "lcm-lora-sdxl",
            (("pytorch_lora_weights.safetensors", 0.39),),
        ),
        Publisher(
            "lcm-lora-sdv1-5",
            "latent-consistency/lcm-lora-sdv1-5",
            "lcm-lora-sdv1-5",
            (("pytorch_lora_weights.safetensors", 0.135),),
        ),
        Publisher(
            "sdxl-turbo",
            "stabilityai/sdxl-turbo",
            "sdxl-turbo",
            (("unet/diffusion_pytorch_model.fp16.safetensors", 5.14),),
        ),
    )
}


def _lightning(steps: int, form: str) -> Distillation:
    return Distillation(
        f"lightning-{steps}step-{form}",
        "sdxl",
        "sdxl-lightning",
        f"sdxl_lightning_{steps}step_{form}.safetensors",
        form,
        scheduler="euler_trailing",
        guidance=0.0,
        steps=(steps,),
    )


def _hyper(family: str, steps: int) -> Distillation:
    prefix = {"sdxl": "Hyper-SDXL", "sd15": "Hyper-SD15"}[family]
    plural = "step" if steps == 1 else "steps"
    if steps == 1:  # the 1-step unified LoRA: TCD, eta 1.0, any steps
        return Distillation(
            f"hyper-{steps}step",
            family,
            "hyper-sd",
            f"{prefix}-1step-lora.safetensors",
            "lora",
            scheduler="tcd",
            guidance=0.0,
            steps=(1, 2, 4, 8),
            eta=1.0,
        )
    return Distillation(
        f"hyper-{steps}step",
        family,
        "hyper-sd",
        f"{prefix}-{steps}{plural}-lora.safetensors",
        "lora",
        scheduler="ddim_trailing",
        guidance=0.0,
        steps=(steps,),
    )


_ALL = (
    *(_lightning(steps, form) for form in ("unet", "lora") for steps in (2, 4, 8)),
    *(_hyper(family, steps) for family in ("sdxl", "sd15") for steps in (1, 2, 4, 8)),
    Distillation(
        "lcm-lora",
        "sdxl",
        "lcm-lora-sdxl",
        "pytorch_lora_weights.safetensors",
        "lora",
        scheduler="lcm",
        guidance=1.0,
        steps=(2, 4, 8),
    ),
    Distillation(
        "lcm-lora",
        "sd15",
        "lcm-lora-sdv1-5",
        "pytorch_lora_weights.safetensors",
        "lora",
        scheduler="lcm",
        guidance=1.0,
        steps=(2, 4, 8),
    ),
    Distillation(
        "turbo",
        "sdxl",
        "sdxl-turbo",
        "unet",
        "unet_folder",
        scheduler="default",
        guidance=0.0,
        steps=(1, 2, 4),
        resolution=512,
    ),
)
#: family -> distillation name -> Distillation
DISTILLATIONS: dict[str, dict[str, Distillation]] = {
    family: {d.name: d for d in _ALL if d.family == family} for family in ("sd15", "sdxl")
}
