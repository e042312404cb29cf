"""benchmarks/workflow_gpu.py and workflow_gpu_summary.py: the GPU run's records (Snakemake log,
benchmark files, job logs, sampler rows) turned into wall times, GPU busy, idle gaps, peak memory
and card keeping, checked on records written here."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import REPO


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


workflow_gpu, gpu_summary = load("workflow_gpu"), load("workflow_gpu_summary")

T0 = 1_800_000_000.0  # the run's start, epoch seconds


def stamp(t: float) -> str:
    return f"[{time.asctime(time.localtime(t))}]"


def test_a_job_process_is_named_as_its_benchmark_file_names_it():
    job_of = workflow_gpu.job_of
    python = ["python", "-m", "fewstep"]
    assert job_of([*python, "generate", "--batch-size", "1", "--job", "flux-dev/none"]) == (
        "generate",
        "flux-dev/none",
    )
    assert job_of([*python, "embed-prompts", "--family", "flux", "--variant", "L512"]) == (
        "embed_prompt",
        "flux/L512",
    )
    assert job_of([*python, "embed-prompts", "--family", "sd15", "--variant", "N0d15"]) == (
        "embed_prompt",
        "sd15/N0d15",
    )
    style = [*python, "embed-prompts", "--family", "sd15", "--variant", "N0d15", "--role", "style"]
    assert job_of(style) == ("embed_prompt_style", "sd15/N0d15")  # the rule of the style prompts
    assert job_of([*style[:-1], "any"]) == ("embed_prompt", "sd15/N0d15")
    references = [*python, "embed-references", "--family", "sdxl", "--file", "plus", "--reference", "coffee"]
    assert job_of(references) == ("embed_reference", "sdxl/plus/coffee")
    assert job_of([*python, "trajectory", "--cell", "flux-schnell/none/4"]) == (
        "trajectory",
        "flux-schnell/none/4",
    )
    assert job_of([*python, "aggregate"]) is None and job_of(["python", "train.py"]) is None


def snakemake_log(jobs: list[tuple[float, str, int, str, str | None, float | None]], failed=()) -> str:
    """Snakemake's console output for (start, rule, jobid, log, benchmark, end) jobs; the jobids in
    `failed` end with an error at `end`."""
    events = []
    for start, rule, jobid, log, benchmark, end in jobs:
        lines = [stamp(start), f"{'localrule' if rule == 'all' else 'rule'} {rule}:", f"    log: {log}"]
        lines += [f"    jobid: {jobid}"] + ([f"    benchmark: {benchmark}"] if benchmark else [])
        lines += ["    resources: tmpdir=/tmp, gpu=1"]
        events.append((start, lines))
        if jobid in failed:
            error = [f"Error in rule {rule}:", "    message: None", f"    jobid: {jobid}"]
            events.append(
                (end, [stamp(end), *error, f"    log: {log} (check log file(s) for error details)"])
            )
        elif end is not None:
            events.append((end, [stamp(end), f"Finished jobid: {jobid} (Rule: {rule})", "1 of 5 steps done"]))
    return "\n".join(line for _, lines in sorted(events, key=lambda e: e[0]) for line in lines) + "\n"


def test_job_windows_come_from_benchmark_files_else_the_snakemake_log(tmp_path):
    logs, benches = tmp_path / "results/s/logs", tmp_path / "results/s/benchmarks"
    (logs / "generate").mkdir(parents=True)
    (logs / "prepare_model").mkdir(parents=True)
    (benches / "generate").mkdir(parents=True)
    (logs / "generate/flux-dev__none.log").write_text(
        "fewstep generate: GPU card 0 of 0 (lock /tmp/locks/gpu0.lock) after waiting 3 s\nrendering\n"
    )
    (logs / "prepare_model/flux-dev.log").write_text("fewstep prepare-model: random configs written\n")
    bench = benches / "generate/flux-dev__none.tsv"
    bench.write_text("s\th:m:s\tmax_rss\n20.250\t0:00:20\t1000\n")
    os.utime(bench, (T0 + 30.5, T0 + 30.5))
    text = snakemake_log(
        [
            (T0, "prepare_model", 3, "results/s/logs/prepare_model/flux-dev.log", None, T0 + 6),
            (T0 + 9, "generate", 1, "results/s/logs/generate/flux-dev__none.log",
             "results/s/benchmarks/generate/flux-dev__none.tsv", T0 + 31),
            (T0 + 31, "score", 2, "results/s/logs/score/flux-dev__none.log", None, None),  # stopped
            (T0 + 33, "embed_identity", 4, "results/s/logs/embed_identity/t1.log", None, T0 + 35),
            (T0 + 36, "embed_prompt_style", 5, "results/s/logs/embed_prompt_style/sd15__N0.log", None, T0+38),
            (T0 + 40, "all", 0, "", None, T0 + 40),
        ],
        failed={4},
    )  # fmt: skip
    jobs = workflow_gpu.measured_jobs(tmp_path, text)
    assert [(j["rule"], j["name"], j["failed"]) for j in jobs] == [
        ("prepare_model", "flux-dev", False),
        ("generate", "flux-dev/none", False),
        ("embed_identity", "t1", True),
        ("embed_prompt_style", "sd15/N0", False),
    ]
    prepare, generate, failed, style_prompts = jobs
    assert style_prompts["gpu"]  # a prompt group's rule takes a card like embed_prompt
    assert (failed["start"], failed["end"], failed["card"]) == (T0 + 33, T0 + 35, None)
    assert (prepare["start"], prepare["end"], prepare["gpu"], prepare["card"]) == (T0, T0 + 6, False, None)
    assert generate["end"] == pytest.approx(T0 + 30.5) and generate["start"] == pytest.approx(T0 + 10.25)
    assert (generate["gpu"], generate["card"], generate["waited_s"]) == (True, "0", 3.0)
    on_cpu = workflow_gpu.measured_jobs(tmp_path, text, gpu=False)  # device: cpu takes no card
    assert [j["gpu"] for j in on_cpu] == [False, False, False, False]


def test_a_saved_run_summarises_again_from_its_own_files(tmp_path):
    """`--resummarise`: the job logs and benchmark files saved beside the summary (their mtimes
    kept), the Snakemake log and the sampler's rows give the summary the run gave."""
    run, out = tmp_path / "run", tmp_path / "out"
    results = run / "results/s"
    for folder in ("logs/generate", "benchmarks/generate", "logs/score"):
        (results / folder).mkdir(parents=True)
    (results / "logs/generate/flux-dev__none.log").write_text(
        "fewstep generate: GPU card 0 of 0 (lock /tmp/l/gpu0.lock) (libraries imported before it, 4.0 s)\n"
    )
    (results / "logs/score/flux-dev__none.log").write_text(
        "lpips loaded before taking a card (1.5 s)\n"
        "fewstep score: GPU card 0 of 0 (lock /tmp/l/gpu0.lock) after waiting 2.0 s\n"
    )
    bench = results / "benchmarks/generate/flux-dev__none.tsv"
    bench.write_text("s\th:m:s\tmax_rss\n20.250\t0:00:20\t1000\n")
    os.utime(bench, (T0 + 30.25, T0 + 30.25))
    log_text = snakemake_log(
        [
            (T0 + 9, "generate", 1, "results/s/logs/generate/flux-dev__none.log",
             "results/s/benchmarks/generate/flux-dev__none.tsv", T0 + 31),
            (T0 + 12, "score", 2, "results/s/logs/score/flux-dev__none.log", None, T0 + 40),
        ]
    )  # fmt: skip
    samples = [f"gpu,{T0 + k + 0.5},0,{90 if 14 < k < 30 else 5},20000" for k in range(45)]
    holders = {4242: "generate,flux-dev/none", 4343: "score,flux-dev/none"}
    pids = {k: 4242 if k < 30 else 4343 for k in range(14, 40)}
    samples += [f"lock,{T0 + k + 0.5},0,{pid},{holders[pid]}" for k, pid in pids.items()]
    out.mkdir()
    (out / "snakemake.log").write_text(log_text)
    (out / "samples.csv").write_text("\n".join(samples) + "\n")
    workflow_gpu.save_job_files(results, out)
    jobs = workflow_gpu.measured_jobs(run, log_text)
    assert jobs[1]["cpu_before_card_s"] == 1.5 and jobs[0]["end"] == T0 + 30.25
    gpu_samples, proc_samples, lock_samples = workflow_gpu.read_samples(out / "samples.csv")
    summary = gpu_summary.summarise(
        jobs, gpu_samples, proc_samples, (T0, T0 + 45), 50.0, lock_samples=lock_samples
    )
    assert summary["kept_to_cards"]["checked_on"] == "lock table" and summary["kept_to_cards"]["ok"]
    result = {
        "card": "c",
        "date": "d",
        "command": ["snakemake"],
        "returncode": 0,
        "torch": "t",
        "config": "g",
    }
    result |= {"estimate_card": "h100", "run_window": [T0, T0 + 45], "results": "results/s"}
    (out / "workflow_gpu.json").write_text(json.dumps({**result, "summary": {"estimate_s": 50.0}}))
    with pytest.raises(SystemExit, match="lacks gpu_rules_on_card"):
        workflow_gpu.resummarise(out)
    result["gpu_rules_on_card"] = True
    (out / "workflow_gpu.json").write_text(json.dumps({**result, "summary": {"estimate_s": 50.0}}))
    again = workflow_gpu.resummarise(out)
    assert again["summary"] == json.loads(json.dumps(summary)) and again["resummarised"]
    assert json.loads((out / "workflow_gpu.json").read_text()) == again
    assert (out / "workflow_gpu.md").read_text() == gpu_summary.markdown(again)
    (out / "job_benchmarks.tar.gz").unlink()
    with pytest.raises(SystemExit, match="lacks job_benchmarks.tar.gz"):
        workflow_gpu.resummarise(out)


