"""A validated sweep as typed, frozen objects: the `Study`, parsed once per process.

`fewstep.core.config.validate` checks a config and fills its defaults (the schema stays the
one source of them); `Study.of` turns that validated dict into these objects, and everything
after it (the grid, the jobs, analysis, tracking) takes the `Study` or one of its parts.
Nothing here re-derives a default or re-checks a key.

Why each section is also a read-only mapping: the typed fields are the settings every part of
the workflow reads (a backbone's ``model``, ``family``, ``steps``, ``guidance``; an adapter's
``kind``, ``role``), but a family owns the meaning of its own keys (FLUX's ``max_sequence_length``,
SD's ``negative_prompt``, ``scheduler``, an IP-Adapter's block ``scale``), which a generic
`Backbone` or `Adapter` cannot name as fields. So each section also reads as the mapping of its
validated settings, as diffusers' ``FrozenDict`` config does: the families' protocol methods
keep taking ``Mapping[str, Any]`` and read their own keys. A section is immutable: its settings
are stored frozen (`MappingProxyType`, tuples) and every read of a nested list or dict returns a
fresh plain copy, so a family sees the same plain values as before and can change none of them.

Hashes and provenance use `Study.to_dict()` (and a section's `to_dict()`): the validated dict
itself, so every fingerprint is the one the raw config gave.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from fewstep.core.config import config_hash, load, validate


def freeze(value: Any) -> Any:
    """`value` with every dict a `MappingProxyType` and every list a tuple (all the way down)."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """The plain data `freeze` made `value` from: dicts and lists again (validated configs hold no
    tuples, so this is exact)."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


