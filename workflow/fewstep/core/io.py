"""Atomic file output: write to a temporary sibling, fsync, then rename.

A job killed at any moment leaves either the old file or the new one, never
half of one. Folders are built under a staging name and renamed into place alike.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fewstep.core.errors import DiskFullError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are as readable as any other file
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFullError(path) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(folder: str | Path) -> Iterator[Path]:
    """Yield a fresh, empty `<folder>.building`; on success it replaces `folder` (a folder or a
    link there), so a half-built folder never carries the final name. A failed build is removed."""
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)  # what a killed build left
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` atomically, with stable bytes: saved to a file, torch names the
    archive's records after the file's stem, which would be the random temporary name."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def encode_png(pixels: Any, metadata: dict[str, str] | None = None, compress_level: int = 6) -> bytes:
    """PNG bytes of an HxWx3 uint8 RGB array, with text chunks (provenance) when given (zlib level 0-9)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    image = Image.fromarray(pixels)
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    return buffer.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_table(path: str | Path, frame: Any) -> None:
    """A DataFrame to .parquet or .csv (by suffix), atomically. Encoded in memory, then written
    through Python like every other output: a full disk raises the same OSError (ENOSPC) here as
    anywhere, where pyarrow's own writer would raise its own error type."""
    path = Path(path)
    buffer = io.BytesIO()
    if path.suffix == ".parquet":
        frame.to_parquet(buffer, index=False)
    else:
        frame.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporaries a killed writer left behind (`.<name>.*.tmp`); return how many."""
    removed = 0
    for tmp in Path(folder).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def append_line(path: str | Path, line: str) -> None:
    """Append one line durably (fsync). A line torn by a kill is cut off first, so the
    new line never glues onto it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "a+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    handle.seek(0)
                    keep = handle.read().rfind(b"\n") + 1
                    handle.truncate(keep)
                    handle.seek(keep)
            handle.write(line.encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFullError(path) from None
        raise
