"""The whole workflow on one GPU host, timed: Snakemake through the workstation profile, an NVML
sampler beside it, and what `fewstep estimate` predicted for the same config.

    python benchmarks/workflow_gpu.py --out bench                        # config/gpu.yaml
    python benchmarks/workflow_gpu.py --out bench --wheels .whl          # offline host: carried wheels
    python benchmarks/workflow_gpu.py --resummarise bench                # again, from the saved files

Runs ``snakemake --cores all --configfile <config> --workflow-profile profiles/default`` in a fresh
working folder (``--workdir``), while a side process samples every GPU every ``--sample-ms``
(NVML through pynvml; without it ``nvidia-smi -lms``): utilisation, memory, which processes hold
memory on which card, and which process holds each card's lock (`fewstep.core.gpus`; the kernel's
lock table, /proc/locks); their command lines name the job. Writes ``workflow_gpu.json`` and
``workflow_gpu.md`` under ``--out``: the whole run's wall time; per rule its jobs' wall times
(Snakemake's benchmark files; the Snakemake log's one-second stamps for rules without one); GPU
busy over the whole run, from the first generation job to the last score job, and per job, on its
card from the lock table (else the log stamps); the idle gaps between GPU jobs; peak GPU memory per
job; whether every job kept to the card its lock gave it; and the estimate beside the measured
wall time (the summary: ``workflow_gpu_summary.py``). ``--limit-s`` is the script's own time:
Snakemake is stopped 45 s before it (SIGINT, then SIGKILL), and the files are still written.
Beside them go what the summary is computed from (the Snakemake log, the sampler's rows, every
job's log and benchmark file), so ``--resummarise`` can compute it again after a change to the
summary, on any machine.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))  # fewstep, imported lazily

from workflow_gpu_summary import markdown, summarise  # noqa: E402

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
MARKER = ".workflow_gpu"  # a working folder this script made (and may empty)
GPU_RULES = ("embed_prompt", "embed_reference", "generate", "trajectory", "score")
STAMP = re.compile(r"^\[(?P<stamp>\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
JOB_START = re.compile(r"^(?:local)?rule (?P<rule>\w+):$")
FINISHED = re.compile(r"^Finished jobid: (?P<jobid>\d+) \(Rule: (?P<rule>\w+)\)")
CLAIM = re.compile(
    r"fewstep [\w-]+: (?:GPU card (?P<card>\S+) of \S+ \(lock [^)]*\)"
    r"(?: after waiting (?P<waited>[\d.]+) s)?)"
    r"(?: \(libraries imported before it, (?P<imported>[\d.]+) s\))?"
)
RELEASED = re.compile(r"fewstep [\w-]+: GPU card released after (?P<held>[\d.]+) s on it")
#: a score job's metrics that need no card, computed (and the others' networks loaded) before it
#: takes one (`fewstep.jobs.score`)
CPU_BEFORE_CARD = re.compile(r" before taking a card \((?P<seconds>[\d.]+) s\)")
#: `python -m fewstep <command> ...` -> (rule, name) as the benchmark and log files name the job
COMMANDS = {
    "generate": ("generate", ("--job", "--cell")),
    "score": ("score", ("--job", "--cell")),
    "trajectory": ("trajectory", ("--cell",)),
    "embed-prompts": ("embed_prompt", ("--family", "--variant")),
    "embed-references": ("embed_reference", ("--family", "--file", "--reference")),
}


# --------------------------------------------------------------------------- sampling


def sample(path: Path, interval_s: float) -> None:
    """Side process: one row per GPU and sample, one per (GPU, process) holding memory, and one per
    card whose lock file a process holds (the kernel's lock table, read first: a job takes its card
    before it allocates and frees its memory before it hands the card on)."""
    import pynvml

    from fewstep.core.gpus import lock_dir

    folder = lock_dir()
    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    with path.open("w", buffering=1) as out:
        while True:
            now = time.time()
            for card, pid in lock_holders(Path("/proc/locks").read_text(), lock_files(folder)):
                rule, name = job_of(command_line(pid)) or ("", "")
                out.write(f"lock,{now:.3f},{card},{pid},{rule},{name}\n")
            for index, handle in enumerate(handles):
                util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                out.write(f"gpu,{now:.3f},{index},{util},{used:.0f}\n")
                try:
                    processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except pynvml.NVMLError:  # no process accounting here: the card's rows suffice
                    processes = []
                for proc in processes:
                    job = job_of(command_line(proc.pid))
                    if job:
                        memory = (proc.usedGpuMemory or 0) / 2**20
                        out.write(f"proc,{now:.3f},{index},{proc.pid},{memory:.0f},{job[0]},{job[1]}\n")
            time.sleep(max(0.0, interval_s - (time.time() - now)))


def lock_files(folder: Path) -> dict[tuple[int, int, int], int]:
    """Each card lock file `gpu<N>.lock` in `folder` that exists now, as /proc/locks names it
    ((device major, minor, inode)) -> its card N."""
    files = {}
    for path in folder.glob("gpu*.lock"):
        card = path.stem.removeprefix("gpu")
        with contextlib.suppress(OSError):  # removed since the glob
            stat = path.stat()
            if card.isdigit():
                files[(os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino)] = int(card)
    return files


def lock_holders(proc_locks: str, files: dict[tuple[int, int, int], int]) -> list[tuple[int, int]]:
    """(card, pid) for every exclusive flock held on a card's lock file, from the text of
    /proc/locks (`3: FLOCK  ADVISORY  WRITE 2711 00:2b:1234 0 EOF`: pid, then hex major and minor
    and decimal inode); waiters (`->`), shared and POSIX locks left out. `files`: `lock_files`."""
    held = []
    for line in proc_locks.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[3] != "WRITE":  # a waiter's is `->`
            continue
        major, minor, inode = fields[5].split(":")
        card = files.get((int(major, 16), int(minor, 16), int(inode)))
        if card is not None:
            held.append((card, int(fields[4])))
    return sorted(held)


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def job_of(argv: list[str]) -> tuple[str, str] | None:
    """(rule, name) of a `python -m fewstep <command>` process, None for any other process."""
    if "fewstep" not in argv or argv.index("fewstep") + 1 >= len(argv):
        return None
    command = argv[argv.index("fewstep") + 1]
    options = {key: value for key, value in zip(argv, argv[1:], strict=False) if key.startswith("--")}
    if command not in COMMANDS:
        return None
    rule, keys = COMMANDS[command]
    if command == "embed-prompts" and "--role" in options:  # one rule per prompt group
        from fewstep.core.study import prompt_rule

        rule = prompt_rule(options["--role"])
    return rule, "/".join(options[key] for key in keys if key in options)


def read_samples(path: Path) -> tuple[list[tuple[float, int, float, float]], list[tuple], list[tuple]]:
    """(t, gpu, busy 0-1, memory MiB) rows, (t, gpu, pid, memory MiB, rule, name) rows and
    (t, card, pid, rule, name) lock holders, from this script's sampler or from
    `nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits`
    (GPU rows only)."""
    gpus, procs, locks = [], [], []
    if not path.exists():
        return gpus, procs, locks
    for row in csv.reader(path.read_text().splitlines()):
        row = [cell.strip() for cell in row]
        if row and row[0] == "gpu":
            gpus.append((float(row[1]), int(row[2]), float(row[3]) / 100, float(row[4])))
        elif row and row[0] == "proc":
            procs.append((float(row[1]), int(row[2]), int(row[3]), float(row[4]), row[5], row[6]))
        elif row and row[0] == "lock":
            locks.append((float(row[1]), int(row[2]), int(row[3]), row[4], row[5]))
        elif len(row) == 4 and row[1].isdigit():
            stamp = datetime.datetime.strptime(row[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            gpus.append((stamp, int(row[1]), float(row[2]) / 100, float(row[3])))
    return gpus, procs, locks


def start_sampler(path: Path, interval_ms: int) -> subprocess.Popen | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        command = [sys.executable, str(SCRIPT), "--sample", str(path), "--sample-ms", str(interval_ms)]
        return subprocess.Popen(command)
    except Exception as err:  # ImportError, or pynvml.NVMLError (no driver)
        print(f"workflow_gpu: no NVML ({err}); sampling with nvidia-smi", file=sys.stderr)
    if shutil.which("nvidia-smi") is None:
        print("workflow_gpu: no pynvml and no nvidia-smi: no GPU samples", file=sys.stderr)
        return None
    query = "--query-gpu=timestamp,index,utilization.gpu,memory.used"
    out = path.open("w")
    return subprocess.Popen(
        ["nvidia-smi", query, "--format=csv,noheader,nounits", f"-lms={interval_ms}"], stdout=out
    )


# --------------------------------------------------------------------------- the run's records


def parse_snakemake_log(text: str) -> list[dict[str, Any]]:
    """Every job the Snakemake log started: rule, jobid, log and benchmark paths, start and end
    (epoch seconds, to the second; end None when it never ended), whether it failed. A retried
    job keeps its last attempt."""
    jobs: dict[str, dict[str, Any]] = {}
    stamp, current, failing = None, None, False
    for line in text.splitlines():
        line, field = line.rstrip(), line.strip().partition(": ")
        if match := STAMP.match(line):
            stamp = time.mktime(time.strptime(match["stamp"], "%a %b %d %H:%M:%S %Y"))
        elif match := JOB_START.match(line):
            current, failing = {"rule": match["rule"], "start": stamp, "end": None, "failed": False}, False
            current |= {"log": None, "benchmark": None}
        elif line.startswith("Error in rule "):
            current, failing = None, True
        elif failing and field[0] == "jobid" and field[2] in jobs:
            jobs[field[2]] |= {"end": stamp, "failed": True}
            failing = False
        elif current is not None and field[0] in ("log", "benchmark"):
            current[field[0]] = field[2].split(",")[0].strip()
        elif current is not None and field[0] == "jobid":
            jobs[field[2]] = current
        elif match := FINISHED.match(line):
            if match["jobid"] in jobs:
                jobs[match["jobid"]]["end"] = stamp
    return [dict(job, jobid=int(jobid)) for jobid, job in jobs.items() if job["rule"] != "all"]


def gpu_rule(rule: str) -> bool:
    """Whether the rule's jobs take a card (a prompt group's rule is embed_prompt_<role>)."""
    from fewstep.core.study import is_prompt_rule

    return rule in GPU_RULES or is_prompt_rule(rule)


def job_name(job: dict[str, Any]) -> str:
    """A job's name as its log and benchmark files spell it (`/` as `__`)."""
    path = job.get("benchmark") or job.get("log") or ""
    return Path(path).stem.replace("__", "/") if path else job["rule"]


