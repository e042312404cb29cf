"""The grid side of the `sd15` and `sdxl` families: config checks and the models a cell needs.

No torch here (it runs while Snakemake parses the workflow). Config shape:

    backbones:
      sd15: {family: sd15, model: sd15, steps: [...], guidance: 7.5, scheduler: default,
             negative_prompt: "..."}
      sdxl-lightning-4: {family: sdxl, model: sdxl, distillation: lightning-4step-unet, steps: [4]}
    adapters:
      style: {kind: ip_adapter, role: style, file: plain, scale: style}
      object: {kind: ip_adapter, role: object, file: plus, scale: 1.0}
      face: {kind: ip_adapter, role: identity, file: faceid, scale: 1.0}  # h94's IP-Adapter FaceID

`scale` is a number, an InstantStyle block dict, or a preset name (`style`,
`style_layout`) resolved per family, so one adapter entry serves SD1.5 and SDXL. A
`distillation` (`distillations.DISTILLATIONS`) puts a distilled UNet or LoRA on the base model
and brings its card's scheduler, guidance and resolution, which the backbone's keys override.
`role` (`ROLES`, `adapter_role`) picks the references its cells cross and, through the metric
specs that fit it (`fewstep.scoring.specs`), their scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import ConfigError
from fewstep.core.study import Study
from fewstep.faces.models import FACEID_ENCODER, INSIGHTFACE
from fewstep.families.sd import faceid
from fewstep.families.sd.distillations import DISTILLATIONS
from fewstep.families.sd.models import (
    ADAPTER_KIND,
    BACKBONES,
    IP_ADAPTER,
    IP_ADAPTER_MODEL,
    distillation_of,
    generation_weights,
    negative_prompt,
    reference_weights,
)
from fewstep.families.sd.scales import reached_layers
from fewstep.families.sd.specs import FAMILIES, INSTANTSTYLE, SCHEDULERS, SDFamily

if TYPE_CHECKING:
    import torch

    from fewstep.families.base import IdentityEncoder
    from fewstep.families.report_kit import ReportKit, ReportParts
    from fewstep.families.sd.cell import ReferenceEncoder, SDCellPipeline, SDPromptEncoder
    from fewstep.registry.spec import ModelSpec

__all__ = ["ADAPTER_KIND", "IP_ADAPTER", "IP_ADAPTER_MODEL", "ROLES", "SD_FAMILIES", "StableDiffusion"]

#: the roles an IP-Adapter entry can play (config ``adapters.<id>.role``): a reference picture's, or
#: with h94's FaceID file (`faceid`) a face's
ROLES = ("style", "object", "identity")
#: what a bare backbone crosses without adapter cells of its own: the references
REFERENCE_ROLES = ("style", "object")
#: float32 values of a reference embedding file, with the negative: at most (ViT-H's 1280, bigG's
#: projection) the plain file's pooled embedding, the Plus file's 257 tokens
REFERENCE_FLOATS = {"plain": 2 * 1280, "plus": 2 * 257 * 1280}


@dataclass(frozen=True)
class StableDiffusion:
    """One SD base model as a workflow family."""

    spec: SDFamily

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def config_values(self) -> dict[str, tuple[str, ...]]:
        """Its schedulers, distillations, adapter roles and InstantStyle scale presets."""
        return {
            "backbones.<name>.scheduler": tuple(SCHEDULERS),
            "backbones.<name>.distillation": tuple(DISTILLATIONS[self.name]),
            "adapters.<name>.role": ROLES,
            "adapters.<name>.scale": tuple(INSTANTSTYLE[self.name]),
        }

    #: regional compile, fp8 and TaylorSeer's schedule on the UNet (`fewstep.families.sd.acceleration`)
    acceleration_switches: frozenset[str] = frozenset(
        {"compile:regional", "compile:full", "fp8", "cache:taylorseer"}
    )
    #: LPIPS compares each image with its own job's highest-step cell, so no SD cell is the
    #: config's anchor cell (it compares identities); trajectories and comparison pairs take any cells
    comparable = False
    backbone_keys = frozenset({"scheduler", "negative_prompt", "resolution", "distillation"})

    @property
    def adapter_keys(self) -> dict[str, frozenset[str]]:
        return {ADAPTER_KIND: frozenset({"role", "file", "scale"}), "none": frozenset()}

    @property
    def backbones(self) -> dict[str, ModelSpec]:
        """The registry spec usable as ``backbones.<id>.model`` (one base model per family)."""
        return {self.name: BACKBONES[self.name]}

    @property
    def max_side(self) -> int:
        """Twice the trained resolution: beyond it the UNets repeat objects."""
        return 2 * self.spec.resolution

    @property
    def adapter_kinds(self) -> frozenset[str]:
        return frozenset({ADAPTER_KIND, "none"})

    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        if backbone.get("model", self.name) != self.name:
            raise ConfigError(
                f"config backbones.{key}.model: {backbone['model']!r} is not a {self.name} model; "
                f"use {self.name}"
            )
        distillation = backbone.get("distillation")
        if distillation is not None and distillation not in DISTILLATIONS[self.name]:
            raise ConfigError(
                f"config backbones.{key}.distillation: {distillation!r} is not a {self.name} distillation; "
                f"use one of {', '.join(DISTILLATIONS[self.name])}"
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
            raise ConfigError(f"config adapters.{key}.role: set style, object or identity (it picks scores)")
        faceid.check_faceid(key, adapter, self.name)
        files = [*self.spec.adapters, faceid.FACEID_FILE]
        if file not in files:
            raise ConfigError(
                f"config adapters.{key}.file: {file!r} is not one of {', '.join(files)}; set one of them"
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
        """Classifier-free guidance scale (default: the distillation's card, else the base model's)."""
        guidance = backbone.get("guidance")
        if guidance is not None:
            return float(guidance)
        distillation = distillation_of(backbone)
        return self.spec.guidance_scale if distillation is None else distillation.guidance

    def resolution(self, backbone: Mapping[str, Any] | None = None) -> int:
        """The side of the square images: ``backbones.<id>.resolution``, else the distillation's
        card's, else the trained one."""
        backbone = backbone or {}
        side = backbone.get("resolution")
        if side is None and (distillation := distillation_of(backbone)) is not None:
            side = distillation.resolution
        return self.spec.resolution if side is None else int(side)

    def scheduler(self, backbone: Mapping[str, Any]) -> str:
        """The `specs.SCHEDULERS` name a backbone runs: ``scheduler``, where it says default the
        distillation's card's, else the base model's own."""
        scheduler = backbone.get("scheduler", "default")
        distillation = distillation_of(backbone)
        return distillation.scheduler if scheduler == "default" and distillation else scheduler

    def image_size(self, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> dict[str, Any]:
        """Square images of the backbone's side (`resolution`); config ``resolution`` is FLUX's."""
        side = self.resolution(backbone)
        return {"width": side, "height": side}

    def check_size(self, key: str, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> None:
        limit = resolution.get("max_side") or self.max_side
        if backbone.get("resolution") is not None and backbone["resolution"] > limit:
            raise ConfigError(
                f"config backbones.{key}.resolution: {backbone['resolution']} px is beyond the "
                f"{self.name} limit of {limit} px; lower it, or set resolution.max_side"
            )

    def settings(self, backbone: Mapping[str, Any]) -> dict[str, Any]:
        """What besides model and guidance shapes a backbone's images (cell specs hash it)."""
        settings = {
            "scheduler": backbone.get("scheduler", "default"),
            "negative_prompt": self.negative(backbone),
            "resolution": self.resolution(backbone),
        }
        if (distillation := distillation_of(backbone)) is not None:  # base cells keep their hashes
            settings |= {"distillation": distillation.name, "scheduler": self.scheduler(backbone)}
        return settings

    def cell_weights(
        self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        return generation_weights(self.name, adapter, distillation_of(backbone))

    def reference_weights(self, file: str) -> dict[str, tuple[str, ...]]:
        """What the reference embedding job of adapter file `file` reads (its weights digest)."""
        return reference_weights(self.name, file)

    def cell_models(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
        """Registry models a generation job loads: the base model, a distillation's publisher, and
        h94's files with an adapter."""
        return list(self.cell_weights(backbone, adapter))

    def reference_file(self, adapter: Mapping[str, Any]) -> str | None:
        """h94's plain or Plus file: its image encoder embeds the references (None: bare backbone, and
        FaceID, which reads the identity embeddings)."""
        if adapter["kind"] != ADAPTER_KIND or faceid.is_faceid(adapter):
            return None
        return adapter.get("file", "plain")

    def reference_models(self, adapter: Mapping[str, Any]) -> list[str]:
        """The base model and h94's files (the adapter file's image encoder), for an IP-Adapter."""
        file = self.reference_file(adapter)
        return [] if file is None else list(self.reference_weights(file))

    def prompt_variants(self, backbones: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """One file per CFG negative (its text, or zero embeddings), named by `prompt_variant`."""
        return {self.prompt_variant(b): b for b in backbones}

    def prompt_variant(self, backbone: Mapping[str, Any]) -> str:
        """``N<hash>`` of the negative's text; ``Nzeros`` for zero negative embeddings (`negative`)."""
        negative = self.negative(backbone)
        return ZERO_NEGATIVE if negative is None else negative_label(negative)

    def prompt_metadata(self, backbone: Mapping[str, Any]) -> dict[str, str]:
        negative = self.negative(backbone)
        if negative is None:
            return {"negative_prompt": "", "negative_embeddings": "zeros"}
        return {"negative_prompt": negative}

    def negative(self, backbone: Mapping[str, Any]) -> str | None:
        """What the backbone's negative embeddings are made of: its negative prompt's text; unset,
        ``""`` where the pipeline then encodes the empty prompt (SD1.5) and None where it uses
        zero embeddings (SDXL, `SDFamily.zeros_unset_negative`). Cell specs hash it."""
        text = negative_prompt(backbone)
        return "" if text is None and not self.spec.zeros_unset_negative else text

    #: LPIPS compares each image with the same item in its job's highest-step cell
    anchors_to_highest_step = True

    #: a bare backbone's roles when none of its adapter cells says: the references of every role
    #: (FaceID cells cross the identities)
    adapter_roles = REFERENCE_ROLES

    def adapter_role(self, adapter: Mapping[str, Any]) -> str | None:
        """The adapter's ``role``: the references its cells cross."""
        return adapter["role"] if adapter["kind"] == ADAPTER_KIND else None

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        """FaceID reads the identities' face embeddings; plain and Plus reference image embeddings."""
        return faceid.is_faceid(adapter)

    def identity_models(self, adapter: Mapping[str, Any]) -> list[str]:
        """FaceID's face pipeline: insightface detection and buffalo_l's ArcFace (`w600k_r50`), the
        embedding h94 trained it on."""
        return [INSIGHTFACE.name, FACEID_ENCODER.name] if faceid.is_faceid(adapter) else []

    def prompt_model(self, models: list[str]) -> str:
        return self.name

    prompt_job_mem_mb = 16000  # CLIP text encoders only (SDXL's two: 1.6 GB in fp16)
    prompt_timing_key = "embed_sd_prompt"  # the rule's name in the workflow runs that measured it
    #: benchmarks/sd_distilled_latency.py: seconds per image of the distilled backbones (and their
    #: base) against steps, per adapter file; the base's own are in the shared sd_latency file
    figure_files = ("sd_distilled_latency",)

    def timing_name(self, backbone: Mapping[str, Any]) -> str:
        """The family, and a distillation's name after it: its UNet calls (no CFG at guidance <= 1),
        scheduler and side differ from the base's."""
        distillation = distillation_of(backbone)
        return self.name if distillation is None else f"{self.name}/{distillation.name}"

    def figure_cell(self, row: Mapping[str, str]) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        """A row of this family: its `backbone` is `base` or a distillation's name, its
        `adapter` is `none` or an adapter file (`plain`, `plus`)."""
        name, file = row.get("backbone"), row.get("adapter")
        if row.get("family") != self.name or not (name == "base" or name in DISTILLATIONS[self.name]):
            return None
        backbone = {"model": self.name, "family": self.name}
        if name != "base":
            backbone["distillation"] = name
        if file == "none":
            return backbone, {"kind": "none"}
        if file not in (*self.spec.adapters, faceid.FACEID_FILE):
            return None
        role = "identity" if file == faceid.FACEID_FILE else "object"
        return backbone, {"kind": ADAPTER_KIND, "role": role, "file": file, "scale": 1.0}

    def prompt_embedding_floats(self, backbone: Mapping[str, Any]) -> int:
        """The prompt's and the negative's: every CLIP tower's 77 tokens side by side, and the
        projected towers' pooled embeddings (SDXL's)."""
        towers = [config for kind, config in self.spec.text_encoders.values()]
        pooled = [c["projection_dim"] for kind, c in self.spec.text_encoders.values() if "Projection" in kind]
        return 2 * (77 * sum(c["hidden_size"] for c in towers) + sum(pooled))

    def reference_embedding_floats(self, adapter: Mapping[str, Any]) -> int:
        file = self.reference_file(adapter)
        return 0 if file is None else REFERENCE_FLOATS[file]

    def adapter_files(self, adapters: list[Mapping[str, Any]]) -> list[tuple[SDFamily, str, bool]]:
        """`specs.ip_adapter_patterns` uses for these adapters: each file with its image encoder
        (generation loads the file, the reference embedding job the encoder too)."""
        files = sorted({a.get("file", "plain") for a in adapters if self.reference_file(a) is not None})
        return [(self.spec, file, True) for file in files]

    # --- job side: imports torch and diffusers inside -------------------------
    def prompt_encoder(
        self, config: Study, model: str, device: torch.device, dtype: torch.dtype
    ) -> SDPromptEncoder:
        from fewstep.families.sd.cell import SDPromptEncoder

        return SDPromptEncoder(config, self.spec, device, dtype)

    def reference_encoder(
        self, config: Study, file: str, device: torch.device, dtype: torch.dtype
    ) -> ReferenceEncoder:
        from fewstep.families.sd.cell import ReferenceEncoder

        return ReferenceEncoder(config, self.spec, file, device, dtype)

    def identity_encoder(
        self, config: Study, adapters: Sequence[Mapping[str, Any]], device: torch.device
    ) -> IdentityEncoder:
        """FaceID's face pipeline (every FaceID adapter reads the same embedding), on the CPU; plain
        and Plus read reference embeddings, so a sweep without FaceID has none."""
        if not any(faceid.is_faceid(a) for a in adapters):
            raise ConfigError(f"embed-identities: no {self.name} adapter reads identity embeddings")
        return faceid.FaceIDFaceEncoder(config)

    def cell_pipeline(
        self,
        config: Study,
        backbone: Mapping[str, Any],
        adapter: Mapping[str, Any],
        acceleration: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        components: Mapping[str, Any] | None = None,
    ) -> SDCellPipeline:
        from fewstep.families.sd.cell import SDCellPipeline, load_components

        if components is None:
            components = load_components(
                config, backbone, adapter, device, dtype, scheduler=self.scheduler(backbone)
            )
        return SDCellPipeline(
            **components,
            spec=self.spec,
            scale=self.scale("<adapter>", adapter) if adapter["kind"] == ADAPTER_KIND else None,
            guidance=self.guidance(backbone),
            eta=getattr(distillation_of(backbone), "eta", 0.0),
            side=self.resolution(backbone),
            device=device,
            dtype=dtype,
            acceleration=acceleration,
            faces=faceid.is_faceid(adapter),
        )

    # --- report side -----------------------------------------------------------
    @property
    def label(self) -> str:
        return self.spec.label

    report_folders = ("sd",)  # one figure folder for every SD family's section

    def report_parts(self, kit: ReportKit) -> ReportParts:
        """A section of its own: metrics vs steps per series, knees, grids, the study's claim."""
        from fewstep.families.sd.report import section

        return section(kit, self.name, self.label, self.report_folders[0])


#: the prompt variant of zero negative embeddings (SDXL without a negative prompt)
ZERO_NEGATIVE = "Nzeros"


def negative_label(negative: str) -> str:
    """Names a negative prompt's text in embedding file names: two negatives never share a file."""
    return "N" + hashlib.sha256(negative.encode()).hexdigest()[:12]


SD_FAMILIES = {name: StableDiffusion(spec) for name, spec in FAMILIES.items()}
