"""The contract between a model family and the rest of the workflow.

A family is one folder under ``fewstep/families/`` (FLUX: ``families/flux/``) and
one object satisfying `Family`, listed in `fewstep.families.FAMILIES` under the
name that config ``backbones.<id>.family`` uses. It gives:

- the grid (`fewstep.grid`): its backbone models, the adapter kinds it runs and
  their validation, the registry models a cell needs, what the cells precompute;
- the jobs (`fewstep.jobs`): a prompt encoder and, per cell, a `CellPipeline`
  that conditions, denoises with a per-step callback and decodes;
- preparation: its `ModelSpec`s are registered with `fewstep.registry` and carry
  their own real / tiny / random recipes.

The grid side runs while Snakemake parses the workflow: attributes and grid
methods must not import torch, diffusers, transformers or pandas (the job-side
methods import them inside their bodies). Config values arrive validated by the
schema; a family's own checks raise `ConfigError` with one line that names the
config key and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fewstep.registry.spec import ModelSpec


@dataclass
class Step:
    """What the per-step callback of `CellPipeline.denoise` receives after each model call."""

    index: int  # 0-based step number
    sigma: float  # noise level the step starts from
    sigma_next: float  # noise level it ends at
    latents: torch.Tensor  # the latents the model saw (the family's own layout)
    prediction: torch.Tensor  # the model's output (velocity for flow matching, epsilon for DDPM-style)
    predicted_clean: torch.Tensor  # the x0 estimate, decodable with `CellPipeline.decode`
    adapter_active: bool  # the adapter contributed to this step
    probes: dict[str, float] = field(default_factory=dict)  # adapter-strength measurements, family-defined


@dataclass
class Denoised:
    """The end of one `CellPipeline.denoise` call: final latents and how the steps went."""

    latents: torch.Tensor
    sigmas: list[float]  # one per step taken
    adapter_active: list[bool]  # one per step taken
    denoise_s: float  # wall time of the whole loop (device synchronised)
    step_s: list[float]  # wall time of each step


@dataclass(frozen=True)
class ItemInputs:
    """The precomputed inputs of one image, read from the files the precompute rules wrote."""

    prompt: Mapping[str, torch.Tensor]  # the family's prompt embedding file (`PromptEncoder.encode`)
    reference_id: str  # the item's identity (cache key for per-reference work)
    reference_image: str  # its picture, as config ``identities[].image`` names it (`core.images.load_rgb`)
    reference: Mapping[str, torch.Tensor] | None = None  # identity embedding file, when the adapter needs one
    reference_meta: Mapping[str, str] = field(default_factory=dict)  # that file's metadata


class PromptEncoder(Protocol):
    """The family's text encoders, loaded once per sweep by the embed_prompts job."""

    def encode(self, text: str, max_sequence_length: int) -> dict[str, torch.Tensor]:
        """Embeddings of one prompt (batch of one), saved as they are into the prompt embedding file."""
        ...


class CellPipeline(Protocol):
    """One cell's loaded models (backbone + adapter), without text encoders.

    Built once per generation or trajectory job by `Family.cell_pipeline` with the
    cell's backbone and adapter settings, step count and resolution.
    """

    device: torch.device
    dtype: torch.dtype
    #: the network called once per step (FLUX transformer, SD UNet); the trajectory job hooks its blocks
    denoiser: torch.nn.Module

    def condition(self, inputs: ItemInputs) -> Any:
        """The conditioning of one image (the family's own type), cached per reference as it likes."""
        ...

    def stack(self, conditions: Sequence[Any]) -> Any:
        """Several `condition` results as one batch, in order."""
        ...

    def denoise(
        self, condition: Any, seeds: Sequence[int], on_step: Callable[[Step], None] | None = None
    ) -> Denoised:
        """Sample one batch, image i from noise seeded by `seeds[i]` (same noise on every device).

        `on_step` is called after every model evaluation, before the scheduler step.
        """
        ...

    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        """Latents (final or `Step.predicted_clean`) to HxWx3 uint8 RGB images."""
        ...


class Family(Protocol):
    """A model family: its backbones, adapters, preparation and job-side pipeline."""

    #: the config's ``backbones.<id>.family`` value
    name: str
    #: registry specs usable as ``backbones.<id>.model``
    backbones: Mapping[str, ModelSpec]
    #: the ``adapters.<id>.kind`` values this family runs; ``"none"`` is the bare backbone
    adapter_kinds: frozenset[str]
    #: largest width or height it takes unless config ``resolution.max_side`` says otherwise
    max_side: int

    # --- grid side: no torch ------------------------------------------------
    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        """Raise `ConfigError` for settings of ``backbones.<key>`` the model cannot take."""
        ...

    def check_adapter(self, key: str, adapter: Mapping[str, Any]) -> None:
        """Raise `ConfigError` for settings of ``adapters.<key>`` this family cannot run."""
        ...

    def guidance(self, backbone: Mapping[str, Any]) -> float | None:
        """The guidance the backbone really receives (None when it takes none)."""
        ...

    def cell_models(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
        """Registry models a generation job of this backbone and adapter loads."""
        ...

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        """Whether cells with this adapter read the identity embedding files (embed_identities rule)."""
        ...

    def prompt_model(self, models: Sequence[str]) -> str:
        """Which of the sweep's backbone models (of this family) embeds every prompt.

        One text-encoder load per family and sweep; backbones of a family share it.
        """
        ...

    # --- job side -------------------------------------------------------------
    def prompt_encoder(
        self, config: Mapping[str, Any], model: str, device: torch.device, dtype: torch.dtype
    ) -> PromptEncoder:
        """The text encoders of registry model `model`."""
        ...

    def cell_pipeline(
        self,
        config: Mapping[str, Any],
        backbone: Mapping[str, Any],
        adapter: Mapping[str, Any],
        steps: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> CellPipeline:
        """Load one cell's backbone and adapter (config ``memory`` options applied)."""
        ...


def rms(tensor: torch.Tensor) -> torch.Tensor:
    """Root mean square of a tensor's values, in float32 (a 0-d tensor): the norm probes' measure."""
    return tensor.float().pow(2).mean().sqrt()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA): around timed sections."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
