"""Snakemake profiles: both pass Snakemake's own parser, and the demo sweep runs end to
end through a real single-node Slurm (tests/cluster/slurm-up.sh) with the same
outputs as a local run."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fewstep.analysis.metric_registry import METRICS

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CLUSTER = REPO / "tests" / "cluster"
#: the prompt embedding rules of the demo and the study: one per prompt role (`prompt_rule`)
PROMPT_RULES = {"embed_prompt_identity", "embed_prompt_style", "embed_prompt_object"}
GPU_RULES = {"generate", *PROMPT_RULES, "embed_reference", "trajectory"}
CPU_HEAVY_RULES = {
    "score",
    *PROMPT_RULES,
    "embed_reference",
    "embed_identity",
    "trajectory",
    "aggregate",
}
DEMO = REPO / "config" / "demo.yaml"
#: what differs between two runs of the same sweep: every cost the registry knows (times, memory)
TIMING = [name for name, spec in METRICS.items() if spec.kind == "cost"]


def snakemake(
    workdir: Path, *args: str | Path, env: dict[str, str] | None = None, configfile: Path = DEMO
) -> subprocess.CompletedProcess:
    """The demo sweep run from `workdir` with the repository's Snakefile (and so its profiles)."""
    cmd = [SNAKEMAKE, "-s", REPO / "Snakefile", "-d", workdir, "--configfile", configfile]
    return subprocess.run(
        [str(part) for part in (*cmd, *args)],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )


def flux_demo(folder: Path) -> Path:
    """The demo without its SD cells: the Slurm round trip checks the profiles and the plumbing,
    which the FLUX half exercises in full (GPU, CPU and local rules), at half the jobs."""
    import yaml

    config = yaml.safe_load(DEMO.read_text())
    for backbone in [b for b, spec in config["backbones"].items() if spec.get("family", "flux") != "flux"]:
        del config["backbones"][backbone]
    config["adapters"] = {k: v for k, v in config["adapters"].items() if v["kind"] != "ip_adapter"}
    config["cells"] = [c for c in config["cells"] if set(c["backbones"]) <= set(config["backbones"])]
    traced = config["trajectory"]["cells"]
    config["trajectory"]["cells"] = [c for c in traced if c.split("/")[0] in config["backbones"]]
    pairs = config["comparison"] if isinstance(config["comparison"], list) else [config["comparison"]]
    config["comparison"] = [p for p in pairs if p["baseline"].split("/")[0] in config["backbones"]]
    del config["references"]
    path = folder / "flux-demo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def tail(run: subprocess.CompletedProcess, lines: int = 60) -> str:
    return "\n".join((run.stdout + run.stderr).splitlines()[-lines:])


def dry_run_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run lists (its threads, when above 1, as `threads`)."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        if rule := re.fullmatch(r"(?:local)?rule (\w+):", line):
            jobs.append((rule.group(1), {}))
        elif (threads := re.fullmatch(r"\s+threads: (\d+)", line)) and jobs:
            jobs[-1][1]["threads"] = threads.group(1)
        elif (resources := re.fullmatch(r"\s+resources: (.*)", line)) and jobs:
            jobs[-1][1].update(item.split("=", 1) for item in resources.group(1).split(", "))
    return jobs


def test_each_profile_is_one_profile_yaml() -> None:
    # Snakemake 9 reads profile.yaml (config.yaml only for compatibility); with both in one
    # folder it would take whichever the directory listing gives first
    folders = sorted(path for path in (REPO / "profiles").iterdir() if path.is_dir())
    assert [path.name for path in folders] == ["default", "slurm"]
    for folder in folders:
        assert sorted(path.name for path in folder.iterdir()) == ["profile.yaml"], folder


