"""What a sweep will cost before it runs: images, GPU time per rule kind, disk and downloads.

Timings come from one card's measured figures in ``benchmarks/results/`` (per step and VAE
decode of the backbone models in ``latency_<card>_<date>.csv``, FLUX's; model load, compile and
the acceleration switches' step times from ``acceleration_<card>_<date>.json``; per image against
steps of the families in ``sd_latency_<card>_<date>.csv``, SD's), the newest file of each kind.
A generation job is timed per step when its backbone model has per-step figures, else per image
when its family and adapter file have a fit, else by its start alone (and the output says so):
the figures' keys decide, the family is asked only through its protocol (`Family.adapter_role`,
`reference_file`, `image_size`; its embedding files' sizes and `prompt_timing_key`); a card
with acceleration figures alone borrows decode, the steps without InfuseNet (at the other card's
ratio) and SD from a card that has them, and says so. A
job's overhead (process start and model load: job wall minus the modelled work) is the mean over
the whole-workflow runs, ``workflow_<card>_<date>.json`` (benchmarks/workflow_gpu.py), the card's
own else another's; what no file measures is an assumed constant, `ASSUMED_S`, and the output
says so. Per-step and decode times scale with the pixel count from the 1024x1024 (per-image
figures: the family's default `image_size`) they were measured at.

The wall time assumes the workstation profile's one card: GPU jobs one after another, the
model preparation before them and aggregate, report and W&B after them. Only stdlib here:
``fewstep estimate`` runs where torch and pandas are not installed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewstep.core.errors import ConfigError
from fewstep.core.study import Study, load_study, prompt_group
from fewstep.grid import EAGER_SWITCHES, Grid
from fewstep.registry.catalog import lookup, marker_path

ROOT = Path(__file__).resolve().parents[3]  # the repository
FIGURES = ROOT / "benchmarks" / "results"
FILE_NAME = re.compile(
    r"^(?P<kind>latency|acceleration|sd_latency|workflow)_(?P<card>[a-z0-9]+)_(?P<date>\d{4}-\d{2}-\d{2})"
)
MEASURED_SIDE = 1024  # FLUX figures: 1024x1024

#: seconds of what benchmarks/results does not measure, where no workflow run's overheads apply
ASSUMED_S = {
    "job_start": 10.0,  # a job's process: Python, torch/diffusers imports, CUDA context
    "prepare": 5.0,  # one model's prepare job with tiny or random weights (real: the download)
    "text_encoders": 10.0,  # build or read CLIP + T5-XXL (FLUX) or the CLIP towers (SD), per embed job
    "image_encoder": 5.0,  # an IP-Adapter image encoder, per embed_reference job
    "sd_load": 5.0,  # UNet, VAE and adapter of one SD generation job
    "score_load": 5.0,  # the scoring networks of one score job
    "score_image": 0.2,  # every metric of one image
    "identity": 2.0,  # face detection and ArcFace of one identity (CPU job)
    "aggregate": 20.0,
    "report": 30.0,
    "wandb": 5.0,
}

IDENTITY_FLOATS = 512 + 10
FORMER_RULES = {"embed_sd_prompt": "embed_prompt"}  # rules committed runs name, now one prompt rule


@dataclass
class Figures:
    """One card's timings, read from benchmarks/results."""

    card: str
    sources: list[str]
    step_s: dict[tuple[str, bool], float]  # (backbone model, with its adapter) -> s per step at 1024²
    decode_s: float  # VAE decode of one image at 1024², of the models with per-step figures
    load_s: float  # model load of a job timed per step (eager acceleration rows)
    accelerations: dict[tuple[str, str], tuple[float, float]]  # (model, variant) -> (step factor, compile s)
    sd: dict[tuple[str, str], tuple[float, float]]  # (family, adapter file or none) -> (s, s per step)
    overheads: dict[str, float] = field(default_factory=dict)  # Job.key -> measured s (process + load)
    notes: list[str] = field(default_factory=list)


def cards(folder: Path = FIGURES) -> dict[str, dict[str, list[Path]]]:
    """Card -> figure kind -> its files, oldest first (a later file's rows win)."""
    found: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(folder.glob("*"), key=lambda p: (_date(p), p.name)):
        match = FILE_NAME.match(path.name)
        wanted = ".json" if match and match["kind"] in ("acceleration", "workflow") else ".csv"
        if match and path.suffix == wanted:
            found.setdefault(match["card"], {}).setdefault(match["kind"], []).append(path)
    return found


