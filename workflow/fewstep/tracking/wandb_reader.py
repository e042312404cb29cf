"""Read offline W&B run files (`run-<id>.wandb`) back into Python.

wandb 0.31 ships no Python reader for these files: the old
`wandb.sdk.internal.datastore` is gone and the parser lives inside the Go
`wandb-core` binary. `wandb leet inspect --json <file>` prints every record as
one JSON line (docs/wandb.md), which is how to look at a run by hand; the tests
and `fewstep` read them here, with wandb's own protobuf classes
(`wandb.proto.wandb_internal_pb2.Record`), so no subprocess is needed:

- a 7-byte file header: ``:W&B``, magic 0xBEE1 (little endian), version 0;
- then LevelDB-log framing: 32 KiB blocks (the header counts towards the first),
  each record split into chunks with a 7-byte chunk header ``<IHB`` = CRC-32 of
  (type byte + data), data length, type (1 full, 2 first, 3 middle, 4 last);
  a block tail shorter than a chunk header is zero padding.

A file whose last record is cut off (a job killed mid-write) reads up to the
cut; a bad header or checksum raises `WandbFileError` naming the file.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewstep.core.errors import InputError

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(InputError):
    """A `.wandb` file that is not a W&B run file or is corrupt."""


def iter_chunks(data: bytes, path: Path) -> Iterator[bytes]:
    """Reassembled record payloads of one file's LevelDB-log framing."""
    if not data.startswith(FILE_HEADER):
        raise WandbFileError(f"{path} is not a W&B run file (bad header); pass a run-<id>.wandb file")
    pos, pending = len(FILE_HEADER), None
    while pos < len(data):
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        if left < CHUNK_HEADER.size:  # zero padding at a block's end
            pos += left
            continue
        if pos + CHUNK_HEADER.size > len(data):
            return  # cut off mid-header
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        if crc == length == kind == 0:  # unwritten rest of a block
            pos += left
            continue
        if start + length > len(data):
            return  # cut off mid-record: a killed writer
        chunk = data[start : start + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc or kind not in (FULL, FIRST, MIDDLE, LAST):
            raise WandbFileError(f"{path}: corrupt record at byte {pos}; the run file is damaged")
        pos = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif pending is not None:
            pending += chunk
            if kind == LAST:
                yield pending
                pending = None


def iter_records(path: str | Path) -> Iterator[Any]:
    """Every `wandb_internal_pb2.Record` of a run file, in write order."""
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    for payload in iter_chunks(path.read_bytes(), path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _apply(target: dict[str, Any], item: Any) -> None:
    """Set one ConfigItem/SummaryItem/HistoryItem (`key` or `nested_key` path) in `target`."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def _remove(target: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.get(key, {})
    target.pop(keys[-1], None)


@dataclass
class ArtifactEntry:
    """One file of an artifact: a logged file (`digest` = base64 md5) or a reference (`ref`)."""

    path: str
    digest: str
    ref: str = ""
    size: int = 0


@dataclass
class OfflineArtifact:
    """An artifact a run logged (its output) or used (`used`: an input of the run)."""

    name: str
    type: str
    digest: str
    used: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    entries: list[ArtifactEntry] = field(default_factory=list)

    @classmethod
    def from_record(cls, record: Any) -> OfflineArtifact:
        entries = [ArtifactEntry(e.path, e.digest, e.ref, int(e.size)) for e in record.manifest.contents]
        metadata = json.loads(record.metadata) if record.metadata else {}
        return cls(record.name, record.type, record.digest, record.use_after_commit, metadata, entries)


@dataclass
class OfflineRun:
    """What one run file says about its run: identity, config, summary, history."""

    path: Path
    run_id: str = ""
    entity: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None  # None: the run never finished
    resume: bool = False  # wandb.init(resume=...) was given: a rerun of the same id continues the run
    metrics: dict[str, str] = field(default_factory=dict)  # define_metric: name or glob -> its x axis
    artifacts: list[OfflineArtifact] = field(default_factory=list)
    records: Counter = field(default_factory=Counter)

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def used_artifacts(self) -> dict[str, OfflineArtifact]:
        return {a.name: a for a in self.artifacts if a.used}

    @property
    def logged_artifacts(self) -> dict[str, OfflineArtifact]:
        return {a.name: a for a in self.artifacts if not a.used}


def read_run(path: str | Path) -> OfflineRun:
    """Replay a run file: later config/summary updates win, as on the server."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("run-*.wandb"))
        if len(found) != 1:
            raise WandbFileError(f"{path} holds {len(found)} run-*.wandb files; pass one of them")
        path = found[0]
    run = OfflineRun(path)
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        run.records[kind] += 1
        if kind == "run":
            r = record.run
            run.run_id, run.entity, run.project = r.run_id, r.entity, r.project
            run.group, run.job_type, run.name = r.run_group, r.job_type, r.display_name
            run.tags, run.resume = list(r.tags), r.resume
            for item in r.config.update:
                _apply(run.config, item)
            for item in r.summary.update:
                _apply(run.summary, item)
        elif kind == "config":
            for item in record.config.update:
                _apply(run.config, item)
            for item in record.config.remove:
                _remove(run.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _apply(run.summary, item)
            for item in record.summary.remove:
                _remove(run.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _apply(row, item)
            run.history.append(row)
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "metric":
            run.metrics[record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif kind == "artifact":
            run.artifacts.append(OfflineArtifact.from_record(record.artifact))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def find_run_files(root: str | Path) -> list[Path]:
    """Every offline run file below `root` (online runs' folders are named run-*)."""
    return sorted(Path(root).rglob("offline-run-*/run-*.wandb"))
