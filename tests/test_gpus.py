"""GPU card locks (fewstep.core.gpus): real processes on simulated cards (FEWSTEP_GPUS=N)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fewstep.core import gpus
from fewstep.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# A GPU job as the CLI runs one: claim a card first, then work (here: sleep), then exit.
JOB = """
import json, os, sys, time
from fewstep.core import gpus
claim = gpus.claim("cuda", poll_s=0.05)
start = time.time()
with open(sys.argv[1] + ".start", "w") as f:
    json.dump({"card": claim.card, "visible": os.environ["CUDA_VISIBLE_DEVICES"], "pid": os.getpid()}, f)
time.sleep(float(sys.argv[2]))
with open(sys.argv[1], "w") as f:
    json.dump({"card": claim.card, "visible": os.environ["CUDA_VISIBLE_DEVICES"],
               "order": os.environ["CUDA_DEVICE_ORDER"], "start": start, "end": time.time()}, f)
"""


def job_env(n_cards: int, lock_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", *gpus.SCHEDULER_VARS)}
    env.update(
        FEWSTEP_GPUS=str(n_cards),
        FEWSTEP_GPU_LOCK_DIR=str(lock_dir),
        PYTHONPATH=str(REPO / "workflow"),
    )
    return env


def start_job(record: Path, hold_s: float, env: dict[str, str]) -> subprocess.Popen:
    stderr = open(record.with_suffix(".err"), "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-c", JOB, str(record), str(hold_s)], env=env, stderr=stderr)


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_more_jobs_than_cards_never_share_a_card(tmp_path: Path) -> None:
    """Five jobs on two cards: each runs alone on its card, the rest wait their turn."""
    env = job_env(2, tmp_path / "locks")
    records = [tmp_path / f"job{i}.json" for i in range(5)]
    procs = [start_job(record, 1.0, env) for record in records]
    assert [p.wait(timeout=60) for p in procs] == [0] * 5
    runs = [json.loads(record.read_text()) for record in records]
    assert all(run["visible"] == run["card"] and run["order"] == "PCI_BUS_ID" for run in runs)
    assert {run["card"] for run in runs} == {"0", "1"}
    for card in ("0", "1"):
        spans = sorted((run["start"], run["end"]) for run in runs if run["card"] == card)
        for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False):
            assert next_start >= end, f"card {card} held by two jobs at once: {spans}"
    # two cards, five jobs started together: at least three had to wait
    waited = [r for r in records if "waiting for a free GPU card" in r.with_suffix(".err").read_text()]
    assert len(waited) >= 3


def test_killed_job_frees_its_card(tmp_path: Path) -> None:
    env = job_env(1, tmp_path / "locks")
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    holder = start_job(first, 600, env)
    try:
        assert wait_for(lambda: first.with_suffix(".json.start").exists())
        holder_pid = json.loads(first.with_suffix(".json.start").read_text())["pid"]
        waiter = start_job(second, 0, env)
        assert wait_for(lambda: "waiting for a free GPU card" in second.with_suffix(".err").read_text())
        assert f"card 0: pid {holder_pid} " in second.with_suffix(".err").read_text()
        time.sleep(0.5)
        assert not second.with_suffix(".json.start").exists(), "second job took a card that is held"
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        assert waiter.wait(timeout=30) == 0
    finally:
        holder.kill()
    assert json.loads(second.read_text())["card"] == "0"


def test_lock_is_held_for_the_process_lifetime(tmp_path: Path) -> None:
    env = {"FEWSTEP_GPUS": "2", "FEWSTEP_GPU_LOCK_DIR": str(tmp_path)}
    try:
        first = gpus.claim("auto", env)
        assert first.card == "0" and env["CUDA_VISIBLE_DEVICES"] == "0"
        assert f"pid {os.getpid()} " in gpus.holder(tmp_path / "gpu0.lock")
        other = {"FEWSTEP_GPUS": "2", "FEWSTEP_GPU_LOCK_DIR": str(tmp_path)}
        assert gpus.claim("cuda", other).card == "1"  # flock is per open file: card 0 stays taken
    finally:
        gpus.release()
    again = {"FEWSTEP_GPUS": "2", "FEWSTEP_GPU_LOCK_DIR": str(tmp_path)}
    try:
        assert gpus.claim("cuda", again).card == "0"
    finally:
        gpus.release()


@pytest.mark.parametrize(
    "device, env, reason",
    [
        ("cpu", {"FEWSTEP_GPUS": "2"}, "CPU job"),
        (
            "cuda",
            {"FEWSTEP_GPUS": "2", "SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3"},
            "assigned by Slurm",
        ),
        ("auto", {"FEWSTEP_GPUS": "2", "CUDA_VISIBLE_DEVICES": "1"}, "already set"),
        ("auto", {"FEWSTEP_GPUS": "0"}, "no GPU card found"),
    ],
)
def test_no_lock_where_cards_are_decided_elsewhere(
    tmp_path: Path, device: str, env: dict, reason: str
) -> None:
    env = {**env, "FEWSTEP_GPU_LOCK_DIR": str(tmp_path)}
    before = dict(env)
    claim = gpus.claim(device, env)
    assert claim.card is None and reason in claim.reason
    assert env == before  # CUDA_VISIBLE_DEVICES untouched
    assert not list(tmp_path.glob("*.lock"))


def test_card_count(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gpus.cards({"FEWSTEP_GPUS": "3"}) == ["0", "1", "2"]
    monkeypatch.setenv("PATH", "")  # no nvidia-smi: no cards
    assert gpus.cards({}) == []
    with pytest.raises(ConfigError, match=r"^FEWSTEP_GPUS='two': give the number of GPU cards") as err:
        gpus.cards({"FEWSTEP_GPUS": "two"})
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_gpu_command_claims_a_card_before_it_starts(tmp_path: Path) -> None:
    """`fewstep embed-prompts` waits for the held card, takes it, and only then loads anything."""
    override = tmp_path / "cuda.yaml"
    override.write_text(yaml.safe_dump({"device": "cuda", "results_dir": str(tmp_path / "results")}))
    env = job_env(1, tmp_path / "locks")
    lock_env = {"FEWSTEP_GPUS": "1", "FEWSTEP_GPU_LOCK_DIR": str(tmp_path / "locks")}
    err = tmp_path / "cli.err"
    try:
        assert gpus.claim("cuda", lock_env).card == "0"
        with open(err, "w") as stderr:
            cli = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fewstep",
                    "embed-prompts",
                    "--config",
                    "config/demo.yaml",
                    str(override),
                ],
                cwd=REPO,
                env=env,
                stderr=stderr,
            )
        assert wait_for(lambda: "waiting for a free GPU card" in err.read_text())
        assert cli.poll() is None
    finally:
        gpus.release()
    assert cli.wait(timeout=120) == 1
    lines = [line for line in err.read_text().splitlines() if line.startswith("fewstep")]
    assert lines[0].startswith("fewstep: waiting for a free GPU card, all held (card 0: pid ")
    assert lines[1].startswith("fewstep embed-prompts: GPU card 0 of 0 (lock ")
    # the card is CUDA_VISIBLE_DEVICES=0, but this machine has no CUDA: the config's cuda fails
    assert lines[2] == (
        "fewstep embed-prompts: error: config device: cuda requested but no CUDA GPU is visible;"
        " use device: auto or cpu"
    )


# A fresh interpreter whose torch refuses every CUDA query: the imports a GPU job makes before it
# takes a card must not ask CUDA anything, or CUDA_VISIBLE_DEVICES set by `claim` would come too late.
# NVML is simulated (one card), as a GPU host's driver provides it.
NO_CUDA_QUERIES = """
import os, sys, torch
def refuse(*args, **kwargs):
    raise AssertionError("CUDA was queried before the card was taken")
