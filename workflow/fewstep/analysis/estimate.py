"""What a sweep will cost before it runs: images, GPU time per rule kind, disk and downloads.

Timings come from one card's measured figures in ``benchmarks/results/`` (FLUX per step and
VAE decode from ``latency_<card>_<date>.csv``; model load, compile and the acceleration
switches' step times from ``acceleration_<card>_<date>.json``; SD per image against steps from
``sd_latency_<card>_<date>.csv``), the newest file of each kind. What those files do not
measure (a job's process start, text and image encoders, scoring, aggregation) is an assumed
constant, `ASSUMED_S`, and the output says so. Per-step and decode times scale with the pixel
count from the 1024x1024 (SD: the family's own side) they were measured at.

The wall time assumes the workstation profile's one card: GPU jobs one after another, the
model preparation before them and aggregate, report and W&B after them. Only stdlib here:
``fewstep estimate`` runs where torch and pandas are not installed.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewstep.core.errors import ConfigError
from fewstep.core.paths import Paths
from fewstep.grid import EAGER_SWITCHES, Grid
from fewstep.registry.catalog import lookup, marker_path

ROOT = Path(__file__).resolve().parents[3]  # the repository
FIGURES = ROOT / "benchmarks" / "results"
FILE_NAME = re.compile(
    r"^(?P<kind>latency|acceleration|sd_latency)_(?P<card>[a-z0-9]+)_(?P<date>\d{4}-\d{2}-\d{2})"
)
MEASURED_SIDE = 1024  # FLUX figures: 1024x1024

#: seconds of what benchmarks/results does not measure (a GPU run of the workflow measures them:
#: benchmarks/workflow_gpu.py)
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

#: Published sizes in GB (10^9 bytes, rounded) of the weight files the registry's allow-patterns
#: (or fetched files) name; configs and tokenizers are left out (kilobytes).
PUBLISHED_GB = {
    **{
        (repo, pattern): size
        for repo in ("black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell")
        for pattern, size in {
            "transformer/*": 23.8,
            "vae/*": 0.17,
            "text_encoder/*": 0.25,
            "text_encoder_2/*": 9.52,
        }.items()
    },
    ("ByteDance/InfiniteYou", "infu_flux_v1.0/aes_stage2/*"): 6.2,
    ("ByteDance/InfiniteYou", "infu_flux_v1.0/sim_stage1/*"): 6.2,
    ("ByteDance/InfiniteYou", "supports/insightface/models/antelopev2/scrfd_10g_bnkps.onnx"): 0.017,
    ("ByteDance/InfiniteYou", "supports/insightface/models/antelopev2/glintr100.onnx"): 0.261,
    (None, "recognition_arcface_ir_se50.pth"): 0.17,
    (None, "alexnet-owt-7be5be79.pth"): 0.24,
    (None, "vgg16-397923af.pth"): 0.55,
    ("openai/clip-vit-large-patch14", "model.safetensors"): 1.71,
    ("yuvalkirstain/PickScore_v1", "model.safetensors"): 3.94,
    ("facebook/dinov2-base", "model.safetensors"): 0.35,
    ("tomg-group-umd/CSD-ViT-L", "pytorch_model.bin"): 1.2,
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "unet/diffusion_pytorch_model.fp16.safetensors"): 1.72,
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "vae/diffusion_pytorch_model.fp16.safetensors"): 0.17,
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "text_encoder/model.fp16.safetensors"): 0.25,
    ("stabilityai/stable-diffusion-xl-base-1.0", "unet/diffusion_pytorch_model.fp16.safetensors"): 5.14,
    ("stabilityai/stable-diffusion-xl-base-1.0", "vae/diffusion_pytorch_model.fp16.safetensors"): 0.17,
    ("stabilityai/stable-diffusion-xl-base-1.0", "text_encoder/model.fp16.safetensors"): 0.25,
    ("stabilityai/stable-diffusion-xl-base-1.0", "text_encoder_2/model.fp16.safetensors"): 1.39,
    ("h94/IP-Adapter", "models/ip-adapter_sd15.bin"): 0.04,
    ("h94/IP-Adapter", "models/ip-adapter-plus_sd15.bin"): 0.10,
    ("h94/IP-Adapter", "models/image_encoder/model.safetensors"): 2.53,
    ("h94/IP-Adapter", "sdxl_models/ip-adapter_sdxl.bin"): 0.70,
    ("h94/IP-Adapter", "sdxl_models/ip-adapter-plus_sdxl_vit-h.bin"): 0.85,
    ("h94/IP-Adapter", "sdxl_models/image_encoder/model.safetensors"): 3.69,
}

#: float32 values of one embedding file (precompute saves float32)
FLUX_PROMPT_WIDTH, FLUX_POOLED = 4096, 768
SD_PROMPT_FLOATS = {"sd15": 2 * 77 * 768, "sdxl": 2 * (77 * 2048 + 1280)}  # prompt and negative
REFERENCE_FLOATS = {"plain": 2 * 1280, "plus": 2 * 257 * 1280}  # at most (ViT-H/bigG), with the negative
IDENTITY_FLOATS = 512 + 10


@dataclass
class Figures:
    """One card's timings, read from benchmarks/results."""

    card: str
    sources: list[str]
    flux_step: dict[tuple[str, bool], float]  # (model, with InfuseNet) -> s per step at 1024²
    flux_decode: float
    flux_load: float
    accelerations: dict[str, tuple[float, float]]  # variant -> (step factor over eager, compile s)
    sd: dict[tuple[str, str], tuple[float, float]]  # (family, adapter file or none) -> (s, s per step)