@pytest.mark.slow
def test_workstation_profile_applies_by_default(tmp_path: Path) -> None:
    run = snakemake(tmp_path, "-n", "--config", "device=cuda", "weights=random", "--cores", "8")
    assert run.returncode == 0, tail(run)
    assert f"workflow specific profile {REPO / 'profiles' / 'default'}" in run.stderr
    jobs = dict(dry_run_jobs(run.stdout))
    gpu = {rule: res.get("gpu") for rule, res in jobs.items()}
    assert gpu["generate"] == gpu["embed_prompt_identity"] == gpu["trajectory"] == gpu["score"] == "1"
    assert gpu["embed_prompt_style"] == gpu["embed_prompt_object"] == "1"
    assert gpu["aggregate"] is None and gpu["report"] is None
    # the CPU-heavy rules get threads (Snakemake hands them on as OMP_NUM_THREADS)
    threads = {rule: res.get("threads", "1") for rule, res in jobs.items()}
    assert {rule for rule, n in threads.items() if n == "4"} == CPU_HEAVY_RULES
    # tiny models make those jobs import-bound: one thread each, so two run side by side
    tiny = snakemake(tmp_path, "-n", "--config", "device=cpu", "--cores", "8")
    assert tiny.returncode == 0, tail(tiny)
    assert {res.get("threads", "1") for _, res in dry_run_jobs(tiny.stdout)} == {"1"}
    # the profile's keys went through Snakemake's parser: an unknown key is an error
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "profile.yaml").write_text(
        (REPO / "profiles/default/profile.yaml").read_text() + "no-such-option: 1\n"
    )
    run = snakemake(tmp_path, "-n", "--workflow-profile", bad)
    assert run.returncode != 0 and "no-such-option" in run.stderr