for name in ("_cuda_getDeviceCount", "_cuda_init", "_cuda_getDevice"):
    setattr(torch._C, name, refuse)
torch.cuda._device_count_nvml = lambda: int(os.environ["NVML_CARDS"])
from fewstep.core import gpus
seconds = gpus.warm_imports()
assert not torch.cuda.is_initialized() and gpus.NVML_CHECK not in os.environ
print(seconds is not None, len([m for m in sys.modules if m.startswith("diffusers.models.")]))
"""


@pytest.mark.slow
def test_imports_before_the_card_ask_cuda_nothing(tmp_path: Path) -> None:
    """Every GPU command's pre-card imports (cli._gpu_study) run with CUDA queries refused."""
    env = {**job_env(1, tmp_path / "locks"), "NVML_CARDS": "1"}
    done = subprocess.run([sys.executable, "-c", NO_CUDA_QUERIES], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    warmed, model_modules = done.stdout.split()[-2:]
    assert warmed == "True" and int(model_modules) > 50  # the model classes were imported, not skipped
    # where NVML cannot count the cards (-1), torch would start CUDA: nothing is imported early
    no_nvml = {**env, "NVML_CARDS": "-1"}
    done = subprocess.run(
        [sys.executable, "-c", NO_CUDA_QUERIES], env=no_nvml, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.split()[-2:] == ["False", "0"], done.stderr[-2000:]


def test_a_job_done_with_the_card_hands_it_on_before_it_ends(tmp_path: Path, capsys) -> None:
    """After its GPU work a job frees its card (its W&B runs need none): another job takes it
    while the first is still alive, and the first says how long it held it."""
    env = {"FEWSTEP_GPUS": "1", "FEWSTEP_GPU_LOCK_DIR": str(tmp_path)}
    try:
        assert gpus.claim("cuda", env).card == "0"
        assert gpus.release_when_done("generate") is True
        assert "fewstep generate: GPU card released after " in capsys.readouterr().err
        assert gpus.release_when_done("generate") is False  # nothing held any more
        record = tmp_path / "next.json"
        other = start_job(record, 0, job_env(1, tmp_path))
        assert other.wait(timeout=60) == 0 and json.loads(record.read_text())["card"] == "0"
    finally:
        gpus.release()
