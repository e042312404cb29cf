"""FLUX.1 (dev, schnell) with InfiniteYou's InfuseNet identity adapter, as a `Family` (grid side)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import ConfigError
from fewstep.core.study import Study
from fewstep.faces.models import ARCFACE_IRSE, INSIGHTFACE
from fewstep.families.flux.models import (
    BACKBONES,
    INFUSENET_VARIANTS,
    generation_weights,
    max_sequence_length,
)
from fewstep.families.flux1 import prompt_embedding_floats

if TYPE_CHECKING:
    import torch

    from fewstep.families.base import ReferenceEncoder
    from fewstep.families.flux.cell import FluxCellPipeline, FluxPromptEncoder, InfiniteYouFaceEncoder
    from fewstep.families.report_kit import ReportKit, ReportParts
    from fewstep.registry.spec import ModelSpec

SCHNELL_MAX_SEQUENCE_LENGTH = 256
#: FLUX.1-dev's embedded guidance unless config ``backbones.<id>.guidance`` says otherwise
GUIDANCE = 3.5
#: InfuseNet's settings (the schema fills their defaults on every ``kind: infusenet`` adapter)
INFUSENET_KEYS = frozenset(
    {"variant", "conditioning_scale", "guidance_start", "guidance_end", "first_steps", "control"}
)


class FluxFamily:
    """FLUX.1-dev and FLUX.1-schnell; adapters: InfuseNet (``infusenet``) or none."""

    name = "flux"
    adapter_kinds = frozenset({"infusenet", "none"})
    max_side = 2048  # FLUX.1 was trained up to about 2 megapixels
    adapter_roles = ("identity",)  # InfuseNet conditions on a face: every cell crosses the identities
    acceleration_switches = frozenset({"compile:regional", "fp8", "cache"})
    comparable = True  # the anchor cell is a FLUX cell of the identity study
    backbone_keys = frozenset({"max_sequence_length"})
    adapter_keys = {"infusenet": INFUSENET_KEYS, "none": frozenset()}
    #: InfuseNet's checkpoint and control image (`fewstep.families.flux.control`): black or keypoints
    config_values = {
        "adapters.<name>.variant": INFUSENET_VARIANTS,
        "adapters.<name>.control": ("none", "keypoints"),
    }

    @property
    def backbones(self) -> Mapping[str, ModelSpec]:
        return BACKBONES

    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        too_long = max_sequence_length(backbone) > SCHNELL_MAX_SEQUENCE_LENGTH
        if backbone["model"] == "flux-schnell" and too_long:
            raise ConfigError(
                f"config backbones.{key}.max_sequence_length: FLUX.1-schnell takes at most "
                f"{SCHNELL_MAX_SEQUENCE_LENGTH} tokens; set 256"
            )

    def check_adapter(self, key: str, adapter: Mapping[str, Any]) -> None:
        """The schema checks InfuseNet's settings (variant, scale, window, control) one by one, this
        the window as a whole."""
        if adapter["kind"] == "infusenet" and adapter["guidance_start"] >= adapter["guidance_end"]:
            raise ConfigError(f"config adapters.{key}: guidance_start must be below guidance_end")

    def guidance(self, backbone: Mapping[str, Any]) -> float | None:
        """dev's embedded guidance (`GUIDANCE` unless set); schnell's transformer has no guidance
        embedding."""
        if not self.backbones[backbone["model"]].extra["guidance_embeds"]:
            return None
        return GUIDANCE if backbone.get("guidance") is None else backbone["guidance"]

    def settings(self, backbone: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_sequence_length": max_sequence_length(backbone)}

    def image_size(self, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> dict[str, Any]:
        """Config ``resolution`` as it is (every FLUX backbone of a sweep takes the same size)."""
        return dict(resolution)

    def check_size(self, key: str, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> None:
        limit = resolution.get("max_side") or self.max_side
        for side in ("width", "height"):
            if resolution[side] > limit:
                raise ConfigError(
                    f"config resolution.{side}: {resolution[side]} px is beyond the {self.name} limit of "
                    f"{limit} px; lower it, or set resolution.max_side to go beyond deliberately"
                )

    def prompt_variants(self, backbones: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """One file per T5 sequence length, shortest first (nothing else shapes the embeddings)."""
        lengths = sorted({max_sequence_length(b) for b in backbones})
        return {f"L{n}": next(b for b in backbones if max_sequence_length(b) == n) for n in lengths}

    def prompt_variant(self, backbone: Mapping[str, Any]) -> str:
        return f"L{max_sequence_length(backbone)}"

    def prompt_metadata(self, backbone: Mapping[str, Any]) -> dict[str, str]:
        return {"max_sequence_length": str(max_sequence_length(backbone))}

    def reference_file(self, adapter: Mapping[str, Any]) -> None:
        """InfuseNet reads the identity embeddings (`needs_identity_embeddings`), no reference file;
        so FLUX has no `reference_encoder`."""
        return None

    def reference_models(self, adapter: Mapping[str, Any]) -> list[str]:
        return []  # no reference file: the embed_identity rule's face models embed InfuseNet's input

    def cell_weights(
        self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        return generation_weights(backbone["model"], dict(adapter))

    def cell_models(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
        return list(self.cell_weights(backbone, adapter))

    anchors_to_highest_step = False  # the study's anchor: FLUX.1-dev at its reference step count

    def adapter_role(self, adapter: Mapping[str, Any]) -> str | None:
        """InfuseNet conditions on a face."""
        return "identity" if adapter["kind"] == "infusenet" else None

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        """InfuseNet reads the ArcFace embedding and, for keypoint control, the face's keypoints."""
        return adapter["kind"] == "infusenet"

    def identity_models(self, adapter: Mapping[str, Any]) -> list[str]:
        """InfiniteYou's face pipeline: insightface detection and the IR-SE50 ArcFace."""
        return [INSIGHTFACE.name, ARCFACE_IRSE.name] if self.needs_identity_embeddings(adapter) else []

    def prompt_model(self, models: Sequence[str]) -> str:
        """dev and schnell ship the same text encoders: prefer ungated schnell (no token needed)."""
        return "flux-schnell" if "flux-schnell" in models else models[0]

    prompt_job_mem_mb = 40000  # T5-XXL (9.5 GB in bf16) and CLIP-L, read from disk
    prompt_timing_key = "embed_prompt"
    #: none of its own: the shared latency and acceleration files name its models
    figure_files: tuple[str, ...] = ()

    def timing_name(self, backbone: Mapping[str, Any]) -> str:
        return backbone["model"]

    def figure_cell(self, row: Mapping[str, str]) -> None:
        """FLUX has no `figure_files`; the estimate reads its rows in the shared latency file."""
        return None

    def prompt_embedding_floats(self, backbone: Mapping[str, Any]) -> int:
        return prompt_embedding_floats(max_sequence_length(backbone))

    def reference_embedding_floats(self, adapter: Mapping[str, Any]) -> int:
        return 0

    # --- job side: imports torch and diffusers inside -------------------------
    def prompt_encoder(
        self, config: Study, model: str, device: torch.device, dtype: torch.dtype
    ) -> FluxPromptEncoder:
        from fewstep.families.flux.cell import FluxPromptEncoder

        return FluxPromptEncoder(config, model, device, dtype)

    def reference_encoder(
        self, config: Study, file: str, device: torch.device, dtype: torch.dtype
    ) -> ReferenceEncoder:
        """None to load: InfuseNet reads the face embeddings of the embed_identity rule, and
        `reference_file` is None for every FLUX adapter, so no job asks for this."""
        raise ConfigError(
            f"embed-references --file {file}: FLUX adapters read no reference embeddings (InfuseNet "
            "takes the identity embeddings); run embed-identities instead"
        )

    def identity_encoder(
        self, config: Study, adapters: Sequence[Mapping[str, Any]], device: torch.device
    ) -> InfiniteYouFaceEncoder:
        """Every InfuseNet adapter reads the same face embedding (InfiniteYou's), on the CPU."""
        from fewstep.families.flux.cell import InfiniteYouFaceEncoder

        return InfiniteYouFaceEncoder(config)

    def cell_pipeline(
        self,
        config: Study,
        backbone: Mapping[str, Any],
        adapter: Mapping[str, Any],
        acceleration: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        components: Mapping[str, Any] | None = None,
    ) -> FluxCellPipeline:
        from fewstep.families.flux.cell import FluxCellPipeline, load_components

        if components is None:
            components = load_components(config, backbone, adapter, device, dtype)
        return FluxCellPipeline(
            **components,
            adapter=adapter,
            acceleration=acceleration,
            width=config.resolution.width,
            height=config.resolution.height,
            guidance=self.guidance(backbone),
            device=device,
            dtype=dtype,
        )

    # --- report side -----------------------------------------------------------
    label = "FLUX"
    report_folders = ()  # its scale and window figure joins the generic ablation folder

    def report_parts(self, kit: ReportKit) -> ReportParts:
        """The InfuseNet scale and window study, at the end of the ablation section."""
        from fewstep.families.flux.report import report_parts

        return report_parts(kit)


FLUX = FluxFamily()