def _date(path: Path) -> str:
    match = FILE_NAME.match(path.name)
    return match["date"] if match else ""


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        return json.loads(path.read_text())["rows"]
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _owned(found: dict[str, dict[str, list[Path]]], card: str, kind: str) -> list[Path]:
    """Every `kind` file of `card`, oldest first, else of the first card that has one."""
    owners = [card] + sorted(c for c in found if c != card)
    return next((found[c][kind] for c in owners if kind in found[c]), [])


def measured_figures(card: str, folder: Path = FIGURES) -> Figures:
    """The benchmark figures of `card` (as file names spell it, e.g. h200), without the workflow
    run's overheads; an unknown card is one line."""
    found = cards(folder)
    any_latency = any("latency" in kinds for kinds in found.values())
    complete = sorted(c for c, kinds in found.items() if "acceleration" in kinds and any_latency)
    if card not in complete:
        raise ConfigError(
            f"no timing figures for card {card!r} in {folder}; cards with figures: "
            f"{', '.join(complete) or 'none'} (run benchmarks/latency.py and acceleration.py on it)"
        )
    kinds, notes = found[card], []
    latency_path = _owned(found, card, "latency")[-1]  # newest (some card has one: checked above)
    latency_step, decode = {}, []
    for row in _rows(latency_path):
        if row["variant"] == "base":
            backbone, adapter, _ = row["cell"].split("/")
            latency_step[(backbone, adapter != "none")] = float(row["per_step_s"])
            decode.append(float(row["decode_s"]))
    accelerations: dict[tuple[str, str], tuple[float, float]] = {}
    eager: dict[str, dict[str, Any]] = {}
    rows = [row for path in kinds["acceleration"] for row in _rows(path)]
    for row in rows:
        if row["variant"] == "eager":
            eager[row["backbone"]] = row
    loads = [r["job_s"] - r["images"] * r["per_image_s"] - r["compile_s"] for r in eager.values()]
    for row in rows:
        base = eager.get(row["backbone"])
        if row["variant"] != "eager" and base is not None:
            factor = row["per_step_s"] / base["per_step_s"]
            accelerations[(row["backbone"], row["variant"])] = (factor, row["compile_s"])
    step_s = dict(latency_step)
    if "latency" not in kinds:  # its own eager steps (with InfuseNet), the other card's ratio without
        for (model, adapter), step in latency_step.items():
            if model in eager and (model, True) in latency_step:
                step_s[(model, adapter)] = eager[model]["per_step_s"] * step / latency_step[(model, True)]
        notes.append(
            f"no latency file for {card}: FLUX per step from its eager acceleration rows (with InfuseNet; "
            f"without it at {_relative(latency_path)}'s ratio), VAE decode from that file"
        )
    sd = {}
    sd_path = next(reversed(_owned(found, card, "sd_latency")), None)
    if sd_path is not None:
        if "sd_latency" not in kinds:
            notes.append(f"no sd_latency file for {card}: SD per image from {_relative(sd_path)}")
        by_key: dict[tuple[str, str], dict[int, float]] = {}
        for row in _rows(sd_path):
            by_key.setdefault((row["family"], row["adapter"]), {})[int(row["steps"])] = float(
                row["latency_s"]
            )
        for key, points in by_key.items():
            low, high = min(points), max(points)
            per_step = (points[high] - points[low]) / (high - low) if high > low else 0.0
            sd[key] = (points[low] - per_step * low, per_step)
    used = [latency_path, *kinds["acceleration"], *([sd_path] if sd_path else [])]
    return Figures(
        card=card,
        sources=[_relative(p) for p in used],
        step_s=step_s,
        decode_s=statistics.mean(decode),
        load_s=statistics.mean(loads),
        accelerations=accelerations,
        sd=sd,
        notes=notes,
    )


