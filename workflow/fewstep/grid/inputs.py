"""File inputs: the models and precomputed embedding files each job of a sweep reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fewstep.core.errors import ConfigError
from fewstep.core.study import Prompt, prompt_group
from fewstep.grid.cells import Cell
from fewstep.grid.triggers import RerunTriggers
from fewstep.registry.spec import Usage
from fewstep.scoring.networks import scoring_models


class FileInputs(RerunTriggers):
    """Registry models and embedding files (`fewstep.core.paths.Paths`) of cells and jobs."""

    # ---------------------------------------------------------------- models
    @property
    def image_models(self) -> list[str]:
        """Registry models the sweep's images depend on (`cell_models` of every cell; no scorer)."""
        return sorted({name for cell in self.cells for name in self.cell_models(cell)})

    @property
    def models(self) -> list[str]:
        """Registry models this sweep needs prepared (what makes each cell, the configured metrics)."""
        names = set(self.image_models)
        names.update(scoring_models(self.study, {m for cell in self.cells for m in self.cell_metrics(cell)}))
        return sorted(names)

    def cell_models(self, cell: Cell) -> list[str]:
        """Registry models whose output a cell's images depend on: its generation, its prompt
        embeddings and, for face-conditioned cells, the embed_identity rule's (its provenance)."""
        names = {*self.generation_models(cell), self.text_encoder_backbone(self.backbone(cell).family)}
        names.update(self.family(cell).identity_models(self.adapter(cell)))
        return sorted(names)

    def model_usage(self, name: str) -> Usage:
        """What of model `name` this sweep uses: its recipe fetches or builds only that."""
        cells = [c for c in self.cells if name in self.generation_models(c)]
        embeds_text = any(self.text_encoder_backbone(family) == name for family in self.families)
        return Usage(
            adapters=tuple(self.adapter(c) for c in cells),
            embeds_text=embeds_text,
            family_adapters=tuple((self.backbone(c).family, self.adapter(c)) for c in cells),
            backbones=tuple(self.backbone(c) for c in cells),
        )

    def generation_weights(self, cell: Cell) -> dict[str, tuple[str, ...]]:
        """Registry models a cell's generation loads -> the folders inside each it reads."""
        return self.family(cell).cell_weights(self.backbone(cell), self.adapter(cell))

    def generation_models(self, cell: Cell) -> list[str]:
        """Registry models a cell's generation loads (its family says which)."""
        return self.family(cell).cell_models(self.backbone(cell), self.adapter(cell))

    def score_models(self, cell: Cell) -> list[str]:
        """Registry models the score job of `cell` loads."""
        return scoring_models(self.study, self.cell_metrics(cell))

    def trajectory_score_models(self, cell: Cell) -> list[str]:
        """Registry models the trajectory job of `cell` scores its x0 images with."""
        return scoring_models(self.study, self.trajectory_metrics(cell))

    # ------------------------------------------------------------- prompts
    def text_encoder_backbone(self, family: str) -> str:
        """Backbone model whose text encoders embed the family's prompts (once per sweep)."""
        names = [self.backbone(c).model for c in self.cells if self.backbone(c).family == family]
        return self.known_families[family].prompt_model(list(dict.fromkeys(names)))

    def prompt_variants(self, family: str) -> dict[str, Mapping[str, Any]]:
        """Label -> a backbone of `family` embedding prompts that way: one embed_prompt job each."""
        backbones = [self.backbone(c) for c in self.cells if self.backbone(c).family == family]
        return self.known_families[family].prompt_variants(backbones)

    def prompt_variant_backbone(self, family: str, label: str) -> Mapping[str, Any]:
        """The backbone whose settings the prompt embeddings labelled `label` are made with."""
        variants = self.prompt_variants(family)
        if label not in variants:
            known = ", ".join(variants)
            raise ConfigError(f"no {family} backbone of the sweep embeds prompts as {label}; known: {known}")
        return variants[label]

    @property
    def prompt_variant_labels(self) -> list[str]:
        """Every prompt variant label of the sweep's families (the embed_prompt rule's `variant`)."""
        return sorted({label for family in self.families for label in self.prompt_variants(family)})

    def prompt_settings(self, family: str, label: str) -> dict[str, str]:
        """What the prompt embeddings labelled `label` record of their settings (a rerun trigger)."""
        backbone = self.prompt_variant_backbone(family, label)
        return self.known_families[family].prompt_metadata(backbone)

    def prompt_embedding(self, paths: Any, cell: Cell, prompt_id: str) -> Any:
        """The embedding file of one prompt as `cell`'s backbone reads it (`paths`: a
        `fewstep.core.paths.Paths`), named by its family's `prompt_variant`."""
        backbone = self.backbone(cell)
        variant = self.family(cell).prompt_variant(backbone)
        return paths.prompt_variant_embedding(backbone.family, prompt_id, variant)

    def prompt_embeddings(self, paths: Any, cell: Cell) -> list[Any]:
        """The prompt embedding files a cell's generation reads (its roles' prompts)."""
        return [self.prompt_embedding(paths, cell, p.id) for p in self.prompts_of(cell)]

    def variant_prompts(self, family: str, label: str, group: str | None = None) -> list[Prompt]:
        """The prompts embedded as `family`'s variant `label`: those some cell reading that
        variant renders, in config order; with `group` (`prompt_group`) only that group's (one
        embed_prompt job's outputs)."""
        wanted = {
            p.id
            for c in self.cells
            if self.backbone(c).family == family and self.family(c).prompt_variant(self.backbone(c)) == label
            for p in self.prompts_of(c)
        }
        return [p for p in self.study.prompts if p.id in wanted and group in (None, prompt_group(p))]

    # ---------------------------------------------------- identities, references
    def needs_identity_embeddings(self, cell: Cell) -> bool:
        return self.family(cell).needs_identity_embeddings(self.adapter(cell))

    def identity_adapters(self) -> dict[str, list[Any]]:
        """Family -> its adapters whose cells read the identity embedding files, in config order
        (what the embed_identity job encodes for each family)."""
        adapters: dict[str, list[Any]] = {}
        for cell in self.cells:
            if self.needs_identity_embeddings(cell):
                found = adapters.setdefault(self.backbone(cell).family, [])
                if all(a.id != cell.adapter_name for a in found):
                    found.append(self.adapter(cell))
        return adapters

    def identity_models(self) -> list[str]:
        """Registry models the embed_identity job loads (the families' face pipelines)."""
        return sorted(
            {
                name
                for family, adapters in self.identity_adapters().items()
                for adapter in adapters
                for name in self.known_families[family].identity_models(adapter)
            }
        )

    def reference_file(self, cell: Cell) -> str | None:
        """The adapter file whose image encoder embeds the cell's references (None: none)."""
        return self.family(cell).reference_file(self.adapter(cell))

    def reference_embeddings_needed(self) -> list[tuple[str, str, str]]:
        """(family, adapter file, reference id) of every reference embedding the sweep reads."""
        needed = {
            (self.backbone(c).family, self.reference_file(c), item.identity)
            for c in self.cells
            if self.reference_file(c)
            for item in self.items_of(c)
        }
        return sorted(needed)

    @property
    def reference_files(self) -> list[str]:
        """Every adapter file whose image encoder embeds the sweep's references (`Family.reference_file`)."""
        return sorted({self.reference_file(c) for c in self.cells} - {None})

    def reference_models(self, family: str, file: str) -> list[str]:
        """Registry models the embed_reference job of `family`'s adapter file `file` loads."""
        adapter = next(
            self.adapter(c)
            for c in self.cells
            if self.backbone(c)["family"] == family and self.reference_file(c) == file
        )
        return self.known_families[family].reference_models(adapter)

    def reference_embedding(self, paths: Any, cell: Cell, reference_id: str) -> Any | None:
        """The embedding file of one item reference that `cell`'s adapter reads (None: none)."""
        file = self.reference_file(cell)
        if file is not None:
            return paths.reference_embedding(self.backbone(cell).family, file, reference_id)
        return paths.identity_embedding(reference_id) if self.needs_identity_embeddings(cell) else None

    def identity_embeddings(self, paths: Any, cell: Cell) -> list[Any]:
        """The identity or reference embedding files a cell's generation reads (none when its
        adapter needs none)."""
        if self.reference_file(cell) is not None:
            return [self.reference_embedding(paths, cell, r.id) for r in self.references_of(cell)]
        if not self.needs_identity_embeddings(cell):
            return []
        return [paths.identity_embedding(i.id) for i in self.study.identities]