def cards(folder: Path = FIGURES) -> dict[str, dict[str, list[Path]]]:
    """Card -> figure kind -> its files, oldest first (a later file's rows win)."""
    found: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(folder.glob("*"), key=lambda p: (_date(p), p.name)):
        match = FILE_NAME.match(path.name)
        wanted = ".json" if match and match["kind"] == "acceleration" else ".csv"
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


def load_figures(card: str, folder: Path = FIGURES) -> Figures:
    """The figures of `card` (as file names spell it, e.g. h200); an unknown card is one line."""
    found = cards(folder)
    complete = sorted(c for c, kinds in found.items() if "latency" in kinds and "acceleration" in kinds)
    if card not in complete:
        raise ConfigError(
            f"no timing figures for card {card!r} in {folder}; cards with figures: "
            f"{', '.join(complete) or 'none'} (run benchmarks/latency.py and acceleration.py on it)"
        )
    kinds = found[card]
    latency = _rows(kinds["latency"][-1])
    flux_step, decode = {}, []
    for row in latency:
        if row["variant"] == "base":
            backbone, adapter, _ = row["cell"].split("/")
            flux_step[(backbone, adapter != "none")] = float(row["per_step_s"])
            decode.append(float(row["decode_s"]))
    accelerations: dict[str, tuple[float, float]] = {}
    eager: dict[str, dict[str, Any]] = {}
    rows = [row for path in kinds["acceleration"] for row in _rows(path)]
    for row in rows:
        if row["variant"] == "eager":
            eager[row["backbone"]] = row
    loads = [r["job_s"] - r["images"] * r["per_image_s"] - r["compile_s"] for r in eager.values()]
    for row in rows:
        base = eager.get(row["backbone"])
        if row["variant"] != "eager" and base is not None:
            accelerations[row["variant"]] = (row["per_step_s"] / base["per_step_s"], row["compile_s"])
    sd = {}
    if "sd_latency" in kinds:
        by_key: dict[tuple[str, str], dict[int, float]] = {}
        for row in _rows(kinds["sd_latency"][-1]):
            by_key.setdefault((row["family"], row["adapter"]), {})[int(row["steps"])] = float(
                row["latency_s"]
            )
        for key, points in by_key.items():
            low, high = min(points), max(points)
            per_step = (points[high] - points[low]) / (high - low) if high > low else 0.0
            sd[key] = (points[low] - per_step * low, per_step)
    used = [kinds["latency"][-1], *kinds["acceleration"], *kinds.get("sd_latency", [])[-1:]]
    return Figures(
        card=card,
        sources=[str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in used],
        flux_step=flux_step,
        flux_decode=statistics.mean(decode),
        flux_load=statistics.mean(loads),
        accelerations=accelerations,
        sd=sd,
    )


#: benchmarks/acceleration.py's variant for each set of switches that are on
VARIANTS = {
    ("compile",): "compile",
    ("fp8",): "fp8",
    ("cache",): "cache",
    ("compile", "fp8"): "fast",
    ("compile", "fp8", "cache"): "fast-cache",
}
GPU_RULES = ("embed_prompt", "embed_sd_prompt", "embed_reference", "generate", "trajectory", "score")
KINDS = {
    "prepare": ("prepare_model",),
    "embed": ("embed_prompt", "embed_sd_prompt", "embed_reference", "embed_identity"),
    "generate": ("generate",),
    "score": ("score",),
    "trajectory": ("trajectory",),
    "aggregate/report": ("aggregate", "report", "wandb_aggregate"),
}


