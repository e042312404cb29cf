"""One GPU card per job on a workstation, through locks the kernel releases.

Snakemake's `--resources gpu=N` caps how many GPU jobs run at once but does not
say which card each one uses, and it sets no CUDA_VISIBLE_DEVICES. A GPU command
calls `claim()` before torch initialises CUDA: it takes an exclusive `flock` on
one per-card lock file and exports CUDA_VISIBLE_DEVICES to that card, so two jobs
never share a card. The lock lives as long as the process: however the job ends,
SIGKILL included, the kernel drops it and the card is free for the next job.

No locking where someone else already decided: CPU-only jobs, jobs inside a
Slurm allocation (Slurm gives out the cards) and jobs that start with
CUDA_VISIBLE_DEVICES set (a scheduler or the user chose).

A GPU job spends most of its start importing torch, diffusers and transformers (10-15 s on an
H100 host, against well under a second for the CUDA context and its random full-size modules), so
`warm_imports` runs before `claim`: with more GPU jobs than cards in flight (the workstation
profile's `gpu: 3` a card), the next jobs import while the current one computes, and one takes the
card the moment it is freed.

Cards: 0..N-1 for `$FEWSTEP_GPUS=N` (how tests simulate cards), else `nvidia-smi`'s.
Lock files: `$FEWSTEP_GPU_LOCK_DIR`, else `<tmp>/fewstep-gpu-locks` (machine-wide,
so separate Snakemake runs on one machine share the cards too).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fewstep.core.errors import ConfigError

ENV_GPUS = "FEWSTEP_GPUS"
ENV_LOCK_DIR = "FEWSTEP_GPU_LOCK_DIR"
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
#: set inside a Slurm job; Slurm assigns cards itself (--gpus) and sets CUDA_VISIBLE_DEVICES
SCHEDULER_VARS = ("SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")

_held: list[IO[str]] = []  # open lock files: the claim lasts as long as the process
_taken_at: list[float] = []  # when this process took its card (time.monotonic)


@dataclass(frozen=True)
class Claim:
    """The card a job runs on (None: no card taken here) and why."""

    card: str | None
    reason: str

    def __str__(self) -> str:
        return self.reason


def cards(env: MutableMapping[str, str] = os.environ) -> list[str]:
    """Card ids of this machine: 0..N-1 for $FEWSTEP_GPUS=N, else nvidia-smi's, else none."""
    value = env.get(ENV_GPUS, "").strip()
    if value:
        if not value.isdigit():
            raise ConfigError(f"{ENV_GPUS}={value!r}: give the number of GPU cards, e.g. {ENV_GPUS}=4")
        return [str(i) for i in range(int(value))]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip().isdigit()]


def lock_dir(env: MutableMapping[str, str] = os.environ) -> Path:
    """The folder of per-card lock files, created world-writable (sticky) if missing."""
    folder = Path(env.get(ENV_LOCK_DIR) or Path(tempfile.gettempdir()) / "fewstep-gpu-locks")
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        if ENV_LOCK_DIR not in env:
            os.chmod(folder, 0o1777)
    return folder


def holder(path: Path) -> str:
    """What the lock file says about the process holding it (pid, host, time)."""
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _try_lock(path: Path) -> IO[str] | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(PermissionError):  # not ours: already shared by its creator
        os.fchmod(fd, 0o666)  # other users' jobs lock the same card file
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n")
    handle.flush()
    return handle


def claim(device: str, env: MutableMapping[str, str] = os.environ, poll_s: float = 0.1) -> Claim:
    """Take a free card for this process (waiting while all are held) and export it.

    `device` is the config's device (cpu, cuda, auto). On success `env` gains
    CUDA_VISIBLE_DEVICES=<card> and CUDA_DEVICE_ORDER=PCI_BUS_ID (so the number
    means the same card as in nvidia-smi). Call it before torch touches CUDA.
    """
    if device == "cpu":
        return Claim(None, "CPU job: no GPU card taken")
    scheduler = [name for name in SCHEDULER_VARS if name in env]
    if scheduler:
        visible = env.get("CUDA_VISIBLE_DEVICES", "none")
        return Claim(None, f"cards assigned by Slurm ({scheduler[0]} set): CUDA_VISIBLE_DEVICES={visible}")
    if "CUDA_VISIBLE_DEVICES" in env:
        return Claim(None, f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} already set: kept, no lock")
    ids = cards(env)
    if not ids:
        return Claim(None, f"no GPU card found (nvidia-smi; or set {ENV_GPUS}=N): no lock")
    folder = lock_dir(env)
    started = time.monotonic()
    waiting = False
    while True:
        for card in ids:
            path = folder / f"gpu{card}.lock"
            handle = _try_lock(path)
            if handle is not None:
                _held.append(handle)
                _taken_at[:] = [time.monotonic()]
                env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
                env["CUDA_VISIBLE_DEVICES"] = card
                waited = f" after waiting {time.monotonic() - started:.1f} s" if waiting else ""
                return Claim(card, f"GPU card {card} of {','.join(ids)} (lock {path}){waited}")
        if not waiting:
            busy = "; ".join(f"card {c}: {holder(folder / f'gpu{c}.lock')}" for c in ids)
            print(f"fewstep: waiting for a free GPU card, all held ({busy})", file=sys.stderr, flush=True)
            waiting = True
        time.sleep(poll_s)


def warm_imports() -> float | None:
    """Import the model libraries every GPU job loads (torch, transformers, diffusers' model
    classes: most of a job's start) before a card is taken; the seconds it took, or None where
    it was left to after the claim. The job's own modules (about 1 s) come after.

    diffusers asks `torch.cuda.is_available()` at import, which starts the CUDA driver (`cuInit`
    reads CUDA_VISIBLE_DEVICES once, so a later `claim` would come too late). Here torch answers
    through NVML instead (PYTORCH_NVML_BASED_CUDA_CHECK, only while importing); where NVML cannot
    count the cards torch would fall back to `cuInit`, so nothing is imported early."""
    import torch

    count_through_nvml = getattr(torch.cuda, "_device_count_nvml", None)  # torch's own NVML count
    if count_through_nvml is None or count_through_nvml() < 0:
        return None
    started = time.monotonic()
    previous = os.environ.get(NVML_CHECK)
    os.environ[NVML_CHECK] = "1"
    try:
        import diffusers.models.autoencoders  # noqa: F401
        import diffusers.models.controlnets  # noqa: F401
        import diffusers.models.transformers  # noqa: F401
        import diffusers.models.unets  # noqa: F401
        import transformers  # noqa: F401
    finally:
        if previous is None:
            os.environ.pop(NVML_CHECK)
        else:
            os.environ[NVML_CHECK] = previous
    return time.monotonic() - started


def release() -> None:
    """Drop every card this process holds (process exit does the same)."""
    while _held:
        _held.pop().close()


def release_when_done(command: str) -> bool:
    """Hand the card on once a job's GPU work is done, before work that needs none (its W&B runs):
    compiled graphs dropped, CUDA's cached memory returned; kept (False) where memory stays reserved.

    The CUDA context itself (a few hundred MiB) lives until the process ends."""
    if not _held:
        return False
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        import gc

        if "torch._dynamo" in sys.modules:
            torch._dynamo.reset()
        gc.collect()
        torch.cuda.synchronize()
        getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)()  # cuBLAS keeps a workspace
        torch.cuda.empty_cache()
        if torch.cuda.memory_reserved() > 0:
            return False
    held_s = time.monotonic() - _taken_at[0]
    release()
    print(f"fewstep {command}: GPU card released after {held_s:.1f} s on it", file=sys.stderr, flush=True)
    return True
