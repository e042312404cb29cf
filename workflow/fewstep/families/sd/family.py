"""The grid side of the `sd15` and `sdxl` families: config checks and the models a cell needs.

No torch here (it runs while Snakemake parses the workflow). Config shape:

    backbones:
      sd15: {family: sd15, model: sd15, steps: [...], guidance: 7.5, scheduler: default,
             negative_prompt: "..."}
    adapters:
      style: {kind: ip_adapter, role: style, file: plain, scale: style}
      object: {kind: ip_adapter, role: object, file: plus, scale: 1.0}

`scale` is a number, an InstantStyle block dict, or a preset name (`style`,
`style_layout`) resolved per family, so one adapter entry serves SD1.5 and SDXL.
`role` picks the scores (`ROLES`: style CSD + CLIP-I + CLIPScore, object DINO + CLIP-I +
CLIPScore).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fewstep.core.errors import ConfigError
from fewstep.families.sd.scales import reached_layers
from fewstep.families.sd.specs import FAMILIES, INSTANTSTYLE, IP_ADAPTER_REPO, SCHEDULERS, SDFamily
from fewstep.registry.spec import ModelSpec

ADAPTER_KIND = "ip_adapter"
ROLES = {"style": ["csd", "clip_i", "clip_score"], "object": ["dino", "clip_i", "clip_score"]}
#: the registry model holding h94/IP-Adapter's files
IP_ADAPTER_MODEL = "ip-adapter"
IP_ADAPTER = ModelSpec(IP_ADAPTER_MODEL, "IP-Adapter", IP_ADAPTER_REPO)


@dataclass(frozen=True)
class StableDiffusion:
    """One SD base model as a workflow family."""

    spec: SDFamily

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def backbones(self) -> dict[str, ModelSpec]:
        """The registry spec usable as ``backbones.<id>.model`` (one base model per family)."""
        return {self.name: ModelSpec(self.name, self.spec.folder, self.spec.repo_id)}

    @property
    def adapter_kinds(self) -> frozenset[str]:
        return frozenset({ADAPTER_KIND, "none"})

    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        if backbone.get("model", self.name) != self.name:
            raise ConfigError(
                f"config backbones.{key}.model: {backbone['model']!r} is not a {self.name} model; "
                f"use {self.name}"
            )
        scheduler = backbone.get("scheduler", "default")
        if scheduler not in SCHEDULERS:
            raise ConfigError(
                f"config backbones.{key}.scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}"
            )

    def check_adapter(self, key: str, adapter: Mapping[str, Any]) -> None:
        """Refuse what the family cannot run, before any job starts (the scale dict too)."""
        if adapter["kind"] == "none":
            return
        if adapter["kind"] != ADAPTER_KIND:
            raise ConfigError(f"config adapters.{key}.kind: {adapter['kind']!r} cannot run on {self.name}")
        role, file = adapter.get("role"), adapter.get("file", "plain")
        if role not in ROLES:
            raise ConfigError(f"config adapters.{key}.role: set style or object (it picks the scores)")
        if file not in self.spec.adapters:
            raise ConfigError(
                f"config adapters.{key}.file: {file!r} is not one of {', '.join(self.spec.adapters)}"
            )
        reached_layers(self.spec.unet, self.scale(key, adapter), f"config adapters.{key}.scale")

    def scale(self, key: str, adapter: Mapping[str, Any]) -> float | dict:
        """The adapter's `set_ip_adapter_scale` argument on this family (presets resolved)."""
        scale = adapter.get("scale", 1.0)
        if isinstance(scale, str):
            presets = INSTANTSTYLE[self.name]
            if scale not in presets:
                raise ConfigError(
                    f"config adapters.{key}.scale: unknown preset {scale!r}; use one of "
                    f"{', '.join(presets)}, a number or a block dict"
                )
            return presets[scale]
        return scale

    def guidance(self, backbone: Mapping[str, Any]) -> float:
        """Classifier-free guidance scale (default as the base model's reference settings)."""
        guidance = backbone.get("guidance")
        return self.spec.guidance_scale if guidance is None else float(guidance)

    def resolution(self) -> int:
        return self.spec.resolution

    def cell_models(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
        """Registry models a generation job loads: the base model, and h94's files with an adapter."""
        return [self.name, *([IP_ADAPTER_MODEL] if adapter["kind"] == ADAPTER_KIND else [])]

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        return False  # SD cells read reference *image* embeddings, not face embeddings

    def prompt_model(self, models: list[str]) -> str:
        return self.name

    def adapter_files(self, adapters: list[Mapping[str, Any]]) -> list[tuple[SDFamily, str, bool]]:
        """`specs.ip_adapter_patterns` uses for these adapters: each file with its image encoder
        (generation loads the file, the reference embedding job the encoder too)."""
        files = sorted({a.get("file", "plain") for a in adapters if a["kind"] == ADAPTER_KIND})
        return [(self.spec, file, True) for file in files]


SD_FAMILIES = {name: StableDiffusion(spec) for name, spec in FAMILIES.items()}
