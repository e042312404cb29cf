"""Preparing a registered model for the configured weights mode, and its ready marker.

The model's own `Recipe` does the work (fetch, build tiny, write random); what of the model
the sweep uses (`Usage`) comes from the caller, which knows the sweep.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from fewstep.core.errors import WeightsError
from fewstep.core.io import atomic_write_json, sha256_file
from fewstep.core.study import Study
from fewstep.registry.catalog import lookup, marker_path, model_folder, model_revision
from fewstep.registry.spec import Usage


def prepare_command(model: str) -> str:
    """The command that prepares `model` again (what the prepare_model rule runs): a plain rerun
    keeps a model whose ready marker exists, even when its files are gone."""
    from fewstep.core.jobenv import config_option

    return f"fewstep prepare-model {config_option()} --model {model}"


def missing_weights(path: Path, model: str) -> WeightsError:
    """The error for a model file or folder that is not there: its fix is preparing the model."""
    return WeightsError(f"missing {path}; prepare it: `{prepare_command(model)}`")


def prepare(config: Study, name: str, usage: Usage) -> Path:
    """Make model `name` available for the configured weights mode; write its marker.

    The marker names the requested revision, the hub commits the files resolved to
    (read from the Hugging Face cache layout) and every file's size and sha256.
    """
    folder = model_folder(config, name)
    spec, mode = lookup(name), config.weights
    recipe = spec.recipe
    if recipe is None:
        raise WeightsError(f"no download recipe for model {name!r}")
    if mode == "tiny":
        recipe.tiny(config, spec, folder, usage)
    elif mode == "random":
        (recipe.random or recipe.tiny)(config, spec, folder, usage)
    elif name in config.local_weights:
        from fewstep.registry.hub import link_local

        source = Path(config.local_weights[name])
        link_local(folder, source, name, recipe.required(config, spec, usage))
    else:
        recipe.fetch(config, spec, folder, usage)
    marker = marker_path(config, name)
    files = sorted(
        Path(root) / name
        for root, _, names in os.walk(folder, followlinks=True)  # links into the HF cache
        for name in names
        if ".cache" not in Path(root).parts
    )
    commits = dict(sorted({hub_snapshot(p) for p in files} - {None}))
    atomic_write_json(
        marker,
        {
            "model": name,
            "weights": mode,
            "folder": str(folder),
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "repo_id": spec.repo_id,
            "revision": model_revision(config, name),
            "commit": commits.get(spec.repo_id),
            "commits": commits,
            "files": [
                {"path": str(p.relative_to(folder)), "bytes": p.stat().st_size, **file_sha256(p)}
                for p in files
            ],
        },
    )
    return marker


def weights_digest(config: Study, folders: dict[str, tuple[str, ...]]) -> str:
    """Fingerprint of the files (path, sha256) under `folders`, read from the models' ready markers.

    It changes exactly when the weights a job loads change: another hub revision,
    another `local_weights` folder, tiny weights rebuilt with other values.
    """
    import json

    from fewstep.core.config import fingerprint

    files = {}
    for name, prefixes in sorted(folders.items()):
        marker = marker_path(config, name)
        if not marker.exists():
            raise missing_weights(marker, name)
        entries = json.loads(marker.read_text())["files"]
        files[name] = sorted((f["path"], f["sha256"]) for f in entries if f["path"].startswith(prefixes))
    return fingerprint(files)


SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def hub_snapshot(path: Path) -> tuple[str, str] | None:
    """(repo id, commit) when `path` lies in a Hugging Face cache snapshot, else None.

    The cache keeps `models--<org>--<name>/snapshots/<commit>/<file>`; only the
    folders are resolved here (the file itself links on into `blobs/`).
    """
    parts = Path(os.path.realpath(path.parent)).parts
    if "snapshots" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("snapshots")
    if at == 0 or at + 1 >= len(parts) or not parts[at - 1].startswith("models--"):
        return None
    return parts[at - 1].removeprefix("models--").replace("--", "/"), parts[at + 1]


def file_sha256(path: Path) -> dict[str, str]:
    """A file's sha256: the name of its Hugging Face cache blob when that names it, else hashed.

    The cache stores large (LFS) files as `blobs/<sha256>`: the hub's own hash of the
    content, so re-reading tens of GB here adds nothing (`hf cache verify <repo>` checks
    the bytes on demand). Small files' blobs are named by their git object id, and files
    outside the cache are named by nothing: those are hashed.
    """
    target = path.resolve()
    if target.parent.name == "blobs" and SHA256_NAME.fullmatch(target.name):
        return {"sha256": target.name, "sha256_from": "hub blob name"}
    return {"sha256": sha256_file(path), "sha256_from": "hashed"}