def load_figures(card: str, folder: Path = FIGURES) -> Figures:
    """`card`'s benchmark figures with the job overheads of its workflow runs (its own, else another
    card's), pooled over every run whose config still forms the jobs it ran: one run's overheads are
    one host's (two H100 hosts differed by 20-30% a job, docs/performance.md)."""
    figures = measured_figures(card, folder)
    runs = _owned(cards(folder), card, "workflow")
    overheads, used, problems = pooled_overheads(runs, folder)
    figures.notes += problems
    if not used:
        if runs:
            figures.notes.append("job overheads assumed")
        return figures
    figures.overheads = overheads
    figures.sources += [_relative(path) for path in used]
    run_card = FILE_NAME.match(used[0].name)["card"]
    figures.notes.append(
        f"job overheads (process start + model load) measured in {len(used)} {run_card} workflow "
        f"run{'s' if len(used) > 1 else ''} ({', '.join(_relative(p) for p in used)}) as job wall minus "
        "modelled work, averaged per job kind (random weights; on those runs' own configs an "
        "in-sample check)"
    )
    return figures


Pooled = tuple[dict[str, float], list[Path], list[str]]


def pooled_overheads(runs: list[Path], folder: Path = FIGURES) -> Pooled:
    """Job key -> mean `measured_overheads` over the readable `runs`; the runs used; why others not."""
    pooled: dict[str, list[float]] = {}
    used, problems = [], []
    for run_path in runs:
        overheads, problem = measured_overheads(run_path, folder)
        if problem:
            problems.append(f"{_relative(run_path)} not used: {problem}")
            continue
        used.append(run_path)
        for key, seconds in overheads.items():
            pooled.setdefault(key, []).append(seconds)
    return {key: statistics.mean(values) for key, values in pooled.items()}, used, problems


def measured_overheads(run_path: Path, folder: Path = FIGURES) -> tuple[dict[str, float], str]:
    """Job key (`Job.key`, and the rule alone for generate and trajectory) -> mean seconds of the
    run's jobs beyond the work the run card's figures model; or a reason it cannot be read."""
    run = json.loads(run_path.read_text())
    config_path = ROOT / run["config"]
    if not config_path.exists():
        return {}, f"its config {run['config']} is gone"
    try:
        model = estimate_with(
            load_study([config_path]), measured_figures(FILE_NAME.match(run_path.name)["card"], folder)
        )
    except ConfigError as error:
        return {}, str(error)
    walls = {  # a job's time on its card (its imports before taking it overlap the job before)
        (FORMER_RULES.get(j["rule"], j["rule"]), j["name"]): j.get("on_card_s", j["wall_s"])
        for j in run["summary"]["jobs"]
        if not j["failed"]
    }
    missing = [f"{j.rule} {j.name}" for j in model.jobs if (j.rule, j.name) not in walls]
    if missing:
        return {}, f"{run['config']} now forms jobs the run did not run ({', '.join(missing[:3])})"
    spent: dict[str, list[float]] = {}
    for job in model.jobs:
        keys = {job.key, job.rule} if job.rule in ("generate", "trajectory") else {job.key}
        for key in keys:
            spent.setdefault(key, []).append(walls[(job.rule, job.name)] - job.work)
    return {key: statistics.mean(values) for key, values in spent.items()}, ""


#: benchmarks/acceleration.py's variant for each set of switches that are on
VARIANTS = {
    ("compile",): "compile",
    ("fp8",): "fp8",
    ("cache",): "cache",
    ("compile", "fp8"): "fast",
    ("compile", "fp8", "cache"): "fast-cache",
}
KINDS = {
    "prepare": ("prepare_model",),
    "embed": ("embed_prompt", "embed_reference", "embed_identity"),
    "generate": ("generate",),
    "score": ("score",),
    "trajectory": ("trajectory",),
    "aggregate/report": ("aggregate", "report", "wandb_aggregate"),
}


@dataclass(frozen=True)
class Job:
    rule: str
    name: str
    overhead: float  # process start and model load: measured in a workflow run, else assumed
    gpu: bool
    work: float = 0.0  # what the benchmark figures model: steps, decode, compile; scoring
    sub: str = ""  # what the overhead depends on besides the rule: the family, or the weights
    timing_key: str = ""  # the overhead's key where it is not rule/sub (`Family.prompt_timing_key`)

    @property
    def key(self) -> str:
        return self.timing_key or (f"{self.rule}/{self.sub}" if self.sub else self.rule)

    @property
    def seconds(self) -> float:
        return self.overhead + self.work


