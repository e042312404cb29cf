"""Weights & Biases tracking: every generate, trajectory, score and aggregate job is one run.

A job wraps its work in `job_run` and logs through the `Run` it yields; a caller
passes only the job type, the cell id and any extra config::

    with tracking.job_run(study, "score", cell_id) as run:
        path = score.run(study, cell_id)
        run.log_scores(path)

Each run: project/entity from `wandb:` in the config, group = sweep name,
job_type = the stage, name = the cell id (the sweep name for the aggregate run),
config = the cell's parameters, package versions, config hash and git commit.

Mode (`wandb.mode`): `auto` is online when an API key is present
(WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a ~/.netrc entry for the W&B
host), offline otherwise. The config decides; the environment can only turn
tracking off (`WANDB_MODE=disabled`, wandb's own switch, which the unit tests
set). In `disabled` mode `Run` methods do nothing and wandb is never imported.

Every job writes below its own folder `<results>/<sweep>/wandb/<job_type>/<cell>/`:
the run files (`wandb/offline-run-*`), wandb's cache (its logs), its data
folder (staged tables, which `wandb sync` uploads later) and temporary files,
so parallel jobs never share a file and offline mode writes nothing outside the
results folder. wandb-core's Unix sockets go to `<results>/<sweep>/wandb/sock/`
(unique per process; a socket path must stay under 108 bytes, else wandb-core
falls back to /tmp). A rerun of a job replaces its run. The isolation is made for
one run per process (a Snakemake job): each run's wandb service is torn down
when it ends, but wandb's media temp folder lives where the process first
imported wandb.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from fewstep.core import provenance
from fewstep.core.errors import FewstepError
from fewstep.core.jobenv import config_option
from fewstep.core.paths import Paths
from fewstep.core.study import Study
from fewstep.grid import Grid
from fewstep.scoring.specs import BY_NAME, SPECS
from fewstep.tracking.content import (
    STEP_METRICS,
    sample_grid,
    scores_table,
    steps_charts,
    summarise,
    sweep_history,
)


class TrackingError(FewstepError, RuntimeError):
    """W&B tracking cannot do what was asked (e.g. sync without an API key)."""


# ---------------------------------------------------------------- mode


def api_key_present() -> bool:
    """True when wandb would find credentials for its host without a prompt (no network)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    from wandb.sdk.lib import urls
    from wandb.sdk.lib.wbauth import wbnetrc

    host = os.environ.get("WANDB_BASE_URL") or urls.DEFAULT_BASE_URL
    try:
        return bool(wbnetrc.read_netrc_auth(host=host))
    except Exception:  # a malformed ~/.netrc: wandb itself would fail to log in
        return False


def resolve_mode(settings: dict[str, Any]) -> str:
    """online, offline or disabled for the `wandb:` config section."""
    env_mode = os.environ.get("WANDB_MODE", "")
    if env_mode == "disabled":
        return "disabled"
    mode = settings["mode"]
    if env_mode and env_mode != mode:
        print(f"fewstep: WANDB_MODE={env_mode} ignored: wandb.mode in the config decides", file=sys.stderr)
    if mode == "auto":
        return "online" if api_key_present() else "offline"
    return mode


def job_environment(job_dir: Path, mode: str) -> dict[str, str]:
    """Environment that keeps one job's wandb files inside `job_dir`.

    WANDB_CONFIG_DIR stays the user's in online mode (it holds a self-hosted
    server's settings; wandb only reads it).
    """
    env = {
        "WANDB_MODE": mode,  # wandb reads it before init: offline also silences its telemetry
        "WANDB_DIR": str(job_dir),
        "WANDB_CACHE_DIR": str(job_dir / "cache"),
        "WANDB_DATA_DIR": str(job_dir / "data"),
        "WANDB_ARTIFACT_DIR": str(job_dir / "artifacts"),
    }
    if mode == "offline":
        env["WANDB_CONFIG_DIR"] = str(job_dir / "config")
    return env


