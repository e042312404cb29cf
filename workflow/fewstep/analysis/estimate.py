"""What a sweep will cost before it runs: images, GPU time per rule kind, disk and downloads.

Timings come from one card's measured figures in ``benchmarks/results/``, read by
`fewstep.analysis.timings` (per step and VAE decode of the backbone models in
``latency_<card>_<date>.csv``, FLUX's; model load, compile and the acceleration switches' step
times from ``acceleration_<card>_<date>.json``; per image against steps of the families in
``sd_latency_<card>_<date>.csv``, SD's), the newest file of each kind; and from the benchmark
kinds each family lists as its own (`Family.figure_files`: ``kontext_latency``, ``klein_latency``
per step and decode, ``sd_distilled_latency`` per image of the distilled SD backbones), every
``_summary.csv`` of the kind, whose rows the family maps from the benchmark's ids to the config
settings they ran (`Family.figure_cell`). A generation job is timed per step when its backbone's
timing name (`Family.timing_name`: the registry model; SD: family and distillation) has per-step
figures, else per image when it has a fit with its adapter file (else with another file, else its
base's, said in a note), else by its start alone (and the output says so): the figures' keys
decide, the family is asked only through its protocol (`Family.timing_name`, `adapter_role`,
`reference_file`, `image_size`; its embedding files' sizes and `prompt_timing_key`); a card
with acceleration figures alone borrows decode, the steps without InfuseNet (at the other card's
ratio), SD and the families' own kinds from a card that has them, and says so. A
job's overhead (process start and model load: job wall minus the modelled work) is the mean over
the whole-workflow runs, ``workflow_<card>_<date>.json`` (benchmarks/workflow_gpu.py), the card's
own else another's: a GPU job's time on its card where the run recorded it (its imports overlap
the job before, since GPU jobs import before taking a card), and only such runs where there are
any; what no file measures is an assumed constant, `ASSUMED_S`, and the output says so. What
the one-card model leaves of a run's wall time (the card idle between GPU jobs, Snakemake's
scheduling, the first job's imports) is spread over its GPU jobs as `CARD_IDLE`. Per-step and
decode times scale with the pixel count from the 1024x1024 they were measured at (a family
file's ``_meta.json`` ``size``); per-image fits from the side their file gives, else the family's
default `image_size`.

The wall time assumes the workstation profile's one card: GPU jobs one after another, the
model preparation before them and aggregate, report and W&B after them. Only stdlib here:
``fewstep estimate`` runs where torch and pandas are not installed.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewstep.analysis.timings import (
    FIGURES,
    FILE_NAME,
    MEASURED_SIDE,
    ROOT,
    Figures,
    cards,
    measured_figures,
    owned,
    relative,
)
from fewstep.core.errors import ConfigError
from fewstep.core.study import Study, is_prompt_rule, load_study, prompt_group
from fewstep.grid import EAGER_SWITCHES, Grid
from fewstep.registry.catalog import lookup, marker_path

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
#: overhead key: a run's wall time beyond prepare, its GPU jobs one after another and the
#: sweep-level jobs, per GPU job (the card idle between jobs, scheduling, the first imports)
CARD_IDLE = "card_idle"


def load_figures(card: str, folder: Path = FIGURES) -> Figures:
    """`card`'s benchmark figures with the job overheads of its workflow runs (its own, else another
    card's), pooled over every run whose config still forms the jobs it ran: one run's overheads are
    one host's (two H100 hosts differed by 20-30% a job, docs/performance.md)."""
    figures = measured_figures(card, folder)
    runs = owned(cards(folder), card, "workflow")
    overheads, used, problems = pooled_overheads(runs, folder)
    figures.notes += problems
    if not used:
        if runs:
            figures.notes.append("job overheads assumed")
        return figures
    figures.overheads = overheads
    figures.sources += [relative(path) for path in used]
    run_card = FILE_NAME.match(used[0].name)["card"]
    figures.notes.append(
        f"job overheads (process start + model load) measured in {len(used)} {run_card} workflow "
        f"run{'s' if len(used) > 1 else ''} ({', '.join(relative(p) for p in used)}) as each job's "
        "time on its card (else its wall) minus modelled work, averaged per job kind (random weights; "
        "on those runs' own configs an in-sample check)"
    )
    return figures


Pooled = tuple[dict[str, float], list[Path], list[str]]


