"""W&B artifacts of a sweep, so each run's lineage graph reads weights -> images -> scores -> report.

Every artifact is built from the files it names, so two jobs that build "the
same" artifact get the same digest, and W&B keeps one version of it: the score
job rebuilds its cell's images artifact and *uses* it, which links it to the
version the generate job logged. Nothing here needs the network.

- ``weights-<mode>-<model>`` (type ``model``): a model as its prepared marker
  describes it (hub repo, requested revision, resolved commit, every file's
  size and sha256) in ``weights.json``; real hub weights also as references to
  the files at that commit on the hub, which W&B records without fetching them;
- ``embeddings-<sweep>-<family>-<L<length> | N<negative>>-<roles>``, ``identities-<sweep>`` and
  ``references-<sweep>-<family>-<adapter file>``
  (``embeddings``): the precomputed prompt and identity embeddings a cell reads (its prompts
  are those of its adapter roles, so the roles name the set and each set is one version);
- ``images-<sweep>-<cell>`` (``images``): a cell's manifest, and the PNGs it lists as
  checksummed references to the files under the results folder (not uploaded);
- ``scores-<sweep>-<cell>``, ``trajectory-<sweep>-<cell>``: the per-image and per-step tables;
- ``report-<sweep>`` (``report``): the aggregate tables and the report page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from fewstep.core.paths import Paths
from fewstep.core.study import Study
from fewstep.grid import Cell, Grid

#: marker keys that describe the weights (not where or when they were prepared)
WEIGHTS_KEYS = ("model", "weights", "repo_id", "revision", "commit", "commits", "files")
HUB_FILE_URL = "https://huggingface.co/{repo_id}/resolve/{commit}/{path}"


def artifact_name(*parts: str) -> str:
    """A W&B artifact name (letters, digits, `-`, `_`, `.`); a cell id's slashes become `__`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(p.replace("/", "__") for p in parts))


def _file_reference(artifact: Any, path: Path, name: str) -> None:
    """A checksummed reference to a local file or folder (recorded, never uploaded)."""
    artifact.add_reference(Path(path).resolve().as_uri(), name=name)


def weights(study: Study, model: str, staging: Path) -> Any:
    """The artifact of one prepared model, from its marker (`staging`: where weights.json is written)."""
    import wandb

    marker = json.loads(Paths(study).model_marker(model).read_text(encoding="utf-8"))
    described = {key: marker.get(key) for key in WEIGHTS_KEYS}
    artifact = wandb.Artifact(
        artifact_name("weights", study.weights, model),
        type="model",
        description=f"{model} ({study.weights} weights)",
        metadata={key: described[key] for key in ("model", "weights", "repo_id", "revision", "commit")},
    )
    staging.mkdir(parents=True, exist_ok=True)
    manifest = staging / f"{model}.weights.json"
    manifest.write_text(json.dumps(described, indent=1, sort_keys=True), encoding="utf-8")
    artifact.add_file(str(manifest), name="weights.json")
    if study.weights == "real" and marker.get("commit"):
        for entry in marker["files"]:
            url = HUB_FILE_URL.format(repo_id=marker["repo_id"], commit=marker["commit"], path=entry["path"])
            artifact.add_reference(url, name=f"hub/{entry['path']}", checksum=False)
    return artifact


def embeddings(study: Study, cell: Cell) -> list[Any]:
    """The embedding artifacts one cell's generation reads (prompts; identities for InfuseNet)."""
    import wandb

    grid, paths = Grid.of(study), Paths(study)
    family = grid.backbone(cell)["family"]
    prompts = grid.prompt_embeddings(paths, cell)
    # what the prompt files were encoded with: L<length> (FLUX's T5) or N<negative prompt> (SD)
    variant = Path(prompts[0]).name.split(".")[1]
    references = grid.identity_embeddings(paths, cell)
    if grid.reference_file(cell) is not None:  # one image encoder per family and adapter file
        references_name = artifact_name("references", study.sweep, family, grid.reference_file(cell))
    else:
        references_name = artifact_name("identities", study.sweep)
    groups = [
        (
            artifact_name("embeddings", study.sweep, family, variant, "+".join(grid.cell_roles(cell))),
            prompts,
            {"text_encoders": grid.text_encoder_backbone(family), "variant": variant},
        ),
        (references_name, references, {}),
    ]
    out = []
    for name, files, metadata in groups:
        if files:
            artifact = wandb.Artifact(
                name, type="embeddings", metadata={"weights": study.weights, **metadata}
            )
            for path in files:
                _file_reference(artifact, path, Path(path).name)
            out.append(artifact)
    return out


def images(study: Study, cell_id: str, manifest: Path | None = None) -> Any:
    """One cell's images (references) and manifest, as the generate job left them."""
    import wandb

    paths = Paths(study)
    manifest = manifest or paths.manifest(cell_id)
    artifact = wandb.Artifact(
        artifact_name("images", study.sweep, cell_id),
        type="images",
        metadata={"cell_id": cell_id, "weights": study.weights},
    )
    artifact.add_file(str(manifest), name="manifest.parquet")
    for image in pd.read_parquet(manifest, columns=["image"])["image"]:  # not stale files of the folder
        _file_reference(artifact, paths.cell_dir(cell_id) / image, image)
    return artifact


def table(study: Study, kind: str, cell_id: str, path: Path) -> Any:
    """A cell's per-image scores or per-step trajectory table."""
    import wandb

    artifact = wandb.Artifact(
        artifact_name(kind, study.sweep, cell_id),
        type=kind,
        metadata={"cell_id": cell_id, "weights": study.weights},
    )
    artifact.add_file(str(path), name=Path(path).name)
    return artifact


def report(study: Study) -> Any:
    """The aggregate tables and the report page of the sweep."""
    import wandb

    paths = Paths(study)
    artifact = wandb.Artifact(
        artifact_name("report", study.sweep), type="report", metadata={"weights": study.weights}
    )
    artifact.add_dir(str(paths.aggregate_dir), name="aggregate")
    if paths.report_index.exists():
        artifact.add_file(str(paths.report_index), name=f"report/{paths.report_index.name}")
    return artifact