@dataclass(frozen=True, eq=False)
class Section(Mapping[str, Any]):
    """One validated section: typed fields (in subclasses) and the read-only mapping of all its
    settings (see the module docstring for why both)."""

    settings: Mapping[str, Any] = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return thaw(self.settings[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.settings)

    def __len__(self) -> int:
        return len(self.settings)

    def to_dict(self) -> dict[str, Any]:
        """The validated settings as plain data (what fingerprints hash)."""
        return thaw(self.settings)


S = TypeVar("S", bound=Section)


def section(cls: type[S], settings: Mapping[str, Any], **given: Any) -> S:
    """`cls` from validated `settings`: each typed field its setting (None when the schema gives
    it no default and the config leaves it out) unless `given` names it."""
    frozen = freeze(settings)
    values = {f.name: frozen.get(f.name) for f in fields(cls) if f.name != "settings"}
    return cls(settings=frozen, **(values | given))


@dataclass(frozen=True, eq=False)
class Backbone(Section):
    """``backbones.<id>``; family-specific keys are read through the mapping."""

    id: str = ""
    model: str = ""
    family: str = ""
    steps: tuple[int, ...] = ()
    guidance: float | None = None


@dataclass(frozen=True, eq=False)
class Adapter(Section):
    """``adapters.<id>``; kind-specific keys (``variant``, ``file``, ``scale`` ...) through the mapping."""

    id: str = ""
    kind: str = ""
    role: str | None = None


@dataclass(frozen=True, eq=False)
class Acceleration(Section):
    """``accelerations.<id>``: the switches of one acceleration (cache-specific keys through the mapping)."""

    id: str = ""
    compile: str = "none"
    fp8: str = "none"
    cache: str = "none"
    cache_threshold: float = 0.0


@dataclass(frozen=True, eq=False)
class Resolution(Section):
    width: int = 0
    height: int = 0
    max_side: int | None = None


@dataclass(frozen=True, eq=False)
class Identity(Section):
    """One identity after expansion: its conditioning photo and held-out photos."""

    id: str = ""
    image: str = ""
    heldout: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Reference(Section):
    id: str = ""
    image: str = ""
    role: str = ""


@dataclass(frozen=True, eq=False)
class Prompt(Section):
    """One prompt; ``role`` None: every cell renders it, else only the cells of that role."""

    id: str = ""
    text: str = ""
    role: str | None = None

    def serves(self, roles: list[str]) -> bool:
        """Whether a cell crossing pictures of `roles` renders this prompt."""
        return self.role is None or self.role in roles


#: the prompt group of prompts without a role (every cell renders them)
ANY_ROLE = "any"


def prompt_group(prompt: Prompt) -> str:
    """The group a prompt is embedded with: its role, or `ANY_ROLE`."""
    return prompt.role or ANY_ROLE


def prompt_rule(group: str) -> str:
    """The Snakemake rule embedding a prompt group: ``embed_prompt`` for prompts without a
    role (the rule's name before prompts had roles), ``embed_prompt_<role>`` for a role's."""
    return "embed_prompt" if group == ANY_ROLE else f"embed_prompt_{group}"


def is_prompt_rule(rule: str) -> bool:
    """Whether `rule` is one a `prompt_rule` names (of any prompt group)."""
    return rule == "embed_prompt" or rule.startswith("embed_prompt_")


@dataclass(frozen=True, eq=False)
class CellBlock(Section):
    """One ``cells`` entry: its backbones x adapters x accelerations (x steps)."""

    backbones: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()
    accelerations: tuple[str, ...] = ()
    steps: tuple[int, ...] | None = None


@dataclass(frozen=True, eq=False)
class Comparison(Section):
    baseline: str = ""
    candidate: str = ""
    key: str = "comparison"  # where the config holds it: comparison (one pair) or comparison[i]


@dataclass(frozen=True, eq=False)
class Memory(Section):
    offload: str = "none"
    fp8_weights: bool = False


@dataclass(frozen=True, eq=False)
class Generation(Section):
    batch_size: int = 1


@dataclass(frozen=True, eq=False)
class Trajectory(Section):
    cells: tuple[str, ...] = ()
    max_items: int = 0


@dataclass(frozen=True, eq=False)
class Face(Section):
    pack: str = ""
    policy: str = ""


@dataclass(frozen=True, eq=False)
class Scoring(Section):
    metrics: tuple[str, ...] = ()
    lpips_net: str = ""
    lpips_size: int = 0
    batch_size: int = 1


@dataclass(frozen=True, eq=False)
class Report(Section):
    bootstrap_samples: int = 0
    confidence: float = 0.0
    seed: int = 0
    kneedle_sensitivity: float = 0.0
    margins: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    grid_max_identities: int = 0
    grid_prompts: int = 0
    grid_max_steps: int = 0


@dataclass(frozen=True, eq=False)
class Wandb(Section):
    mode: str = ""
    project: str = ""
    entity: str | None = None
    init_timeout: float = 0.0
    thumbnail: int = 0
    grid_identities: int = 0
    grid_columns: int = 0


@dataclass(frozen=True, eq=False)
class Study(Mapping[str, Any]):
    """A validated sweep configuration (`Study.of`); frozen, its collections read-only.

    It also reads as the read-only mapping of the validated config (``study["scoring"]``, plain
    copies), like its sections. That mapping serves the families' protocol methods, which take
    ``Mapping[str, Any]`` and read their own keys. Every other layer, the paths, provenance,
    registry, faces and scoring included, takes the `Study` and reads its typed fields.
    """

    sweep: str
    weights: str
    device: str
    dtype: str
    results_dir: str
    models_dir: str
    reports_dir: str
    resolution: Resolution
    identities: tuple[Identity, ...]
    references: tuple[Reference, ...]
    prompts: tuple[Prompt, ...]
    seeds: tuple[int, ...]
    backbones: Mapping[str, Backbone]
    adapters: Mapping[str, Adapter]
    accelerations: Mapping[str, Acceleration]
    cells: tuple[CellBlock, ...]
    anchor: str | None
    comparisons: tuple[Comparison, ...]
    local_weights: Mapping[str, str]
    revisions: Mapping[str, str]
    memory: Memory
    generation: Generation
    trajectory: Trajectory
    face: Face
    scoring: Scoring
    report: Report
    wandb: Wandb
    validated: Mapping[str, Any] = field(repr=False)
    #: what upper layers derive from this study once per process, by name (`fewstep.grid.Grid.of`
    #: keeps its grid here): not part of the study, never hashed or compared
    derived: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Study:
        """The study of a config `validate` returned (defaults filled, identities expanded)."""

        def named(kind: type[S], key: str) -> Mapping[str, S]:
            return MappingProxyType({name: section(kind, v, id=name) for name, v in config[key].items()})

        comparison = config.get("comparison")
        single = isinstance(comparison, Mapping)  # one pair, not a list of them
        pairs = [comparison] if single else comparison or []
        return cls(
            sweep=config["sweep"],
            weights=config["weights"],
            device=config["device"],
            dtype=config["dtype"],
            results_dir=config["results_dir"],
            models_dir=config["models_dir"],
            reports_dir=config["reports_dir"],
            resolution=section(Resolution, config["resolution"]),
            identities=tuple(
                section(Identity, i, heldout=tuple(i.get("heldout", ()))) for i in config["identities"]
            ),
            references=tuple(section(Reference, r) for r in config["references"]),
            prompts=tuple(section(Prompt, p) for p in config["prompts"]),
            seeds=tuple(config["seeds"]),
            backbones=named(Backbone, "backbones"),
            adapters=named(Adapter, "adapters"),
            accelerations=named(Acceleration, "accelerations"),
            cells=tuple(section(CellBlock, block) for block in config["cells"]),
            anchor=config.get("anchor"),
            comparisons=tuple(
                section(Comparison, pair, key="comparison" if single else f"comparison[{i}]")
                for i, pair in enumerate(pairs)
            ),
            local_weights=MappingProxyType(dict(config["local_weights"])),
            revisions=MappingProxyType(dict(config["revisions"])),
            memory=section(Memory, config["memory"]),
            generation=section(Generation, config["generation"]),
            trajectory=section(Trajectory, config["trajectory"]),
            face=section(Face, config["face"]),
            scoring=section(Scoring, config["scoring"]),
            report=section(Report, config["report"]),
            wandb=section(Wandb, config["wandb"]),
            validated=freeze(config),
        )

    def __getitem__(self, key: str) -> Any:
        return thaw(self.validated[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.validated)

    def __len__(self) -> int:
        return len(self.validated)

    def to_dict(self) -> dict[str, Any]:
        """The validated config as plain data: what provenance records and fingerprints hash."""
        return thaw(self.validated)

    @property
    def config_hash(self) -> str:
        """`fewstep.core.config.config_hash` of the validated config."""
        return config_hash(self.to_dict())

    @property
    def comparison(self) -> Comparison | None:
        """The first comparison pair (config ``comparison``: one pair or a list), None without one."""
        return self.comparisons[0] if self.comparisons else None

    def identity(self, identity_id: str) -> Identity | None:
        return next((i for i in self.identities if i.id == identity_id), None)

    def reference(self, reference_id: str) -> Reference | None:
        return next((r for r in self.references if r.id == reference_id), None)

    def prompt(self, prompt_id: str) -> Prompt | None:
        return next((p for p in self.prompts if p.id == prompt_id), None)


def parse_config(config: Mapping[str, Any]) -> Study:
    """Validate a raw config (as read from YAML) and parse it into its `Study`."""
    return Study.of(validate(dict(config)))


def load_study(paths: list[str | Path], overrides: dict[str, Any] | None = None) -> Study:
    """Load, merge and validate config files (`fewstep.core.config.load`) into their `Study`."""
    return Study.of(load(paths, overrides))
