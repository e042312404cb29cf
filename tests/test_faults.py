"""Faults a run meets: a full disk under every job's entry point (tests/faults injects ENOSPC into
every file a process opens for writing below a folder, as a full disk does)."""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic_sweep as synth
import yaml

from fewstep import cli
from fewstep.core.config import validate
from fewstep.core.paths import Paths
from fewstep.jobs import generate
from tests.conftest import REPO, study_of

ANCHOR = "flux-dev/infusenet-aes/8"


@pytest.fixture(scope="module")
def sweep(embedded, tmp_path_factory) -> tuple[dict, Path]:
    """The tiny demo in its own folders (models shared), its embeddings copied, the anchor generated."""
    root = tmp_path_factory.mktemp("faults")
    config = copy.deepcopy(embedded)
    config.update(results_dir=str(root / "results"), reports_dir=str(root / "reports"))
    shutil.copytree(
        Paths(study_of(embedded)).root / "embeddings", Paths(study_of(config)).root / "embeddings"
    )
    generate.run(study_of(config), ANCHOR, progress=False)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def files(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def on_a_full_disk(command: list[str], full: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", FEWSTEP_FAULT=f"disk_full_under:{full.resolve()}")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "faults"), str(REPO / "workflow")])
    return subprocess.run(
        [sys.executable, "-m", "fewstep", *command], env=env, capture_output=True, text=True, timeout=600
    )


def assert_one_disk_full_line(result: subprocess.CompletedProcess, command: str, full: Path) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.fullmatch(
        rf"fewstep {command}: error: disk full while writing {re.escape(str(full.resolve()))}/\S+; "
        r"free space, then rerun \(finished work is kept\)",
        result.stderr.strip().splitlines()[-1],
    ), result.stderr[-3000:]


@pytest.mark.parametrize(
    "job",
    [
        ["embed-prompts", "--family", "flux", "--variant", "L256"],
        ["embed-identities", "--identity", "astronaut"],
        ["embed-references", "--family", "sd15", "--file", "plain", "--reference", "hubble"],
        ["generate", "--cell", "flux-schnell/infusenet-aes/1"],
        ["trajectory", "--cell", "flux-schnell/infusenet-aes/4"],
        ["score", "--cell", ANCHOR],
    ],
    ids=lambda job: job[0],
)
@pytest.mark.slow
def test_every_job_on_a_full_disk_says_so_in_one_line_and_leaves_its_files_as_they_were(sweep, job):
    """The embedding jobs' safetensors, the images and journal, the tables: each job stops with the
    one disk-full line (no traceback), and nothing under the results folder is new or changed."""
    config, path = sweep
    results = Paths(study_of(config)).root
    before = files(results)
    result = on_a_full_disk([job[0], "--config", str(path), *job[1:]], results)
    assert_one_disk_full_line(result, job[0], results)
    assert files(results) == before


def test_preparing_a_model_on_a_full_disk_leaves_no_ready_marker(embedded, tmp_path):
    config = copy.deepcopy(embedded)
    config["models_dir"] = str(tmp_path / "models")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    models = Path(config["models_dir"])
    result = on_a_full_disk(["prepare-model", "--config", str(path), "--model", "insightface"], models)
    assert_one_disk_full_line(result, "prepare-model", models)
    assert not Paths(study_of(config)).model_marker("insightface").exists()
    assert not list(models.rglob("*.tmp"))


@pytest.mark.slow
def test_aggregate_and_report_on_a_full_disk_say_so_in_one_line(tmp_path):
    from fewstep.analysis import aggregate

    config = validate(synth.raw_config(tmp_path))
    synth.write_scores(config, images=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    paths = Paths(study_of(config))
    result = on_a_full_disk(["aggregate", "--config", str(path)], paths.aggregate_dir)
    assert_one_disk_full_line(result, "aggregate", paths.aggregate_dir)
    assert not paths.aggregate_dir.exists() or not files(paths.aggregate_dir)
    summary = aggregate.run(study_of(config))
    result = on_a_full_disk(["report", "--config", str(path), "--summary", str(summary)], paths.report_dir)
    assert_one_disk_full_line(result, "report", paths.report_dir)
    assert not paths.report_index.exists()


def test_a_full_disk_is_recognised_in_the_errors_native_writers_raise():
    """safetensors, torch and pyarrow write outside Python's open and raise their own types; the
    OS error they name is enough for the one line."""

    class SafetensorError(Exception):
        pass

    native = SafetensorError("Error while serializing: No space left on device (os error 28)")
    assert str(cli.disk_full(native)) == (
        "disk full while writing an output file; free space, then rerun (finished work is kept)"
    )
    try:
        try:
            raise OSError(28, "No space left on device", "/r/x.parquet")
        except OSError as err:
            raise RuntimeError("write failed") from err
    except RuntimeError as err:
        assert "/r/x.parquet" in str(cli.disk_full(err))
    assert cli.disk_full(RuntimeError("CUDA error: an illegal memory access")) is None


# ------------------------------------------------------------------ deleted cell files


@pytest.mark.slow
def test_a_dry_run_names_the_deleted_files_of_a_finished_job_and_the_command(tmp_path):
    """Snakemake checks a generation job's record only: with the record there and a cell's image
    and another cell's manifest gone, a plain run would do nothing; the Snakefile says so in one line
    with the command that makes them again."""
    from fewstep.core.config import load
    from fewstep.grid import Grid
    from tests.conftest import snakemake

    demo = REPO / "config" / "demo.yaml"
    config = load([demo])
    grid = Grid(study_of(config))
    paths = Paths(grid.study)
    job = "flux-schnell/infusenet-aes"
    cells = grid.job(job)
    for cell in cells:  # a finished job, as far as files go
        for path in [paths.manifest(cell.id), *(paths.image(cell.id, i.id) for i in grid.items_of(cell))]:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(b"x")
    (tmp_path / paths.generation_record(job)).write_text("{}")
    quiet = snakemake(tmp_path, "-n", configfile=demo)
    assert quiet.returncode == 0 and "generated file" not in quiet.stderr
    image = paths.image(cells[0].id, grid.items_of(cells[0])[1].id)
    (tmp_path / image).unlink()
    (tmp_path / paths.manifest(cells[2].id)).unlink()
    result = snakemake(tmp_path, "-n", configfile=demo)
    hints = [line for line in result.stderr.splitlines() if line.startswith("fewstep:")]
    assert hints == [
        f"fewstep: 2 generated file(s) of finished jobs are gone ({paths.manifest(cells[2].id)}, {image}); "
        f"a plain rerun does not see it: `snakemake --forcerun {paths.generation_record(job)} --configfile "
        f"{demo}` makes exactly those again (the other images are kept)"
    ]
    (command,) = re.findall(r"`([^`]+)`", hints[0])
    forced = snakemake(tmp_path, "-n", *shlex.split(command)[1:])  # the hint's command, dry-run
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert re.search(
        r"rule generate:\n(.*\n)*?\s+wildcards: backbone=flux-schnell, adapter=infusenet-aes", forced.stdout
    )


def test_a_score_job_missing_its_manifest_or_an_image_says_how_to_make_them_again(sweep, tmp_path, capsys):
    """No FileNotFoundError: one line naming the file and the --forcerun that regenerates it."""
    config, _ = sweep
    config = copy.deepcopy(config)
    shutil.copytree(Paths(study_of(config)).root, tmp_path / "results" / config["sweep"])
    config["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    paths = Paths(study_of(config))
    record = paths.generation_record(ANCHOR.rsplit("/", 1)[0])
    fix = (
        f"rerun with `--forcerun {record}` added to your snakemake command (its cell's other images are kept)"
    )
    image = sorted(paths.cell_dir(ANCHOR).rglob("*.png"))[0]
    image.unlink()
    assert cli.main(["score", "--config", str(path), "--cell", ANCHOR]) == 1
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == f"fewstep score: error: generated image {image} is missing; {fix}"
    )
    paths.manifest(ANCHOR).unlink()
    assert cli.main(["score", "--config", str(path), "--cell", ANCHOR]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fewstep score: error: manifest {paths.manifest(ANCHOR)} of cell {ANCHOR} is missing; {fix}"
    )
