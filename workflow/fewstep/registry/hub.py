"""Fetch the published weights (the `prepare_model` rule in real mode).

Hugging Face repos go through `huggingface_hub.snapshot_download` into the
normal Hugging Face cache (so weights a user already has are reused, and an
interrupted download resumes), restricted by allow-patterns to the files the
config uses; `<models_dir>/real/<folder>` is then a symlink to the snapshot.
Plain URLs (facexlib's IR-SE50) download with HTTP range resume. With
`HF_HUB_OFFLINE=1` only the cache is read. Every failure a user can cause ends
in one `WeightsError` line: gated repo without token or licence, no disk space,
missing files, offline without a cache.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from fewstep.core.errors import NetworkError, WeightsError
from fewstep.core.io import atomic_path
from fewstep.core.study import Study
from fewstep.registry.catalog import lookup, model_revision
from fewstep.registry.spec import ModelSpec, Usage

GIB = 1024**3


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def allow_patterns(config: Study, name: str, usage: Usage) -> list[str]:
    """Only what the config uses is fetched: no single-file checkpoints, no unused variants."""
    spec = lookup(name)
    if spec.recipe is None or spec.recipe.patterns is None:
        raise WeightsError(f"no download recipe for model {name!r}")
    return spec.recipe.patterns(config, spec, usage)


def _hub_error(err: Exception, repo_id: str, gated: bool, revision: str) -> WeightsError:
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"https://huggingface.co/{repo_id}"
    if isinstance(err, GatedRepoError) or (gated and isinstance(err, RepositoryNotFoundError)):
        if get_token() is None:
            return WeightsError(
                f"{repo_id} is gated and no Hugging Face token is set: accept its licence at {page}, "
                "then export HF_TOKEN=<token> (or run `hf auth login`)"
            )
        return WeightsError(
            f"{repo_id} is gated and your token cannot read it: accept the licence at {page} "
            "with the account the token belongs to"
        )
    if isinstance(err, RevisionNotFoundError):
        return WeightsError(
            f"{repo_id} has no revision {revision!r}; set config revisions.<model> to a commit of {page}"
        )
    if isinstance(err, LocalEntryNotFoundError):
        if offline():
            return WeightsError(
                f"{repo_id}@{revision}: HF_HUB_OFFLINE is set and the files are not in the Hugging Face "
                "cache; unset HF_HUB_OFFLINE, fill the cache, or point config revisions.<model> at the "
                "cached commit"
            )
        return NetworkError(
            f"{repo_id}@{revision}: the hub cannot be reached and the files are not cached; check the network"
        )
    if isinstance(err, RepositoryNotFoundError):
        return WeightsError(f"{repo_id} does not exist or is private; check the name at {page}")
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return _disk_full(repo_id)
    return NetworkError(f"{repo_id}: download failed ({type(err).__name__}: {str(err).splitlines()[0]})")


def _disk_full(what: str) -> WeightsError:
    return WeightsError(
        f"disk full while downloading {what}: free space (HF cache: {_cache_dir()}), "
        "then rerun; the download resumes"
    )


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _check_space(repo_id: str, patterns: list[str], revision: str) -> None:
    """Refuse to start a download that cannot fit (sizes from the hub's file listing)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception:  # noqa: BLE001 - the download itself reports access problems precisely
        return
    needed = sum(
        s.size or 0 for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, p) for p in patterns)
    )
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if needed > free:
        raise WeightsError(
            f"{repo_id} needs {needed / GIB:.1f} GiB but only {free / GIB:.1f} GiB are free in {cache}; "
            "free space or point HF_HUB_CACHE at a larger disk"
        )


def snapshot(repo_id: str, patterns: list[str], revision: str, gated: bool = False) -> Path:
    """The cache snapshot of `repo_id` at `revision` holding `patterns`, downloading what is missing.

    The snapshot folder is named by the commit the revision resolved to (the
    prepared marker records it, see `fewstep.registry.prepare.hub_snapshot`).
    """
    from huggingface_hub import snapshot_download

    local_only = offline()
    if not local_only:
        _check_space(repo_id, patterns, revision)
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            local_files_only=local_only,
            cache_dir=_cache_dir(),
        )
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one line
        raise _hub_error(err, repo_id, gated, revision) from None
    return Path(path)


def link_folder(folder: Path, target: Path) -> None:
    """Point `folder` at `target` (replacing an older link, never a real folder's content)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        raise WeightsError(f"{folder} exists and is not a link fewstep made; move it away, then rerun")
    folder.symlink_to(target.resolve(), target_is_directory=True)


def link_local(folder: Path, source: Path, name: str, required: list[str]) -> None:
    """Use weights the user already has (config local_weights) instead of downloading,
    once the folder is seen to hold every `required` file the model loads."""
    key = f"config local_weights.{name}"
    if not source.is_dir():
        raise WeightsError(f"{key}: {source} is not a folder; fix the path")
    missing = [f for f in required if not (source / f).exists()]
    if missing:
        raise WeightsError(
            f"{key}: {source} lacks {', '.join(missing)}; point it at a folder in the published layout"
        )
    link_folder(folder, source)


def require_files(folder: Path, files: list[str], what: str) -> None:
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise WeightsError(f"{what}: {folder} lacks {', '.join(missing)}; rerun the download (it resumes)")


def fetch_url(url: str, path: Path) -> Path:
    """Download `url` to `path`, resuming a partial `.part` file."""
    path = Path(path)
    if path.exists():
        return path
    if offline():
        raise WeightsError(
            f"{path} is missing and HF_HUB_OFFLINE is set; place the file there or go online ({url})"
        )
    part = path.with_name(path.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with (
            urllib.request.urlopen(request, timeout=60) as response,
            open(part, "ab" if done else "wb") as out,
        ):
            if done and response.status != 206:  # server ignored the range: start over
                out.truncate(0)
            shutil.copyfileobj(response, out, length=1 << 20)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise _disk_full(url) from None
        raise NetworkError(
            f"cannot download {url} ({err}); check the network, then rerun (it resumes)"
        ) from None
    with atomic_path(path) as tmp:
        shutil.copyfile(part, tmp)
    part.unlink()
    return path


def fetch_snapshot(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """The common recipe's fetch: `folder` links to the hub snapshot of the spec's allow-patterns,
    which must then hold the spec's required files."""
    revision = model_revision(config, spec.name)
    patterns = allow_patterns(config, spec.name, usage)
    link_folder(folder, snapshot(spec.repo_id, patterns, revision, spec.gated))
    require_files(folder, spec.recipe.required(config, spec, usage), spec.name)