def _job(
    figures: Figures, rule: str, name: str, assumed: float, gpu: bool, work=0.0, sub="", timing_key=""
) -> Job:
    """A job with the measured overhead of its key (generate, trajectory: else its rule's), else `assumed`."""
    job = Job(rule, name, assumed, gpu, work, sub, timing_key)
    fallback = figures.overheads.get(rule, assumed) if rule in ("generate", "trajectory") else assumed
    return dataclasses.replace(job, overhead=figures.overheads.get(job.key, fallback))


@dataclass
class Estimate:
    study: Study
    figures: Figures
    images: dict[str, int]  # cell id -> images
    trajectory_images: int
    jobs: list[Job]
    image_gb: float
    embedding_gb: float
    downloads: dict[str, float]  # model not yet present -> GB
    notes: list[str] = field(default_factory=list)

    def kind_seconds(self, gpu: bool | None = None) -> dict[str, tuple[int, float]]:
        """Rule kind -> (jobs, seconds), of GPU jobs only, CPU jobs only or all (None)."""
        out = {}
        for kind, rules in KINDS.items():
            jobs = [j for j in self.jobs if j.rule in rules and (gpu is None or j.gpu == gpu)]
            out[kind] = (len(jobs), sum(j.seconds for j in jobs))
        return out

    @property
    def gpu_seconds(self) -> float:
        return sum(j.seconds for j in self.jobs if j.gpu)

    @property
    def gpu_overhead_seconds(self) -> float:
        return sum(j.overhead for j in self.jobs if j.gpu)

    @property
    def wall_seconds(self) -> float:
        """One card: prepare jobs side by side, then the GPU jobs one after another, then the
        sweep-level jobs (CPU embedding jobs run beside the GPU jobs)."""
        prepare = max((j.seconds for j in self.jobs if j.rule == "prepare_model"), default=0.0)
        tail = sum(j.seconds for j in self.jobs if j.rule in KINDS["aggregate/report"])
        return prepare + self.gpu_seconds + tail


def _variant(switches: dict[str, Any]) -> str | None:
    on = tuple(name for name in ("compile", "fp8", "cache") if switches.get(name, "none") != "none")
    return VARIANTS.get(on) if on else None


def _generation_seconds(
    grid: Grid, cells: list, figures: Figures, notes: list[str]
) -> tuple[float, float, float]:
    """(assumed overhead, compile, seconds of every image) of the generation job of `cells`:
    per step where its backbone model has per-step figures, else per image (`_per_image_seconds`)."""
    first = cells[0]
    model = grid.backbone(first)["model"]
    if (model, True) not in figures.step_s:
        return _per_image_seconds(grid, cells, figures, notes)
    adapter = grid.adapter(first)
    width, height = grid.resolution(first)
    scale = width * height / MEASURED_SIDE**2
    factor, compile_s = 1.0, 0.0
    variant = _variant({**EAGER_SWITCHES, **grid.acceleration(first)})
    if variant is not None:
        factor, compile_s = figures.accelerations.get((model, variant), (1.0, 0.0))
        if (model, variant) not in figures.accelerations:
            notes.append(f"no {variant} figures for {figures.card}: {first.job} timed as eager")
    with_adapter = figures.step_s[(model, True)] * factor * scale
    alone = figures.step_s[(model, False)] * factor * scale
    conditioned = grid.family(first).adapter_role(adapter) is not None
    images = 0.0
    for cell in cells:
        adapter_steps = cell.steps if conditioned else 0
        if adapter.get("first_steps") is not None:
            adapter_steps = min(adapter_steps, adapter["first_steps"])
        step_s = adapter_steps * with_adapter + (cell.steps - adapter_steps) * alone
        images += len(grid.items_of(cell)) * (step_s + figures.decode_s * scale)
    return ASSUMED_S["job_start"] + figures.load_s, compile_s, images


def _per_image_seconds(
    grid: Grid, cells: list, figures: Figures, notes: list[str]
) -> tuple[float, float, float]:
    """As `_generation_seconds`, from the per-image fit of the family and the adapter file whose
    image encoder its adapter reads (``none``: none), measured at the family's default size."""
    first = cells[0]
    family, backbone = grid.family(first), grid.backbone(first)
    start = ASSUMED_S["job_start"]
    fit = figures.sd.get((family.name, family.reference_file(grid.adapter(first)) or "none"))
    if fit is None:
        notes.append(f"no {family.name} figures for {figures.card}: {first.job} counts its start only")
        return start, 0.0, 0.0
    bare = {"model": backbone["model"], "family": family.name}  # the backbone with no size of its own
    default = family.image_size(bare, grid.study.resolution)
    width, height = grid.resolution(first)
    scale = width * height / (default["width"] * default["height"])
    images = sum(len(grid.items_of(c)) * (fit[0] + fit[1] * c.steps) * scale for c in cells)
    if grid.acceleration(first) != EAGER_SWITCHES:
        notes.append(f"{first.job}: timed as eager (the per-image fit has no acceleration figures)")
    return start + ASSUMED_S["sd_load"], 0.0, images


