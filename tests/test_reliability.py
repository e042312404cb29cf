"""Reliability: resume without loss after SIGKILL, determinism, provenance, clear errors."""

from __future__ import annotations

import copy
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fewstep import cli
from fewstep.analysis import aggregate
from fewstep.core.paths import Paths
from fewstep.grid import Grid
from fewstep.jobs import generate, precompute
from tests.conftest import REPO, snakemake, study_of

CELL = "flux-dev/infusenet-aes/8"


def sweep(config: dict, root: Path, seeds: int = 12) -> tuple[dict, Path]:
    """The tiny demo with more seeds, its own results folder, embeddings ready; and its YAML."""
    config = copy.deepcopy(config)
    config.update(results_dir=str(root / "results"), reports_dir=str(root / "reports"))
    config["seeds"] = list(range(seeds))
    precompute.embed_prompts(study_of(config))
    precompute.embed_identities(study_of(config))
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def job(command: str, config_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "workflow"), WANDB_MODE="disabled")
    return subprocess.Popen(
        [sys.executable, "-m", "fewstep", command, "--config", str(config_path), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def pixels(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        return f"{image.mode}{image.size}".encode() + image.tobytes()


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_sigkilled_generation_resumes_and_matches_an_uninterrupted_run(tiny_config, tmp_path):
    config, path = sweep(tiny_config, tmp_path / "killed")
    paths = Paths(study_of(config))
    journal = paths.journal(CELL)
    # killed twice, at different moments of the loop, then run to the end
    for after in (3, 17):
        kill_when(job("generate", path, "--cell", CELL), lambda after=after: lines(journal) >= after)
    done_before = lines(journal)
    assert 17 <= done_before < 48
    finish = job("generate", path, "--cell", CELL)
    assert finish.wait() == 0, finish.stderr.read()
    manifest = pd.read_parquet(paths.manifest(CELL))
    assert len(manifest) == 48 and manifest["item_id"].is_unique
    assert list(manifest["item_id"]) == [i.id for i in Grid(study_of(config)).items]
    # the images finished before the kills were kept, not made again
    kept = {json.loads(line)["item_id"]: json.loads(line) for line in journal.read_text().splitlines()[:17]}
    rows = manifest.set_index("item_id")
    assert all(rows.loc[item, "generated_at"] == row["generated_at"] for item, row in kept.items())
    assert lines(journal) == 48  # every image recorded exactly once: none was made twice
    assert not list(paths.cell_dir(CELL).rglob("*.tmp"))  # nothing half-written
    # and every image is bit-identical to an uninterrupted run's (pixels: the PNG's provenance
    # chunk names the git commit, which says -dirty if the checkout changes during the test)
    clean, _ = sweep(tiny_config, tmp_path / "clean")
    generate.run(study_of(clean), CELL, progress=False)
    for item in rows.index:
        assert pixels(paths.image(CELL, item)) == pixels(Paths(study_of(clean)).image(CELL, item)), item


def test_a_killed_writer_leaves_no_half_file_and_no_torn_journal(tiny_config, tmp_path):
    config, _ = sweep(tiny_config, tmp_path, seeds=1)
    paths = Paths(study_of(config))
    cell = "flux-schnell/infusenet-aes/1"
    generate.run(study_of(config), cell, progress=False)
    # what a SIGKILL in the middle of writing leaves: a temporary and half a journal line
    stale = paths.image(cell, "astronaut/portrait/s0").with_name(".s0.png.abc123.tmp")
    stale.write_bytes(b"\x89PNG half")
    with open(paths.journal(cell), "a") as handle:
        handle.write('{"item_id": "astronaut/port')
    os.remove(paths.image(cell, "group-t1/portrait/s0"))  # one image lost
    manifest = pd.read_parquet(generate.run(study_of(config), cell, progress=False))
    assert not stale.exists()
    assert manifest["item_id"].is_unique and len(manifest) == 4
    records = [json.loads(line) for line in paths.journal(cell).read_text().splitlines()]
    assert len(records) == 5 and records[-1]["item_id"] == "group-t1/portrait/s0"  # only the lost one redone


@pytest.mark.slow
def test_a_killed_score_job_leaves_no_table_and_reruns(tiny_config, tmp_path):
    config, path = sweep(tiny_config, tmp_path, seeds=4)
    paths = Paths(study_of(config))
    for cell in (CELL,):
        generate.run(study_of(config), cell, progress=False)
    score = job("score", path, "--cell", CELL)
    kill_when(score, lambda: time.sleep(4) is None)  # models loading or scoring: any moment
    assert not paths.scores(CELL).exists()
    assert not list(paths.scores(CELL).parent.glob("*.tmp")) if paths.scores(CELL).parent.exists() else True
    rerun = job("score", path, "--cell", CELL)
    assert rerun.wait() == 0, rerun.stderr.read()
    assert len(pd.read_parquet(paths.scores(CELL))) == 16


@pytest.mark.slow
def test_same_config_and_seed_give_bit_identical_images_from_scratch(tiny_root, tmp_path):
    """Two sweeps that share nothing, tiny models built twice: the same bytes."""
    from fewstep.core.config import validate
    from fewstep.jobs.prepare import prepare_model
    from tests.conftest import demo_yaml

    shas = []
    for name in ("one", "two"):
        raw = demo_yaml()
        raw.update(
            results_dir=str(tmp_path / name / "results"),
            models_dir=str(tmp_path / name / "models"),
            reports_dir=str(tmp_path / name / "reports"),
        )
        config = validate(raw)
        for model in Grid(study_of(config)).models:
            prepare_model(study_of(config), model)
        precompute.embed_prompts(study_of(config))
        precompute.embed_identities(study_of(config))
        manifest = pd.read_parquet(
            generate.run(study_of(config), "flux-schnell/infusenet-aes/2", progress=False)
        )
        shas.append(list(manifest["sha256"]))
    assert shas[0] == shas[1]
    assert set(manifest["rng"]) == {"torch.Generator(cpu).manual_seed(seed), noise drawn in float32"}
    assert set(manifest["device"]) == {"cpu"} and set(manifest["dtype"]) == {"float32"}


def test_images_and_tables_carry_their_provenance(demo_run):
    from PIL import Image

    from fewstep.core.config import config_hash, load

    cwd = Path.cwd()
    os.chdir(demo_run)
    try:
        config = load([REPO / "config" / "demo.yaml"])
    finally:
        os.chdir(cwd)
    results = demo_run / "results" / "demo"
    config_hash = config_hash(config)
    image = next((results / "cells").rglob("*.png"))
    with Image.open(image) as png:
        meta = json.loads(png.text["fewstep"])
    assert meta["config_hash"] == config_hash and meta["cell"] in str(image.relative_to(results))
    assert {"torch", "diffusers", "fewstep"} <= set(meta["versions"]) and meta["git_commit"]
    tables = [
        *(results / "cells").rglob("manifest.parquet"),
        *(results / "scores").rglob("*.parquet"),
        *(results / "trajectories").rglob("*.parquet"),
        *(results / "aggregate").glob("*.csv"),
        results / "aggregate" / "per_image.parquet",
    ]
    grid = Grid(study_of(config))
    # a manifest and a score table per cell, the trajectories, the aggregate tables, per_image
    cells, trajectories = len(grid.cells), len(grid.trajectory_cells)
    assert len(tables) == cells + cells + trajectories + len(aggregate.TABLES) + 1
    for table in tables:
        frame = pd.read_parquet(table) if table.suffix == ".parquet" else pd.read_csv(table)
        stamped = {"weights", "config_hash", "git_commit", "versions", "model_commits"}
        assert stamped <= set(frame.columns), table
        if len(frame):
            assert set(frame["weights"]) == {"tiny"}, table  # demo numbers never pass for results
            assert set(frame["config_hash"]) == {config_hash}, table
            assert "torch" in json.loads(frame["versions"].iloc[0]), table
            # each model that made the table, by its resolved hub commit (none: tiny weights): a cell's
            # own models (its scores: and the scoring networks), the sweep's for the sweep tables
            commits = json.loads(frame["model_commits"].iloc[0])
            assert set(commits.values()) == {None}, table
            made = grid.models  # the aggregate CSVs
            if table.suffix == ".parquet":  # per-image rows: a manifest's, a trajectory's, scores'
                cell = grid.cell(frame["cell_id"].iloc[0])
                scored = "scores" in table.parts or table.name == "per_image.parquet"
                made = grid.cell_models(cell) + (grid.score_models(cell) if scored else [])
                if "trajectories" in table.parts:  # its x0 images scored by the cell's trajectory metrics
                    made += grid.trajectory_score_models(cell)
            assert set(commits) == set(made), table
    sd = pd.read_parquet(results / "cells" / "sd15" / "sd-style" / "1" / "manifest.parquet")
    assert "insightface" not in json.loads(sd["model_commits"].iloc[0])  # an SD cell uses no face model


def test_changing_one_parameter_reruns_only_the_affected_cells_and_descendants(demo_run, tmp_path):
    changed = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    changed["backbones"]["flux-schnell"]["steps"] = [1, 2, 4]
    changed["adapters"]["infusenet-aes"]["conditioning_scale"] = 0.9  # every cell
    changed["backbones"]["flux-dev"]["guidance"] = 4.0  # dev cells
    configfile = tmp_path / "changed.yaml"
    configfile.write_text(yaml.safe_dump(changed))
    assert "Nothing to be done" in snakemake(demo_run, "-n", configfile=REPO / "config" / "demo.yaml").stdout
    only_dev = copy.deepcopy(changed)
    only_dev["adapters"]["infusenet-aes"]["conditioning_scale"] = 1.0
    configfile.write_text(yaml.safe_dump(only_dev))
    result = snakemake(demo_run, "-n", "--quiet", "rules", configfile=configfile)
    assert result.returncode == 0, result.stderr
    counts = {
        parts[0]: int(parts[1])
        for parts in map(str.split, result.stdout.splitlines())
        if len(parts) == 2 and parts[1].isdigit()
    }
    # the dev generation job (its 4 cells), its score job, the schnell, Kontext and klein score jobs
    # (their LPIPS compares with the dev-8 anchor), the dev trajectory, and the sweep-level tables; no
    # model or embedding job
    assert counts == {
        "generate": 1,
        "score": 4,
        "trajectory": 1,
        "aggregate": 1,
        "report": 1,
        "wandb_aggregate": 1,
        "all": 1,
        "total": 10,
    }


# ----------------------------------------------------------------------------- bad input


def run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    code = cli.main(list(args))
    errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    return code, errors


def write(tmp_path: Path, config: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return str(path)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["identities"].append(dict(c["identities"][0])), "identities: duplicated id 'astronaut'"),
        (lambda c: c.update(prompts=[]), "config prompts: [] should be non-empty"),
        (
            lambda c: c["backbones"]["flux-dev"].update(steps=[0]),
            "backbones.flux-dev.steps[0]: 0 is less than",
        ),
        (
            lambda c: c["backbones"]["flux-dev"].update(steps=[-4]),
            "backbones.flux-dev.steps[0]: -4 is less than",
        ),
        (lambda c: c["cells"][0]["backbones"].append("sd21"), "cells[0].backbones: unknown backbone 'sd21'"),
        (lambda c: c["cells"][0]["adapters"].append("ipa"), "cells[0].adapters: unknown adapter 'ipa'"),
        (lambda c: c["resolution"].update(height=1000), "resolution.height: 1000 is not a multiple of 16"),
        (lambda c: c.update(seeds=[2**64]), "seeds[0]: 18446744073709551616 is greater than the maximum"),
        (lambda c: c.update(seeds=[2**63]), "seeds[0]: 9223372036854775808 is greater than the maximum"),
        (
            lambda c: c.update(resolution={"width": 100000, "height": 100000}),
            "resolution.width: 100000 is greater than the maximum of 8192",
        ),
        (
            lambda c: c.update(resolution={"width": 4096, "height": 64}),
            "resolution.width: 4096 px is beyond the flux limit of 2048 px; lower it, or set "
            "resolution.max_side",
        ),
    ],
)
def test_bad_config_is_one_line_and_a_nonzero_exit(raw_demo, tmp_path, capsys, mutate, expected):
    mutate(raw_demo)
    code, errors = run_cli(capsys, "validate", "--config", write(tmp_path, raw_demo))
    assert code == 1 and len(errors) == 1 and expected in errors[0], errors


def test_resolution_beyond_the_family_limit_is_accepted_when_deliberate(raw_demo, tmp_path, capsys):
    raw_demo.update(resolution={"width": 4096, "height": 64, "max_side": 4096}, seeds=[2**63 - 1])
    code, errors = run_cli(capsys, "validate", "--config", write(tmp_path, raw_demo))
    assert code == 0 and errors == []


def test_corrupt_or_faceless_reference_image_is_one_line(config, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    grey = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (200, 200), (128, 128, 128)).save(grey)
    config.update(results_dir=str(tmp_path / "results"))
    cases = ((corrupt, f"identities[0].image: {corrupt} cannot be read"), (grey, f"no face found in {grey}"))
    for image, expected in cases:
        config["identities"] = [{"id": "bad", "image": str(image)}]
        code, errors = run_cli(capsys, "embed-identities", "--config", write(tmp_path, config))
        assert code == 1 and len(errors) == 1 and expected in errors[0], errors
        assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.safetensors"))


def test_several_faces_follow_the_policy(config, tmp_path):
    config.update(results_dir=str(tmp_path / "results"))
    chosen = {}
    for policy in ("largest", "highest_score"):
        config["face"]["policy"] = policy
        precompute.embed_identities(study_of(config))
        tensors, meta = precompute.load_tensors(Paths(study_of(config)).identity_embedding("group-t1"))
        box = tensors["bbox"].tolist()
        chosen[policy] = (
            (box[2] - box[0]) * (box[3] - box[1]),
            float(tensors["det_score"]),
            int(meta["n_faces"]),
        )
    assert chosen["largest"][2] > 1
    assert chosen["largest"][0] >= chosen["highest_score"][0]
    assert chosen["highest_score"][1] >= chosen["largest"][1]
    assert chosen["largest"] != chosen["highest_score"]


def test_prompts_with_quotes_unicode_and_newlines_work(config, tmp_path):
    config.update(results_dir=str(tmp_path / "results"))
    texts = ['a "quoted" portrait, it\'s {braced}', "ünïcödé 照片 — émoji 🙂", "two\nlines\tand tabs"]
    config["prompts"] = [{"id": f"odd{i}", "text": t} for i, t in enumerate(texts)]
    config["identities"] = config["identities"][:1]
    precompute.embed_prompts(study_of(config))
    precompute.embed_identities(study_of(config))
    manifest = pd.read_parquet(generate.run(study_of(config), "flux-schnell/infusenet-aes/1", progress=False))
    assert list(manifest["prompt"]) == texts


def test_missing_weights_folder_is_one_line(config, tmp_path, capsys):
    config.update(models_dir=str(tmp_path / "nowhere"), results_dir=str(tmp_path / "results"))
    code, errors = run_cli(capsys, "generate", "--config", write(tmp_path, config), "--cell", CELL)
    assert code == 1 and len(errors) == 1
    # the job stops at the first thing it lacks: the model's ready marker under the missing folder
    assert "nowhere" in errors[0] and "; prepare it: `fewstep prepare-model --config " in errors[0]


def test_local_weights_folders_are_checked_for_their_files(config, tmp_path, capsys, monkeypatch):
    """Every model the demo uses, scoring networks included, can come from a local folder in
    the published layout (the tiny builds here); an empty or partial folder is one line."""
    from fewstep.core.config import validate
    from fewstep.jobs.prepare import prepare_model
    from fewstep.registry.catalog import marker_path, model_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = Grid(study_of(config)).models
    assert {"clip-vit-l14", "lpips-alex", "infiniteyou", "insightface"} <= set(names)
    raw = copy.deepcopy(config)
    raw.update(weights="real", models_dir=str(tmp_path / "models"))
    raw["local_weights"] = {name: str(model_folder(study_of(config), name)) for name in names}
    real = validate(raw)
    for name in names:
        assert prepare_model(study_of(real), name) == marker_path(study_of(real), name)
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, missing in (
        ("infiniteyou", "infu_flux_v1.0/aes_stage2/InfuseNetModel/config.json"),
        ("clip-vit-l14", "config.json, model.safetensors, preprocessor_config.json"),
        ("insightface", "models/antelopev2/scrfd_10g_bnkps.onnx"),
    ):
        raw["local_weights"] = {name: str(empty)}
        raw["models_dir"] = str(tmp_path / f"models-{name}")
        code, errors = run_cli(capsys, "prepare-model", "--config", write(tmp_path, raw), "--model", name)
        assert code == 1 and len(errors) == 1, errors
        assert f"error: config local_weights.{name}: {empty} lacks " in errors[0] and missing in errors[0]
        assert not marker_path(study_of(validate(raw)), name).exists()


def test_gated_model_without_token_is_one_line(config, tmp_path, capsys, monkeypatch):
    import httpx2
    from huggingface_hub.errors import GatedRepoError

    from fewstep.registry import hub

    def refuse(*args, **kwargs):
        response = httpx2.Response(401, request=httpx2.Request("GET", "https://huggingface.co/api"))
        raise GatedRepoError("gated", response=response)

    monkeypatch.setattr("huggingface_hub.snapshot_download", refuse)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    monkeypatch.setattr(hub, "_check_space", lambda *a: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config.update(weights="real", models_dir=str(tmp_path / "models"))
    code, errors = run_cli(
        capsys, "prepare-model", "--config", write(tmp_path, config), "--model", "flux-dev"
    )
    assert code == 1 and len(errors) == 1
    assert "black-forest-labs/FLUX.1-dev is gated and no Hugging Face token is set" in errors[0]


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_finished_images(tiny_config, tmp_path, capsys, monkeypatch):
    config, path = sweep(tiny_config, tmp_path, seeds=2)
    paths = Paths(study_of(config))
    real_replace = os.replace
    pngs = []

    def replace(source, target):  # the disk fills up after three images
        if str(target).endswith(".png"):
            if len(pngs) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            pngs.append(target)
        return real_replace(source, target)

    monkeypatch.setattr("fewstep.core.io.os.replace", replace)
    code, errors = run_cli(capsys, "generate", "--config", str(path), "--cell", CELL)
    assert code == 1 and len(errors) == 1, errors
    assert errors[0].startswith("fewstep generate: error: disk full while writing ")
    assert errors[0].endswith(".png; free space, then rerun (finished work is kept)")
    assert lines(paths.journal(CELL)) == 3 and all(Path(p).exists() for p in pngs)
    assert not list(paths.cell_dir(CELL).rglob("*.tmp"))
    monkeypatch.undo()
    assert len(pd.read_parquet(generate.run(study_of(config), CELL, progress=False))) == 8
    assert lines(paths.journal(CELL)) == 8  # the 3 finished images were kept


def test_cuda_out_of_memory_is_one_line(tiny_config, tmp_path, capsys, monkeypatch):
    import torch

    from fewstep.families.flux import pipeline

    config, path = sweep(tiny_config, tmp_path, seeds=1)

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "denoise", no_memory)
    code, errors = run_cli(capsys, "generate", "--config", str(path), "--cell", CELL, "--batch-size", "4")
    assert code == 1 and len(errors) == 1
    assert errors[0].startswith(
        f"fewstep generate: error: CUDA out of memory at batch size 4 in cell {CELL}; "
        "finished images are kept"
    )


def test_cuda_out_of_memory_retries_with_half_the_batch(demo_run, tmp_path):
    """Snakemake's attempt counter halves the batch after an OOM (injected by tests/faults)."""
    raw = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    raw.update(sweep="oom", generation={"batch_size": 4}, wandb={"mode": "disabled"})
    configfile = tmp_path / "oom.yaml"
    configfile.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, FEWSTEP_FAULT="oom_above_batch_1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "faults"), env.get("PYTHONPATH", "")])
    target = "results/oom/cells/flux-schnell/infusenet-aes/generation.json"  # every schnell step count
    result = snakemake(demo_run, target, "--cores", "1", configfile=configfile, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # attempt 1: batch 4, out of memory; attempt 2: batch 2, out of memory; attempt 3: batch 1
    assert result.stderr.count("Error in rule generate") == 2
    manifest = pd.read_parquet(demo_run / "results/oom/cells/flux-schnell/infusenet-aes/2/manifest.parquet")
    assert set(manifest["batch_size"]) == {1} and len(manifest) == 4


def test_only_out_of_memory_is_retried(tiny_config, tmp_path, capsys, monkeypatch):
    """Snakemake's retries exist to halve the batch; a retry of any other error returns its
    line at once, without loading a model or generating anything."""
    import torch

    config, path = sweep(tiny_config, tmp_path, seeds=1)
    unreadable = cli.FewstepError(f"image {tmp_path}/x.png cannot be read; replace it")
    calls = []

    def failing(config, cell, out=None, batch_size=None, **kwargs):
        calls.append(batch_size)
        if batch_size > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        raise unreadable

    def attempt(number: int, batch: int) -> tuple[int, list[str]]:  # as the rule calls it
        args = ["--cell", CELL, "--attempt", str(number), "--batch-size", str(batch)]
        return run_cli(capsys, "generate", "--config", str(path), *args)

    monkeypatch.setattr(generate, "run", failing)
    note = Paths(study_of(config)).no_retry_note("generate", CELL)
    code, errors = attempt(1, 4)
    assert code == 1 and "CUDA out of memory at batch size 4" in errors[0]
    assert not note.exists()  # out of memory: the retry with half the batch runs
    assert attempt(2, 1) == (1, [f"fewstep generate: error: {unreadable}"])
    assert note.exists() and calls == [4, 1]
    assert attempt(3, 1) == (
        1,
        [
            f"fewstep generate: error: {unreadable} "
            "(not retried: only CUDA out of memory and network errors are)"
        ],
    )
    assert calls == [4, 1]  # not run again
    monkeypatch.undo()  # the input fixed, a new run (attempt 1) starts clean
    assert attempt(1, 1) == (0, []) and not note.exists()


def test_no_job_retries_an_error_a_retry_cannot_change(config, tmp_path, capsys, monkeypatch):
    """Every rule passes Snakemake's attempt: a faceless picture (the embed_identity job's error)
    is noted by the first attempt, and the retry repeats its line without embedding anything;
    each job has its own note; a network error is retried for real."""
    from PIL import Image

    from fewstep.core.errors import NetworkError

    grey = tmp_path / "grey.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(grey)
    config.update(results_dir=str(tmp_path / "results"))
    config["identities"] = [{"id": "grey", "image": str(grey)}, config["identities"][0]]
    path = write(tmp_path, config)
    calls = []
    real = precompute.embed_identities
    monkeypatch.setattr(precompute, "embed_identities", lambda *a: calls.append(a[1]) or real(*a))

    def attempt(number: int, identity: str = "grey") -> tuple[int, list[str]]:
        args = ["--config", path, "--identity", identity, "--attempt", str(number)]
        return run_cli(capsys, "embed-identities", *args)

    code, errors = attempt(1)
    assert code == 1 and len(errors) == 1 and f"no face found in {grey}" in errors[0]
    note = Paths(study_of(config)).no_retry_note("embed-identities", "grey")
    assert note.read_text().strip() == errors[0].removeprefix("fewstep embed-identities: error: ")
    assert attempt(2) == (1, [f"{errors[0]} (not retried: only CUDA out of memory and network errors are)"])
    assert calls == [["grey"]]  # the retry embedded nothing
    assert attempt(1, "astronaut") == (0, []) and calls[-1] == ["astronaut"]  # its own note: none
    monkeypatch.setattr(
        precompute, "embed_identities", lambda *a: (_ for _ in ()).throw(NetworkError("hub down"))
    )
    assert attempt(1, "astronaut")[0] == 1
    assert not Paths(study_of(config)).no_retry_note("embed-identities", "astronaut").exists()


def test_a_missing_or_broken_config_file_is_one_line_with_file_and_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("sweep: demo\nseeds: [0, 1\nprompts: [a]\n")
    code, errors = run_cli(capsys, "validate", "--config", str(broken))
    assert code == 1 and errors == [
        f"fewstep validate: error: config file {broken} line 3 is not valid YAML; fix its syntax"
    ]
    code, errors = run_cli(capsys, "validate", "--config", str(tmp_path / "nope.yaml"))
    missing = tmp_path / "nope.yaml"
    assert code == 1 and errors == [
        f"fewstep validate: error: config file {missing} does not exist; pass an existing --configfile"
    ]


@pytest.mark.slow
def test_a_lock_left_by_a_killed_snakemake_is_explained_with_the_command(tmp_path):
    from fewstep.core.resume import stale_lock_hint

    demo = REPO / "config" / "demo.yaml"
    assert stale_lock_hint(tmp_path, [demo]) is None
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/demo/cells/x/manifest.parquet\n")
    result = snakemake(tmp_path, "-n", configfile=demo)
    hints = [line for line in result.stderr.splitlines() if line.startswith("fewstep:")]
    assert hints == [
        f"fewstep: {locks} holds a lock; unless another Snakemake is running here, it was left by a killed "
        f"run: `snakemake --unlock --configfile {demo}`, then rerun (finished work is kept)"
    ]
    unlocked = snakemake(tmp_path, "--unlock", configfile=demo)
    assert unlocked.returncode == 0 and not (locks.exists() and any(locks.iterdir()))
    assert "fewstep:" not in unlocked.stderr
