"""Run tracked jobs in a child process for tests/test_tracking.py.

    python tests/wandb_harness.py CONFIG.json fewstep   # fewstep.tracking jobs on a fabricated cell
    python tests/wandb_harness.py CONFIG.json stock     # plain wandb.init(mode="offline"), the control

`fewstep` logs one score job twice (a rerun must replace the first), then a
generate job that raises (its run must end failed). `stock` is what a job
would do without fewstep.tracking: the test shows its detectors catch it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"
sys.path.insert(0, str(WORKFLOW))

CELL = "flux-schnell/infusenet-aes/2"
PADDING = "x" * 40_000  # makes the run record span two 32 KiB blocks of the run file


def _works(command: list[str]) -> bool:
    if not shutil.which(command[0]):
        return False
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


#: a network namespace without interfaces: nothing can leave the machine
UNSHARE = _works(["unshare", "--net", "true"])
#: syscall tracing of every process (wandb-core is a Go binary, out of reach of Python hooks)
STRACE = _works(["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", os.devnull, "true"])


def clean_env(home: Path) -> dict[str, str]:
    """This environment without WANDB_*, XDG_* or NETRC; HOME and TMPDIR at `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "XDG_")) and k != "NETRC"}
    return env | {"HOME": str(home), "TMPDIR": str(home), "PYTHONDONTWRITEBYTECODE": "1"}


def fabricate_scores(config: dict) -> Path:
    """A score table and images for CELL, as the score job would leave them."""
    from PIL import Image

    from fewstep.grid import Grid, image_keys
    from fewstep.paths import Paths

    grid, paths = Grid(config), Paths(config)
    cell = grid.cell(CELL)
    rng = np.random.default_rng(0)
    rows = []
    for index, item in enumerate(grid.items):
        image = paths.image(CELL, item.id)
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
        rows.append(
            {
                **image_keys(cell, item),
                "image": str(image.relative_to(paths.cell_dir(CELL))),
                "latency_s": 0.5 + index,
                "face_detected": index != 0,
                "id_sim": np.nan if index == 0 else 0.25 * index,
            }
        )
    out = paths.scores(CELL)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out, index=False)
    return out


def run_fewstep(config: dict) -> None:
    from fewstep import tracking

    scores = fabricate_scores(config)
    for attempt in (1, 2):
        with tracking.job_run(config, "score", CELL, extra={"attempt": attempt, "padding": PADDING}) as run:
            run.log_scores(scores)
    try:
        with tracking.job_run(config, "generate", CELL):
            raise RuntimeError("job failed")
    except RuntimeError:
        pass


def run_stock() -> None:
    import wandb

    run = wandb.init(project="control", mode="offline")
    run.log({"x": 1})  # logging is what makes wandb report telemetry to its server
    run.finish()


if __name__ == "__main__":
    config = json.loads(Path(sys.argv[1]).read_text())
    if sys.argv[2] == "fewstep":
        run_fewstep(config)
    else:
        run_stock()