def measured_jobs(workdir: Path, log_text: str, gpu: bool = True) -> list[dict[str, Any]]:
    """Each job's window: from its benchmark file (wall seconds; written as the job ends) where
    the rule has one, else from the Snakemake log; its card claim from its own log. `gpu`: the
    config's GPU rules take a card (not with `device: cpu`)."""
    jobs = []
    for job in parse_snakemake_log(log_text):
        bench = workdir / job["benchmark"] if job["benchmark"] else None
        if bench is not None and bench.exists() and not job["failed"]:
            rows = list(csv.DictReader(bench.read_text().splitlines(), delimiter="\t"))
            end = bench.stat().st_mtime
            start = end - float(rows[-1]["s"])
        elif job["end"] is not None:
            start, end = job["start"], job["end"]
        else:
            continue  # never finished (the run was stopped)
        log = workdir / job["log"] if job["log"] else None
        text = log.read_text(errors="replace") if log is not None and log.exists() else ""
        claim, released, before = CLAIM.search(text), RELEASED.search(text), CPU_BEFORE_CARD.search(text)
        jobs.append(
            {
                "rule": job["rule"],
                "name": job_name(job),
                "start": start,
                "end": end,
                "gpu": gpu and gpu_rule(job["rule"]),
                "card": claim["card"] if claim else None,
                "waited_s": float(claim["waited"]) if claim and claim["waited"] else 0.0,
                "imported_s": float(claim["imported"]) if claim and claim["imported"] else 0.0,
                "cpu_before_card_s": float(before["seconds"]) if before else 0.0,
                "held_s": float(released["held"]) if released else None,  # the card freed before the end
                "failed": job["failed"],
            }
        )
    return sorted(jobs, key=lambda job: job["start"])