def test_samples_of_the_sampler_and_of_nvidia_smi_are_read_alike(tmp_path):
    ours = tmp_path / "ours.csv"
    ours.write_text(
        "lock,1800000000.100,0,4242,generate,flux-dev/none\ngpu,1800000000.100,0,87,30000\n"
        "proc,1800000000.100,0,4242,29500,generate,flux-dev/none\nlock,1800000000.200,1,999,,\n"
    )
    gpus, procs, locks = workflow_gpu.read_samples(ours)
    assert gpus == [(1800000000.1, 0, 0.87, 30000.0)]
    assert procs == [(1800000000.1, 0, 4242, 29500.0, "generate", "flux-dev/none")]
    assert locks == [(1800000000.1, 0, 4242, "generate", "flux-dev/none"), (1800000000.2, 1, 999, "", "")]
    smi = tmp_path / "smi.csv"
    smi.write_text("2027/01/15 08:00:00.250, 1, 45, 1024\n")
    gpus, procs, locks = workflow_gpu.read_samples(smi)
    expected = time.mktime(time.strptime("2027/01/15 08:00:00", "%Y/%m/%d %H:%M:%S")) + 0.25
    assert gpus == [(pytest.approx(expected), 1, 0.45, 1024.0)] and procs == [] and locks == []


