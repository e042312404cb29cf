"""FLUX.1 Kontext [dev] as a `Family` (grid side): a native reference-image model.

Kontext edits its input image as the prompt says. The identity study gives it the identity's
conditioning photo as that image (adapter kind ``native_reference``: no adapter weights, the
reference enters the transformer as extra tokens) and phrases each of the study's prompts as an
edit of it with `PROMPT_TEMPLATE`; the embedded prompt files record the template, so changing it
re-embeds. The model card's sampling is 28 steps at guidance 2.5. Style and object references
are not offered: the card shows style reference, but the study's style/object sweeps belong to
the SD families, and Kontext's cells cross the identities and are scored like FLUX's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import ConfigError
from fewstep.families.kontext.models import BACKBONES, GENERATION_FOLDERS
from fewstep.families.kontext.specs import PROMPT_TEMPLATE

if TYPE_CHECKING:
    import torch

    from fewstep.families.base import ReferenceEncoder
    from fewstep.families.kontext.cell import KontextCellPipeline, KontextPromptEncoder
    from fewstep.families.report_kit import ReportKit, ReportParts
    from fewstep.registry.spec import ModelSpec

#: backbone keys of the SD families' schema that Kontext would silently ignore
SD_ONLY_BACKBONE_KEYS = ("scheduler", "negative_prompt", "resolution")


class KontextFamily:
    """FLUX.1 Kontext [dev]; adapters: the native reference (``native_reference``) or none."""

    name = "kontext"
    adapter_kinds = frozenset({"native_reference", "none"})
    max_side = 2048  # as FLUX.1, which it is fine-tuned from
    adapter_roles = ("identity",)  # the reference is the identity's photo: cells cross the identities
    acceleration_switches: frozenset[str] = frozenset()  # eager only
    comparable = True  # its cells sit beside FLUX's in the identity study's comparisons
    anchors_to_highest_step = False  # LPIPS to the study's anchor cell, as FLUX's cells

    @property
    def backbones(self) -> Mapping[str, ModelSpec]:
        return BACKBONES

    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        for setting in SD_ONLY_BACKBONE_KEYS:
            if setting in backbone:
                raise ConfigError(
                    f"config backbones.{key}.{setting}: an SD setting, which Kontext does not take; remove it"
                )
        if backbone.get("guidance") is None:
            raise ConfigError(
                f"config backbones.{key}.guidance: Kontext takes embedded guidance; set 2.5 (its model card)"
            )

    def check_adapter(self, key: str, adapter: Mapping[str, Any]) -> None:
        """The native reference has no settings; the schema refuses other kinds' keys."""
        extra = sorted(set(adapter) - {"kind"})
        if adapter["kind"] == "native_reference" and extra:
            raise ConfigError(
                f"config adapters.{key}.{extra[0]}: the native reference takes no settings; remove it"
            )

    def guidance(self, backbone: Mapping[str, Any]) -> float | None:
        return backbone["guidance"]

    def settings(self, backbone: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_sequence_length": backbone["max_sequence_length"], "prompt_template": PROMPT_TEMPLATE}

    def image_size(self, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> dict[str, Any]:
        """Config ``resolution`` (the reference keeps its own, Kontext-preferred size)."""
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
        """One file per T5 sequence length, shortest first."""
        lengths = sorted({b["max_sequence_length"] for b in backbones})
        return {f"L{n}": next(b for b in backbones if b["max_sequence_length"] == n) for n in lengths}

    def prompt_variant(self, backbone: Mapping[str, Any]) -> str:
        return f"L{backbone['max_sequence_length']}"

    def prompt_metadata(self, backbone: Mapping[str, Any]) -> dict[str, str]:
        return {
            "max_sequence_length": str(backbone["max_sequence_length"]),
            "prompt_template": PROMPT_TEMPLATE,
        }

    def reference_file(self, adapter: Mapping[str, Any]) -> None:
        """The reference is the identity's photo, read through its identity embedding file."""
        return None

    def reference_models(self, adapter: Mapping[str, Any]) -> list[str]:
        return []

    def cell_weights(
        self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        return {backbone["model"]: GENERATION_FOLDERS}

    def cell_models(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
        return list(self.cell_weights(backbone, adapter))

    def adapter_role(self, adapter: Mapping[str, Any]) -> str | None:
        return "identity" if adapter["kind"] == "native_reference" else None

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        """The identity embedding file names the photo (and its face is found, as for FLUX's
        cells: the identity metrics need one)."""
        return adapter["kind"] == "native_reference"

    def prompt_model(self, models: Sequence[str]) -> str:
        return models[0]

    prompt_job_mem_mb = 40000  # T5-XXL (9.5 GB in bf16) and CLIP-L, as FLUX's

    # --- job side: imports torch and diffusers inside -------------------------
    def prompt_encoder(
        self, config: Mapping[str, Any], model: str, device: torch.device, dtype: torch.dtype
    ) -> KontextPromptEncoder:
        from fewstep.families.kontext.cell import KontextPromptEncoder

        return KontextPromptEncoder(config, model, device, dtype)

    def reference_encoder(
        self, config: Mapping[str, Any], file: str, device: torch.device, dtype: torch.dtype
    ) -> ReferenceEncoder:
        raise ConfigError(
            f"embed-references --file {file}: Kontext adapters read no reference embeddings (the identity "
            "photo is encoded by the generation job); run embed-identities instead"
        )

    def cell_pipeline(
        self,
        config: Mapping[str, Any],
        backbone: Mapping[str, Any],
        adapter: Mapping[str, Any],
        acceleration: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype,
    ) -> KontextCellPipeline:
        from fewstep.families.kontext.cell import KontextCellPipeline, load_components

        return KontextCellPipeline(
            **load_components(config, backbone, adapter, device, dtype),
            adapter=adapter,
            width=config["resolution"]["width"],
            height=config["resolution"]["height"],
            guidance=self.guidance(backbone),
            device=device,
            dtype=dtype,
        )

    # --- report side -----------------------------------------------------------
    label = "FLUX.1 Kontext"
    report_folders = ()

    def report_parts(self, kit: ReportKit) -> ReportParts:
        """The generic page says it all: its cells join the tables, curves and comparisons."""
        from fewstep.families.report_kit import ReportParts

        return ReportParts()


KONTEXT = KontextFamily()
