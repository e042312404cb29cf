"""The contract between a model family and the rest of the workflow.

A family is one folder under ``fewstep/families/`` (FLUX: ``families/flux/``) and
one object satisfying `Family`, listed in `fewstep.families.FAMILIES` under the
name that config ``backbones.<id>.family`` uses. It gives:

- the grid (`fewstep.grid`): its backbone models, the adapter kinds it runs and
  their validation, the pictures each adapter conditions on, its images' size and the
  settings hashed into a cell, the registry models a cell needs, what the cells
  precompute (prompt variants, reference files), its acceleration switches;
- the jobs (`fewstep.jobs`): a prompt encoder, reference encoders and, per cell, a
  `CellPipeline` that conditions, denoises with a per-step callback and decodes;
- preparation: its `ModelSpec`s are registered with `fewstep.registry` and carry
  their own real / tiny / random recipes.

The grid side runs while Snakemake parses the workflow: attributes and grid
methods must not import torch, diffusers, transformers or pandas (the job-side
methods import them inside their bodies). Config values arrive validated by the
schema; a family's own checks raise `ConfigError` with one line that names the
config key and the fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fewstep.core.study import Study

if TYPE_CHECKING:
    import torch

    from fewstep.families.report_kit import ReportKit, ReportParts
    from fewstep.registry.spec import ModelSpec


class StepTimer:
    """Wall time between marks without a synchronize per step: CUDA events on a GPU, else the clock.

    A mark only records where the device's work stream is; `seconds` waits for the last mark, so
    reading the times is the one point that waits for the GPU (the image writer does it).
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """The intervals between consecutive marks."""
        if not self.cuda:
            return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]
        self.marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:], strict=False)]


@dataclass
class Step:
    """What the per-step callback of `CellPipeline.denoise` receives after each model call."""

    index: int  # 0-based step number
    sigma: float  # noise level the step starts from (the timestep for DDPM-style schedulers)
    sigma_next: float  # noise level it ends at
    prediction: torch.Tensor  # the model's output (velocity for flow matching, epsilon for DDPM-style)
    predicted_clean: torch.Tensor  # the x0 estimate, decodable with `CellPipeline.decode`
    adapter_active: bool  # the adapter contributed to this step
    #: per-step measurements of adapter strength, family-defined trajectory columns
    probes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Denoised:
    """The end of one `CellPipeline.denoise` call: final latents and how the steps went."""

    latents: torch.Tensor
    sigmas: list[float]  # one per step taken
    adapter_active: list[bool]  # one per step taken
    #: marked before the first step and after every step; the job marks it once more after decoding
    timer: StepTimer


@dataclass(frozen=True)
class ItemInputs:
    """The precomputed inputs of one image, read from the files the precompute rules wrote."""

    prompt: Mapping[str, torch.Tensor]  # the prompt embedding file's tensors, on the device in compute dtype
    reference_id: str  # the item's reference (identity, style or object picture): cache key per reference
    #: the reference's embedding file (CPU, as saved) when the adapter reads one, and its metadata
    reference: Mapping[str, torch.Tensor] | None = None
    reference_meta: Mapping[str, str] = field(default_factory=dict)


