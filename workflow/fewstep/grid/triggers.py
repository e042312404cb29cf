"""Rerun triggers: what a cell's images and scores depend on, and the fingerprints of it that
Snakemake's ``params`` compare (a changed fingerprint reruns the job)."""

from __future__ import annotations

from typing import Any

from fewstep.core.config import fingerprint
from fewstep.core.images import picture_source
from fewstep.grid.cells import EAGER, Cell, CellEnumeration, Item
from fewstep.scoring import specs
from fewstep.scoring.networks import ANCHOR_METRICS


class RerunTriggers(CellEnumeration):
    """Cell, item and score specs of a sweep and their fingerprints."""

    def cell_spec(self, cell: Cell) -> dict[str, Any]:
        """Everything that determines a cell's images (hashed into its provenance)."""
        family, backbone = self.family(cell), self.backbone(cell)
        adapter = self.adapter(cell).to_dict()
        if adapter["kind"] == "none":
            adapter = {"kind": "none"}
        return {
            "cell": cell.id,
            "backbone": {
                "model": backbone.model,
                "family": backbone.family,
                **family.settings(backbone),
                "guidance": self.guidance(cell),
            },
            "adapter": adapter,
            "steps": cell.steps,
            "resolution": self.image_size(cell),
            "weights": self.study.weights,
            "dtype": self.study.dtype,
            "device": self.study.device,
            "batch_size": self.study.generation.batch_size,  # in bf16 the batch moves pixels
            "fp8_weights": self.study.memory.fp8_weights,
        } | ({} if cell.acceleration == EAGER else {"acceleration": self.acceleration(cell).to_dict()})

    def cell_hash(self, cell: Cell) -> str:
        """Changes exactly when this cell's images would change (Snakemake's rerun trigger)."""
        spec = self.cell_spec(cell)
        spec["items"] = [self.item_spec(item, cell) for item in self.items_of(cell)]
        return fingerprint(spec)

    def job_hash(self, job_id: str) -> str:
        """Changes exactly when one of the job's cells would change (the generate rule's trigger)."""
        return fingerprint([self.cell_hash(cell) for cell in self.job(job_id)])

    def item_spec(self, item: Item, cell: Cell) -> dict[str, Any]:
        """What an item's image in `cell` depends on besides the cell: its prompt's text, its
        seed and, when the adapter conditions on a picture, that picture's content."""
        spec = {"identity": item.identity, "prompt": self.prompt(item.prompt).text, "seed": item.seed}
        if self.adapter(cell).kind != "none":
            spec["picture"] = self.picture_sources(cell)[item.identity]
        return spec

    def cell_metrics(self, cell: Cell) -> list[str]:
        """The metrics fitting the role of `cell`'s adapter, or for a bare backbone the roles its items
        cross (`cell_roles`, in its family's `adapter_roles` order; `fewstep.scoring.specs.cell_metrics`)."""
        family, roles = self.family(cell), self.cell_roles(cell)
        ordered = [r for r in family.adapter_roles if r in roles] + [
            r for r in roles if r not in family.adapter_roles
        ]
        return specs.cell_metrics(family, self.adapter(cell), list(self.study.scoring.metrics), ordered)

    def trajectory_metrics(self, cell: Cell) -> list[str]:
        """The metrics that score `cell`'s x0 at every step (`fewstep.scoring.specs.trajectory_metrics`)."""
        return specs.trajectory_metrics(
            self.family(cell), self.adapter(cell), list(self.study.scoring.metrics)
        )

    def score_spec(self, cell: Cell) -> dict[str, Any]:
        """Everything besides its images that `cell`'s scores depend on."""
        metrics = self.cell_metrics(cell)
        anchor = self.score_anchor(cell)
        pictures = self.picture_sources(cell)
        references = sorted({item.identity for item in self.items_of(cell)})
        spec = {
            "metrics": metrics,
            "scoring": {k: v for k, v in self.study.scoring.to_dict().items() if k != "metrics"},
            "pictures": {r: pictures[r] for r in references},
            "anchor": None if anchor is None else anchor.id,
        }
        if set(metrics) & set(specs.face_metrics()):  # the face chosen, the held-out photos
            spec["face"] = self.study.face.to_dict()
            spec["heldout"] = {r: list(map(picture_source, self.identity(r).heldout)) for r in references}
        return spec

    def score_hash(self, cell: Cell) -> str:
        """Changes exactly when `cell`'s scores would change for the same images (the score
        rule's trigger; key order in the config file does not matter)."""
        return fingerprint(self.score_spec(cell))

    def job_score_hash(self, job_id: str) -> str:
        """Changes exactly when the scores of one of the job's cells would (the score rule's
        trigger; the job then rescores only those cells)."""
        return fingerprint({cell.id: self.score_hash(cell) for cell in self.job(job_id)})

    def score_anchor(self, cell: Cell) -> Cell | None:
        """The cell whose images `cell`'s anchor-paired metrics (LPIPS) compare with, if any:
        the config's ``anchor``, or for families that anchor each job to itself its
        highest-step cell. None for the anchor itself and when no such metric is scored."""
        if not any(m in ANCHOR_METRICS for m in self.cell_metrics(cell)):
            return None
        anchor = max(self.jobs[cell.job]) if self.family(cell).anchors_to_highest_step else self.anchor
        return anchor if anchor is not None and anchor != cell else None

    def is_anchor(self, cell: Cell) -> bool:
        """Whether other cells' anchor-paired metrics compare with this cell's images."""
        if self.family(cell).anchors_to_highest_step:
            return cell == max(self.jobs[cell.job])
        return cell == self.anchor