PROC_LOCKS = """\
1: POSIX  ADVISORY  WRITE 1520 00:19:912 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 fe:00:2146320 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4343 fe:00:2146320 0 EOF
3: FLOCK  ADVISORY  READ  777 fe:00:2146321 0 EOF
4: FLOCK  ADVISORY  WRITE 4444 fe:00:2146322 0 EOF
5: OFDLCK ADVISORY  READ  -1 00:06:1028 0 EOF
6: FLOCK  ADVISORY  WRITE 5555 fe:01:2146320 0 EOF
7: POSIX  ADVISORY  WRITE 666 fe:00:2146322 0 EOF
8: FLOCK  ADVISORY  WRITE 888 00:2b:1234 0 EOF
"""


def test_the_lock_table_names_the_process_holding_each_card():
    """Card 0's holder, not the process waiting for it; card 1's flock, not a POSIX lock on the
    same file; no shared flock (card 2), same inode on another device, or other files."""
    files = {(0xFE, 0, 2146320): 0, (0xFE, 0, 2146322): 1, (0xFE, 0, 2146321): 2}
    assert workflow_gpu.lock_holders(PROC_LOCKS, files) == [(0, 4242), (1, 4444)]
    assert workflow_gpu.lock_holders(PROC_LOCKS, {}) == []