# --------------------------------------------------------------------------- the run

#: a sweep's folder of job files -> the archive under --out that keeps them
JOB_FILES = {"logs": "job_logs", "benchmarks": "job_benchmarks"}
#: what a run leaves under --out besides its summary: the files the summary is computed from
SAVED = ("snakemake.log", "samples.csv", *(f"{archive}.tar.gz" for archive in JOB_FILES.values()))


def install_wheels(wheels: Path, site: Path) -> None:
    """The carried wheels into `site` (no index, no dependencies: the folder holds them all),
    first on this process's and every job's import path."""
    files = sorted(str(path) for path in wheels.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    command += ["--no-cache-dir", "--upgrade", "--target", str(site), *files]
    subprocess.run(command, check=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


def card_and_torch() -> tuple[str, str]:
    """The first card's name (nvidia-smi: no CUDA context in this process) and torch's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        card = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        card = "CPU"
    try:
        return card.strip(), version("torch")
    except PackageNotFoundError:
        return card.strip(), "none"


def estimate_card(card_name: str, known: list[str], wanted: str | None) -> str | None:
    """The figures to estimate with: `wanted`, else the card's own (H100 -> h100), else the first."""
    if wanted:
        return wanted
    own = next((key for key in known if key in card_name.lower().replace(" ", "")), None)
    return own or (known[0] if known else None)


def run_snakemake(command: list[str], workdir: Path, limit_s: float) -> tuple[int, float, float, str]:
    """Run Snakemake, its output kept; stopped after `limit_s`: SIGINT to it and its jobs (its own
    process group), SIGKILL to all of them 15 s later."""
    start = time.time()
    log_path = workdir / "snakemake.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=max(limit_s, 1.0))
        except subprocess.TimeoutExpired:
            print(f"workflow_gpu: stopping Snakemake after {limit_s:.0f} s", file=sys.stderr)
            os.killpg(proc.pid, signal.SIGINT)
            try:
                code = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                code = None
            with contextlib.suppress(ProcessLookupError):  # jobs Snakemake left running
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait() if code is None else code
    return code, start, time.time(), log_path.read_text(errors="replace")


def save_job_files(results: Path, out: Path) -> None:
    """Every job's log and benchmark file (mtimes kept: a benchmark file's is its job's end)."""
    for folder, archive in JOB_FILES.items():
        if (results / folder).is_dir():
            shutil.make_archive(str(out / archive), "gztar", results / folder)


def resummarise(out: Path) -> dict[str, Any]:
    """The saved run under `out` summarised again from its own files (`SAVED`), its JSON and
    markdown rewritten; one line naming what is missing where a run saved too little."""
    result = json.loads((out / "workflow_gpu.json").read_text())
    missing = [key for key in ("run_window", "results", "gpu_rules_on_card") if key not in result]
    missing += [name for name in SAVED if not (out / name).exists()]
    if missing:
        sys.exit(f"workflow_gpu: {out} lacks {', '.join(missing)}; only runs that saved them re-summarise")
    if Path(result["results"]).is_absolute():  # the log names its files there, not under the run's folder
        sys.exit(f"workflow_gpu: {out} ran with an absolute results_dir; re-summarise where it ran")
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tempfile.TemporaryDirectory() as workdir:
        results = Path(workdir) / result["results"]
        for folder, archive in JOB_FILES.items():
            with tarfile.open(out / f"{archive}.tar.gz") as files:
                files.extractall(results / folder, **safe)
        log_text = (out / "snakemake.log").read_text(errors="replace")
        jobs = measured_jobs(Path(workdir), log_text, gpu=result["gpu_rules_on_card"])
    gpu_samples, proc_samples, lock_samples = read_samples(out / "samples.csv")
    result["summary"] = summarise(
        jobs,
        gpu_samples,
        proc_samples,
        tuple(result["run_window"]),
        result["summary"]["estimate_s"],
        lock_samples=lock_samples,
    )
    result["resummarised"] = time.strftime("%Y-%m-%d")
    (out / "workflow_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "workflow_gpu.md").write_text(markdown(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for workflow_gpu.json and workflow_gpu.md")
    parser.add_argument("--configfile", type=Path, default=REPO / "config" / "gpu.yaml")
    parser.add_argument("--wheels", type=Path, help="install these carried wheels first (offline hosts)")
    parser.add_argument("--site", type=Path, default=Path("/tmp/fewstep-site"), help="where --wheels go")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fewstep-gpu-run"))
    parser.add_argument(
        "--limit-s", type=float, default=570.0, help="this script's time: Snakemake is stopped 45 s before"
    )
    parser.add_argument("--card", help="benchmarks/results figures to estimate with (default: this card's)")
    parser.add_argument("--sample-ms", type=int, default=100)
    parser.add_argument(
        "--resume", action="store_true", help="keep --workdir: finish a stopped run (times only the rest)"
    )
    parser.add_argument(
        "--resummarise", type=Path, metavar="OUT", help="summarise a saved run's --out folder again"
    )
    parser.add_argument("--sample", type=Path, help=argparse.SUPPRESS)  # the sampler side process
    args = parser.parse_args()
    began = time.time()
    if args.sample:
        return sample(args.sample, args.sample_ms / 1000)
    if args.resummarise:
        return print(markdown(resummarise(args.resummarise.resolve())))
    if args.out is None:
        parser.error("--out is required")
    args.out, args.workdir, config_file = (
        args.out.resolve(),
        args.workdir.resolve(),
        args.configfile.resolve(),
    )
    if args.wheels:
        install_wheels(args.wheels.resolve(), args.site.resolve())
    from fewstep.analysis.estimate import cards, estimate
    from fewstep.core.study import load_study

    if args.workdir.exists() and not args.resume:
        if not (args.workdir / MARKER).exists():
            sys.exit(
                f"workflow_gpu: {args.workdir} exists and this script did not make it; pick another --workdir"
            )
        shutil.rmtree(args.workdir)
    if not (args.workdir / MARKER).exists():
        (args.workdir / "bin").mkdir(parents=True)
        (args.workdir / MARKER).touch()
        (args.workdir / "bin" / "python").symlink_to(sys.executable)  # jobs call `python`
    os.environ["PATH"] = os.pathsep.join([str(args.workdir / "bin"), os.environ["PATH"]])
    # the first job to import a module caches its bytecode for the others (wheels install uncompiled)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    card, torch_version = card_and_torch()
    figures = estimate_card(card, sorted(cards()), args.card)
    config = load_study([config_file])
    predicted = None
    if figures is not None:
        os.chdir(args.workdir)  # the config's relative folders, as Snakemake will see them
        predicted = estimate(config, figures).wall_seconds
    samples = args.workdir / "samples.csv"
    sampler = start_sampler(samples, args.sample_ms)
    command = [sys.executable, "-m", "snakemake", "--cores", "all", "--configfile", str(config_file)]
    command += [
        "--snakefile",
        str(REPO / "Snakefile"),
        "--workflow-profile",
        str(REPO / "profiles" / "default"),
    ]
    if args.resume:  # a stopped run's lock
        subprocess.run([*command, "--unlock"], cwd=args.workdir, capture_output=True, check=False)
    try:
        code, start, end, log_text = run_snakemake(
            command, args.workdir, began + args.limit_s - 45 - time.time()
        )
    finally:
        if sampler is not None:
            sampler.terminate()
            sampler.wait()
    gpu_samples, proc_samples, lock_samples = read_samples(samples)
    jobs = measured_jobs(args.workdir, log_text, gpu=config["device"] != "cpu")
    results = f"{config['results_dir']}/{config['sweep']}"  # as the Snakemake log names its files
    result = {
        "card": card,
        "torch": torch_version,
        "date": time.strftime("%Y-%m-%d"),
        "config": str(config_file.relative_to(REPO) if config_file.is_relative_to(REPO) else config_file),
        "command": ["snakemake", *command[3:]],
        "returncode": code,
        "run_window": [start, end],  # epoch seconds, as the sampler's rows
        "results": results,
        "gpu_rules_on_card": config["device"] != "cpu",
        "estimate_card": figures,
        "samples": len(gpu_samples),
        "summary": summarise(
            jobs, gpu_samples, proc_samples, (start, end), predicted, lock_samples=lock_samples
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workflow_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "workflow_gpu.md").write_text(markdown(result))
    for name in ("snakemake.log", "samples.csv"):
        if (args.workdir / name).exists():
            shutil.copy(args.workdir / name, args.out / name)
    save_job_files(args.workdir / results, args.out)
    print(markdown(result))
    if code != 0:
        print(log_text[-4000:], file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