def _embedding_jobs(grid: Grid, figures: Figures, gpu: bool) -> list[Job]:
    """The prompt, reference and identity embedding jobs, as the Snakefile forms them."""
    start = ASSUMED_S["job_start"]
    jobs = [
        _job(
            figures,
            "embed_prompt",  # one job per prompt group (`prompt_rule`, its `sub`), all of this kind
            f"{family}/{label}",
            start + ASSUMED_S["text_encoders"],
            gpu,
            sub=group,
            timing_key=grid.known_families[family].prompt_timing_key,
        )
        for family in grid.families
        for label in sorted(grid.prompt_variants(family))
        for group in dict.fromkeys(map(prompt_group, grid.variant_prompts(family, label)))
    ]
    jobs += [
        _job(figures, "embed_reference", "/".join(key), start + ASSUMED_S["image_encoder"], gpu)
        for key in grid.reference_embeddings_needed()
    ]
    if any(grid.needs_identity_embeddings(cell) for cell in grid.cells):
        jobs += [
            _job(figures, "embed_identity", identity.id, start + ASSUMED_S["identity"], False)
            for identity in grid.study.identities
        ]
    return jobs


def download_gb(study: Study, grid: Grid) -> dict[str, float]:
    """Model -> GB of its weight files the sweep fetches, for models not yet prepared (real
    weights only; random and tiny weights are built here)."""
    if study.weights != "real":
        return {}
    sizes = {}
    for name in grid.models:
        if marker_path(study, name).exists() or name in study.local_weights:
            continue
        spec = lookup(name)
        recipe = spec.recipe
        if recipe is not None and recipe.patterns is not None:
            files = recipe.patterns(study, spec, grid.model_usage(name))
        else:
            files = spec.extra.get("patterns") or [spec.extra.get("file")]
        published = spec.extra.get("published_gb", {})  # GB of its weight files, registered with it
        sizes[name] = sum(published.get(f, 0.0) for f in files)
    return sizes


def _embedding_bytes(grid: Grid, jobs: list[Job]) -> float:
    reference_floats = {
        (grid.backbone(cell).family, grid.reference_file(cell)): grid.family(cell).reference_embedding_floats(
            grid.adapter(cell)
        )
        for cell in grid.cells
    }
    floats = 0
    for job in jobs:
        family, _, suffix = job.name.partition("/")
        if job.rule == "embed_prompt":
            prompts = len(grid.variant_prompts(family, suffix, job.sub))
            backbone = grid.prompt_variant_backbone(family, suffix)
            floats += prompts * grid.known_families[family].prompt_embedding_floats(backbone)
        elif job.rule == "embed_reference":
            floats += reference_floats[(family, suffix.partition("/")[0])]
        elif job.rule == "embed_identity":
            floats += IDENTITY_FLOATS
    return 4.0 * floats


def estimate(study: Study, card: str, folder: Path = FIGURES) -> Estimate:
    """What the sweep of `study` costs on `card`, from `folder`'s figures."""
    return estimate_with(study, load_figures(card, folder))


