"""The summary of one `workflow_gpu.py` run: wall times, GPU busy, idle gaps, peak memory and
whether every GPU job kept to its card, as JSON fields and a markdown table."""

from __future__ import annotations

from typing import Any


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
) -> dict[str, Any]:
    """Wall times, GPU busy, idle gaps, peak memory and card keeping of one run's `jobs`
    (windows in epoch seconds), from the sampler's rows; `run` is Snakemake's (start, end)."""
    start, end = run
    rows = []
    for job in jobs:
        before_card = job.get("imported_s", 0.0) + job["waited_s"]  # imports, then the wait for the card
        held = job.get("held_s")  # a job that handed its card on before its W&B runs
        taken = job["start"] + before_card
        on_card = (taken, min(job["end"], taken + held) if held is not None else job["end"])
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
                "card_start_s": round(on_card[0] - start, 3),
                "on_card_s": round(on_card[1] - on_card[0], 3),
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
        "gpu_busy_while_waiting": _busy_while_waiting(gpu_samples, gpu_jobs, start),
        "idle_gaps": gaps,
        "idle_gap_total_s": round(sum(g["gap_s"] for g in gaps), 3),
        "waited_for_card_s": sum(r["waited_s"] for r in gpu_jobs),
        "kept_to_cards": kept,
        "failed_jobs": [f"{r['rule']} {r['name']}" for r in rows if r["failed"]],
        "rules": rules,
        "jobs": rows,
    }


def _busy_while_waiting(samples: list, gpu_jobs: list[dict[str, Any]], start: float) -> float | None:
    """Mean utilisation of the card while a job waited for it (the target: a held card computes)."""
    values = []
    for job in gpu_jobs:
        if job["waited_s"] > 0 and job["card"] is not None and job["card"].isdigit():
            wait_start = start + job["start_s"] + job["imported_s"]
            wait = (wait_start, wait_start + job["waited_s"])
            values += [b for t, gpu, b, _ in samples if wait[0] <= t <= wait[1] and gpu == int(job["card"])]
    return round(sum(values) / len(values), 4) if values else None


def _kept_to_cards(gpu_jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every GPU job named its card, its processes touched only that card, and no two jobs held
    one card at once."""
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
    return {"ok": not problems, "problems": problems}


def markdown(result: dict[str, Any]) -> str:
    """The run as a table naming card, date and versions."""
    s = result["summary"]

    def pct(value):
        return "–" if value is None else f"{100 * value:.0f}%"

    def gib(mib):
        return "–" if mib is None else f"{mib / 1024:.1f} GiB"

    problems = s["kept_to_cards"]["problems"]
    kept = "yes" if not problems else "no: " + "; ".join(problems)
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
        f"| waited for a card | {s['waited_for_card_s']:.0f} s; the card's GPU busy meanwhile "
        f"{pct(s['gpu_busy_while_waiting'])} |",
        f"| every job kept to its card | {kept} |",
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
