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
from typing import Any

from fewstep.core.errors import WeightsError
from fewstep.core.io import atomic_path

#: what a generation job loads from a FLUX repo (the single-file checkpoints at its root are skipped)
FLUX_PATTERNS = ["model_index.json", "scheduler/*", "transformer/*", "vae/*"]
#: the text encoders, fetched from one backbone only (dev and schnell ship identical ones)
FLUX_TEXT_PATTERNS = ["text_encoder/*", "text_encoder_2/*", "tokenizer/*", "tokenizer_2/*"]
#: files that must exist after a download (relative to the model folder)
FLUX_REQUIRED = ["model_index.json", "transformer/config.json", "vae/config.json"]
FLUX_TEXT_REQUIRED = ["text_encoder/config.json", "text_encoder_2/config.json", "tokenizer_2/tokenizer.json"]
INSIGHTFACE_SUBDIR = "supports/insightface"
#: insightface packs InfiniteYou's hub repo does not carry: insightface's own release zips
#: (the URL insightface 2.1 itself downloads from) with the archive's sha256.
FACE_PACK_ZIPS = {
    "buffalo_l": (
        "https://github.com/deepinsight/insightface/releases/download/model-zoo/buffalo_l.zip",
        "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
    ),
}
GIB = 1024**3


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def allow_patterns(config: dict[str, Any], name: str) -> list[str]:
    """Only what the config uses is fetched: no single-file checkpoints, no unused variants."""
    from fewstep.faces.analyzer import PACK_FILES
    from fewstep.families.flux.models import BACKBONES, INFU_VERSION, face_packs, infusenet_variants

    if name in BACKBONES:
        return FLUX_PATTERNS + (FLUX_TEXT_PATTERNS if _embeds_text(config, name) else [])
    if name == "infiniteyou":
        return [f"{INFU_VERSION}/{variant}/*" for variant in infusenet_variants(config)]
    if name == "insightface":  # the detector and recognition model, not the pack's other networks
        return [
            f"{INSIGHTFACE_SUBDIR}/models/{pack}/{file}"
            for pack in face_packs(config)
            if pack not in FACE_PACK_ZIPS
            for file in PACK_FILES[pack]
        ]
    raise WeightsError(f"no download recipe for model {name!r}")


def _embeds_text(config: dict[str, Any], name: str) -> bool:
    from fewstep.grid import Grid

    grid = Grid(config)
    return any(grid.text_encoder_backbone(family) == name for family in grid.families)


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
        return WeightsError(
            f"{repo_id}@{revision}: the hub cannot be reached and the files are not cached; check the network"
        )
    if isinstance(err, RepositoryNotFoundError):
        return WeightsError(f"{repo_id} does not exist or is private; check the name at {page}")
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return _disk_full(repo_id)
    return WeightsError(f"{repo_id}: download failed ({type(err).__name__}: {str(err).splitlines()[0]})")


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
    prepared marker records it, see `fewstep.families.flux.models.hub_snapshot`).
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