def gres_sent(resources: dict[str, str]) -> str:
    """The GPU part of the sbatch call the slurm plugin builds from a job's resources."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.get

    values = {key: int(value) if value.isdigit() else value for key, value in resources.items()}
    return set_gres_string(SimpleNamespace(resources=Resources(values))).strip()


@pytest.mark.parametrize("device, gpus", [("cuda", 1), ("cpu", 0)])
def test_slurm_profile_requests_gpus_only_for_gpu_rules(tmp_path: Path, device: str, gpus: int) -> None:
    run = snakemake(
        tmp_path, "-n", "--workflow-profile", REPO / "profiles/slurm", "--config", f"device={device}"
    )
    assert run.returncode == 0, tail(run)
    assert f"workflow specific profile {REPO / 'profiles' / 'slurm'}" in run.stderr
    jobs = [(rule, res) for rule, res in dry_run_jobs(run.stdout) if rule != "all"]
    assert {rule for rule, _ in jobs} >= GPU_RULES | {"score", "aggregate", "report", "prepare_model"}
    for rule, res in jobs:
        if rule in GPU_RULES and gpus:
            assert res["slurm_partition"] == "gpu" and gres_sent(res) == "--gpus=h100:1", (rule, res)
            assert res["cpus_per_gpu"] == "2", (rule, res)
        else:  # no GPU request at all, not even --gpus=h100:0
            assert res["slurm_partition"] == "cpu" and gres_sent(res) == "", (rule, res)
        assert int(res["mem_mb"]) <= 8000 and int(res["runtime"]) > 0, (rule, res)


def claim(link: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    """Run claim-conf.sh for FOLDER with LINK as Slurm's default config path."""
    env = {**os.environ, "FEWSTEP_SLURM_DEFAULT_CONF": str(link)}
    command = ["bash", CLUSTER / "claim-conf.sh", folder]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def throwaway_slurm(folder: Path, slurmctld_pid: int | None) -> Path:
    """A folder laid out as slurm-up.sh leaves it, its slurmctld pid file naming SLURMCTLD_PID."""
    (folder / "etc").mkdir(parents=True)
    (folder / "run").mkdir()
    (folder / "etc" / "slurm.conf").write_text("ClusterName=fewstep-ci\n")
    if slurmctld_pid is not None:
        (folder / "run" / "slurmctld.pid").write_text(f"{slurmctld_pid}\n")
    return folder / "etc" / "slurm.conf"


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_default_config_link_replaces_only_a_stale_throwaway_slurm(tmp_path: Path) -> None:
    """A link left by a killed run is replaced; a real or running Slurm's config is kept."""
    link, ours = tmp_path / "etc-slurm" / "slurm.conf", tmp_path / "ours"
    wanted = str(ours / "etc" / "slurm.conf")

    assert claim(link, ours).returncode == 0 and os.readlink(link) == wanted
    again = claim(link, ours)
    assert again.returncode == 0 and again.stderr == "" and os.readlink(link) == wanted

    stale = [tmp_path / "gone" / "etc" / "slurm.conf"]  # its folder was removed
    stale.append(throwaway_slurm(tmp_path / "killed", dead_pid()))
    stale.append(throwaway_slurm(tmp_path / "never-started", None))
    for target in stale:
        link.unlink()
        link.symlink_to(target)
        run = claim(link, ours)
        assert run.returncode == 0 and os.readlink(link) == wanted, (target, run.stderr)
        assert f"linked to {target}, whose Slurm is not running" in run.stderr

    running = throwaway_slurm(tmp_path / "running", os.getpid())
    foreign = tmp_path / "site" / "slurm.conf"
    foreign.parent.mkdir()
    foreign.write_text("ClusterName=site\n")
    kept = {
        running: f"belongs to the Slurm in {tmp_path / 'running'}, still running",
        foreign: "which slurm-up.sh did not write",
    }
    for target, reason in kept.items():
        link.unlink()
        link.symlink_to(target)
        run = claim(link, ours)
        assert run.returncode == 1 and os.readlink(link) == str(target), run.stderr
        assert reason in run.stderr and run.stderr.count("\n") == 1

    link.unlink()
    link.write_text("ClusterName=site\n")
    run = claim(link, ours)
    assert run.returncode == 1 and "exists (another Slurm?)" in run.stderr
    assert link.read_text() == "ClusterName=site\n" and not link.is_symlink()


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A private single-node Slurm for this module; stopped by PID afterwards."""
    missing = [
        t
        for t in ("munged", "slurmctld", "slurmd", "sbatch")
        if not shutil.which(t, path="/usr/sbin:/usr/bin")
    ]
    reason = (
        "starting slurmd needs root"
        if os.geteuid() != 0
        else f"Slurm not installed ({', '.join(missing)} missing): apt-get install -y slurm-wlm munge"
        if missing
        else ""
    )
    if reason:
        if os.environ.get("FEWSTEP_REQUIRE_SLURM") == "1":
            pytest.fail(f"FEWSTEP_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="fewstep-slurm-"))
    folder.chmod(0o755)  # munged runs as user munge and must reach its folder
    try:
        up = subprocess.run(
            ["bash", CLUSTER / "slurm-up.sh", folder], capture_output=True, text=True, timeout=120
        )
        if up.returncode != 0:
            pytest.fail(f"tests/cluster/slurm-up.sh failed:\n{up.stderr}")
        yield {"SLURM_CONF": str(folder / "etc" / "slurm.conf")}
    finally:
        subprocess.run(["bash", CLUSTER / "slurm-down.sh", folder], timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def outputs(workdir: Path) -> set[str]:
    """Every output file of a run except logs and W&B runs (named by time and random run ids)."""
    files = [p for top in ("results", "reports") for p in (workdir / top).rglob("*") if p.is_file()]
    parts = [p.relative_to(workdir).parts for p in files]
    return {"/".join(part) for part in parts if "logs" not in part and "wandb" not in part}


def pixels(path: Path) -> str:
    """Hash of the decoded image (mode, size and pixel bytes), not of the PNG file."""
    with Image.open(path) as image:
        return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()


def card_lines(workdir: Path, rule: str = "generate") -> list[str]:
    """What RULE's jobs ("*": every rule's) print as `fewstep <command>: ...`: the GPU card they took."""
    logs = sorted((workdir / "results/demo/logs").glob(f"{rule}/*.log"))
    lines = [line for log in logs for line in log.read_text().splitlines()]
    return [line for line in lines if re.match(r"fewstep [a-z-]+: ", line) and RELEASED not in line]


RELEASED = "GPU card released after"  # a job done with its card hands it on (fewstep.core.gpus)


@pytest.mark.slow
def test_demo_through_slurm_matches_local_run(slurm: dict[str, str], tmp_path: Path) -> None:
    """The demo's FLUX cells with device=auto, so the GPU rules ask Slurm for GPUs; then locally.

    Each run builds its own tiny models: the same bytes come out, down to the PNGs.
    """
    config = ["--config", "device=auto"]
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    local.mkdir()

    # as a user runs it: the demo config's offline W&B mode applies (no WANDB_MODE=disabled)
    user_env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    configfile = flux_demo(tmp_path)
    run = snakemake(
        on_slurm,
        "--workflow-profile",
        REPO / "profiles/slurm",
        *config,
        env={**user_env, **slurm},
        configfile=configfile,
    )
    assert run.returncode == 0, tail(run)
    env = {k: v for k, v in user_env.items() if k != "SLURM_CONF"}
    env.update(FEWSTEP_GPUS="2", FEWSTEP_GPU_LOCK_DIR=str(tmp_path / "gpu-locks"))
    run = snakemake(local, "--resources", "gpu=2", *config, env=env, configfile=configfile)
    assert run.returncode == 0, tail(run)

    # same files, same images pixel for pixel
    assert outputs(on_slurm) == outputs(local)
    runs = {
        d: sorted(p.parent.parent.parent.name for p in (d / "results/demo/wandb").rglob("run-*.wandb"))
        for d in (on_slurm, local)
    }
    assert (
        runs[on_slurm] == runs[local] and len(runs[local]) == 7 + 7 + 2 + 1
    )  # one W&B run per cell and stage
    images = sorted(p.relative_to(local) for p in (local / "results/demo/cells").rglob("*.png"))
    assert len(images) == 7 * 4  # 7 cells x 2 identities x 2 prompts x 1 seed
    assert [pixels(on_slurm / p) for p in images] == [pixels(local / p) for p in images]
    assert [(on_slurm / p).read_bytes() == (local / p).read_bytes() for p in images] == [True] * len(images)
    # same cells and numbers in the aggregate tables; only timings differ
    summary = {d: pd.read_csv(d / "results/demo/aggregate/summary.csv") for d in (on_slurm, local)}
    kept = {d: s[~s["metric"].isin(TIMING)].reset_index(drop=True) for d, s in summary.items()}
    metrics = set(kept[local]["metric"])
    assert {"id_sim", "face_detected", "lpips_ref", "lpips_anchor", "clip_score"} <= metrics
    assert len(kept[local]) == 7 * len(metrics)
    pd.testing.assert_frame_equal(kept[on_slurm], kept[local])
    assert summary[on_slurm][["cell_id", "metric", "n"]].equals(summary[local][["cell_id", "metric", "n"]])
    per_image = {  # all but timings and the PNG file hash
        d: pd.read_parquet(d / "results/demo/aggregate/per_image.parquet").drop(columns=TIMING) for d in kept
    }
    pd.testing.assert_frame_equal(per_image[on_slurm], per_image[local])

    # Slurm gave each GPU job a card; the local jobs took the two simulated cards by lock
    slurm_cards = card_lines(on_slurm)
    assert len(slurm_cards) == 2  # the two generation jobs (dev, schnell), each all its step counts
    assert all(re.fullmatch(r".*assigned by Slurm .*CUDA_VISIBLE_DEVICES=[01]", line) for line in slurm_cards)
    # Which GPU jobs run side by side depends on when their inputs finish (the two generate jobs
    # wait on different prompt embeddings), so both cards are asked of the run's GPU jobs together.
    lock = re.escape(str(tmp_path / "gpu-locks"))
    local_cards = [
        re.fullmatch(rf"fewstep ([a-z-]+): GPU card (\d) of 0,1 \(lock {lock}/gpu(\d)\.lock\)", line)
        for line in card_lines(local, "*")
    ]
    assert all(local_cards) and all(m.group(2) == m.group(3) for m in local_cards)
    for rule in ("generate", "score"):  # each handed its card on before writing its W&B runs
        logs = list((local / "results/demo/logs" / rule).glob("*.log"))
        assert logs and all(RELEASED in log.read_text() for log in logs), rule
    commands = sorted(m.group(1) for m in local_cards)  # 2 of each: per T5 length, per backbone
    assert commands == sorted(["embed-prompts", "generate", "score", "trajectory"] * 2)
    assert {m.group(2) for m in local_cards} == {"0", "1"}

    # what Slurm was asked for: GPUs for the GPU rules only, in the profile's partitions
    squeue = subprocess.run(
        ["squeue", "-t", "all", "-h", "-O", "Comment:|,Partition:|,tres-per-job:|,State:|"],
        capture_output=True,
        text=True,
        env={**os.environ, **slurm},
        check=True,
    ).stdout.splitlines()
    jobs = [line.split("|")[:4] for line in squeue]
    # all but localrule all: 8 models (dlib's face models among them), 4 embedding jobs (2 T5
    # lengths, 2 identities), 2 generate, 2 score, 2 trajectory,
    # aggregate, report and the W&B aggregate run
    assert len(jobs) == 21 and all(state == "COMPLETED" for *_, state in jobs)
    for comment, partition, tres, _ in jobs:
        rule = re.match(r"rule_(\w+?)(_wildcards_.*)?$", comment).group(1)
        expected = ("gpu", "gres:gpu:h100:1") if rule in GPU_RULES else ("cpu", "N/A")
        assert (partition, tres) == expected, comment
    # one Slurm log per job in the profile's folder (kept for successful jobs too)
    assert len(list((on_slurm / "logs/slurm").rglob("*.log"))) == 21
    assert len(list((on_slurm / "logs/slurm/rule_generate").glob("*/*.log"))) == 2