def pooled_overheads(runs: list[Path], folder: Path = FIGURES) -> Pooled:
    """Job key -> mean `measured_overheads` over the readable `runs`; the runs used; why others not."""
    pooled: dict[str, list[float]] = {}
    used, problems = [], []
    read = {path: json.loads(path.read_text()) for path in runs}
    windowed = [path for path, run in read.items() if _card_windows(run)]
    if windowed:
        for run_path in (path for path in runs if path not in windowed):
            problems.append(
                f"{relative(run_path)} not used: measured before GPU jobs imported ahead of their card "
                "(no card windows), its job walls count imports that now overlap the job before"
            )
    for run_path in windowed or runs:
        overheads, problem = measured_overheads(run_path, read[run_path], folder)
        if problem:
            problems.append(f"{relative(run_path)} not used: {problem}")
            continue
        used.append(run_path)
        for key, seconds in overheads.items():
            pooled.setdefault(key, []).append(seconds)
    return {key: statistics.mean(values) for key, values in pooled.items()}, used, problems


def measured_overheads(
    run_path: Path, run: dict[str, Any], folder: Path = FIGURES
) -> tuple[dict[str, float], str]:
    """Job key (`Job.key`, and the rule alone for generate and trajectory) -> mean seconds of the
    jobs of `run` (read from `run_path`) beyond the work the run card's figures model; or a reason
    it cannot be read."""
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
        (_rule_as_estimated(j["rule"]), j["name"]): j.get("on_card_s", j["wall_s"])
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
    overheads = {key: statistics.mean(values) for key, values in spent.items()}
    gpu_jobs = [job for job in model.jobs if job.gpu]
    if "wall_s" in run["summary"] and gpu_jobs:  # the run's wall time the one-card model misses
        prepare = max((walls[(j.rule, j.name)] for j in model.jobs if j.rule == "prepare_model"), default=0)
        serial = sum(
            walls[(j.rule, j.name)] for j in model.jobs if j.gpu or j.rule in KINDS["aggregate/report"]
        )
        overheads[CARD_IDLE] = (run["summary"]["wall_s"] - prepare - serial) / len(gpu_jobs)
    return overheads, ""


def _rule_as_estimated(rule: str) -> str:
    """A run's rule as the estimate names it: one prompt rule (a role's embed_prompt_<role>, or
    SD's former embed_sd_prompt, is embed_prompt)."""
    return "embed_prompt" if is_prompt_rule(rule) else FORMER_RULES.get(rule, rule)


def _card_windows(run: dict[str, Any]) -> bool:
    """Whether the run recorded each GPU job's time on its card (runs since GPU jobs import first)."""
    return all("on_card_s" in job for job in run["summary"]["jobs"] if job.get("gpu_job"))


#: benchmarks/acceleration.py's names of the caches, and of the compile/fp8 switches they join
CACHE_VARIANTS = {"first_block": "cache", "taylorseer": "taylorseer", "mag": "mag"}
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
        return prepare + self.gpu_seconds + self.card_idle_seconds + tail

    @property
    def card_idle_seconds(self) -> float:
        """The measured wall time between GPU jobs (`CARD_IDLE` a job), none where not measured."""
        return self.figures.overheads.get(CARD_IDLE, 0.0) * sum(1 for j in self.jobs if j.gpu)


def _variant(switches: dict[str, Any]) -> str | None:
    """benchmarks/acceleration.py's variant for the switches that are on (compile, fp8 and
    their cache as "fast-mag", "full-taylorseer", "compile-full"...); None when none is on."""
    compile_, fp8, cache = (switches.get(name, "none") for name in ("compile", "fp8", "cache"))
    dense = {("regional", True): "fast", ("regional", False): "compile", ("full", False): "full"}
    dense |= {("none", True): "fp8", ("full", True): "full-fp8"}
    base = dense.get((compile_, fp8 != "none"))
    cached = CACHE_VARIANTS.get(cache, cache) if cache != "none" else None
    if cached is None:
        return "compile-full" if base == "full" else base
    return cached if base is None else f"{base}-{cached}"


def _acceleration(
    grid: Grid, cell: Any, model: str, figures: Figures, notes: list[str]
) -> tuple[float, float]:
    """(step time against eager, compile s) of the cell's switches on `model`, from the card's
    acceleration rows; (1, 0) for eager, and for switches without rows (said in a note)."""
    variant = _variant({**EAGER_SWITCHES, **grid.acceleration(cell)})
    if variant is None:
        return 1.0, 0.0
    if (model, variant) not in figures.accelerations:
        notes.append(f"no {variant} figures for {figures.card}: {cell.job} timed as eager")
    return figures.accelerations.get((model, variant), (1.0, 0.0))