def test_a_card_lock_held_here_is_found_in_the_kernel_lock_table(tmp_path):
    import fcntl

    assert workflow_gpu.lock_files(tmp_path) == {}  # no lock file yet
    (tmp_path / "gpu1.lock").touch()  # not locked
    with (tmp_path / "gpu0.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holders = workflow_gpu.lock_holders(
            Path("/proc/locks").read_text(), workflow_gpu.lock_files(tmp_path)
        )
    assert sorted(workflow_gpu.lock_files(tmp_path).values()) == [0, 1]
    assert holders == [(0, os.getpid())]


def job(rule, name, start, end, card="0", gpu=True):
    return {
        "rule": rule,
        "name": name,
        "start": T0 + start,
        "end": T0 + end,
        "gpu": gpu,
        "card": card,
        "waited_s": 0.0,
    }


def one_run():
    jobs = [
        job("prepare_model", "flux-dev", 0, 5, card=None, gpu=False),
        job("generate", "flux-dev/none", 10, 30),
        job("score", "flux-dev/none", 32, 40),
    ]
    # one sample a second, at half seconds: busy while generating, half busy while scoring
    gpus = []
    for k in range(100):
        t = k + 0.5
        busy, memory = (1.0, 30000.0) if 10 < t < 30 else (0.5, 2000.0) if 32 < t < 40 else (0.0, 500.0)
        gpus.append((T0 + t, 0, busy, memory))
    procs = [(T0 + k + 0.5, 0, 4242, 29000.0, "generate", "flux-dev/none") for k in range(10, 30)]
    return jobs, gpus, procs


def test_busy_gaps_memory_and_cards_of_a_run_add_up():
    jobs, gpus, procs = one_run()
    summary = gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 100), estimate_s=90.0)
    assert summary["wall_s"] == 100 and summary["measured_over_estimate"] == pytest.approx(1.111)
    assert summary["within_25_percent"] is True
    assert summary["gpu_busy_run"] == pytest.approx(0.24)  # (20 x 1 + 8 x 0.5) / 100 samples
    assert summary["gpu_busy_generate_to_score"] == pytest.approx(0.8)  # (20 + 4) / 30
    assert summary["idle_gaps"] == [
        {"after": "generate flux-dev/none", "before": "score flux-dev/none", "gap_s": 2.0}
    ]
    by_rule = {row["rule"]: row for row in summary["jobs"]}
    assert by_rule["generate"]["gpu_busy"] == 1.0 and by_rule["score"]["gpu_busy"] == 0.5
    assert by_rule["generate"]["peak_mem_mib"] == 29000.0  # its own process
    assert by_rule["score"]["peak_mem_mib"] == 2000.0  # no process rows: the card in its window
    assert by_rule["prepare_model"]["peak_mem_mib"] is None and by_rule["prepare_model"]["gpu_busy"] is None
    assert summary["rules"]["generate"] == {"jobs": 1, "wall_s": [20.0], "total_s": 20.0}
    assert summary["kept_to_cards"] == {"ok": True, "problems": [], "checked_on": "log stamps"}
    assert summary["failed_jobs"] == [] and by_rule["generate"]["card_window_from"] == "log stamps"
    assert gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 100), 70.0)["within_25_percent"] is False
    table = gpu_summary.markdown(
        {
            "card": "NVIDIA H100 80GB HBM3",
            "date": "2026-12-07",
            "command": ["snakemake", "--cores", "all"],
            "returncode": 0,
            "torch": "2.11.0",
            "config": "config/gpu.yaml",
            "estimate_card": "h200",
            "summary": summary,
        }
    )
    assert "# Workflow on one GPU: NVIDIA H100 80GB HBM3, 2026-12-07" in table
    assert "| GPU busy, first generate to last score | 80% |" in table
    assert "| generate | 1 | 20.0 | 20.0 s |" in table
    assert "| generate flux-dev/none | 10.0 s | 20.0 s | 20.0 s | 0 | 100% | 28.3 GiB |" in table
    assert "| every job kept to its card, from the log stamps | yes |" in table
    assert (
        "| GPU jobs' time on the card, from | log stamps 2 |" in table and "| failed jobs | none |" in table
    )