@contextlib.contextmanager
def _job_environment(job_dir: Path, sockets: Path, settings: dict[str, Any]) -> Iterator[str]:
    """Point wandb's folders and temp files at `job_dir` for the block; yield the resolved mode.

    The mode is resolved inside: `auto` asks wandb for an API key, and importing
    wandb creates its media temp folder, which must land in the job's folder too.
    """
    keys = ("TMPDIR", *job_environment(job_dir, "offline"))
    saved, saved_tempdir = {key: os.environ.get(key) for key in keys}, tempfile.tempdir
    try:
        tmp = job_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(tmp)  # Python's temp files
        # wandb-core (Go) makes its Unix sockets in $TMPDIR, and in /tmp when that path
        # would pass 108 bytes: give it the sweep's short socket folder, relative if shorter.
        sockets.mkdir(parents=True, exist_ok=True)
        os.environ["TMPDIR"] = min(str(sockets), os.path.relpath(sockets), key=len)
        mode = resolve_mode(settings)
        for key, value in job_environment(job_dir, mode).items():
            if key.endswith("_DIR"):
                Path(value).mkdir(parents=True, exist_ok=True)
            os.environ[key] = value
        yield mode
    finally:
        tempfile.tempdir = saved_tempdir
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------- runs


def run_config(
    study: Study, job_type: str, cell_id: str | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    """The run's W&B config: what made the job's outputs."""
    prov = provenance.record(study, Grid.of(study).models)
    out: dict[str, Any] = {
        "sweep": study.sweep,
        "job_type": job_type,
        "weights": study.weights,
        "config_hash": prov["config_hash"],
        "git_commit": prov["git_commit"],
        "versions": prov["versions"],
        "models": prov["models"],  # hub repo, requested revision, resolved commit of each model
    }
    grid = Grid.of(study)
    if cell_id is not None:
        cell = grid.cell(cell_id)
        out |= {
            "cell_id": cell.id,
            "backbone": cell.backbone,
            "adapter": cell.adapter,
            "steps": cell.steps,
            "cell_hash": grid.cell_hash(cell),
            "cell": grid.cell_spec(cell),
            "items": {
                "count": len(grid.items_of(cell)),
                "identities": list(dict.fromkeys(item.identity for item in grid.items_of(cell))),
                "prompts": list(dict.fromkeys(item.prompt for item in grid.items_of(cell))),
                "seeds": list(study.seeds),
            },
        }
    else:
        out |= {"cells": [c.id for c in grid.cells], "sweep_config": study.to_dict()}
    return out | (extra or {})


class Run:
    """What a job logs to. With tracking disabled (`wandb_run` None) every method does nothing."""

    def __init__(self, study: Study, cell_id: str | None, mode: str = "disabled", wandb_run: Any = None):
        self.study, self.cell_id, self.mode, self.wandb_run = study, cell_id, mode, wandb_run
        self.paths = Paths(study)

    @property
    def enabled(self) -> bool:
        return self.wandb_run is not None

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.enabled:
            self.wandb_run.summary.update(metrics)

    def update_config(self, values: dict[str, Any]) -> None:
        if self.enabled:
            self.wandb_run.config.update(values, allow_val_change=True)

    def log(self, data: dict[str, Any]) -> None:
        """Log wandb objects (Image, Table, Html, charts) in one history step."""
        if self.enabled and data:
            self.wandb_run.log(data)

    # ---- lineage (fewstep.tracking.lineage builds the artifacts) -------------------
    def use(self, artifact: Any) -> None:
        """Mark a draft artifact as this run's input (W&B keeps one version per digest).

        wandb refuses `use_artifact` offline, yet `wandb sync` replays the record it
        would write (an artifact flagged `use_after_commit`, the input edge of the
        lineage graph): offline runs write that record through the same call.
        """
        if self.mode == "offline":
            self.wandb_run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
        else:
            self.wandb_run.use_artifact(artifact)

    def use_weights(self, models: list[str]) -> None:
        """Each prepared model as an input artifact (repo, revision, commit, file hashes)."""
        import tempfile

        from fewstep.tracking import lineage

        with tempfile.TemporaryDirectory() as staging:  # wandb copies the file when it is added
            for model in models:
                self.use(lineage.weights(self.study, model, Path(staging)))

    def log_table(self, key: str, frame: pd.DataFrame) -> None:
        """One DataFrame as a wandb.Table (e.g. a trajectory job's per-step rows)."""
        if self.enabled:
            import wandb

            self.log({key: wandb.Table(dataframe=frame)})

    # ---- what each stage logs -------------------------------------------
    def log_manifest(self, manifest_path: Path) -> None:
        """A generate job: timing and memory summaries, the device it ran on."""
        if not self.enabled:
            return
        from fewstep.tracking import lineage

        frame = pd.read_parquet(manifest_path)
        self.summary(summarise(frame))
        first = frame.iloc[0] if len(frame) else {}
        self.update_config(
            {k: str(first[k]) for k in ("device", "device_name", "dtype", "peak_mem_kind") if k in first}
        )
        cell = Grid.of(self.study).cell(self.cell_id)
        self.use_weights(Grid.of(self.study).generation_models(cell))
        for artifact in lineage.embeddings(self.study, cell):
            self.use(artifact)
        self.wandb_run.log_artifact(lineage.images(self.study, self.cell_id, manifest_path))

    def log_trajectory(self, trajectory_path: Path) -> None:
        """A trajectory job: per-step means as history (one point per step), the per-(item, step) table."""
        if not self.enabled:
            return
        frame = pd.read_parquet(trajectory_path)
        grid = Grid(self.study)
        cell = grid.cell(self.cell_id)
        scored = [c for c in scored_columns(grid.trajectory_metrics(cell)) if c in frame]
        columns = [c for c in TRAJECTORY_CURVES if c in frame]
        for step, means in frame.groupby("step")[columns].mean().iterrows():
            values = {f"trajectory/{k}": float(v) for k, v in means.items() if pd.notna(v)}
            self.wandb_run.log({"trajectory/step": int(step), **values})
        self.log_table("trajectory", frame.drop(columns=["image"], errors="ignore"))
        last = frame[frame["step"] == frame["step"].max()]
        final = {f"final_{c}": float(last[c].astype(float).mean()) for c in scored if last[c].notna().any()}
        self.summary({"items": int(frame["item_id"].nunique()), **final})
        from fewstep.tracking import lineage

        grid = Grid.of(self.study)
        cell = grid.cell(self.cell_id)
        self.use_weights([*grid.generation_models(cell), *grid.trajectory_score_models(cell)])
        for artifact in lineage.embeddings(self.study, cell):
            self.use(artifact)
        self.wandb_run.log_artifact(lineage.table(self.study, "trajectory", self.cell_id, trajectory_path))

    def log_scores(self, scores_path: Path) -> None:
        """A score job: metric summaries, a sample image grid, the per-image table."""
        if not self.enabled:
            return
        import wandb

        frame = pd.read_parquet(scores_path)
        self.summary(summarise(frame))
        settings = self.study.wandb
        cell_dir = self.paths.cell_dir(self.cell_id)
        grid = sample_grid(
            frame, cell_dir, settings.grid_identities, settings.grid_columns, settings.thumbnail
        )
        self.log(
            {
                "samples": wandb.Image(grid, caption=f"{self.cell_id} ({self.study.weights} weights)"),
                "scores": scores_table(frame, cell_dir, settings.thumbnail),
            }
        )
        from fewstep.tracking import lineage

        grid = Grid.of(self.study)
        cell = grid.cell(self.cell_id)
        self.use_weights(grid.score_models(cell))
        anchor = grid.score_anchor(cell)
        for cell_id in [self.cell_id] + ([anchor.id] if anchor else []):
            self.use(lineage.images(self.study, cell_id))
        self.wandb_run.log_artifact(lineage.table(self.study, "scores", self.cell_id, scores_path))

    def log_sweep(self) -> dict[str, list[str]]:
        """The aggregate run: every CSV table, every PNG figure, metric-vs-steps charts, the report."""
        if not self.enabled:
            return {}
        import wandb

        paths = self.paths
        logged: dict[str, list[str]] = {"tables": [], "figures": [], "charts": [], "curves": [], "report": []}
        data: dict[str, Any] = {}
        for path in sorted(paths.aggregate_dir.rglob("*.csv")):
            key = f"tables/{path.relative_to(paths.aggregate_dir).with_suffix('').as_posix()}"
            self.log_table(key, pd.read_csv(path))
            logged["tables"].append(key)
        for path in sorted(paths.report_dir.rglob("*.png")):
            key = path.relative_to(paths.report_dir).with_suffix("").as_posix()  # figures/...
            data[key] = wandb.Image(str(path))
            logged["figures"].append(key)
        if paths.summary.exists():
            for key, chart in steps_charts(pd.read_csv(paths.summary)).items():
                data[key] = chart
                logged["charts"].append(key)
        if paths.report_index.exists():
            data["report"] = wandb.Html(paths.report_index.read_text(encoding="utf-8"))
            logged["report"].append("report")
        self.log(data)
        for row in sweep_history(pd.read_csv(paths.summary)) if paths.summary.exists() else ():
            self.wandb_run.log(row)
            logged["curves"] += sorted(set(row) - {STEP_METRICS["aggregate"]} - set(logged["curves"]))
        from fewstep.tracking import lineage

        for cell in Grid.of(self.study).cells:
            self.use(lineage.table(self.study, "scores", cell.id, paths.scores(cell.id)))
        self.wandb_run.log_artifact(lineage.report(self.study))
        per_image = pd.read_parquet(paths.per_image) if paths.per_image.exists() else None
        self.summary(
            {
                "cells": len(Grid.of(self.study).cells),
                "images": 0 if per_image is None else len(per_image),
                **{f"logged_{kind}": len(keys) for kind, keys in logged.items()},
            }
        )
        return logged


def scored_columns(metrics: list[str]) -> list[str]:
    """The quality columns `metrics` write (`fewstep.scoring.specs`), in the specs' order."""
    return [c.name for m in metrics for c in BY_NAME[m].columns if c.kind == "quality"]


#: per-step columns of a trajectory table drawn against the step: the noise level, the scores of
#: the x0 images (any metric that can score them) and the probes
TRAJECTORY_CURVES = (
    "sigma",
    *scored_columns([spec.name for spec in SPECS if spec.compares == "reference" and not spec.anchor_paired]),
    "relative_double",
    "relative_single",
    "velocity_rms",
)
#: the rule whose log file a job type's run attaches, where it is not the job type itself
LOG_RULES = {"aggregate": "wandb_aggregate"}
#: job types whose one log serves every cell of a generation job (a backbone x adapter)
PER_JOB_LOGS = {"generate", "score"}


def run_id(study: Study, job_type: str, cell_id: str | None = None) -> str:
    """A stable W&B run id: the job type and a hash of the sweep, job type and cell hash.

    The same job of the same cell always logs to the same run (`resume="allow"`),
    so a rerun after `wandb sync` updates that run instead of adding a second one;
    a cell whose images would change (a new cell hash) is a new run. The aggregate
    run hashes every cell's hash.
    """
    from fewstep.core.config import fingerprint

    grid = Grid.of(study)
    cells = [grid.cell(cell_id)] if cell_id is not None else grid.cells
    key = {"sweep": study.sweep, "job_type": job_type, "cells": [grid.cell_hash(c) for c in cells]}
    return f"{job_type}-{fingerprint(key)}"


def define_metrics(wandb_run: Any, job_type: str) -> None:
    """Trajectory metrics plot against the denoising step, sweep metrics against steps."""
    step = STEP_METRICS.get(job_type)
    if step is not None:
        wandb_run.define_metric(step)
        wandb_run.define_metric(f"{step.split('/')[0]}/*", step_metric=step)


def attach_log(wandb_run: Any, study: Study, job_type: str, cell_id: str | None) -> None:
    """The job's console log (its rule's log file) as a run file, read when the run is synced."""
    paths = Paths(study)
    name = cell_id or ""
    if cell_id is not None and job_type in PER_JOB_LOGS:
        name = Grid.of(study).cell(cell_id).job
    log = paths.log(LOG_RULES.get(job_type, job_type), name)
    if log.exists():
        wandb_run.save(str(log.resolve()), base_path=str(paths.root.resolve()), policy="end")


@contextlib.contextmanager
def job_run(
    study: Study,
    job_type: str,
    cell_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[Run]:
    """One W&B run around one job; an exception inside marks the run failed (exit code 1)."""
    settings = study.wandb
    if settings.mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        yield Run(study, cell_id)
        return
    paths = Paths(study)
    job_dir = paths.wandb_job(job_type, cell_id or study.sweep).resolve()
    # A rerun replaces the job's earlier run. tmp/ stays: wandb keeps a media temp
    # folder there for the life of the process that first imported it.
    for old in job_dir.glob("*") if job_dir.exists() else ():
        if old.is_dir() and old.name != "tmp":
            shutil.rmtree(old)
    with _job_environment(job_dir, paths.wandb_sockets.resolve(), settings) as mode:
        import wandb

        wandb_run = wandb.init(
            id=run_id(study, job_type, cell_id),
            resume="allow",
            project=settings.project,
            entity=settings.entity,
            group=study.sweep,
            job_type=job_type,
            name=cell_id or study.sweep,
            tags=[f"weights-{study.weights}"],
            config=run_config(study, job_type, cell_id, extra),
            dir=job_dir,
            mode=mode,
            settings=wandb.Settings(
                init_timeout=settings.init_timeout,
                x_service_wait=settings.init_timeout,
                console="off",
            ),
        )
        define_metrics(wandb_run, job_type)
        attach_log(wandb_run, study, job_type, cell_id)
        try:
            yield Run(study, cell_id, mode, wandb_run)
        except BaseException:
            wandb_run.finish(exit_code=1)
            raise
        else:
            wandb_run.finish()
        finally:
            wandb.teardown()  # the next run in this process starts a service in its own folder


def run_record(run: Run, logged: dict[str, list[str]]) -> dict[str, Any]:
    """Where a run went and what it logged (written next to the results)."""
    record: dict[str, Any] = {"mode": run.mode, "logged": logged}
    if run.enabled:
        w = run.wandb_run
        record |= {
            "run_id": w.id,
            "project": w.project,
            "entity": w.entity,
            "group": w.group,
            "job_type": w.job_type,
            "name": w.name,
            "run_dir": str(Path(w.dir).parent),
        }
    return record


# ---------------------------------------------------------------- sync


def sync(study: Study, dry_run: bool = False) -> list[Path]:
    """`wandb sync` every offline run of the sweep not yet synced; returns their folders."""
    from fewstep.tracking.wandb_reader import find_run_files

    root = Paths(study).wandb_root.resolve()
    run_dirs = sorted(
        {p.parent for p in find_run_files(root) if not p.with_name(p.name + ".synced").exists()}
    )
    if not run_dirs:
        print(f"no unsynced offline W&B runs under {root}")
        return []
    if not dry_run and not api_key_present():
        again = f"`fewstep wandb-sync {config_option()}`"
        raise TrackingError(f"no W&B API key: set WANDB_API_KEY or run `wandb login`, then rerun {again}")
    sync_dir = root / "sync"
    sync_dir.mkdir(parents=True, exist_ok=True)
    # wandb-core writes its port file (port_file.txt) and `wandb/` into the working directory
    # and its sockets into $TMPDIR: all of them go to the sweep's wandb folder, never the checkout.
    sockets = Paths(study).wandb_sockets.resolve()
    sockets.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        WANDB_DIR=str(sync_dir),
        WANDB_CACHE_DIR=str(sync_dir / "cache"),
        WANDB_DATA_DIR=str(sync_dir / "data"),
        TMPDIR=str(sockets),
    )
    env.pop("WANDB_MODE", None)
    command = [
        sys.executable,
        "-m",
        "wandb",
        "sync",
        *(["--dry-run"] if dry_run else []),
        *map(str, run_dirs),
    ]
    result = subprocess.run(command, env=env, cwd=sync_dir, stdin=subprocess.DEVNULL, check=False)
    if result.returncode:
        raise TrackingError(f"`wandb sync` failed (exit {result.returncode}); see its output above")
    return run_dirs