@dataclass(frozen=True)
class Job:
    rule: str
    name: str
    seconds: float
    gpu: bool


@dataclass
class Estimate:
    config: dict[str, Any]
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
    def wall_seconds(self) -> float:
        """One card: prepare jobs side by side, then the GPU jobs one after another, then the
        sweep-level jobs (CPU embedding jobs run beside the GPU jobs)."""
        prepare = max((j.seconds for j in self.jobs if j.rule == "prepare_model"), default=0.0)
        tail = sum(j.seconds for j in self.jobs if j.rule in KINDS["aggregate/report"])
        return prepare + self.gpu_seconds + tail


def _variant(switches: dict[str, Any]) -> str | None:
    on = tuple(name for name in ("compile", "fp8", "cache") if switches.get(name, "none") != "none")
    return VARIANTS.get(on) if on else None


def _generation_seconds(grid: Grid, cells: list, figures: Figures, notes: list[str]) -> tuple[float, float]:
    """(one-off seconds, seconds of every image) of the generation job of `cells`."""
    first = cells[0]
    family = grid.family(first).name
    start = ASSUMED_S["job_start"]
    if family != "flux":
        file = grid.reference_file(first) or "none"
        fit = figures.sd.get((family, file))
        if fit is None:
            notes.append(f"no {family} figures for {figures.card}: {first.job} counts its start only")
            return start, 0.0
        side = grid.resolution(first)[0]
        scale = (side / grid.family(first).resolution()) ** 2
        images = sum(len(grid.items_of(c)) * (fit[0] + fit[1] * c.steps) * scale for c in cells)
        return start + ASSUMED_S["sd_load"], images
    model = grid.backbone(first)["model"]
    adapter = grid.adapter(first)
    width, height = grid.resolution(first)
    scale = width * height / MEASURED_SIDE**2
    factor, compile_s = 1.0, 0.0
    variant = _variant({**EAGER_SWITCHES, **grid.acceleration(first)})
    if variant is not None:
        factor, compile_s = figures.accelerations.get(variant, (1.0, 0.0))
        if variant not in figures.accelerations:
            notes.append(f"no {variant} figures for {figures.card}: {first.job} timed as eager")
    with_adapter = figures.flux_step[(model, True)] * factor * scale
    alone = figures.flux_step[(model, False)] * factor * scale
    images = 0.0
    for cell in cells:
        adapter_steps = cell.steps if adapter["kind"] == "infusenet" else 0
        if adapter.get("first_steps") is not None:
            adapter_steps = min(adapter_steps, adapter["first_steps"])
        step_s = adapter_steps * with_adapter + (cell.steps - adapter_steps) * alone
        images += len(grid.items_of(cell)) * (step_s + figures.flux_decode * scale)
    return start + figures.flux_load + compile_s, images


def _embedding_jobs(grid: Grid, paths: Paths) -> list[Job]:
    """The prompt, reference and identity embedding jobs, as the Snakefile forms them."""
    start = ASSUMED_S["job_start"]
    prompt_jobs = {
        (path.parent.name, path.name.split(".", 1)[1])
        for cell in grid.cells
        for path in grid.prompt_embeddings(paths, cell)
    }
    jobs = [
        Job(
            "embed_prompt" if suffix.startswith("L") else "embed_sd_prompt",
            f"{family}/{suffix.removesuffix('.safetensors')}",
            start + ASSUMED_S["text_encoders"],
            True,
        )
        for family, suffix in sorted(prompt_jobs)
    ]
    jobs += [
        Job("embed_reference", "/".join(key), start + ASSUMED_S["image_encoder"], True)
        for key in grid.reference_embeddings_needed()
    ]
    if any(grid.needs_identity_embeddings(cell) for cell in grid.cells):
        jobs += [
            Job("embed_identity", identity["id"], start + ASSUMED_S["identity"], False)
            for identity in grid.config["identities"]
        ]
    return jobs


def download_gb(config: dict[str, Any], grid: Grid) -> dict[str, float]:
    """Model -> GB of its weight files the sweep fetches, for models not yet prepared (real
    weights only; random and tiny weights are built here)."""
    if config["weights"] != "real":
        return {}
    sizes = {}
    for name in grid.models:
        if marker_path(config, name).exists() or name in config["local_weights"]:
            continue
        spec = lookup(name)
        recipe = spec.recipe
        if recipe is not None and recipe.patterns is not None:
            files = recipe.patterns(config, spec, grid.model_usage(name))
        else:
            files = spec.extra.get("patterns") or [spec.extra.get("file")]
        sizes[name] = sum(PUBLISHED_GB.get((spec.repo_id, f), 0.0) for f in files)
    return sizes