def _link(folder: Path, target: Path) -> None:
    """Point `folder` at `target` (replacing an older link, never a real folder's content)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        raise WeightsError(f"{folder} exists and is not a link fewstep made; move it away, then rerun")
    folder.symlink_to(target.resolve(), target_is_directory=True)


def link_local(config: dict[str, Any], folder: Path, source: Path, name: str) -> None:
    """Use weights the user already has (config local_weights) instead of downloading,
    once the folder is seen to hold every file the model loads."""
    key = f"config local_weights.{name}"
    if not source.is_dir():
        raise WeightsError(f"{key}: {source} is not a folder; fix the path")
    missing = [f for f in required_files(config, name) if not (source / f).exists()]
    if missing:
        raise WeightsError(
            f"{key}: {source} lacks {', '.join(missing)}; point it at a folder in the published layout"
        )
    _link(folder, source)


def required_files(config: dict[str, Any], name: str) -> list[str]:
    """Files (relative to its folder) without which model `name` cannot load for this config."""
    from fewstep.faces.analyzer import PACK_FILES
    from fewstep.families.flux.models import (
        ARCFACE_IRSE,
        BACKBONES,
        INFU_VERSION,
        face_packs,
        infusenet_variants,
    )
    from fewstep.scoring.networks import SCORING_MODELS
    from fewstep.scoring.networks import required_files as scoring_files

    if name in BACKBONES:
        return FLUX_REQUIRED + (FLUX_TEXT_REQUIRED if _embeds_text(config, name) else [])
    if name == "infiniteyou":
        return [
            f"{INFU_VERSION}/{variant}/{file}"
            for variant in infusenet_variants(config)
            for file in ("InfuseNetModel/config.json", "image_proj_model.bin")
        ]
    if name == "insightface":
        return [f"models/{pack}/{file}" for pack in face_packs(config) for file in PACK_FILES[pack]]
    if name == ARCFACE_IRSE.name:
        return [ARCFACE_IRSE.extra["file"]]
    if name in SCORING_MODELS:
        return scoring_files(name)
    raise WeightsError(f"no download recipe for model {name!r}")


def _require(folder: Path, files: list[str], what: str) -> None:
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
        raise WeightsError(
            f"cannot download {url} ({err}); check the network, then rerun (it resumes)"
        ) from None
    with atomic_path(path) as tmp:
        shutil.copyfile(part, tmp)
    part.unlink()
    return path


def fetch_face_pack_zip(pack: str, folder: Path) -> None:
    """A release zip of an insightface pack, checked and unpacked to `folder` (its .onnx files on top)."""
    import tempfile
    import zipfile

    from fewstep.core.io import sha256_file

    if folder.is_dir() and any(folder.glob("*.onnx")):
        return
    url, expected = FACE_PACK_ZIPS[pack]
    archive = fetch_url(url, folder.with_name(f"{pack}.zip"))
    digest = sha256_file(archive)
    if digest != expected:
        archive.unlink()
        raise WeightsError(
            f"{archive} has sha256 {digest[:12]}..., not the published {expected[:12]}...; "
            "it was deleted: rerun to download it again"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{pack}.") as tmp:
        extracted, staging = Path(tmp) / "zip", Path(tmp) / "pack"
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(extracted)
        except zipfile.BadZipFile:
            archive.unlink()
            raise WeightsError(
                f"{archive} is not a zip archive; it was deleted: rerun to download it again"
            ) from None
        onnx = sorted(extracted.rglob("*.onnx"))
        if not onnx:
            raise WeightsError(f"{archive} holds no .onnx files; check {url}")
        staging.mkdir()
        for file in onnx:  # some packs nest their files one folder down
            file.rename(staging / file.name)
        if folder.is_symlink():
            folder.unlink()
        staging.rename(folder)
    archive.unlink()


def fetch(config: dict[str, Any], name: str, folder: Path) -> None:
    """Make `folder` hold the real weights of model `name`."""
    from fewstep.families.flux.models import (
        ARCFACE_IRSE,
        BACKBONES,
        INFINITEYOU,
        INSIGHTFACE,
        face_packs,
        model_revision,
    )
    from fewstep.scoring.networks import SCORING_MODELS

    folder = Path(folder)
    revision = model_revision(config, name)
    if name in BACKBONES:
        spec = BACKBONES[name]
        _link(folder, snapshot(spec.repo_id, allow_patterns(config, name), revision, spec.gated))
        _require(folder, required_files(config, name), name)
    elif name == INFINITEYOU.name:
        _link(folder, snapshot(INFINITEYOU.repo_id, allow_patterns(config, name), revision))
        _require(folder, required_files(config, name), name)
    elif name == INSIGHTFACE.name:
        source = snapshot(INSIGHTFACE.repo_id, allow_patterns(config, name), revision)
        source = source / INSIGHTFACE_SUBDIR / "models"
        for pack in face_packs(config):
            if pack in FACE_PACK_ZIPS:
                fetch_face_pack_zip(pack, folder / "models" / pack)
                continue
            _link(folder / "models" / pack, source / pack)
            if not any((folder / "models" / pack).glob("*.onnx")):
                raise WeightsError(f"insightface pack {pack} has no .onnx files in {source / pack}")
    elif name == ARCFACE_IRSE.name:
        fetch_url(ARCFACE_IRSE.extra["url"], folder / ARCFACE_IRSE.extra["file"])
    elif name in SCORING_MODELS:
        from fewstep.scoring.networks import fetch as fetch_scoring

        fetch_scoring(config, name, folder)
    else:
        raise WeightsError(f"no download recipe for model {name!r}")