def test_a_job_that_imports_beside_another_counts_from_taking_the_card():
    """Two GPU jobs in flight on one card: the score job starts at 22 s, imports for 6 s, waits 2 s
    for the card the generation job computes on, and holds it 30-40 s: no gap, no overlap."""
    jobs, gpus, procs = one_run()
    jobs[2] = {**job("score", "flux-dev/none", 22, 40), "imported_s": 6.0, "waited_s": 2.0}
    summary = gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 100), None)
    score = next(row for row in summary["jobs"] if row["rule"] == "score")
    assert (score["card_start_s"], score["on_card_s"], score["wall_s"]) == (30.0, 10.0, 18.0)
    assert summary["idle_gaps"] == [] and summary["kept_to_cards"]["ok"] is True
    assert summary["gpu_job_s"] == 30.0 and summary["imported_before_card_s"] == 6.0
    assert summary["gpu_busy_while_waiting"] == 1.0  # the card computed while the score job waited
    released = {**jobs[2], "held_s": 6.0}  # handed the card on 4 s before its end (W&B runs)
    summary = gpu_summary.summarise([*jobs[:2], released], gpus, procs, (T0, T0 + 100), None)
    assert next(row for row in summary["jobs"] if row["rule"] == "score")["on_card_s"] == 6.0
    assert workflow_gpu.RELEASED.search("fewstep score: GPU card released after 6.0 s on it")["held"] == "6.0"
    line = "fewstep score: GPU card 0 of 0 (lock /tmp/l/gpu0.lock) after waiting 2.0 s"
    line += " (libraries imported before it, 6.1 s)"
    claim = workflow_gpu.CLAIM.search(line)
    assert (claim["card"], claim["waited"], claim["imported"]) == ("0", "2.0", "6.1")


def test_a_score_jobs_cpu_metrics_before_its_card_are_not_time_on_it():
    """A score job scores its face metrics on the CPU before it takes its card (`fewstep.jobs.score`):
    from its stamps, its window starts after imports (4 s), that work (3 s) and the wait (1 s)."""
    jobs, gpus, procs = one_run()
    jobs[2] = {**job("score", "flux-dev/none", 22, 40), "imported_s": 4.0, "cpu_before_card_s": 3.0}
    jobs[2]["waited_s"] = 1.0
    summary = gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 100), None)
    score = next(row for row in summary["jobs"] if row["rule"] == "score")
    assert (score["card_start_s"], score["on_card_s"], score["cpu_before_card_s"]) == (30.0, 10.0, 3.0)
    assert summary["cpu_before_card_s"] == 3.0 and summary["idle_gaps"] == []
    assert summary["gpu_busy_while_waiting"] == 1.0  # 29-30 s: the generation job computed
    line = "identity, identity_dlib scored and clip_score, lpips loaded before taking a card (3.2 s)"
    assert workflow_gpu.CPU_BEFORE_CARD.search(line)["seconds"] == "3.2"
    result = {"card": "c", "date": "d", "command": ["snakemake"], "returncode": 0, "torch": "t"}
    table = gpu_summary.markdown({**result, "config": "c.yaml", "estimate_card": None, "summary": summary})
    assert "| CPU work before taking a card (score jobs' face metrics and loads, summed) | 3 s |" in table