def estimate_with(study: Study, figures: Figures) -> Estimate:
    """What the sweep of `study` costs with `figures`."""
    grid, notes = Grid.of(study), list(figures.notes)
    gpu = study.device != "cpu"
    start = ASSUMED_S["job_start"]
    prepare = start + ASSUMED_S["prepare"]
    jobs = [_job(figures, "prepare_model", name, prepare, False, sub=study.weights) for name in grid.models]
    jobs += _embedding_jobs(grid, figures, gpu)
    images = {cell.id: len(grid.items_of(cell)) for cell in grid.cells}
    pixels = 0.0
    for job_id, cells in grid.jobs.items():
        once, compile_s, per_images = _generation_seconds(grid, cells, figures, notes)
        family = grid.family(cells[0]).name
        jobs.append(_job(figures, "generate", job_id, once, gpu, compile_s + per_images, family))
        count = sum(images[c.id] for c in cells)
        score = count * ASSUMED_S["score_image"]
        jobs.append(_job(figures, "score", job_id, start + ASSUMED_S["score_load"], gpu, score))
        pixels += sum(images[c.id] * grid.resolution(c)[0] * grid.resolution(c)[1] for c in cells)
    trajectory_images = 0
    for cell in grid.trajectory_cells:
        items = min(len(grid.items_of(cell)), study.trajectory.max_items)
        once, compile_s, cell_images = _generation_seconds(grid, [cell], figures, notes)
        # every step: the denoising step, then x0 decoded and scored for identity
        per_step = cell_images / images[cell.id] / cell.steps + figures.decode_s + ASSUMED_S["score_image"]
        work = compile_s + items * cell.steps * per_step
        jobs.append(_job(figures, "trajectory", cell.id, once, gpu, work, grid.family(cell).name))
        trajectory_images += items * cell.steps
        pixels += items * cell.steps * grid.resolution(cell)[0] * grid.resolution(cell)[1]
    jobs += [
        _job(figures, rule, rule, start + ASSUMED_S[key], False)
        for rule, key in (("aggregate", "aggregate"), ("report", "report"), ("wandb_aggregate", "wandb"))
    ]
    if not gpu:
        notes.append("device: cpu: the GPU figures do not apply; every job counted as a CPU job")
    return Estimate(
        study=study,
        figures=figures,
        images=images,
        trajectory_images=trajectory_images,
        jobs=jobs,
        image_gb=3 * pixels / 1e9,
        embedding_gb=_embedding_bytes(grid, jobs) / 1e9,
        downloads=download_gb(study, grid),
        notes=notes,
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def render(result: Estimate, config_name: str) -> str:
    """The estimate as the `fewstep estimate` command prints it."""
    study, figures = result.study, result.figures
    lines = [
        f"{config_name}: sweep {study.sweep}, weights {study.weights}, "
        f"timed with {figures.card} figures from {', '.join(figures.sources)}",
        "images per cell:",
        *(f"  {cell_id:<48} {count:>6}" for cell_id, count in result.images.items()),
        f"images: {sum(result.images.values())} in {len(result.images)} cells"
        f" (+ {result.trajectory_images} trajectory steps decoded)",
        "GPU hours per rule kind (jobs):",
    ]
    for kind, (jobs, seconds) in result.kind_seconds(gpu=True).items():
        lines.append(f"  {kind:<18} {seconds / 3600:8.3f} h  ({jobs} jobs)")
    cpu = sum(seconds for _, seconds in result.kind_seconds(gpu=False).values())
    lines += [
        f"  {'all':<18} {result.gpu_seconds / 3600:8.3f} h   (CPU-only jobs: {cpu / 3600:.3f} h more)",
        f"  of which job overhead (process start, model load): {result.gpu_overhead_seconds / 3600:.3f} h"
        f" ({result.gpu_overhead_seconds / max(result.gpu_seconds, 1e-9):.0%})",
        f"wall time on one card: {_duration(result.wall_seconds)} (GPU jobs one after another; "
        "prepare before, aggregate and report after)",
        f"disk: images {result.image_gb:.2f} GB at most (raw RGB; PNGs of photos are smaller), "
        f"embeddings {result.embedding_gb:.3f} GB",
    ]
    if study.weights == "real":
        missing = ", ".join(f"{name} {gb:.2f}" for name, gb in result.downloads.items()) or "none"
        lines.append(
            f"download: {sum(result.downloads.values()):.1f} GB of weights not yet present ({missing})"
        )
    else:
        lines.append(f"download: none (weights {study.weights}: built here, nothing fetched)")
    if figures.overheads:
        measured = ", ".join(f"{key} {value:.1f} s" for key, value in sorted(figures.overheads.items()))
        lines.append(f"job overheads measured: {measured}")
    assumed = ", ".join(f"{name} {value:g} s" for name, value in ASSUMED_S.items())
    lines.append(f"assumed where nothing measured applies: {assumed}")
    lines += [f"note: {note}" for note in dict.fromkeys(result.notes)]
    return "\n".join(lines)
