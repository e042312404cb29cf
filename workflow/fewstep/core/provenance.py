"""What made an output: package versions, git commit, device, config hash."""

from __future__ import annotations

import functools
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from fewstep.core.study import Study

PACKAGES = (
    "fewstep",
    "torch",
    "diffusers",
    "transformers",
    "insightface",
    "onnxruntime",
    "lpips",
    "wandb",
)


@functools.cache
def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.cache
def git_commit() -> str:
    """HEAD of the workflow checkout, suffixed `-dirty` when tracked files changed."""
    repo = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # no optional locks: parallel jobs must not write (or lock) the repo's index
            ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def device_name(device: Any) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def model_revisions(config: Study, models: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per model of `models` that is prepared: its hub repo, requested revision, resolved commit."""
    import json

    from fewstep.core.paths import Paths

    paths, out = Paths(config), {}
    for name in models:
        marker = paths.model_marker(name)
        if marker.exists():
            info = json.loads(marker.read_text(encoding="utf-8"))
            out[name] = {key: info.get(key) for key in ("repo_id", "revision", "commit")}
    return out


def record(config: Study, models: Iterable[str], **extra: Any) -> dict[str, Any]:
    """The provenance block stored with every table and image. `models`: what made it (a cell's
    images: `Grid.cell_models`; a sweep table: `Grid.models`), never whatever else is prepared, so
    the same output written before or after another model was prepared has the same bytes."""
    return {
        "config_hash": config.config_hash,
        "weights": config.weights,
        "git_commit": git_commit(),
        "versions": versions(),
        "models": model_revisions(config, models),
        **extra,
    }


def columns(info: dict[str, Any]) -> dict[str, Any]:
    """A provenance block as flat table columns: package versions and each model's
    resolved hub commit (null for tiny or random weights) as JSON strings."""
    import json

    flat = {key: value for key, value in info.items() if key not in ("versions", "models")}
    commits = {name: model["commit"] for name, model in info["models"].items()}
    return flat | {
        "versions": json.dumps(info["versions"], sort_keys=True),
        "model_commits": json.dumps(commits, sort_keys=True),
    }


#: provenance columns every table gets (the rows' own columns win)
STAMPED = ("weights", "config_hash", "git_commit", "versions", "model_commits")
#: what made each image besides the config, carried from the per-image rows into every table
RUNTIME_COLUMNS = ("weights_digest", "device_name", "dtype", "batch_size")


def stamp(frame, config: Study, models: Iterable[str], images=None):
    """A copy of `frame` whose every row names its provenance (`STAMPED`): a table made with
    tiny or random weights says so in every row.

    With `images` (per-image rows, e.g. the scores), rows also name the weights digest,
    device name, dtype and batch size of the images behind them: per cell where the
    table has a `cell_id` column, else over the whole sweep; differing values are
    joined with ";" (a table over images from two cards says so).
    """
    info = columns(record(config, models))
    out = frame.copy()
    for key in STAMPED:
        if key not in out:
            out[key] = info[key]
    present = [c for c in RUNTIME_COLUMNS if images is not None and c in images and c not in out]
    if not present:
        return out

    def joined(values) -> str:
        return ";".join(sorted({str(v) for v in values.dropna()}))

    if "cell_id" in out:
        return out.join(images.groupby("cell_id")[present].agg(joined), on="cell_id")
    for column in present:
        out[column] = joined(images[column])
    return out