def _generation_seconds(
    grid: Grid, cells: list, figures: Figures, notes: list[str]
) -> tuple[float, float, float]:
    """(assumed overhead, compile, seconds of every image) of the generation job of `cells`:
    per step where its backbone (`Family.timing_name`) has per-step figures, else per image
    (`_per_image_seconds`)."""
    first = cells[0]
    family, backbone, adapter = grid.family(first), grid.backbone(first), grid.adapter(first)
    name = family.timing_name(backbone)
    measured = {conditioned: figures.step_s.get((name, conditioned)) for conditioned in (True, False)}
    if measured == {True: None, False: None}:
        return _per_image_seconds(grid, cells, figures, notes)
    width, height = grid.resolution(first)
    scale = width * height / MEASURED_SIDE**2
    factor, compile_s = _acceleration(grid, first, backbone["model"], figures, notes)
    conditioned = family.adapter_role(adapter) is not None
    needed = {True: conditioned, False: not conditioned or adapter.get("first_steps") is not None}
    for wanted in (True, False):
        if needed[wanted] and measured[wanted] is None:
            had = "with its adapter" if not wanted else "bare"
            notes.append(f"{first.job}: {name} has per-step figures {had} only, timed by them")
    with_adapter = (measured[True] or measured[False]) * factor * scale
    alone = (measured[False] or measured[True]) * factor * scale
    decode = figures.decode(name) * scale
    images = 0.0
    for cell in cells:
        adapter_steps = cell.steps if conditioned else 0
        if adapter.get("first_steps") is not None:
            adapter_steps = min(adapter_steps, adapter["first_steps"])
        step_s = adapter_steps * with_adapter + (cell.steps - adapter_steps) * alone
        images += len(grid.items_of(cell)) * (step_s + decode)
    return ASSUMED_S["job_start"] + figures.load_s, compile_s, images


def _per_image_seconds(
    grid: Grid, cells: list, figures: Figures, notes: list[str]
) -> tuple[float, float, float]:
    """As `_generation_seconds`, from the per-image fit of the backbone's timing name and the
    adapter file whose image encoder its adapter reads (``none``: none), measured at the fit's
    side where its file gives one, else the family's default size. Without that fit: the same
    backbone's with another adapter file, else its bare model's (a distillation's base), said in a note."""
    first = cells[0]
    family, backbone = grid.family(first), grid.backbone(first)
    start = ASSUMED_S["job_start"]
    bare = {"model": backbone["model"], "family": family.name}  # no size or distillation of its own
    name, base = family.timing_name(backbone), family.timing_name(bare)
    wanted = (name, family.reference_file(grid.adapter(first)) or "none")
    others = sorted(key for key in figures.sd if key[0] == name and key != wanted)
    key = next((k for k in (wanted, *others, (base, wanted[1])) if k in figures.sd), None)
    if key is None:
        notes.append(f"no {family.name} figures for {figures.card}: {first.job} counts its start only")
        return start, 0.0, 0.0
    if key[0] != name:
        notes.append(f"no {name} figures for {figures.card}: timed as its base, {base}")
    elif key != wanted:
        notes.append(f"no {name} figures with adapter file {wanted[1]}: timed by those with {key[1]}")
    side = figures.sd_sides.get(key)
    default = family.image_size(bare, grid.study.resolution)
    measured = side * side if side else default["width"] * default["height"]
    width, height = grid.resolution(first)
    intercept, per_step = figures.sd[key]
    factor, compile_s = _acceleration(grid, first, backbone["model"], figures, notes)
    images = sum(len(grid.items_of(c)) * (intercept + per_step * factor * c.steps) for c in cells)
    return start + ASSUMED_S["sd_load"], compile_s, images * width * height / measured


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
        decode = figures.decode(grid.family(cell).timing_name(grid.backbone(cell)))
        per_step = cell_images / images[cell.id] / cell.steps + decode + ASSUMED_S["score_image"]
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
        f"wall time on one card: {_duration(result.wall_seconds)} (GPU jobs one after another"
        f"{f', {result.card_idle_seconds:.0f} s between them' if CARD_IDLE in figures.overheads else ''}; "
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