class PromptEncoder(Protocol):
    """The family's text encoders, loaded once per sweep by the embed_prompt jobs."""

    def encode(self, text: str, backbone: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Embeddings of one prompt (batch of one) for `backbone`'s settings, saved as they are
        into the prompt embedding file."""
        ...


class ReferenceEncoder(Protocol):
    """An adapter file's image encoder, loaded once per embed_reference job."""

    def encode(self, image: Any) -> torch.Tensor:
        """The embedding of one reference picture (a PIL image), saved as ``image_embeds``."""
        ...


@dataclass(frozen=True)
class TinyCell:
    """One cell's seeded tiny components made in memory (no file read), and an item's precomputed
    inputs besides its prompt as the family's precompute job writes them (`ItemInputs.reference`
    and ``reference_meta``; None where the job reads no such file, as a cell pipeline that reads
    the photo through the config): what each family's ``tiny.py:tiny_cell(config, backbone,
    adapter)`` gives `Family.cell_pipeline(..., components=...)` in the contract test."""

    components: dict[str, Any]
    reference: dict[str, torch.Tensor] | None
    reference_meta: dict[str, str]


@dataclass(frozen=True)
class IdentityEmbedding:
    """What one family's `IdentityEncoder` makes of one identity's photo: its tensors and metadata
    in the identity's embedding file (the embed_identity job joins those of every family)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]


class IdentityEncoder(Protocol):
    """A family's face pipeline, loaded once per embed_identity job: what its adapters read of each
    identity's conditioning photo (FLUX: InfiniteYou's detection, keypoints and ArcFace)."""

    #: where it computes (the file records it)
    device: torch.device

    def encode(self, rgb: Any) -> IdentityEmbedding | None:
        """The embeddings of one photo (RGB uint8 [H, W, 3] numpy); None when it shows no face."""
        ...


class CellPipeline(Protocol):
    """One generation job's loaded models (backbone + adapter, accelerated), without text encoders.

    Built once per generation or trajectory job by `Family.cell_pipeline`, which loads the
    components (the family's ``cell.load_components``) and passes them to the constructor, as
    diffusers' pipelines take theirs; it renders every step count of the job's cells.
    """

    device: torch.device
    dtype: torch.dtype

    def condition(self, inputs: ItemInputs) -> tuple[Any, float]:
        """The conditioning of one image (the family's own type), and the device seconds computing
        it cost (adapter projections, control images; cached per reference as the family likes)."""
        ...

    def stack(self, conditions: Sequence[Any]) -> Any:
        """Several `condition` results as one batch, in order."""
        ...

    def denoise(
        self, condition: Any, seeds: Sequence[int], steps: int, on_step: Callable[[Step], None] | None = None
    ) -> Denoised:
        """Sample one batch in `steps` steps, image i from noise seeded by `seeds[i]` (the same
        noise on every device); queue the work and wait for nothing.

        `on_step` (trajectories) is called after every model evaluation, with the step's probes.
        """
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (final or `Step.predicted_clean`) to [B, H, W, 3] uint8 RGB on the device."""
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
    #: the pictures its adapters condition on (`adapter_role`), in order: ``"identity"`` (config
    #: ``identities``) or a reference role (config ``references`` of that role, ``Item.identity``
    #: holding the reference id). A bare backbone crosses those of its adapter cells' roles, or all
    #: of these when it has none, and its images are scored for each of them (the metric specs say
    #: which metrics fit a role: `fewstep.scoring.specs`)
    adapter_roles: tuple[str, ...]
    #: the config ``accelerations.<name>`` switches (compile, fp8, cache) it implements, each with
    #: every value, or ``"<switch>:<value>"`` for one value only (``"cache:taylorseer"``); empty: eager only
    acceleration_switches: frozenset[str]
    #: True: its cells may be the config's ``anchor`` (``trajectory.cells`` may be any family's:
    #: every cell pipeline reports its x0 after each step; ``comparison`` pairs take any family's cells)
    comparable: bool
    #: the ``backbones.<id>`` settings it reads besides the family-neutral ``model``, ``family``,
    #: ``steps`` and ``guidance`` (the grid refuses any other key set on its backbones)
    backbone_keys: frozenset[str]
    #: adapter kind -> the ``adapters.<id>`` settings it reads besides ``kind`` (the grid refuses
    #: any other key set on an adapter of its cells)
    adapter_keys: Mapping[str, frozenset[str]]
    #: config key (``backbones.<name>.scheduler``) -> the values it takes of one of its keys whose
    #: schema entry is an enum: the schema lists every family's (`tests/test_families.py` checks)
    config_values: Mapping[str, tuple[str, ...]]

    # --- grid side: no torch ------------------------------------------------
    def check_backbone(self, key: str, backbone: Mapping[str, Any]) -> None:
        """Raise `ConfigError` for settings of ``backbones.<key>`` the model cannot take."""
        ...

    def check_adapter(self, key: str, adapter: Mapping[str, Any]) -> None:
        """Raise `ConfigError` for settings of ``adapters.<key>`` this family cannot run."""
        ...

    def guidance(self, backbone: Mapping[str, Any]) -> float | None:
        """The guidance the backbone really receives (None when it takes none); the family's default
        where ``backbones.<id>.guidance`` is null, as every default of its own keys is its own."""
        ...

    def settings(self, backbone: Mapping[str, Any]) -> dict[str, Any]:
        """What besides model, family and guidance shapes a backbone's images (hashed into cell specs)."""
        ...

    def image_size(self, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> dict[str, Any]:
        """The size of a backbone's images with ``width`` and ``height`` (hashed into cell specs);
        `resolution` is config ``resolution``."""
        ...

    def check_size(self, key: str, backbone: Mapping[str, Any], resolution: Mapping[str, Any]) -> None:
        """Raise `ConfigError` when ``backbones.<key>``'s images would be larger than the family's
        `max_side` (or config ``resolution.max_side``)."""
        ...

    def prompt_variants(self, backbones: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
        """Label -> a backbone embedding prompts that way, one per prompt embedding file the sweep's
        `backbones` read (FLUX: ``L<sequence length>``; SD: ``N<negative prompt hash>``)."""
        ...

    def prompt_variant(self, backbone: Mapping[str, Any]) -> str:
        """The label of the prompt embedding files `backbone` reads (a `prompt_variants` key)."""
        ...

    def prompt_metadata(self, backbone: Mapping[str, Any]) -> dict[str, str]:
        """What a prompt embedding file of `backbone`'s variant records of its settings."""
        ...

    def reference_file(self, adapter: Mapping[str, Any]) -> str | None:
        """The adapter file whose image encoder embeds the references of a cell with this adapter
        (the embed_reference rule); None when the adapter reads no reference embedding."""
        ...

    def reference_models(self, adapter: Mapping[str, Any]) -> list[str]:
        """Registry models the embed_reference job of the adapter's `reference_file` loads (none
        when it has none)."""
        ...

    def cell_weights(
        self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        """Registry models a generation job of this backbone and adapter loads -> the folders or
        files inside each that it reads (their digest goes into every image's resume key)."""
        ...

    def cell_models(self, backbone: Mapping[str, Any], adapter: Mapping[str, Any]) -> list[str]:
        """Registry models a generation job of this backbone and adapter loads."""
        ...

    def adapter_role(self, adapter: Mapping[str, Any]) -> str | None:
        """What the adapter is given and its images are compared with: ``"identity"`` (a face),
        ``"style"`` or ``"object"`` (a reference picture); None for the bare backbone (kind none)."""
        ...

    #: True: a cell's anchor-paired metrics (LPIPS) compare with its own job's highest-step cell;
    #: False: with the config's ``anchor`` cell
    anchors_to_highest_step: bool

    def needs_identity_embeddings(self, adapter: Mapping[str, Any]) -> bool:
        """Whether cells with this adapter read the identity embedding files (embed_identity rule)."""
        ...

    def identity_models(self, adapter: Mapping[str, Any]) -> list[str]:
        """Registry models the embed_identity job loads for this adapter (none when it needs no
        identity embeddings): the rule's inputs and the cells' provenance."""
        ...

    def prompt_model(self, models: Sequence[str]) -> str:
        """Which of the sweep's backbone models (of this family) embeds every prompt.

        One text-encoder load per family and sweep; backbones of a family share it.
        """
        ...

    #: host memory (MB) an embed_prompt job of this family asks the scheduler for, full-size
    #: text encoders loaded (the rule asks for 2 GB with tiny weights)
    prompt_job_mem_mb: int
    #: the overhead key ``fewstep estimate`` times its embed_prompt jobs by: families whose jobs
    #: load the same text encoders share one (SD1.5's and SDXL's CLIP towers: ``embed_sd_prompt``)
    prompt_timing_key: str

    def prompt_embedding_floats(self, backbone: Mapping[str, Any]) -> int:
        """float32 values of one prompt's embedding file of `backbone`'s variant (the estimate's disk)."""
        ...

    def reference_embedding_floats(self, adapter: Mapping[str, Any]) -> int:
        """float32 values, at most, of one reference embedding file of the adapter's `reference_file`
        (0 when it has none)."""
        ...

    #: the benchmark kinds (``benchmarks/<kind>.py``) whose summaries time its own backbones for
    #: ``fewstep estimate`` beyond the shared FLUX and SD files: ``benchmarks/results/<kind>_<card>_
    #: <date>[_<part>]_summary.csv``, each row read through `figure_cell`; empty: none
    figure_files: tuple[str, ...]

    def timing_name(self, backbone: Mapping[str, Any]) -> str:
        """What ``fewstep estimate``'s figures time the backbone by, besides its adapter: its registry
        model, or whatever else sets its speed (SD: the family, ``<family>/<distillation>``)."""
        ...

    def figure_cell(self, row: Mapping[str, str]) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
        """The backbone and adapter settings (config form) a summary row of its `figure_files`
        timed, the benchmark's own ids mapped to its registry models: the estimate keys the row
        by `timing_name` and `adapter_role` / `reference_file` as it keys a cell. None for a row
        that is not its backbone's (the FLUX rows beside Kontext's) or that it cannot read."""
        ...

    # --- job side -------------------------------------------------------------
    def prompt_encoder(
        self, config: Study, model: str, device: torch.device, dtype: torch.dtype
    ) -> PromptEncoder:
        """The text encoders of registry model `model`."""
        ...

    def reference_encoder(
        self, config: Study, file: str, device: torch.device, dtype: torch.dtype
    ) -> ReferenceEncoder:
        """The image encoder of adapter file `file` (a `reference_file` value); a family whose
        `reference_file` is always None (FLUX) has none."""
        ...

    def identity_encoder(
        self, config: Study, adapters: Sequence[Mapping[str, Any]], device: torch.device
    ) -> IdentityEncoder:
        """The face pipeline whose embeddings `adapters` (the sweep's adapters of this family that
        `needs_identity_embeddings`) read; a family that needs none has none."""
        ...

    def cell_pipeline(
        self,
        config: Study,
        backbone: Mapping[str, Any],
        adapter: Mapping[str, Any],
        acceleration: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        components: Mapping[str, Any] | None = None,
    ) -> CellPipeline:
        """Load one generation job's backbone and adapter (config ``memory`` options applied) and
        accelerate it (`acceleration`: the job's switches, `fewstep.grid.EAGER_SWITCHES` when off).
        `components`: the pipeline's components made elsewhere (a test's `TinyCell`), as a
        diffusers pipeline takes them; None: its ``cell.load_components`` loads the prepared weights."""
        ...

    # --- report side: `fewstep.families.report_kit` --------------------------
    #: the family's name on the report page ("FLUX", "SD1.5")
    label: str
    #: figure folders of its own under reports/<sweep>/figures/ (each one Snakemake report
    #: category, described by workflow/report/<folder>.rst)
    report_folders: tuple[str, ...]

    def report_parts(self, kit: ReportKit) -> ReportParts:
        """Its report sections and additions to the generic ones, drawn with `kit`'s tools from
        `kit`'s tables (its own rows); empty `ReportParts` when the generic page says it all."""
        ...


def latency_cell(
    row: Mapping[str, str], figure_id: str, backbone: Mapping[str, Any], adapter_kind: str
) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """`Family.figure_cell` of a ``benchmarks/latency.py`` summary row (``cell``: ``<backbone
    id>/<adapter id>/<steps>``) whose backbone id is `figure_id`: `backbone`'s settings and an
    adapter of `adapter_kind` (kind none for the adapter id ``none``); None for other rows."""
    parts = str(row.get("cell", "")).split("/")
    if len(parts) != 3 or parts[0] != figure_id:
        return None
    return backbone, {"kind": "none" if parts[1] == "none" else adapter_kind}


def rms(tensor: torch.Tensor) -> torch.Tensor:
    """Root mean square of a tensor's values, in float32 (a 0-d tensor): the norm probes' measure."""
    return tensor.float().pow(2).mean().sqrt()


def timed(device: torch.device, compute: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """`compute(*args)` and its wall time, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    value = compute(*args)
    synchronize(device)
    return value, time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA): around timed sections."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
