"""Run tracked jobs in a child process for tests/test_tracking.py.

    python tests/wandb_harness.py CONFIG.json fewstep   # fewstep.tracking.runs jobs on a fabricated cell
    python tests/wandb_harness.py CONFIG.json stock     # plain wandb.init(mode="offline"), the control

`fewstep` logs one score job twice (a rerun must replace the first), then a
generate job that raises (its run must end failed). `stock` is what a job
would do without fewstep.tracking.runs: the test shows its detectors catch it.
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


def study_of(config):
    """The `Study` of a validated config dict (conftest's helper, for this child process)."""
    from fewstep.core.study import Study

    return Study.of(config)


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


ANCHOR = "flux-dev/infusenet-aes/8"  # the demo's anchor: scoring CELL reads its images (LPIPS)
LOG_TEXT = "score job console output\n"


def run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """`python -m fewstep ARGS` in a clean environment whose HOME is `home`."""
    env = clean_env(home) | {"PYTHONPATH": str(WORKFLOW)}
    return subprocess.run(
        [sys.executable, "-m", "fewstep", *args], env=env, capture_output=True, text=True, timeout=120
    )


def fabricate_cell(config: dict, cell_id: str, rng: np.random.Generator) -> pd.DataFrame:
    """A cell's images and manifest, as the generate job would leave them."""
    from PIL import Image

    from fewstep.core.paths import Paths
    from fewstep.grid import Grid, image_keys

    grid = Grid(study_of(config))

    paths = Paths(grid.study)
    cell = grid.cell(cell_id)
    rows = []
    for index, item in enumerate(grid.items):
        image = paths.image(cell_id, item.id)
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
        rows.append(
            {
                **image_keys(cell, item),
                "image": str(image.relative_to(paths.cell_dir(cell_id))),
                "latency_s": 0.5 + index,
            }
        )
    frame = pd.DataFrame(rows)
    frame.to_parquet(paths.manifest(cell_id), index=False)
    return frame


def fabricate_markers(config: dict) -> None:
    """Prepared-model markers of the scoring models, as the prepare rule writes them."""
    from fewstep.core.paths import Paths
    from fewstep.registry.catalog import model_revision
    from fewstep.scoring.networks import SCORING_MODELS, scoring_models

    for name in scoring_models(study_of(config), config["scoring"]["metrics"]):
        marker = Paths(study_of(config)).model_marker(name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        spec = SCORING_MODELS.get(name)
        info = {
            "model": name,
            "weights": config["weights"],
            "repo_id": spec.repo_id if spec else "ByteDance/InfiniteYou",
            "revision": model_revision(study_of(config), name),
            "commit": None,
            "commits": {},
            "files": [{"path": "model.bin", "bytes": 3, "sha256": "a" * 64, "sha256_from": "hashed"}],
        }
        marker.write_text(json.dumps(info))


def fabricate_scores(config: dict) -> Path:
    """A score table for CELL, its images and the anchor's, as the score job would leave them."""
    from fewstep.core.paths import Paths

    paths, rng = Paths(study_of(config)), np.random.default_rng(0)
    fabricate_cell(config, ANCHOR, rng)
    frame = fabricate_cell(config, CELL, rng)
    frame["face_detected"] = frame.index != 0
    frame["id_sim"] = [np.nan if i == 0 else 0.25 * i for i in range(len(frame))]
    out = paths.scores(CELL)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    fabricate_markers(config)
    log = paths.log("score", CELL.rsplit("/", 1)[0])  # the score job's log (all the job's cells)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(LOG_TEXT)
    return out


def run_fewstep(config: dict) -> None:
    from fewstep.tracking import runs

    scores = fabricate_scores(config)
    for attempt in (1, 2):
        with runs.job_run(
            study_of(config), "score", CELL, extra={"attempt": attempt, "padding": PADDING}
        ) as run:
            run.log_scores(scores)
            print(json.dumps({"attempt": attempt, "run_id": run.wandb_run.id}), flush=True)
    try:
        with runs.job_run(study_of(config), "generate", CELL):
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