def test_a_job_on_another_card_an_overlap_or_a_missing_claim_is_reported():
    jobs, gpus, procs = one_run()
    jobs.append(job("trajectory", "flux-dev/none/4", 35, 45))  # card 0 while score holds it
    jobs.append(job("embed_prompt", "flux/L512", 50, 60, card=None))
    procs.append((T0 + 20.5, 1, 4242, 100.0, "generate", "flux-dev/none"))
    kept = gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 100), None)["kept_to_cards"]
    assert kept["ok"] is False
    assert kept["problems"] == [
        "generate flux-dev/none: card 0 claimed, used [0, 1]",
        "embed_prompt flux/L512: no card claim in its log",
        "card 0: flux-dev/none and flux-dev/none/4 overlap",
    ]


COFFEE, FOUR = ("embed_reference", "sdxl/plus/coffee"), ("trajectory", "flux-schnell/infusenet-aes/4")
TIMES = [round(k * 0.1, 1) for k in range(600)]  # the sampler's 100 ms over 60 s


def handed_on_in_time():
    """The H100 run's false alarm: the reference job holds card 0's lock 10-32.4 s and ends at 33 s
    (its memory until then); the trajectory job takes the lock at 32.5 s, its process on the card
    from 32.9 s. The log stamps (reference ends 34 s, trajectory starts 20 s and imports 12 s) put
    them on the card together 32-34 s."""
    jobs = [job(*COFFEE, 10, 34), {**job(*FOUR, 20, 50), "imported_s": 12.0}]
    gpus = [(T0 + t, 0, 0.9, 20000.0) for t in TIMES]
    locks = [(T0 + t, 0, 101, *COFFEE) for t in TIMES if 10 <= t <= 32.4]
    locks += [(T0 + t, 0, 202, *FOUR) for t in TIMES if 32.5 <= t <= 50]
    procs = [(T0 + t, 0, 101, 9844.0, *COFFEE) for t in TIMES if 10.5 <= t <= 33]
    procs += [(T0 + t, 0, 202, 20000.0, *FOUR) for t in TIMES if 32.9 <= t <= 50]
    return jobs, gpus, procs, locks


def test_the_lock_table_times_the_card_where_the_stamps_would_see_an_overlap():
    jobs, gpus, procs, locks = handed_on_in_time()
    stamps = gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 60), None)["kept_to_cards"]
    assert stamps["problems"] == ["card 0: sdxl/plus/coffee and flux-schnell/infusenet-aes/4 overlap"]
    summary = gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 60), None, lock_samples=locks)
    assert summary["kept_to_cards"] == {"ok": True, "problems": [], "checked_on": "lock table"}
    coffee, four = summary["jobs"]
    assert (coffee["card_start_s"], coffee["on_card_s"], coffee["card_window_from"]) == (
        10.0,
        22.5,
        "lock table",
    )
    assert (four["card_start_s"], four["on_card_s"], four["card_window_from"]) == (32.5, 17.6, "lock table")
    assert summary["idle_gaps"] == []
    one_locked = [lock for lock in locks if lock[2] == 202]  # the reference job's rows missing
    rows = gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 60), None, lock_samples=one_locked)["jobs"]
    assert [row["card_window_from"] for row in rows] == ["log stamps", "lock table"]