def _embedding_bytes(grid: Grid, paths: Paths, jobs: list[Job]) -> float:
    floats = 0
    prompts = len(grid.config["prompts"])
    for job in jobs:
        family, _, suffix = job.name.partition("/")
        if job.rule == "embed_prompt":
            floats += prompts * (int(suffix[1:]) * FLUX_PROMPT_WIDTH + FLUX_POOLED)
        elif job.rule == "embed_sd_prompt":
            floats += prompts * SD_PROMPT_FLOATS.get(family, 0)
        elif job.rule == "embed_reference":
            floats += REFERENCE_FLOATS[suffix.partition("/")[0]]
        elif job.rule == "embed_identity":
            floats += IDENTITY_FLOATS
    return 4.0 * floats


def estimate(config: dict[str, Any], card: str, folder: Path = FIGURES) -> Estimate:
    """What the sweep of `config` (validated) costs on `card`, from `folder`'s figures."""
    figures = load_figures(card, folder)
    grid, paths, notes = Grid(config), Paths(config), []
    gpu = config["device"] != "cpu"
    start = ASSUMED_S["job_start"]
    jobs = [Job("prepare_model", name, start + ASSUMED_S["prepare"], False) for name in grid.models]
    jobs += [Job(j.rule, j.name, j.seconds, j.gpu and gpu) for j in _embedding_jobs(grid, paths)]
    images = {cell.id: len(grid.items_of(cell)) for cell in grid.cells}
    pixels = 0.0
    for job_id, cells in grid.jobs.items():
        once, per_images = _generation_seconds(grid, cells, figures, notes)
        jobs.append(Job("generate", job_id, once + per_images, gpu))
        count = sum(images[c.id] for c in cells)
        score = start + ASSUMED_S["score_load"] + count * ASSUMED_S["score_image"]
        jobs.append(Job("score", job_id, score, gpu))
        pixels += sum(images[c.id] * grid.resolution(c)[0] * grid.resolution(c)[1] for c in cells)
    trajectory_images = 0
    for cell in grid.trajectory_cells:
        items = min(len(grid.items_of(cell)), config["trajectory"]["max_items"])
        once, cell_images = _generation_seconds(grid, [cell], figures, notes)
        # every step: the denoising step, then x0 decoded and scored for identity
        per_step = cell_images / images[cell.id] / cell.steps + figures.flux_decode + ASSUMED_S["score_image"]
        jobs.append(Job("trajectory", cell.id, once + items * cell.steps * per_step, gpu))
        trajectory_images += items * cell.steps
        pixels += items * cell.steps * grid.resolution(cell)[0] * grid.resolution(cell)[1]
    jobs += [
        Job(rule, rule, start + ASSUMED_S[key], False)
        for rule, key in (("aggregate", "aggregate"), ("report", "report"), ("wandb_aggregate", "wandb"))
    ]
    if not gpu:
        notes.append("device: cpu: the GPU figures do not apply; every job counted as a CPU job")
    return Estimate(
        config=config,
        figures=figures,
        images=images,
        trajectory_images=trajectory_images,
        jobs=jobs,
        image_gb=3 * pixels / 1e9,
        embedding_gb=_embedding_bytes(grid, paths, jobs) / 1e9,
        downloads=download_gb(config, grid),
        notes=notes,
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def render(result: Estimate, config_name: str) -> str:
    """The estimate as the `fewstep estimate` command prints it."""
    config, figures = result.config, result.figures
    lines = [
        f"{config_name}: sweep {config['sweep']}, weights {config['weights']}, "
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
        f"wall time on one card: {_duration(result.wall_seconds)} (GPU jobs one after another; "
        "prepare before, aggregate and report after)",
        f"disk: images {result.image_gb:.2f} GB at most (raw RGB; PNGs of photos are smaller), "
        f"embeddings {result.embedding_gb:.3f} GB",
    ]
    if config["weights"] == "real":
        missing = ", ".join(f"{name} {gb:.2f}" for name, gb in result.downloads.items()) or "none"
        lines.append(
            f"download: {sum(result.downloads.values()):.1f} GB of weights not yet present ({missing})"
        )
    else:
        lines.append(f"download: none (weights {config['weights']}: built here, nothing fetched)")
    assumed = ", ".join(f"{name} {value:g} s" for name, value in ASSUMED_S.items())
    lines.append(f"assumed, not in benchmarks/results: {assumed}")
    lines += [f"note: {note}" for note in dict.fromkeys(result.notes)]
    return "\n".join(lines)
