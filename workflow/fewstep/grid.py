"""The one place that turns a configuration into cells and items.

A *cell* is one set of images: backbone x adapter setting x acceleration x number
of steps, with a readable id such as ``flux-schnell/infusenet-aes/4``; an accelerated
cell carries its acceleration in the adapter segment, ``flux-schnell/infusenet-aes+fast/4``
(eager cells keep the plain id). A *generation job* runs every step count of one
backbone x adapter x acceleration with one model load (``flux-schnell/infusenet-aes``).
An *item* is one image inside every cell: identity x prompt x seed. The Snakefile, the
CLI and the tests all take cells, jobs and items from `Grid`; nothing re-derives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fewstep.core.config import fingerprint
from fewstep.core.errors import ConfigError
from fewstep.core.images import picture_source
from fewstep.faces.models import ARCFACE_IRSE, INSIGHTFACE
from fewstep.families import FAMILIES
from fewstep.families.base import Family
from fewstep.registry.catalog import MODELS
from fewstep.registry.spec import Usage
from fewstep.scoring import specs
from fewstep.scoring.networks import ANCHOR_METRICS, scoring_models

# Importing the families, `fewstep.faces.models` and `fewstep.scoring.networks` registers
# every model (`fewstep.registry.catalog`): whatever holds a grid can look each one up.

#: the acceleration of cells with every switch off; their ids carry no acceleration
EAGER = "eager"
EAGER_SWITCHES = {"compile": "none", "fp8": "none", "cache": "none", "cache_threshold": 0.0}
#: joins adapter and acceleration in a cell's adapter segment (names cannot contain it)
ACCELERATION_SEPARATOR = "+"


@dataclass(frozen=True, order=True)
class Cell:
    backbone: str
    adapter: str  # the adapter segment: an adapter name, plus "+<acceleration>" unless eager
    steps: int

    @property
    def id(self) -> str:
        return f"{self.backbone}/{self.adapter}/{self.steps}"

    @property
    def adapter_name(self) -> str:
        return self.adapter.partition(ACCELERATION_SEPARATOR)[0]

    @property
    def acceleration(self) -> str:
        return self.adapter.partition(ACCELERATION_SEPARATOR)[2] or EAGER

    @property
    def job(self) -> str:
        """The generation job that renders this cell (with the other step counts)."""
        return f"{self.backbone}/{self.adapter}"

    @classmethod
    def of(cls, backbone: str, adapter: str, acceleration: str, steps: int) -> Cell:
        segment = adapter if acceleration == EAGER else f"{adapter}{ACCELERATION_SEPARATOR}{acceleration}"
        return cls(backbone, segment, steps)

    @classmethod
    def parse(cls, cell_id: str) -> Cell:
        parts = cell_id.strip("/").split("/")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ConfigError(f"cell id {cell_id!r} is not <backbone>/<adapter>[+<acceleration>]/<steps>")
        return cls(parts[0], parts[1], int(parts[2]))


@dataclass(frozen=True, order=True)
class Item:
    identity: str
    prompt: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.identity}/{self.prompt}/s{self.seed}"


#: columns that name one image of the sweep, first in every per-image table
IMAGE_KEYS = ("cell_id", "backbone", "adapter", "steps", "item_id", "identity", "prompt_id", "seed")
#: columns of the image tables that identify an image or its provenance, never a metric
#: (what analysis and tracking both leave out of metrics)
KEYS = {
    *IMAGE_KEYS,
    "prompt",
    "image",
    "sha256",
    "weights",
    "config_hash",
    "git_commit",
    "metric_versions",
    "step",
    "sigma",
    "width",
    "height",
    "guidance",
    "adapter_steps",
    "step_s_median",
    "warmup",
    "device_name",
    "dtype",
    "batch_size",
    "weights_digest",
}


def image_keys(cell: Cell, item: Item) -> dict[str, Any]:
    """The `IMAGE_KEYS` values of one item in one cell."""
    values = (cell.id, cell.backbone, cell.adapter, cell.steps)
    values += (item.id, item.identity, item.prompt, item.seed)
    return dict(zip(IMAGE_KEYS, values, strict=True))


class Grid:
    """Cells, items and the parameters of each, from a validated config."""

    def __init__(self, config: dict[str, Any], families: Mapping[str, Family] = FAMILIES):
        """`families`: name -> `Family` (`fewstep.families.FAMILIES` unless a caller injects others)."""
        self.config = config
        self.known_families = families
        self._check()

    # ------------------------------------------------------------------ cells
    @cached_property
    def cells(self) -> list[Cell]:
        seen: dict[Cell, None] = {}
        for block in self.config["cells"]:
            for backbone in block["backbones"]:
                for adapter in block["adapters"]:
                    for acceleration in block["accelerations"]:
                        for steps in sorted(
                            block.get("steps") or self.config["backbones"][backbone]["steps"]
                        ):
                            seen.setdefault(Cell.of(backbone, adapter, acceleration, steps))
        return list(seen)

    @cached_property
    def jobs(self) -> dict[str, list[Cell]]:
        """Generation job id -> its cells (every step count of one backbone x adapter x acceleration)."""
        jobs: dict[str, list[Cell]] = {}
        for cell in self.cells:
            jobs.setdefault(cell.job, []).append(cell)
        return jobs

    def job(self, job_id: str) -> list[Cell]:
        if job_id not in self.jobs:
            raise ConfigError(
                f"generation job {job_id!r} is not in this sweep's grid; known: {', '.join(self.jobs)}"
            )
        return self.jobs[job_id]

    def job_hash(self, job_id: str) -> str:
        """Changes exactly when one of the job's cells would change (the generate rule's trigger)."""
        return fingerprint([self.cell_hash(cell) for cell in self.job(job_id)])

    @cached_property
    def items(self) -> list[Item]:
        return [
            Item(identity["id"], prompt["id"], seed)
            for identity in self.config["identities"]
            for prompt in self.config["prompts"]
            for seed in self.config["seeds"]
        ]

    def items_of(self, cell: Cell) -> list[Item]:
        """The items rendered in `cell`, in order: identity x prompt x seed (`items`), or for a
        family that reads references, reference x prompt x seed with `Item.identity` the
        reference id (an adapter cell crosses the references of its role, a bare backbone those
        of every role its backbone's adapters use)."""
        if not self.reads_references(cell):
            return self.items
        return [
            Item(reference["id"], prompt["id"], seed)
            for reference in self.references_of(cell)
            for prompt in self.config["prompts"]
            for seed in self.config["seeds"]
        ]

    def reads_references(self, cell: Cell) -> bool:
        """The cell's items cross the config's references rather than its identities."""
        return self.family(cell).reads_references

    def reference_roles(self, cell: Cell) -> list[str]:
        """Roles of the references `cell` crosses."""
        family = self.family(cell)
        role = family.adapter_role(self.adapter(cell))
        if role is not None:
            return [role]
        roles = {family.adapter_role(self.adapter(c)) for c in self.cells if c.backbone == cell.backbone}
        return sorted(roles - {None}) or sorted({r["role"] for r in self.config["references"]})

    def references_of(self, cell: Cell) -> list[dict[str, Any]]:
        roles = self.reference_roles(cell)
        return [r for r in self.config["references"] if r["role"] in roles]

    def reference(self, reference_id: str) -> dict[str, Any]:
        for reference in self.config["references"]:
            if reference["id"] == reference_id:
                return reference
        raise ConfigError(f"reference {reference_id!r} is not in the config's references")

    @cached_property
    def reference_pictures(self) -> dict[str, str]:
        """reference id -> what its picture's pixels depend on (`picture_source`)."""
        return {r["id"]: picture_source(r["image"]) for r in self.config["references"]}

    def cell(self, cell_id: str) -> Cell:
        cell = Cell.parse(cell_id)
        if cell not in self.cells:
            raise ConfigError(f"cell {cell_id!r} is not in this sweep's grid")
        return cell

    def backbone(self, cell: Cell) -> dict[str, Any]:
        return self.config["backbones"][cell.backbone]

    def adapter(self, cell: Cell) -> dict[str, Any]:
        return self.config["adapters"][cell.adapter_name]

    def acceleration(self, cell: Cell) -> dict[str, Any]:
        """The cell's switches (all off for eager)."""
        if cell.acceleration == EAGER:
            return dict(EAGER_SWITCHES)
        return self.config["accelerations"][cell.acceleration]

    def family(self, cell: Cell) -> Family:
        return self.known_families[self.backbone(cell)["family"]]

    def cells_of(self, backbone: str | None = None, adapter: str | None = None) -> list[Cell]:
        wanted = [(backbone, "backbone"), (adapter, "adapter")]
        return [c for c in self.cells if all(v is None or getattr(c, k) == v for v, k in wanted)]

    @property
    def anchor(self) -> Cell | None:
        anchor = self.config.get("anchor")
        return Cell.parse(anchor) if anchor else None

    @property
    def comparison(self) -> tuple[Cell, Cell] | None:
        pair = self.config.get("comparison")
        return (Cell.parse(pair["baseline"]), Cell.parse(pair["candidate"])) if pair else None

    @property
    def trajectory_cells(self) -> list[Cell]:
        return [Cell.parse(c) for c in self.config["trajectory"]["cells"]]

    # ------------------------------------------------------------ parameters
    def guidance(self, cell: Cell) -> float | None:
        """Guidance the backbone really receives (None for FLUX.1-schnell)."""
        return self.family(cell).guidance(self.backbone(cell))

    def cell_spec(self, cell: Cell) -> dict[str, Any]:
        """Everything that determines a cell's images (hashed into its provenance)."""
        backbone = self.backbone(cell)
        adapter = dict(self.adapter(cell))
        if adapter["kind"] == "none":
            adapter = {"kind": "none"}
        settings = {"max_sequence_length": backbone.get("max_sequence_length")}
        resolution = dict(self.config["resolution"])
        if self.reads_references(cell):  # SD: its own settings and square side
            settings = self.family(cell).settings(backbone)
            resolution = dict(zip(("width", "height"), self.resolution(cell), strict=True))
        return {
            "cell": cell.id,
            "backbone": {
                "model": backbone["model"],
                "family": backbone["family"],
                **settings,
                "guidance": self.guidance(cell),
            },
            "adapter": adapter,
            "steps": cell.steps,
            "resolution": resolution,
            "weights": self.config["weights"],
            "dtype": self.config["dtype"],
            "device": self.config["device"],
            "batch_size": self.config["generation"]["batch_size"],  # in bf16 the batch moves pixels
            "fp8_weights": self.config["memory"]["fp8_weights"],
        } | ({} if cell.acceleration == EAGER else {"acceleration": self.acceleration(cell)})

    def cell_hash(self, cell: Cell) -> str:
        """Changes exactly when this cell's images would change (Snakemake's rerun trigger)."""
        spec = self.cell_spec(cell)
        spec["items"] = [self.item_spec(item, cell) for item in self.items_of(cell)]
        return fingerprint(spec)

    def item_spec(self, item: Item, cell: Cell) -> dict[str, Any]:
        """What an item's image in `cell` depends on besides the cell: its prompt's text, its
        seed and, when the adapter conditions on a face, its reference picture's content."""
        spec = {"identity": item.identity, "prompt": self.prompt(item.prompt)["text"], "seed": item.seed}
        if self.adapter(cell)["kind"] != "none":
            pictures = self.reference_pictures if self.reads_references(cell) else self.pictures
            spec["picture"] = pictures[item.identity]
        return spec

    @cached_property
    def pictures(self) -> dict[str, str]:
        """identity id -> its conditioning photo's `picture_source` (its embedding's rerun trigger)."""
        return {i["id"]: picture_source(i["image"]) for i in self.config["identities"]}

    def identity(self, identity_id: str) -> dict[str, Any]:
        for identity in self.config["identities"]:
            if identity["id"] == identity_id:
                return identity
        raise ConfigError(f"identity {identity_id!r} is not in the config's identities")

    def reference_picture(self, cell: Cell, reference_id: str) -> str:
        """The picture (path or ``builtin:<name>``) that an item of `cell` is compared with: its
        identity's, or its style / object reference's."""
        if self.reads_references(cell):
            return self.reference(reference_id)["image"]
        return self.identity(reference_id)["image"]

    def prompt(self, prompt_id: str) -> dict[str, Any]:
        for prompt in self.config["prompts"]:
            if prompt["id"] == prompt_id:
                return prompt
        raise ConfigError(f"prompt {prompt_id!r} is not in the config's prompts")

    # ---------------------------------------------------------------- inputs
    @property
    def families(self) -> list[str]:
        return sorted({self.backbone(c)["family"] for c in self.cells})

    def text_encoder_backbone(self, family: str) -> str:
        """Backbone model whose text encoders embed the family's prompts (once per sweep)."""
        names = [self.backbone(c)["model"] for c in self.cells if self.backbone(c)["family"] == family]
        return self.known_families[family].prompt_model(list(dict.fromkeys(names)))

    def prompt_backbone(self, family: str, length: int) -> dict[str, Any]:
        """A configured backbone of `family` whose prompt embeddings have sequence length `length`
        (the settings its prompt encoder embeds with)."""
        for cell in self.cells:
            backbone = self.backbone(cell)
            if backbone["family"] == family and backbone["max_sequence_length"] == int(length):
                return backbone
        raise ConfigError(f"no {family} backbone of the sweep embeds prompts at length {length}")

    def sequence_lengths(self, family: str) -> list[int]:
        return sorted(
            {
                self.backbone(c)["max_sequence_length"]
                for c in self.cells
                if self.backbone(c)["family"] == family
            }
        )

    @property
    def models(self) -> list[str]:
        """Registry models this sweep needs prepared (what makes each cell, the configured metrics)."""
        names = {name for cell in self.cells for name in self.cell_models(cell)}
        names.update(scoring_models(self.config, {m for cell in self.cells for m in self.cell_metrics(cell)}))
        return sorted(names)

    def cell_models(self, cell: Cell) -> list[str]:
        """Registry models whose output a cell's images depend on: its generation, its prompt
        embeddings and, for face-conditioned cells, the embed_identity rule's (its provenance)."""
        names = {*self.generation_models(cell), self.text_encoder_backbone(self.backbone(cell)["family"])}
        if self.needs_identity_embeddings(cell):
            names.update({ARCFACE_IRSE.name, INSIGHTFACE.name})
        return sorted(names)

    def model_usage(self, name: str) -> Usage:
        """What of model `name` this sweep uses: its recipe fetches or builds only that."""
        cells = [c for c in self.cells if name in self.generation_models(c)]
        embeds_text = any(self.text_encoder_backbone(family) == name for family in self.families)
        return Usage(
            adapters=tuple(self.adapter(c) for c in cells),
            embeds_text=embeds_text,
            family_adapters=tuple((self.backbone(c)["family"], self.adapter(c)) for c in cells),
        )

    def resolution(self, cell: Cell) -> tuple[int, int]:
        """Width and height of the cell's images (SD: the backbone's square side)."""
        if self.reads_references(cell):
            side = self.family(cell).resolution(self.backbone(cell))
            return side, side
        return self.config["resolution"]["width"], self.config["resolution"]["height"]

    def prompt_embedding(self, paths: Any, cell: Cell, prompt_id: str) -> Any:
        """The embedding file of one prompt as `cell`'s backbone reads it (`paths`: a
        `fewstep.core.paths.Paths`); SD files carry their negative prompt's label."""
        backbone = self.backbone(cell)
        if self.reads_references(cell):
            from fewstep.families.sd.family import negative_label

            return paths.negative_prompt_embedding(backbone["family"], prompt_id, negative_label(backbone))
        return paths.prompt_embedding(backbone["family"], prompt_id, backbone["max_sequence_length"])

    def negative_prompts(self, family: str) -> dict[str, dict[str, Any]]:
        """Negative label -> a backbone of `family` embedding with that negative prompt."""
        from fewstep.families.sd.family import negative_label

        backbones = [self.backbone(c) for c in self.cells if self.backbone(c)["family"] == family]
        return {negative_label(b): b for b in backbones}

    def reference_file(self, cell: Cell) -> str | None:
        """The adapter file (plain, plus) whose image encoder embeds the cell's references."""
        adapter = self.adapter(cell)
        if not self.reads_references(cell) or adapter["kind"] == "none":
            return None
        return adapter.get("file", "plain")

    def reference_embeddings_needed(self) -> list[tuple[str, str, str]]:
        """(family, adapter file, reference id) of every reference embedding the sweep reads."""
        needed = {
            (self.backbone(c)["family"], self.reference_file(c), item.identity)
            for c in self.cells
            if self.reference_file(c)
            for item in self.items_of(c)
        }
        return sorted(needed)

    def prompt_embeddings(self, paths: Any, cell: Cell) -> list[Any]:
        """The prompt embedding files a cell's generation reads."""
        return [self.prompt_embedding(paths, cell, p["id"]) for p in self.config["prompts"]]

    def reference_embedding(self, paths: Any, cell: Cell, reference_id: str) -> Any | None:
        """The embedding file of one item reference that `cell`'s adapter reads (None: none)."""
        file = self.reference_file(cell)
        if file is not None:
            return paths.reference_embedding(self.backbone(cell)["family"], file, reference_id)
        return paths.identity_embedding(reference_id) if self.needs_identity_embeddings(cell) else None

    def identity_embeddings(self, paths: Any, cell: Cell) -> list[Any]:
        """The identity or reference embedding files a cell's generation reads (none when its
        adapter needs none)."""
        if self.reference_file(cell) is not None:
            return [self.reference_embedding(paths, cell, r["id"]) for r in self.references_of(cell)]
        if not self.needs_identity_embeddings(cell):
            return []
        return [paths.identity_embedding(i["id"]) for i in self.config["identities"]]

    def needs_identity_embeddings(self, cell: Cell) -> bool:
        return self.family(cell).needs_identity_embeddings(self.adapter(cell))

    def generation_weights(self, cell: Cell) -> dict[str, tuple[str, ...]]:
        """Registry models a cell's generation loads -> the folders inside each it reads."""
        return self.family(cell).cell_weights(self.backbone(cell), self.adapter(cell))

    def generation_models(self, cell: Cell) -> list[str]:
        """Registry models a cell's generation loads (its family says which)."""
        return self.family(cell).cell_models(self.backbone(cell), self.adapter(cell))

    # --------------------------------------------------------------- scoring
    def cell_metrics(self, cell: Cell) -> list[str]:
        """The metrics fitting the role of `cell`'s adapter (`fewstep.scoring.specs.cell_metrics`)."""
        return specs.cell_metrics(self.family(cell), self.adapter(cell), self.config["scoring"]["metrics"])

    def score_spec(self, cell: Cell) -> dict[str, Any]:
        """Everything besides its images that `cell`'s scores depend on."""
        metrics = self.cell_metrics(cell)
        anchor = self.score_anchor(cell)
        pictures = self.reference_pictures if self.reads_references(cell) else self.pictures
        references = sorted({item.identity for item in self.items_of(cell)})
        spec = {
            "metrics": metrics,
            "scoring": {k: v for k, v in self.config["scoring"].items() if k != "metrics"},
            "pictures": {r: pictures[r] for r in references},
            "anchor": None if anchor is None else anchor.id,
        }
        if set(metrics) & set(specs.face_metrics()):  # the face chosen, the held-out photos
            spec["face"] = self.config["face"]
            spec["heldout"] = {
                r: list(map(picture_source, self.identity(r).get("heldout", []))) for r in references
            }
        return spec

    def score_hash(self, cell: Cell) -> str:
        """Changes exactly when `cell`'s scores would change for the same images (the score
        rule's trigger; key order in the config file does not matter)."""
        return fingerprint(self.score_spec(cell))

    def job_score_hash(self, job_id: str) -> str:
        """Changes exactly when the scores of one of the job's cells would (the score rule's
        trigger; the job then rescores only those cells)."""
        return fingerprint({cell.id: self.score_hash(cell) for cell in self.job(job_id)})

    def score_models(self, cell: Cell) -> list[str]:
        """Registry models the score job of `cell` loads."""
        return scoring_models(self.config, self.cell_metrics(cell))

    def score_anchor(self, cell: Cell) -> Cell | None:
        """The cell whose images `cell`'s anchor-paired metrics (LPIPS) compare with, if any:
        the config's ``anchor``, or for families that anchor each job to itself its
        highest-step cell. None for the anchor itself and when no such metric is scored."""
        anchor = max(self.jobs[cell.job]) if self.family(cell).anchors_to_highest_step else self.anchor
        paired = any(m in ANCHOR_METRICS for m in self.cell_metrics(cell))
        return anchor if paired and anchor not in (None, cell) else None

    def is_anchor(self, cell: Cell) -> bool:
        """Whether other cells' anchor-paired metrics compare with this cell's images."""
        if self.family(cell).anchors_to_highest_step:
            return cell == max(self.jobs[cell.job])
        return cell == self.anchor

    # -------------------------------------------------------------- checking
    def _check(self) -> None:
        for name, backbone in self.config["backbones"].items():
            family = self.known_families.get(backbone["family"])
            if family is None:
                known = ", ".join(sorted(self.known_families))
                raise ConfigError(
                    f"config backbones.{name}.family: unknown family {backbone['family']!r}; known: {known}"
                )
            if backbone["model"] not in family.backbones:
                known = ", ".join(sorted(family.backbones))
                raise ConfigError(
                    f"config backbones.{name}.model: unknown model {backbone['model']!r}; known: {known}"
                )
            family.check_backbone(name, backbone)
        for name in self.config["local_weights"]:
            if name not in MODELS:
                known = ", ".join(sorted(MODELS))
                raise ConfigError(f"config local_weights.{name}: unknown model; known: {known}")
        hub = sorted(n for n, spec in MODELS.items() if spec.repo_id)
        for name in self.config["revisions"]:
            if name not in hub:
                raise ConfigError(
                    f"config revisions.{name}: not a Hugging Face model; known: {', '.join(hub)}"
                )
        resolution = self.config["resolution"]
        for name, backbone in self.config["backbones"].items():
            family = self.known_families[backbone["family"]]
            if backbone.get("resolution") is None:
                continue
            if not family.reads_references:
                raise ConfigError(
                    f"config backbones.{name}.resolution: {family.name} uses config resolution; remove it"
                )
            limit = resolution.get("max_side") or family.max_side
            if backbone["resolution"] > limit:
                raise ConfigError(
                    f"config backbones.{name}.resolution: {backbone['resolution']} px is beyond the "
                    f"{family.name} limit of {limit} px; lower it, or set resolution.max_side"
                )
        for family in self.families:
            if self.known_families[family].reads_references:
                continue
            limit = resolution.get("max_side") or self.known_families[family].max_side
            for side in ("width", "height"):
                if resolution[side] > limit:
                    raise ConfigError(
                        f"config resolution.{side}: {resolution[side]} px is beyond the {family} limit of "
                        f"{limit} px; lower it, or set resolution.max_side to go beyond deliberately"
                    )
        for cell in self.cells:
            family, kind = self.family(cell), self.adapter(cell)["kind"]
            if kind not in family.adapter_kinds:
                raise ConfigError(
                    f"config cells: adapter {cell.adapter!r} ({kind}) cannot run on a {family.name} backbone"
                )
            family.check_adapter(cell.adapter_name, self.adapter(cell))
            self._check_items(cell)
            first = self.adapter(cell).get("first_steps")
            if kind != "none" and first is not None and first >= cell.steps:
                raise ConfigError(
                    f"config adapters.{cell.adapter_name}.first_steps: {first} covers all {cell.steps} "
                    f"steps of cell {cell.id}, which would repeat the full adapter; "
                    "run it at more steps or lower it"
                )
        for key, cell in (
            *((f"trajectory.cells[{i}]", c) for i, c in enumerate(self.trajectory_cells)),
            ("anchor", self.anchor),
            *zip(("comparison.baseline", "comparison.candidate"), self.comparison or (), strict=False),
        ):
            if cell is not None and cell not in self.cells:
                raise ConfigError(
                    f"config {key}: cell {cell.id!r} is not in the grid; add it to cells or change it"
                )
            if cell is not None and self.reads_references(cell):
                raise ConfigError(
                    f"config {key}: {cell.id} is a {self.family(cell).name} cell; the {key.split('.')[0]} "
                    "compares identities (FLUX cells only), and SD cells are compared with their own "
                    "highest-step cell; remove it"
                )

    def _check_items(self, cell: Cell) -> None:
        """Each cell has pictures to cross: identities, or references of the roles it reads."""
        if not self.reads_references(cell):
            if not self.config["identities"]:
                raise ConfigError(f"config identities: cell {cell.id} crosses identities; add at least one")
            return
        if cell.acceleration != EAGER:
            raise ConfigError(
                f"config cells.accelerations: {cell.acceleration!r} on {cell.backbone}; "
                f"{self.family(cell).name} backbones run eager only"
            )
        if not self.references_of(cell):
            roles = " or ".join(self.reference_roles(cell)) or "style or object"
            raise ConfigError(f"config references: cell {cell.id} needs a reference of role {roles}; add one")
