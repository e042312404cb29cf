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
from fewstep.core.study import Study
from fewstep.faces.models import INSIGHTFACE
from fewstep.families.base import latency_cell
from fewstep.families.flux1 import prompt_embedding_floats
from fewstep.families.kontext.models import BACKBONES, GENERATION_FOLDERS, KONTEXT_DEV, max_sequence_length
from fewstep.families.kontext.specs import PROMPT_TEMPLATE

if TYPE_CHECKING:
    import torch

    from fewstep.families.base import ReferenceEncoder
    from fewstep.families.kontext.cell import KontextCellPipeline, KontextPhotoEncoder, KontextPromptEncoder
    from fewstep.families.report_kit import ReportKit, ReportParts
    from fewstep.registry.spec import ModelSpec

#: the embedded guidance of the model card's sampling unless config ``backbones.<id>.guidance`` says otherwise
GUIDANCE = 2.5
#: the backbone id benchmarks/kontext_latency.py gives Kontext [dev] in its summaries' cells
FIGURE_ID = "kontext"


class KontextFamily:
    """FLUX.1 Kontext [dev]; adapters: the native reference (``native_reference``) or none."""

    name = "kontext"
    adapter_kinds = frozenset({"native_reference", "none"})
    max_side = 2048  # as FLUX.1, which it is fine-tuned from
    adapter_roles = ("identity",)  # the reference is the identity's photo: cells cross the identities
    acceleration_switches: frozenset[str] = frozenset()  # eager only
    comparable = True  # its cells sit beside FLUX's in the identity study's comparisons
    anchors_to_highest_step = False  # LPIPS to the study's anchor cell, as FLUX's cells
    backbone_keys = frozenset({"max_sequence_length"})
    adapter_keys = {"native_reference": frozenset(), "none": frozenset()}  # the reference has no settings
    config_values: Mapping[str, tuple[str, ...]] = {}

    @property
    def backbones(self) -> Mapping[str, ModelSpec]:
        return BACKBONES

    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        """Its one setting, the T5 length, is checked by the schema."""

    def check_adapter(self, key: str, adapter: Mapping[str, Any]) -> None:
        """The native reference has no settings (the grid refuses any key besides ``kind``)."""

    def guidance(self, backbone: Mapping[str, Any]) -> float | None:
        """The embedded guidance: `GUIDANCE` (the model card's) unless set."""
        return GUIDANCE if backbone.get("guidance") is None else backbone["guidance"]

    def settings(self, backbone: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_sequence_length": max_sequence_length(backbone), "prompt_template": PROMPT_TEMPLATE}

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
        lengths = sorted({max_sequence_length(b) for b in backbones})
        return {f"L{n}": next(b for b in backbones if max_sequence_length(b) == n) for n in lengths}

    def prompt_variant(self, backbone: Mapping[str, Any]) -> str:
        return f"L{max_sequence_length(backbone)}"

    def prompt_metadata(self, backbone: Mapping[str, Any]) -> dict[str, str]:
        return {
            "max_sequence_length": str(max_sequence_length(backbone)),
            "prompt_template": PROMPT_TEMPLATE,
        }

    def reference_file(self, adapter: Mapping[str, Any]) -> None:
        """The reference is the identity's photo, which its identity embedding file holds."""
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
        """The identity embedding file holds the photo's pixels, the reference image (after a face
        check: the identity metrics compare the images with that face)."""
        return adapter["kind"] == "native_reference"

    def identity_models(self, adapter: Mapping[str, Any]) -> list[str]:
        """insightface's detector, which checks the photo shows a face."""
        return [INSIGHTFACE.name] if self.needs_identity_embeddings(adapter) else []

    def prompt_model(self, models: Sequence[str]) -> str:
        return models[0]

    prompt_job_mem_mb = 40000  # T5-XXL (9.5 GB in bf16) and CLIP-L, as FLUX's
    prompt_timing_key = "embed_prompt/kontext"
    #: benchmarks/kontext_latency.py: Kontext per step and decode beside FLUX's (`figure_cell`)
    figure_files = ("kontext_latency",)

    def timing_name(self, backbone: Mapping[str, Any]) -> str:
        return backbone["model"]

    def figure_cell(self, row: Mapping[str, str]) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        """The benchmark's backbone ``kontext`` (Kontext [dev]) with its adapter ``kontext-photo``
        (the native reference); its FLUX rows are not Kontext's."""
        return latency_cell(
            row, FIGURE_ID, {"model": KONTEXT_DEV.name, "family": self.name}, "native_reference"
        )

    def prompt_embedding_floats(self, backbone: Mapping[str, Any]) -> int:
        return prompt_embedding_floats(max_sequence_length(backbone))

    def reference_embedding_floats(self, adapter: Mapping[str, Any]) -> int:
        return 0

    # --- job side: imports torch and diffusers inside -------------------------
    def prompt_encoder(
        self, config: Study, model: str, device: torch.device, dtype: torch.dtype
    ) -> KontextPromptEncoder:
        from fewstep.families.kontext.cell import KontextPromptEncoder

        return KontextPromptEncoder(config, model, device, dtype)

    def reference_encoder(
        self, config: Study, file: str, device: torch.device, dtype: torch.dtype
    ) -> ReferenceEncoder:
        raise ConfigError(
            f"embed-references --file {file}: Kontext adapters read no reference embeddings (the identity "
            "photo is encoded by the generation job); run embed-identities instead"
        )

    def identity_encoder(
        self, config: Study, adapters: Sequence[Mapping[str, Any]], device: torch.device
    ) -> KontextPhotoEncoder:
        """The photo's pixels once insightface finds a face in it (on the CPU: one detection)."""
        from fewstep.families.kontext.cell import KontextPhotoEncoder

        return KontextPhotoEncoder(config)

    def cell_pipeline(
        self,
        config: Study,
        backbone: Mapping[str, Any],
        adapter: Mapping[str, Any],
        acceleration: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        components: Mapping[str, Any] | None = None,
    ) -> KontextCellPipeline:
        from fewstep.families.kontext.cell import KontextCellPipeline, load_components

        if components is None:
            components = load_components(config, backbone, adapter, device, dtype)
        return KontextCellPipeline(
            **components,
            adapter=adapter,
            width=config.resolution.width,
            height=config.resolution.height,
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