def test_memory_on_a_card_outside_its_lock_is_reported():
    """A job's process on a card whose lock another job holds, on its own card before taking the
    lock, and keeping its memory long after handing the lock on; two holders of one lock."""
    jobs, gpus, procs, locks = handed_on_in_time()
    jobs.append(job("generate", "sd15/style", 38, 46, card="1"))
    style = ("generate", "sd15/style")
    locks += [(T0 + t, 1, 303, *style) for t in TIMES if 40 <= t <= 45] + [(T0 + 42, 1, 404, "", "")]
    procs += [(T0 + t, 1, 303, 8000.0, *style) for t in TIMES if 39 <= t <= 45]
    procs += [(T0 + t, 0, 303, 20480.0, *style) for t in TIMES if 41 <= t <= 41.5]
    procs += [(T0 + t, 0, 202, 20000.0, *FOUR) for t in TIMES if 50 < t <= 55]  # on after its lock
    kept = gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 60), None, lock_samples=locks)["kept_to_cards"]
    assert kept["ok"] is False and kept["checked_on"] == "lock table"
    assert kept["problems"] == [
        "card 1: generate sd15/style and pid 404 held its lock at once at 42.0 s",
        "generate sd15/style: up to 8000 MiB on card 1 from 39.0 s, before taking its lock at 40.0 s",
        "generate sd15/style: up to 20480 MiB on card 0 from 41.0 s, a card whose lock it never held",
        "trajectory flux-schnell/infusenet-aes/4: up to 20000 MiB on card 0 from 52.1 s, "
        "after handing its lock on at 50.1 s",
    ]
    table = gpu_summary.markdown(
        {
            "card": "NVIDIA H100 80GB HBM3",
            "date": "2026-12-08",
            "command": ["snakemake"],
            "returncode": 0,
            "torch": "2.11.0",
            "config": "config/gpu.yaml",
            "estimate_card": None,
            "summary": gpu_summary.summarise(jobs, gpus, procs, (T0, T0 + 60), None, lock_samples=locks),
        }
    )
    assert (
        "| every job kept to its card, from the lock table | no: card 1: generate sd15/style and pid" in table
    )
    assert "| GPU jobs' time on the card, from | lock table 3 |" in table


FAKE_NVML = '''
"""A stand-in for nvidia-ml-py: one card 60% busy with 1 GiB in use; the process named in
FAKE_NVML_PID holds 512 MiB on it."""
import os
from types import SimpleNamespace


class NVMLError(Exception):
    pass


def nvmlInit():
    pass


def nvmlDeviceGetCount():
    return 1


def nvmlDeviceGetHandleByIndex(index):
    return index


def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=60)


def nvmlDeviceGetMemoryInfo(handle):
    return SimpleNamespace(used=2**30)


def nvmlDeviceGetComputeRunningProcesses(handle):
    return [SimpleNamespace(pid=int(os.environ["FAKE_NVML_PID"]), usedGpuMemory=2**29)]
'''


def rows(samples, kind: str) -> int:
    return samples.read_text().count(f"{kind},") if samples.exists() else 0


def test_the_sampler_side_process_records_the_card_and_each_job_process(tmp_path, monkeypatch):
    import subprocess
    import sys

    (tmp_path / "pynvml.py").write_text(FAKE_NVML)
    monkeypatch.setenv("FEWSTEP_GPU_LOCK_DIR", str(tmp_path / "locks"))
    (tmp_path / "locks").mkdir()
    job = subprocess.Popen(  # a process whose command line is a generation job's, holding card 0
        [
            sys.executable,
            "-c",
            "import fcntl, os, time; lock = open(os.environ['FEWSTEP_GPU_LOCK_DIR'] + '/gpu0.lock', 'w'); "
            "fcntl.flock(lock, fcntl.LOCK_EX); time.sleep(30)",
            "-m",
            "fewstep",
            "generate",
            "--job",
            "sd15/style",
        ]
    )
    monkeypatch.setenv("FAKE_NVML_PID", str(job.pid))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(tmp_path))
    samples = tmp_path / "samples.csv"
    sampler = workflow_gpu.start_sampler(samples, interval_ms=50)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and min(rows(samples, "proc"), rows(samples, "lock")) < 3:
            time.sleep(0.1)
    finally:
        sampler.terminate()
        sampler.wait()
        job.kill()
        job.wait()
    gpus, procs, locks = workflow_gpu.read_samples(samples)
    assert len(gpus) >= 3 and {(gpu, busy, memory) for _, gpu, busy, memory in gpus} == {(0, 0.6, 1024.0)}
    assert {(p[1:]) for p in procs} == {(0, job.pid, 512.0, "generate", "sd15/style")}
    assert len(locks) >= 3 and {lock[1:] for lock in locks} == {(0, job.pid, "generate", "sd15/style")}
