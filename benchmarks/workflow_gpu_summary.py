"""The summary of one `workflow_gpu.py` run: wall times, GPU busy, idle gaps, peak memory and
whether every GPU job kept to its card, as JSON fields and a markdown table.

A GPU job's time on its card comes from the kernel's lock table where the sampler recorded it (the
samples at which the job's process held the card's lock), else from Snakemake's one-second log
stamps and the seconds the job's log says it imported and waited before taking the card."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CONTEXT_MIB = 1024  # what a job may keep on a card it has handed on: its CUDA context
#: how long an ending job may keep its memory after its lock: Python's teardown closes the lock file
#: before the process ends and the driver frees the card
EXIT_S = 2.0


def _busy(
    samples: list[tuple[float, int, float, float]], start: float, end: float, gpus: set[int] | None = None
):
    """Mean utilisation (0-1) of the samples in [start, end] (of `gpus` only), None without any."""
    values = [busy for t, gpu, busy, _ in samples if start <= t <= end and (gpus is None or gpu in gpus)]
    return round(sum(values) / len(values), 4) if values else None


def summarise(
    jobs: list[dict[str, Any]],
    gpu_samples: list[tuple[float, int, float, float]],
    proc_samples: list[tuple],
    run: tuple[float, float],
    estimate_s: float | None,
    *,
    lock_samples: Sequence[tuple] = (),
) -> dict[str, Any]:
    """Wall times, GPU busy, idle gaps, peak memory and card keeping of one run's `jobs`
    (windows in epoch seconds), from the sampler's rows; `run` is Snakemake's (start, end)."""
    start, end = run
    interval_s = sample_interval(gpu_samples)
    rows = []
    for job in jobs:
        held = _held_locks(job, lock_samples) if job["gpu"] else []
        if held:  # from the first sample holding the lock to the next after the last
            on_card = (held[0][0], held[-1][0] + interval_s)
            card = {lock[1] for lock in held}
        else:
            # imports, CPU work (a score job's face metrics), then the card's wait
            before_card = job.get("imported_s", 0.0) + job.get("cpu_before_card_s", 0.0) + job["waited_s"]
            held_s = job.get("held_s")  # a job that handed its card on before its W&B runs
            taken = job["start"] + before_card
            on_card = (taken, min(job["end"], taken + held_s) if held_s is not None else job["end"])
            card = {int(job["card"])} if job["card"] is not None and job["card"].isdigit() else None
        own = [p for p in proc_samples if (p[4], p[5]) == (job["rule"], job["name"])]
        seen = sorted({p[1] for p in own})
        if any(p[3] for p in own):  # the job's own processes, per sample time summed over their cards
            per_time: dict[float, float] = {}
            for t, _, _, memory, *_ in own:
                per_time[t] = per_time.get(t, 0.0) + memory
            peak = max(per_time.values())
        else:  # the card's memory while the job ran (GPU jobs take a card each)
            inside = [
                m
                for t, gpu, _, m in gpu_samples
                if on_card[0] <= t <= on_card[1] and (card is None or gpu in card)
            ]
            peak = max(inside) if inside and job["gpu"] else None
        rows.append(
            {
                "rule": job["rule"],
                "name": job["name"],
                "start_s": round(job["start"] - start, 3),
                "wall_s": round(job["end"] - job["start"], 3),
                "gpu_job": job["gpu"],
                "card": job["card"],
                "waited_s": job["waited_s"],
                "imported_s": job.get("imported_s", 0.0),
                "cpu_before_card_s": job.get("cpu_before_card_s", 0.0),
                "card_start_s": round(on_card[0] - start, 3),
                "on_card_s": round(on_card[1] - on_card[0], 3),
                "card_window_from": ("lock table" if held else "log stamps") if job["gpu"] else None,
                "gpu_busy": _busy(gpu_samples, *on_card, card) if job["gpu"] else None,
                "peak_mem_mib": peak,
                "cards_seen": seen,
                "failed": job.get("failed", False),
            }
        )
    gpu_jobs = sorted((r for r in rows if r["gpu_job"]), key=lambda r: r["card_start_s"])
    gaps = []
    for before, after in zip(gpu_jobs, gpu_jobs[1:], strict=False):
        gap = after["card_start_s"] - (before["card_start_s"] + before["on_card_s"])
        if gap > 0:
            gaps.append(
                {
                    "after": f"{before['rule']} {before['name']}",
                    "before": f"{after['rule']} {after['name']}",
                    "gap_s": round(gap, 3),
                }
            )
    generate = [r for r in rows if r["rule"] == "generate"]
    scores = [r for r in rows if r["rule"] == "score"]
    busy_span = None
    if generate and scores:
        first = start + min(r["start_s"] for r in generate)
        last = start + max(r["start_s"] + r["wall_s"] for r in scores)
        busy_span = _busy(gpu_samples, first, last)
    rules: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = rules.setdefault(row["rule"], {"jobs": 0, "wall_s": [], "total_s": 0.0})
        entry["jobs"] += 1
        entry["wall_s"].append(row["wall_s"])
        entry["total_s"] = round(entry["total_s"] + row["wall_s"], 3)
    if lock_samples:
        kept = _kept_to_locks(gpu_jobs, lock_samples, proc_samples, interval_s, start)
    else:
        kept = _kept_to_cards(gpu_jobs)
    wall = round(end - start, 3)
    return {
        "wall_s": wall,
        "estimate_s": None if estimate_s is None else round(estimate_s, 1),
        "measured_over_estimate": None if not estimate_s else round(wall / estimate_s, 3),
        "within_25_percent": None if not estimate_s else abs(wall / estimate_s - 1) <= 0.25,
        "gpu_busy_run": _busy(gpu_samples, start, end),
        "gpu_busy_generate_to_score": busy_span,
        "gpu_job_s": round(sum(r["on_card_s"] for r in gpu_jobs), 3),
        "imported_before_card_s": round(sum(r["imported_s"] for r in gpu_jobs), 3),
        "cpu_before_card_s": round(sum(r["cpu_before_card_s"] for r in gpu_jobs), 3),
        "gpu_busy_while_waiting": _busy_while_waiting(gpu_samples, gpu_jobs, start),
        "idle_gaps": gaps,
        "idle_gap_total_s": round(sum(g["gap_s"] for g in gaps), 3),
        "waited_for_card_s": sum(r["waited_s"] for r in gpu_jobs),
        "kept_to_cards": kept,
        "failed_jobs": [f"{r['rule']} {r['name']}" for r in rows if r["failed"]],
        "rules": rules,
        "jobs": rows,
    }


def sample_interval(gpu_samples: list[tuple[float, int, float, float]]) -> float:
    """The sampler's interval: the median step between its sample times (0 without two)."""
    times = sorted({sample[0] for sample in gpu_samples})
    steps = sorted(after - before for before, after in zip(times, times[1:], strict=False))
    return steps[len(steps) // 2] if steps else 0.0


def _held_locks(job: dict[str, Any], lock_samples: Sequence[tuple]) -> list[tuple]:
    """The lock table's rows of `job`'s last process (a retried job's last attempt), in time order;
    with its rows that name no job (read as the process ended, its command line gone)."""
    own = sorted(lock for lock in lock_samples if (lock[3], lock[4]) == (job["rule"], job["name"]))
    return sorted(lock for lock in lock_samples if lock[2] == own[-1][2]) if own else []


def _busy_while_waiting(samples: list, gpu_jobs: list[dict[str, Any]], start: float) -> float | None:
    """Mean utilisation of the card while a job waited for it (the target: a held card computes):
    the `waited_s` before each job's card window began (lock table or stamps)."""
    values = []
    for job in gpu_jobs:
        if job["waited_s"] > 0 and job["card"] is not None and job["card"].isdigit():
            taken = start + job["card_start_s"]
            wait = (taken - job["waited_s"], taken)
            values += [b for t, gpu, b, _ in samples if wait[0] <= t <= wait[1] and gpu == int(job["card"])]
    return round(sum(values) / len(values), 4) if values else None


def _kept_to_cards(gpu_jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """From the log stamps: every GPU job named its card, its processes touched only that card, and
    no two jobs held one card at once."""
    problems = []
    for job in gpu_jobs:
        if job["card"] is None:
            problems.append(f"{job['rule']} {job['name']}: no card claim in its log")
        elif job["cards_seen"] and job["cards_seen"] != [int(job["card"])]:
            problems.append(
                f"{job['rule']} {job['name']}: card {job['card']} claimed, used {job['cards_seen']}"
            )
    by_card: dict[str, list[dict[str, Any]]] = {}
    for job in gpu_jobs:
        if job["card"] is not None:
            by_card.setdefault(job["card"], []).append(job)
    for card, held in by_card.items():
        for before, after in zip(held, held[1:], strict=False):
            if after["card_start_s"] < before["card_start_s"] + before["on_card_s"] - 1.0:  # stamps: 1 s
                problems.append(f"card {card}: {before['name']} and {after['name']} overlap")
    return {"ok": not problems, "problems": problems, "checked_on": "log stamps"}


def _kept_to_locks(
    gpu_jobs: list[dict[str, Any]],
    lock_samples: Sequence[tuple],
    proc_samples: list[tuple],
    interval_s: float,
    start: float,
) -> dict[str, Any]:
    """From the lock table: every GPU job named its card, no two processes held one card's lock at
    one sample, and a job's process had memory only on a card whose lock it held: not before the
    sample before it took the lock, and no more than its CUDA context from `EXIT_S` after its last
    sample holding it."""
    problems = [f"{j['rule']} {j['name']}: no card claim in its log" for j in gpu_jobs if j["card"] is None]
    holders: dict[tuple[float, int], list[str]] = {}
    spans: dict[tuple[int, int], tuple[float, float]] = {}  # (pid, card): first and last sample held
    for t, card, pid, rule, name in sorted(lock_samples):
        holders.setdefault((t, card), []).append(f"{rule} {name}" if rule else f"pid {pid}")
        spans[pid, card] = (spans.get((pid, card), (t, t))[0], t)
    for (t, card), names in holders.items():
        if len(names) > 1:
            problems.append(f"card {card}: {' and '.join(names)} held its lock at once at {t - start:.1f} s")
    slack = 1.5 * interval_s  # the sample before, with the sampler's jitter
    found: dict[tuple[str, int, str], tuple[float, float]] = {}  # -> first time, most MiB
    for t, card, pid, memory, rule, name in sorted(proc_samples):
        span = spans.get((pid, card))
        if span is None:
            what = "a card whose lock it never held"
        elif t < span[0] - slack:
            what = f"before taking its lock at {span[0] - start:.1f} s"
        elif t > span[1] + EXIT_S and memory > CONTEXT_MIB:
            what = f"after handing its lock on at {span[1] + interval_s - start:.1f} s"
        else:
            continue
        first, most = found.get((f"{rule} {name}", card, what), (t, memory))
        found[f"{rule} {name}", card, what] = (first, max(most, memory))
    problems += [
        f"{job}: up to {most:.0f} MiB on card {card} from {first - start:.1f} s, {what}"
        for (job, card, what), (first, most) in found.items()
    ]
    return {"ok": not problems, "problems": problems, "checked_on": "lock table"}


def markdown(result: dict[str, Any]) -> str:
    """The run as a table naming card, date and versions."""
    s = result["summary"]

    def pct(value):
        return "–" if value is None else f"{100 * value:.0f}%"

    def gib(mib):
        return "–" if mib is None else f"{mib / 1024:.1f} GiB"

    problems = s["kept_to_cards"]["problems"]
    kept = "yes" if not problems else "no: " + "; ".join(problems)
    windows = [j["card_window_from"] for j in s["jobs"] if j["gpu_job"]]
    windows_from = ", ".join(f"{source} {windows.count(source)}" for source in sorted(set(windows)))
    estimate = (
        "–" if s["estimate_s"] is None else f"{s['estimate_s']:.0f} s ({result['estimate_card']} figures)"
    )
    lines = [
        f"# Workflow on one GPU: {result['card']}, {result['date']}",
        "",
        f"`{' '.join(result['command'])}` (exit {result['returncode']}); torch {result['torch']}, "
        f"config `{result['config']}`.",
        "",
        "| whole run | |",
        "|---|---|",
        f"| wall time | {s['wall_s']:.0f} s |",
        f"| `fewstep estimate` | {estimate}; measured / estimate {s['measured_over_estimate']} |",
        f"| GPU busy, whole run | {pct(s['gpu_busy_run'])} |",
        f"| GPU busy, first generate to last score | {pct(s['gpu_busy_generate_to_score'])} |",
        f"| GPU jobs, summed | {s['gpu_job_s']:.0f} s |",
        f"| idle gaps between GPU jobs | {len(s['idle_gaps'])}, {s['idle_gap_total_s']:.1f} s in all |",
        f"| imported before taking a card (GPU jobs, summed) | {s['imported_before_card_s']:.0f} s |",
        f"| CPU work before taking a card (score jobs' face metrics and loads, summed) "
        f"| {s.get('cpu_before_card_s', 0.0):.0f} s |",
        f"| waited for a card | {s['waited_for_card_s']:.0f} s; the card's GPU busy meanwhile "
        f"{pct(s['gpu_busy_while_waiting'])} |",
        f"| GPU jobs' time on the card, from | {windows_from or '–'} |",
        f"| every job kept to its card, from the {s['kept_to_cards']['checked_on']} | {kept} |",
        f"| failed jobs | {', '.join(s['failed_jobs']) or 'none'} |",
        "",
        "| rule | jobs | wall time per job (s) | total |",
        "|---|---|---|---|",
        *(
            f"| {rule} | {e['jobs']} | {', '.join(f'{w:.1f}' for w in e['wall_s'])} | {e['total_s']:.1f} s |"
            for rule, e in s["rules"].items()
        ),
        "",
        "| job | start | wall | on the card | card | GPU busy on it | peak GPU memory |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {j['rule']} {j['name']} | {j['start_s']:.1f} s | {j['wall_s']:.1f} s "
            f"| {j['on_card_s']:.1f} s | {j['card'] or '–'} | {pct(j['gpu_busy'])} "
            f"| {gib(j['peak_mem_mib'])} |"
            for j in s["jobs"]
        ),
    ]
    return "\n".join(lines) + "\n"
