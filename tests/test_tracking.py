"""W&B tracking: mode rules, summaries, the run-file reader, offline isolation without network, sync.

The isolation tests run real tracked jobs in a child process (tests/wandb_harness.py)
with HOME, TMPDIR and the working directory pointed at an empty folder, an audit
hook that records every name lookup and internet socket use of the Python side,
inside a network namespace without interfaces (`unshare --net`) and, where strace
works, with every connect/send syscall of all processes (wandb-core included)
recorded. The same harness running plain `wandb.init(mode="offline")` is caught
by those detectors, so they are known to work.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from wandb_harness import (
    ANCHOR,
    CELL,
    LOG_TEXT,
    PADDING,
    STRACE,
    UNSHARE,
    clean_env,
    fabricate_cell,
    fabricate_markers,
    run_cli,
)

from fewstep.core.config import validate
from fewstep.core.errors import ConfigError
from fewstep.tracking import runs
from fewstep.tracking.wandb_reader import WandbFileError, find_run_files, read_run
from tests.conftest import study_of

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "wandb_harness.py"

# Installed as sitecustomize in the child: logs, tab-separated, every name lookup and
# internet socket use ("net") and every file or folder the Python side creates or
# writes ("fs"). It writes through a descriptor opened before it is installed.
AUDIT_HOOK = """\
import os, socket, sys
_FD = os.open(os.environ["FEWSTEP_AUDIT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
_LOOKUPS = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
            "socket.gethostbyaddr", "socket.getnameinfo"}
_SENDS = {"socket.connect", "socket.sendto", "socket.sendmsg"}
_CREATES = {"os.mkdir", "tempfile.mkdtemp", "tempfile.mkstemp"}
_TARGETS = {"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.move"}
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT
def _emit(kind, event, detail):
    os.write(_FD, f"{kind}\\t{event}\\t{detail}\\n".encode())
def _fs(event, path):
    if not isinstance(path, int):
        _emit("fs", event, os.path.abspath(os.fsdecode(path)))
def _hook(event, args):
    if event in _LOOKUPS or (event in _SENDS and args[0].family in (socket.AF_INET, socket.AF_INET6)):
        _emit("net", event, repr(args))
    elif event == "open" and ((args[1] and any(c in args[1] for c in "wax+")) or (args[2] or 0) & _WRITE):
        _fs(event, args[0])
    elif event in _CREATES:
        _fs(event, args[0])
    elif event in _TARGETS:
        _fs(event, args[1])
sys.addaudithook(_hook)
"""
# Syscalls strace records for every process ("?" = skip where the platform lacks it).
TRACED = "connect,sendto,sendmsg,openat,?open,?creat,mkdirat,?mkdir,renameat,renameat2,?rename,linkat,?link"
STRACE_CALL = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=")
STRACE_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def strace_writes(text: str, cwd: Path) -> list[str]:
    """Paths the traced processes created, wrote, or renamed/linked something to."""
    out = []
    for line in text.splitlines():
        match = STRACE_CALL.match(line)
        if not match:
            continue
        call, args = match.groups()
        strings = STRACE_STRING.findall(args)
        if not strings:
            continue
        if call in ("openat", "open", "creat"):
            if call != "creat" and not re.search(r"O_WRONLY|O_RDWR|O_CREAT", args):
                continue
            path = strings[0]
        elif call.startswith("mkdir"):
            path = strings[0]
        elif call.startswith(("rename", "link")):
            path = strings[-1]
        else:
            continue
        out.append(os.path.normpath(cwd / path))
    return out


def demo_config(root: Path, **wandb: object) -> dict:
    raw = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    raw["results_dir"] = str(root / "results")
    raw["models_dir"] = str(root / "models")
    raw["reports_dir"] = str(root / "reports")
    raw["wandb"] = {**raw.get("wandb", {}), **wandb}
    return validate(raw)


def is_stray(path: Path, results: Path, outside: Path) -> bool:
    """Written outside the results: under HOME/TMPDIR/cwd, in the repository, or wandb's anywhere."""
    if path.is_relative_to(results):
        return False
    return path.is_relative_to(outside) or path.is_relative_to(REPO) or "wandb" in str(path).lower()


def run_isolated(root: Path, config: dict, mode: str) -> dict:
    """Run the harness in `mode`; return what it wrote outside the results and sent to the network."""
    harness, outside = root / "harness", root / "outside"
    harness.mkdir(parents=True)
    outside.mkdir()
    (harness / "sitecustomize.py").write_text(AUDIT_HOOK)
    config_file = root / "config.json"
    config_file.write_text(json.dumps(config))
    audit_log, strace_log = root / "audit.log", root / "strace.txt"
    env = clean_env(outside) | {"PYTHONPATH": str(harness), "FEWSTEP_AUDIT_LOG": str(audit_log)}
    command = [sys.executable, str(HARNESS), str(config_file), mode]
    if STRACE:
        trace = ["-e", f"trace={TRACED}", "-o", str(strace_log)]
        command = ["strace", "-f", "-qq", "--seccomp-bpf", *trace, *command]
    if UNSHARE:
        command = ["unshare", "--net", *command]
    result = subprocess.run(command, cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    audit = [line.split("\t") for line in audit_log.read_text().splitlines()]
    strace = strace_log.read_text() if STRACE else ""
    results = Path(config["results_dir"])
    writes = [detail for kind, _, detail in audit if kind == "fs"] + strace_writes(strace, outside)
    return {
        "results": results,
        "outside": sorted(str(p.relative_to(outside)) for p in outside.rglob("*")),
        "stray_writes": sorted({path for path in writes if is_stray(Path(path), results, outside)}),
        "inside_writes": sum(Path(path).is_relative_to(results) for path in writes),
        "python_net": [f"{event} {detail}" for kind, event, detail in audit if kind == "net"],
        "inet_syscalls": [line for line in strace.splitlines() if "AF_INET" in line],
        "unix_connects": sum(1 for line in strace.splitlines() if "connect(" in line and "AF_UNIX" in line),
        "printed": [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")],
    }


@pytest.fixture(scope="module")
def isolated(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tracked")
    config = demo_config(root, mode="auto")  # no API key in the empty HOME: offline
    return run_isolated(root, config, "fewstep") | {"config": config}


@pytest.fixture(scope="module")
def score_run(isolated):
    runs = [read_run(f) for f in find_run_files(isolated["results"])]
    return next(r for r in runs if r.job_type == "score")


# ------------------------------------------------------------------ offline isolation


def test_offline_jobs_write_only_inside_results_and_use_no_network(isolated) -> None:
    assert isolated["outside"] == []  # nothing left under HOME, TMPDIR or the working directory
    assert isolated["stray_writes"] == []  # not even a temporary file there, nor wandb's anywhere else
    assert isolated["inside_writes"] > 10  # the detectors saw the writes that did happen
    assert isolated["python_net"] == []  # no name lookup, no internet socket from Python
    assert isolated["inet_syscalls"] == []  # nor from wandb-core (empty when strace is unavailable)
    if STRACE:  # the trace saw the jobs talk to their wandb-core services over Unix sockets
        assert isolated["unix_connects"] >= 2
    files = find_run_files(isolated["results"])
    wandb_root = isolated["results"] / "demo" / "wandb"
    assert [f.relative_to(wandb_root).parts[:2] for f in files] == [
        ("generate", CELL.replace("/", "__")),
        ("score", CELL.replace("/", "__")),
    ]


@pytest.mark.slow
def test_stock_wandb_offline_is_caught_by_the_same_detectors(tmp_path) -> None:
    """The control: without fewstep.tracking.runs, wandb writes to HOME and looks up its server."""
    caught = run_isolated(tmp_path, demo_config(tmp_path), "stock")
    assert any(p.startswith(".cache/wandb") for p in caught["outside"])
    outside = tmp_path / "outside"
    temp_dirs = [p for p in caught["stray_writes"] if p.startswith(f"{outside}/tmp") and "wandb" in p]
    assert temp_dirs  # e.g. its media temp folder, gone by the time the process exits
    assert any("socket.getaddrinfo" in line for line in caught["python_net"])


def test_offline_run_reads_back_with_identity_config_and_summary(score_run, isolated) -> None:
    run = score_run
    assert (run.group, run.job_type, run.name, run.project) == ("demo", "score", CELL, "fewstep-demo")
    assert run.tags == ["weights-tiny"] and run.exit_code == 0
    config = run.config
    assert config["attempt"] == 2  # the rerun replaced the first run's folder
    assert config["padding"] == PADDING  # a record spanning two 32 KiB blocks
    assert (config["backbone"], config["adapter"], config["steps"]) == ("flux-schnell", "infusenet-aes", 2)
    assert config["cell"]["backbone"]["guidance"] is None  # schnell gets no guidance
    assert config["items"] == {
        "count": 4,
        "identities": ["astronaut", "group-t1"],
        "prompts": ["portrait", "astronaut-suit"],
        "seeds": [0],
    }
    assert config["config_hash"] and config["git_commit"] and config["versions"]["wandb"] == "0.31.0"
    summary = run.summary
    assert summary["images"] == 4
    assert summary["id_sim"] == pytest.approx(0.5) and summary["id_sim_n"] == 3  # NaN left out
    assert summary["id_sim_std"] == pytest.approx(0.25)
    assert summary["face_detected"] == pytest.approx(0.75)
    assert summary["latency_s"] == pytest.approx(2.0)
    assert "steps" not in summary and "seed" not in summary
    assert summary["samples"]["_type"] == "image-file"
    assert summary["scores"]["_type"] == "table-file" and summary["scores"]["nrows"] == 4
    table = json.loads((run.run_dir / "files" / summary["scores"]["path"]).read_text())
    assert table["columns"][0] == "thumbnail" and len(table["data"]) == 4
    id_sims = [row[table["columns"].index("id_sim")] for row in table["data"]]
    assert id_sims == [None, 0.25, 0.5, 0.75]


@pytest.mark.slow
def test_a_full_disk_under_the_wandb_files_is_one_line(tmp_path) -> None:
    """W&B's offline files are most of a demo's results, so a full disk shows there first:
    the score job stops inside wandb.init with the one disk-full line naming the file, writes
    no score table and leaves the cell's images as they were."""
    from fewstep.core.paths import Paths

    config = demo_config(tmp_path, mode="offline")
    rng = np.random.default_rng(0)
    fabricate_cell(config, ANCHOR, rng)
    fabricate_cell(config, CELL, rng)
    fabricate_markers(config)
    paths = Paths(study_of(config))
    images = {p: p.read_bytes() for p in paths.cell_dir(CELL).rglob("*.png")}
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    (tmp_path / "home").mkdir()
    env = clean_env(tmp_path / "home") | {
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faults"), str(REPO / "workflow")]),
        "FEWSTEP_FAULT": f"disk_full_under:{paths.wandb_root.resolve()}",
    }
    command = [sys.executable, "-m", "fewstep", "score", "--config", str(config_file), "--cell", CELL]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"fewstep score: error: disk full while writing {re.escape(str(paths.wandb_root.resolve()))}/\S+; "
        r"free space, then rerun \(finished work is kept\)",
        last,
    ), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not paths.scores(CELL).exists()
    assert {p: p.read_bytes() for p in paths.cell_dir(CELL).rglob("*.png")} == images


def test_failed_job_ends_its_run_failed(isolated) -> None:
    runs = [read_run(f) for f in find_run_files(isolated["results"])]
    generate = next(r for r in runs if r.job_type == "generate")
    assert generate.exit_code == 1 and generate.name == CELL


# ------------------------------------------------------------------ run ids, lineage


def test_run_ids_are_stable_per_sweep_job_and_cell(raw_demo) -> None:
    config = validate(raw_demo)
    score = runs.run_id(study_of(config), "score", CELL)
    assert re.fullmatch(r"score-[0-9a-f]{16}", score)
    assert score == runs.run_id(study_of(validate(copy.deepcopy(raw_demo))), "score", CELL)
    # where files go and how runs are logged do not make another run ...
    moved = dict(raw_demo, results_dir="/elsewhere", wandb={"mode": "online", "project": "other"})
    assert runs.run_id(study_of(validate(moved)), "score", CELL) == score
    # ... another job, cell, sweep or item set does
    others = {
        runs.run_id(study_of(config), "generate", CELL),
        runs.run_id(study_of(config), "score", ANCHOR),
        runs.run_id(study_of(validate(dict(raw_demo, sweep="other"))), "score", CELL),
        runs.run_id(study_of(validate(dict(raw_demo, seeds=[0, 1]))), "score", CELL),
        runs.run_id(study_of(config), "aggregate"),
        runs.run_id(study_of(validate(dict(raw_demo, seeds=[0, 1]))), "aggregate"),
    }
    assert len(others) == 6 and score not in others


def test_rerun_logs_to_the_same_run_id(isolated, score_run) -> None:
    printed = isolated["printed"]
    assert [p["attempt"] for p in printed] == [1, 2]
    expected = runs.run_id(study_of(isolated["config"]), "score", CELL)
    assert printed[0]["run_id"] == printed[1]["run_id"] == score_run.run_id == expected
    assert score_run.resume  # resume="allow": after a sync the rerun continues the uploaded run


def _slug(cell_id: str) -> str:
    return cell_id.replace("/", "__")


def test_score_run_uses_weights_and_images_and_logs_its_scores(isolated, score_run, monkeypatch) -> None:
    """The lineage records, read back: inputs (`use_artifact`) and the output (`log_artifact`)."""
    from fewstep.core.paths import Paths
    from fewstep.grid import Grid
    from fewstep.scoring.networks import SCORING_MODELS
    from fewstep.tracking import lineage

    config = isolated["config"]
    monkeypatch.setenv("WANDB_DATA_DIR", str(isolated["results"] / "test-staging"))  # drafts stage here
    used, logged = score_run.used_artifacts, score_run.logged_artifacts
    assert set(used) == {
        "weights-tiny-clip-vit-l14",
        "weights-tiny-insightface",
        "weights-tiny-dlib-face",  # identity_dlib: the trained dlib files, in tiny mode too
        "weights-tiny-lpips-alex",
        f"images-demo-{_slug(CELL)}",
        f"images-demo-{_slug(ANCHOR)}",  # LPIPS to the anchor cell reads its images too
    }
    clip = used["weights-tiny-clip-vit-l14"]
    assert clip.type == "model" and [e.path for e in clip.entries] == ["weights.json"]  # tiny: no hub refs
    assert clip.metadata == {
        "model": "clip-vit-l14",
        "weights": "tiny",
        "repo_id": "openai/clip-vit-large-patch14",
        "revision": SCORING_MODELS["clip-vit-l14"].revision,
        "commit": None,
    }
    images = used[f"images-demo-{_slug(CELL)}"]
    paths = Paths(study_of(config))
    expected_refs = {
        f"images/{item.id}.png": paths.image(CELL, item.id).resolve().as_uri()
        for item in Grid(study_of(config)).items
    }
    assert {e.path: e.ref for e in images.entries if e.ref} == expected_refs
    assert [e.path for e in images.entries if not e.ref] == ["manifest.parquet"]
    # rebuilt from the same files, the artifact has the same digest: the very version generate logged
    assert images.digest == lineage.images(study_of(config), CELL).digest
    tables = {name for name in logged if name.startswith(f"run-{score_run.run_id}-")}  # wandb.Table's own
    assert set(logged) - tables == {f"scores-demo-{_slug(CELL)}"}
    scores = logged[f"scores-demo-{_slug(CELL)}"]
    assert scores.type == "scores" and [e.path for e in scores.entries] == ["scores.parquet"]
    assert scores.digest == lineage.table(study_of(config), "scores", CELL, paths.scores(CELL)).digest


def test_the_jobs_console_log_is_a_run_file(score_run) -> None:
    name = f"logs/score/{_slug(CELL.rsplit('/', 1)[0])}.log"  # one log per score job
    assert name in score_run.files
    assert (score_run.run_dir / "files" / name).read_text() == LOG_TEXT


# ------------------------------------------------------------------ reader


def test_reader_stops_at_a_cut_and_rejects_damage(score_run, tmp_path) -> None:
    data = score_run.path.read_bytes()
    assert len(data) > 32 * 1024
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(data[: len(data) - 40])
    partial = read_run(cut)
    assert partial.run_id == score_run.run_id and partial.exit_code is None
    damaged = tmp_path / "damaged.wandb"
    damaged.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with pytest.raises(WandbFileError, match="damaged.wandb: corrupt record"):
        read_run(damaged)
    foreign = tmp_path / "foreign.wandb"
    foreign.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(WandbFileError, match="not a W&B run file"):
        read_run(foreign)


# ------------------------------------------------------------------ modes and summaries


def test_mode_config_decides_env_can_only_disable(monkeypatch, tmp_path) -> None:
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert runs.resolve_mode({"mode": "auto"}) == "offline"
    (tmp_path / "netrc").write_text("machine api.forge.coreweave.com\n  login user\n  password " + "a" * 40)
    assert runs.resolve_mode({"mode": "auto"}) == "online"
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert runs.resolve_mode({"mode": "auto"}) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert runs.resolve_mode({"mode": "online"}) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert runs.resolve_mode({"mode": "online"}) == "disabled"


def test_disabled_run_does_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = demo_config(tmp_path, mode="disabled")
    with runs.job_run(study_of(config), "score", CELL) as run:
        assert not run.enabled
        run.summary({"x": 1})
        run.log_table("t", pd.DataFrame({"a": [1]}))
        run.log_scores(tmp_path / "missing.parquet")  # not even read
        assert run.log_sweep() == {}
    assert not (tmp_path / "results").exists()


def test_wandb_config_section_defaults_and_errors(raw_demo) -> None:
    raw = copy.deepcopy(raw_demo)
    del raw["wandb"]
    assert validate(raw)["wandb"] == {
        "mode": "auto",
        "project": "fewstep",
        "entity": None,
        "init_timeout": 300,
        "thumbnail": 256,
        "grid_identities": 4,
        "grid_columns": 6,
    }
    assert validate(raw_demo)["wandb"]["mode"] == "offline"
    raw["wandb"] = {"mode": "sometimes"}
    with pytest.raises(ConfigError, match=r"^config wandb\.mode: "):
        validate(raw)


def test_summarise_means_spread_and_counts() -> None:
    frame = pd.DataFrame(
        {
            "id_sim": [0.2, np.nan, 0.4],
            "face_detected": [True, False, True],
            "steps": [4, 4, 4],
            "batch_size": [2, 2, 1],  # parameters stay in the run config
            "warmup": [True, False, False],
            "identity": ["a", "b", "c"],
        }
    )
    out = runs.summarise(frame)
    assert out["images"] == 3
    assert out["id_sim"] == pytest.approx(0.3) and out["id_sim_n"] == 2
    assert out["id_sim_std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert out["face_detected"] == pytest.approx(2 / 3)
    assert not {"steps", "batch_size", "warmup", "identity"} & set(out)
    assert runs.summarise(frame.assign(id_sim=np.nan))["id_sim"] is None


# ------------------------------------------------------------------ sync


@pytest.mark.slow
def test_sync_lists_unsynced_runs_and_needs_a_key(isolated, tmp_path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(isolated["config"]))
    files = find_run_files(isolated["results"])
    generate = next(f for f in files if "/generate/" in str(f))
    marker = generate.with_name(generate.name + ".synced")
    marker.touch()  # what `wandb sync` leaves after an upload
    try:
        dry = run_cli(["wandb-sync", "--dry-run", "--config", str(config_file)], tmp_path)
    finally:
        marker.unlink()
    assert dry.returncode == 0, dry.stderr
    assert "Would sync 1 run(s)" in dry.stderr and "/score/" in dry.stderr and "/generate/" not in dry.stderr
    real = run_cli(["wandb-sync", "--config", str(config_file)], tmp_path)
    assert real.returncode == 1
    assert real.stderr.strip().splitlines() == [
        "fewstep wandb-sync: error: no W&B API key: set WANDB_API_KEY or run `wandb login`, "
        f"then rerun `fewstep wandb-sync --config {config_file}`"
    ]
