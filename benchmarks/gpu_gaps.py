"""Where a generation job leaves the GPU idle: a torch.profiler trace of its warm batches, read back.

`profiled(job_launch)` wraps the job's `JobGenerator.launch` so that the profiler records the
batches after the first (the warm-up) up to `active` of them; `gaps(trace)` reads the Chrome trace
the profiler exported: the GPU's busy intervals (kernels, copies, memsets), the idle gaps between
them, and for each gap the CPU work that delayed the next GPU work (the innermost `cpu_op` around
the CUDA call that launched it, runtime or driver (Triton's kernels), else the waiting runtime call
itself: a synchronize, a host allocation).
The profiler's own bookkeeping costs a few microseconds per op, so gaps read here are an upper
bound of the unprofiled job's.
"""

from __future__ import annotations

import bisect
import contextlib
import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
MIN_GAP_US = 20.0  # shorter gaps are a launch's normal latency
#: CUDA runtime calls that hold the CPU until the GPU or the driver is done
WAITS = ("Synchronize", "HostAlloc", "FreeHost", "Malloc", "Free", "cudaMemcpy")


@contextlib.contextmanager
def profiled(generator_class: Any, trace: Path, active: int = 3):
    """Profile the batches 2..1+`active` that `generator_class.launch` queues; export to `trace`."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    original = generator_class.launch
    cuda = torch.cuda.is_available()
    prof = profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
        schedule=schedule(wait=1, warmup=0, active=active, repeat=1),
        on_trace_ready=lambda p: p.export_chrome_trace(str(trace)),
    )

    def launch(self, *args, **kwargs):
        batch = original(self, *args, **kwargs)
        prof.step()
        return batch

    generator_class.launch = launch
    prof.start()
    try:
        yield
    finally:
        generator_class.launch = original
        if cuda:
            torch.cuda.synchronize()
        prof.stop()


def _events(trace: Path) -> list[dict[str, Any]]:
    opener = gzip.open if trace.suffix == ".gz" else open
    with opener(trace, "rt") as handle:
        return [e for e in json.load(handle)["traceEvents"] if e.get("ph") == "X"]


def gaps(trace: Path, top: int = 8) -> dict[str, Any]:
    """GPU busy and idle time over the profiled window, the idle gaps' causes, largest first."""
    events = _events(trace)
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATEGORIES), key=lambda e: e["ts"])
    if not gpu:
        return {"window_s": 0.0, "busy_s": 0.0, "idle_s": 0.0, "causes": []}
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    runtime = [e for e in events if e.get("cat") == "cuda_runtime" and e["name"].endswith(WAITS)]
    cpu_ops: dict[Any, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("cat") == "cpu_op":
            cpu_ops.setdefault(e["tid"], []).append(e)
    for ops in cpu_ops.values():
        ops.sort(key=lambda e: e["ts"])
    busy, idle, causes = 0.0, 0.0, Counter()
    end = gpu[0]["ts"]
    for e in gpu:
        if e["ts"] - end > MIN_GAP_US:
            gap = e["ts"] - end
            idle += gap
            launch = launches.get(e["args"].get("correlation"))
            causes[_cause(launch, cpu_ops, runtime, end, e["ts"])] += gap
        busy += max(0.0, e["ts"] + e["dur"] - max(end, e["ts"]))
        end = max(end, e["ts"] + e["dur"])
    window = end - gpu[0]["ts"]
    return {
        "window_s": window / 1e6,
        "busy_s": busy / 1e6,
        "idle_s": idle / 1e6,
        "busy": busy / window if window else None,
        "causes": [{"before": name, "idle_s": us / 1e6} for name, us in causes.most_common(top)],
    }


def _cause(
    launch: dict[str, Any] | None,
    cpu_ops: dict[Any, list[dict[str, Any]]],
    runtime: list[dict[str, Any]],
    start: float,
    stop: float,
) -> str:
    """What held the CPU during a gap: a waiting CUDA call overlapping it (synchronize, host
    allocation), else the innermost CPU op around the CUDA call that ended it."""
    waits = Counter()
    for call in runtime:
        overlap = min(stop, call["ts"] + call["dur"]) - max(start, call["ts"])
        if overlap > 0:
            waits[call["name"]] += overlap
    if waits:
        return "waiting in " + waits.most_common(1)[0][0]
    if launch is None:
        return "unknown"
    ops = cpu_ops.get(launch["tid"], [])
    starts = [op["ts"] for op in ops]
    inner = None
    for op in reversed(ops[: bisect.bisect_right(starts, launch["ts"])]):
        if op["ts"] + op["dur"] >= launch["ts"]:
            inner = op if inner is None or op["dur"] < inner["dur"] else inner
        if launch["ts"] - op["ts"] > 60e6:
            break
    return f"{inner['name']} > {launch['name']}" if inner else launch["name"]
