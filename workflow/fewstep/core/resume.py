"""What a rerun after a kill needs to hear: Snakemake's lock is still there.

Snakemake locks its working directory while it runs (`.snakemake/locks`) and removes the
lock when it ends; a SIGKILL, an OOM kill or a power loss leaves it behind, and the next
run stops with "Directory cannot be locked". Everything finished is kept either way
(generation resumes from its journal); only the lock has to go.
"""

from __future__ import annotations

import shlex
from pathlib import Path


def unlock_command(configfiles: list[str | Path]) -> str:
    """The exact command that removes a stale lock for this run's configuration."""
    files = " ".join(shlex.quote(str(f)) for f in configfiles)
    return "snakemake --unlock" + (f" --configfile {files}" if files else "")


def stale_lock_hint(workdir: str | Path, configfiles: list[str | Path]) -> str | None:
    """One line when `workdir` holds a Snakemake lock (None when it holds none)."""
    locks = Path(workdir) / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return None
    return (
        f"fewstep: {locks} holds a lock; unless another Snakemake is running here, it was left by a "
        f"killed run: `{unlock_command(configfiles)}`, then rerun (finished work is kept)"
    )
