"""What a rerun needs to hear: Snakemake's lock is still there, or a finished job's files are gone.

Snakemake locks its working directory while it runs (`.snakemake/locks`) and removes the
lock when it ends; a SIGKILL, an OOM kill or a power loss leaves it behind, and the next
run stops with "Directory cannot be locked". Everything finished is kept either way
(generation resumes from its journal); only the lock has to go.

A generation job's output is its record; Snakemake does not check the cells' images and
manifests, so a deleted one goes unnoticed by a plain rerun. The Snakefile names them, with
the command that makes exactly those again.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any


def unlock_command(configfiles: list[str | Path]) -> str:
    """The exact command that removes a stale lock for this run's configuration."""
    files = " ".join(shlex.quote(str(f)) for f in configfiles)
    return "snakemake --unlock" + (f" --configfile {files}" if files else "")


def forcerun_command(targets: list[str | Path], configfiles: list[str | Path]) -> str:
    """The command that runs the jobs of `targets` (and what depends on them) again."""
    files = " ".join(shlex.quote(str(f)) for f in configfiles)
    forced = " ".join(shlex.quote(str(t)) for t in targets)
    return f"snakemake --forcerun {forced}" + (f" --configfile {files}" if files else "")


def missing_cell_files(grid: Any, paths: Any) -> dict[Path, list[Path]]:
    """Record of each finished generation job -> its cells' manifests and images that are gone
    (`grid`: a `fewstep.grid.Grid`, `paths`: its `Paths`; stat calls only, no file is read)."""
    missing = {}
    for job, cells in grid.jobs.items():
        record = paths.generation_record(job)
        if not record.exists():
            continue
        files = [paths.manifest(cell.id) for cell in cells]
        files += [paths.image(cell.id, item.id) for cell in cells for item in grid.items_of(cell)]
        gone = [file for file in files if not file.exists()]
        if gone:
            missing[record] = gone
    return missing


def missing_files_hint(missing: dict[Path, list[Path]], configfiles: list[str | Path]) -> str | None:
    """One line naming the generated files that are gone and the command that makes them again."""
    if not missing:
        return None
    gone = [file for files in missing.values() for file in files]
    shown = ", ".join(map(str, gone[:3])) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
    return (
        f"fewstep: {len(gone)} generated file(s) of finished jobs are gone ({shown}); a plain rerun "
        f"does not see it: `{forcerun_command(list(missing), configfiles)}` makes exactly those again "
        "(the other images are kept)"
    )


def stale_lock_hint(workdir: str | Path, configfiles: list[str | Path]) -> str | None:
    """One line when `workdir` holds a Snakemake lock (None when it holds none)."""
    locks = Path(workdir) / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return None
    return (
        f"fewstep: {locks} holds a lock; unless another Snakemake is running here, it was left by a "
        f"killed run: `{unlock_command(configfiles)}`, then rerun (finished work is kept)"
    )
