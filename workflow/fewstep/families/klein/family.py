"""FLUX.2 [klein] 4B as a `Family` (grid side): a step-distilled backbone that takes the
identity's conditioning photo natively as a reference image, with no adapter.

Config shape:

    backbones:
      klein: {family: klein, model: flux2-klein-4b, steps: [1, 2, 4, 8]}
    adapters:
      reference: {kind: native_reference}   # the identity photo as `image=`; none: text only

Its cells cross the identities like FLUX's InfuseNet cells, are scored by the same identity
metrics and may be compared with them (`comparable`); LPIPS compares with the config's anchor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import ConfigError
from fewstep.core.study import Study
from fewstep.families.base import latency_cell
from fewstep.families.klein.models import BACKBONES, KLEIN_4B, generation_weights
from fewstep.families.klein.specs import MAX_SEQUENCE_LENGTH, QWEN3_4B, TEXT_ENCODER_OUT_LAYERS

if TYPE_CHECKING:
    import torch

    from fewstep.families.base import IdentityEncoder, ReferenceEncoder
    from fewstep.families.klein.cell import KleinCellPipeline, KleinPromptEncoder
    from fewstep.families.report_kit import ReportKit, ReportParts
    from fewstep.registry.spec import ModelSpec

#: the adapter kind of a model that takes the reference picture itself (`image=`), no adapter
NATIVE_REFERENCE = "native_reference"
#: the prompt embedding files' label: Qwen3 hidden states of the chat-formatted prompt, 512 tokens
PROMPT_VARIANT = f"Q{MAX_SEQUENCE_LENGTH}"
#: the backbone id benchmarks/klein_latency.py gives klein 4B in its summaries' cells
FIGURE_ID = "klein"


class KleinFamily:
    """FLUX.2 [klein] 4B; adapters: its native reference image (``native_reference``) or none."""

    name = "klein"
    adapter_kinds = frozenset({NATIVE_REFERENCE, "none"})
    max_side = 2048  # FLUX.2 generates up to 4 megapixels
    adapter_roles = ("identity",)  # the reference is the identity's conditioning photo
    acceleration_switches: frozenset[str] = frozenset()  # eager only
    comparable = True  # identity cells, compared with FLUX's on the same identities and metrics
    anchors_to_highest_step = False  # LPIPS to the config's anchor, as FLUX's cells
    prompt_job_mem_mb = 24000  # Qwen3-4B (8 GB in bf16), read from disk
    prompt_timing_key = "embed_prompt/klein"
    #: benchmarks/klein_latency.py: klein per step and decode, with its reference and bare
    figure_files = ("klein_latency",)

    def timing_name(self, backbone: Mapping[str, Any]) -> str:
        return backbone["model"]

    def figure_cell(self, row: Mapping[str, str]) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        """The benchmark's backbone ``klein`` (klein 4B) with its adapter ``reference`` (the
        native reference) or ``none``; its FLUX rows are not klein's."""
        return latency_cell(row, FIGURE_ID, {"model": KLEIN_4B.name, "family": self.name}, NATIVE_REFERENCE)

    def prompt_embedding_floats(self, backbone: Mapping[str, Any]) -> int:
        """Qwen3's tokens x its hidden width, of each layer read."""
        return MAX_SEQUENCE_LENGTH * len(TEXT_ENCODER_OUT_LAYERS) * QWEN3_4B["hidden_size"]

    def reference_embedding_floats(self, adapter: Mapping[str, Any]) -> int:
        return 0

    #: none besides the neutral ones: its prompt length and step schedule are the card's
    backbone_keys: frozenset[str] = frozenset()
    #: the reference is the identity's photo as it is: nothing to set
    adapter_keys = {NATIVE_REFERENCE: frozenset(), "none": frozenset()}
    config_values: Mapping[str, tuple[str, ...]] = {}

    @property
    def backbones(self) -> Mapping[str, ModelSpec]:
        return BACKBONES

    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        """The neutral ``guidance`` set: klein takes none (the grid refuses keys of other families)."""
        if backbone.get("guidance") is not None:
            raise ConfigError(
                f"config backbones.{key}.guidance: it is step- and guidance-distilled; remove it"
            )

    def check_adapter(self, key: str, adapter: Mapping[str, Any]) -> None:
        """Nothing to check: its adapters have no settings (`adapter_keys`)."""

    def guidance(self, backbone: Mapping[str, Any]) -> None:
        """None: the distilled model runs without classifier-free guidance (the card's 1.0)."""
        return None

    def settings(self, backbone: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_sequence_length": MAX_SEQUENCE_LENGTH}

    def image_size(self, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> dict[str, Any]:
        """Config ``resolution`` as it is, as for FLUX (the images are compared with theirs)."""
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
        """One file per prompt: nothing in a backbone's settings shapes the embeddings."""
        return {PROMPT_VARIANT: backbones[0]}

    def prompt_variant(self, backbone: Mapping[str, Any]) -> str:
        return PROMPT_VARIANT

    def prompt_metadata(self, backbone: Mapping[str, Any]) -> dict[str, str]:
        return {
            "max_sequence_length": str(MAX_SEQUENCE_LENGTH),
            "text_encoder_out_layers": ",".join(map(str, TEXT_ENCODER_OUT_LAYERS)),
        }

    def reference_file(self, adapter: Mapping[str, Any]) -> None:
        """The generation job encodes the photo itself with the backbone's VAE, as the pipeline
        does (`KleinCellPipeline`): no embed_reference job."""
        return None

    def reference_models(self, adapter: Mapping[str, Any]) -> list[str]:
        return []

    def cell_weights(
        self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        return generation_weights(backbone["model"])

    def cell_models(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
        return list(self.cell_weights(backbone, adapter))

    def adapter_role(self, adapter: Mapping[str, Any]) -> str | None:
        return "identity" if adapter["kind"] == NATIVE_REFERENCE else None

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        return False  # the photo itself, not its face embedding

    def identity_models(self, adapter: Mapping[str, Any]) -> list[str]:
        return []

    def prompt_model(self, models: Sequence[str]) -> str:
        return models[0]

    # --- job side: imports torch and diffusers inside -------------------------
    def prompt_encoder(
        self, config: Study, model: str, device: torch.device, dtype: torch.dtype
    ) -> KleinPromptEncoder:
        from fewstep.families.klein.cell import KleinPromptEncoder

        return KleinPromptEncoder(config, model, device, dtype)

    def reference_encoder(
        self, config: Study, file: str, device: torch.device, dtype: torch.dtype
    ) -> ReferenceEncoder:
        """None to load: `reference_file` is None for every klein adapter, so no job asks for this."""
        raise ConfigError(
            f"embed-references --file {file}: FLUX.2 [klein] cells read no reference embeddings (the "
            "generation job encodes the identity photo); nothing to run"
        )

    def identity_encoder(
        self, config: Study, adapters: Sequence[Mapping[str, Any]], device: torch.device
    ) -> IdentityEncoder:
        """None to load: the generation job encodes the photo itself (`needs_identity_embeddings`)."""
        raise ConfigError(
            "embed-identities: no FLUX.2 [klein] adapter reads identity embeddings (the generation job "
            "encodes the identity photo); nothing to run"
        )

    def cell_pipeline(
        self,
        config: Study,
        backbone: Mapping[str, Any],
        adapter: Mapping[str, Any],
        acceleration: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        components: Mapping[str, Any] | None = None,
    ) -> KleinCellPipeline:
        """The cell pipeline of the prepared weights, or of `components` (transformer, vae,
        scheduler) made elsewhere; with the native reference it reads the config's identity photos."""
        from fewstep.families.klein.cell import KleinCellPipeline, load_components

        if any(acceleration[k] != "none" for k in ("compile", "fp8", "cache")):
            raise ConfigError("config cells.accelerations: FLUX.2 [klein] backbones run eager only")
        if components is None:
            components = load_components(config, backbone, device, dtype)
        pictures = None
        if adapter["kind"] == NATIVE_REFERENCE:
            pictures = {identity.id: identity.image for identity in config.identities}
        return KleinCellPipeline(
            **components,
            pictures=pictures,
            width=config.resolution["width"],
            height=config.resolution["height"],
            device=device,
            dtype=dtype,
        )

    # --- report side -----------------------------------------------------------
    label = "FLUX.2 [klein]"
    report_folders = ()  # the generic page draws its cells beside FLUX's

    def report_parts(self, kit: ReportKit) -> ReportParts:
        from fewstep.families.report_kit import ReportParts

        return ReportParts()


KLEIN = KleinFamily()
