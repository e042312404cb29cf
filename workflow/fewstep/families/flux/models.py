"""Model registry: one name, three sources, one loading code path.

- ``real``: the published weights, fetched by the download rule into
  ``<models_dir>/real/<folder>`` and read with ``from_pretrained``;
- ``tiny``: the same classes from tiny configs with seeded random weights, saved
  in the published layout under ``<models_dir>/tiny/<folder>`` (`fewstep.families.flux.tiny`);
- ``random``: the published architectures with random weights, built directly
  on the device from the saved configs (honest latency, meaningless images).

Everything downstream calls the loaders here and never knows which source it got.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import WeightsError
from fewstep.core.io import atomic_write_json, sha256_file
from fewstep.families.flux.specs import (
    DEV_SCHEDULER,
    FLUX_MODEL_INDEX,
    FLUX_TRANSFORMER,
    FLUX_VAE,
    INFUSENET,
    SCHNELL_SCHEDULER,
    T5_XXL,
)
from fewstep.registry.load import default_dtype, load_component
from fewstep.registry.spec import ModelSpec
from fewstep.registry.text_encoders import CLIP_L_TEXT

if TYPE_CHECKING:  # torch is imported by the loaders: the workflow's parse never loads it
    import torch

INFU_VERSION = "infu_flux_v1.0"

BACKBONES = {
    "flux-dev": ModelSpec(
        "flux-dev",
        "FLUX.1-dev",
        "black-forest-labs/FLUX.1-dev",
        gated=True,
        extra={"guidance_embeds": True, "scheduler": DEV_SCHEDULER, "max_sequence_length": 512},
        revision="3de623fc3c33e44ffbe2bad470d0f45bccf2eb21",
    ),
    "flux-schnell": ModelSpec(
        "flux-schnell",
        "FLUX.1-schnell",
        "black-forest-labs/FLUX.1-schnell",
        extra={
            "guidance_embeds": False,
            "scheduler": SCHNELL_SCHEDULER,
            "max_sequence_length": 256,
        },
        revision="741f7c3ce8b383c54771c7003378a50191e9efe9",
    ),
}
INFINITEYOU = ModelSpec("infiniteyou", "InfiniteYou", "ByteDance/InfiniteYou")
#: insightface packs under <folder>/models/<pack>: detection for InfiniteYou's conditioning
#: (antelopev2, as published with InfiniteYou) and the scoring network (config face.pack).
INSIGHTFACE = ModelSpec("insightface", "insightface", "ByteDance/InfiniteYou")
#: facexlib's IR-SE50 ArcFace, the embedding InfiniteYou conditions on.
ARCFACE_IRSE = ModelSpec(
    "arcface-irse50",
    "facexlib",
    extra={
        "file": "recognition_arcface_ir_se50.pth",
        "url": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth",
    },
)
CONDITIONING_FACE_PACK = "antelopev2"
REGISTRY = {**BACKBONES, **{m.name: m for m in (INFINITEYOU, INSIGHTFACE, ARCFACE_IRSE)}}


def _spec(name: str) -> ModelSpec | None:
    """Generation models here, scoring models in `fewstep.scoring.networks`."""
    from fewstep.scoring.networks import SCORING_MODELS

    return REGISTRY.get(name) or SCORING_MODELS.get(name)


def model_folder(config: dict[str, Any], name: str) -> Path:
    from fewstep.scoring.networks import SCORING_MODELS

    spec = _spec(name)
    if spec is None:
        known = ", ".join(sorted({*REGISTRY, *SCORING_MODELS}))
        raise WeightsError(f"unknown model {name!r}; known: {known}")
    return Path(config["models_dir"]) / config["weights"] / spec.folder


def marker_path(config: dict[str, Any], name: str) -> Path:
    """The file that says a model is ready (the prepare rule's output)."""
    from fewstep.core.paths import Paths

    return Paths(config).model_marker(name)


def infusenet_variants(config: dict[str, Any]) -> list[str]:
    """InfuseNet variants the configured cells use (only these are fetched or built)."""
    from fewstep.grid import Grid

    grid = Grid(config)
    return sorted({grid.adapter(c)["variant"] for c in grid.cells if grid.adapter(c)["kind"] == "infusenet"})


def model_revision(config: dict[str, Any], name: str) -> str | None:
    """The hub revision model `name` is fetched at: config `revisions`, else the spec's pin."""
    spec = _spec(name)
    if spec is None or spec.repo_id is None:
        return None
    return config["revisions"].get(name, spec.revision)


def prepare(config: dict[str, Any], name: str) -> Path:
    """Make model `name` available for the configured weights mode; write its marker.

    The marker names the requested revision, the hub commits the files resolved to
    (read from the Hugging Face cache layout) and every file's size and sha256.
    """
    folder = model_folder(config, name)
    mode = config["weights"]
    if mode == "tiny":
        _build_tiny(config, name, folder)
    elif mode == "random":
        _write_random(config, name, folder)
    elif name in config["local_weights"]:
        from fewstep.registry.hub import link_local

        link_local(config, folder, Path(config["local_weights"][name]), name)
    else:
        from fewstep.registry.hub import fetch

        fetch(config, name, folder)
    marker = marker_path(config, name)
    files = sorted(
        Path(root) / name
        for root, _, names in os.walk(folder, followlinks=True)  # links into the HF cache
        for name in names
        if ".cache" not in Path(root).parts
    )
    spec = _spec(name)
    commits = dict(sorted({hub_snapshot(p) for p in files} - {None}))
    atomic_write_json(
        marker,
        {
            "model": name,
            "weights": mode,
            "folder": str(folder),
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "repo_id": spec.repo_id,
            "revision": model_revision(config, name),
            "commit": commits.get(spec.repo_id),
            "commits": commits,
            "files": [
                {"path": str(p.relative_to(folder)), "bytes": p.stat().st_size, **file_sha256(p)}
                for p in files
            ],
        },
    )
    return marker


def generation_weights(backbone: str, adapter: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Registry model -> the folders inside it that a generation job reads (`load_flux`)."""
    folders = {backbone: ("transformer/", "vae/", "scheduler/")}
    if adapter["kind"] == "infusenet":
        folders[INFINITEYOU.name] = (f"{INFU_VERSION}/{adapter['variant']}/",)
    return folders


def weights_digest(config: dict[str, Any], folders: dict[str, tuple[str, ...]]) -> str:
    """Fingerprint of the files (path, sha256) under `folders`, read from the models' ready markers.

    It changes exactly when the weights a job loads change: another hub revision,
    another `local_weights` folder, tiny weights rebuilt with other values.
    """
    import json

    from fewstep.core.config import fingerprint

    files = {}
    for name, prefixes in sorted(folders.items()):
        marker = marker_path(config, name)
        if not marker.exists():
            raise WeightsError(f"missing {marker}; run the prepare rule for {name} first")
        entries = json.loads(marker.read_text())["files"]
        files[name] = sorted((f["path"], f["sha256"]) for f in entries if f["path"].startswith(prefixes))
    return fingerprint(files)


SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def hub_snapshot(path: Path) -> tuple[str, str] | None:
    """(repo id, commit) when `path` lies in a Hugging Face cache snapshot, else None.

    The cache keeps `models--<org>--<name>/snapshots/<commit>/<file>`; only the
    folders are resolved here (the file itself links on into `blobs/`).
    """
    parts = Path(os.path.realpath(path.parent)).parts
    if "snapshots" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("snapshots")
    if at == 0 or at + 1 >= len(parts) or not parts[at - 1].startswith("models--"):
        return None
    return parts[at - 1].removeprefix("models--").replace("--", "/"), parts[at + 1]


def file_sha256(path: Path) -> dict[str, str]:
    """A file's sha256: the name of its Hugging Face cache blob when that names it, else hashed.

    The cache stores large (LFS) files as `blobs/<sha256>`: the hub's own hash of the
    content, so re-reading tens of GB here adds nothing (`hf cache verify <repo>` checks
    the bytes on demand). Small files' blobs are named by their git object id, and files
    outside the cache are named by nothing: those are hashed.
    """
    target = path.resolve()
    if target.parent.name == "blobs" and SHA256_NAME.fullmatch(target.name):
        return {"sha256": target.name, "sha256_from": "hub blob name"}
    return {"sha256": sha256_file(path), "sha256_from": "hashed"}


def face_packs(config: dict[str, Any]) -> list[str]:
    """insightface packs the sweep uses: conditioning detection and scoring."""
    return sorted({CONDITIONING_FACE_PACK, config["face"]["pack"]})


def _build_tiny(config: dict[str, Any], name: str, folder: Path) -> None:
    from fewstep.families.flux import tiny
    from fewstep.scoring.networks import SCORING_MODELS, build_tiny

    if name == INSIGHTFACE.name:
        from fewstep.faces.analyzer import build_tiny_face_pack

        for pack in face_packs(config):
            build_tiny_face_pack(folder, pack)
    elif name == ARCFACE_IRSE.name:
        from fewstep.faces.arcface_irse import save_tiny_irse

        save_tiny_irse(folder / ARCFACE_IRSE.extra["file"])
    elif name in BACKBONES:
        extra = BACKBONES[name].extra
        tiny.build_flux_backbone(
            folder, guidance_embeds=extra["guidance_embeds"], scheduler_config=extra["scheduler"]
        )
    elif name == INFINITEYOU.name:
        tiny.build_infiniteyou(folder, infusenet_variants(config))
    elif name in SCORING_MODELS:
        build_tiny(name, folder)
    else:  # pragma: no cover - REGISTRY lookups fail earlier
        raise WeightsError(f"no tiny builder for {name!r}")


def _write_random(config: dict[str, Any], name: str, folder: Path) -> None:
    """Write only configs: the loaders build full-size modules on the device.

    Face and scoring models are the exception: random detectors find no face, and
    random mode's scores are meaningless anyway, so it uses their tiny stand-ins.
    """
    from fewstep.core.io import atomic_write_json as write
    from fewstep.scoring.networks import SCORING_MODELS

    if name in (INSIGHTFACE.name, ARCFACE_IRSE.name) or name in SCORING_MODELS:
        _build_tiny(config, name, folder)
    elif name in BACKBONES:
        from transformers import CLIPTextConfig, T5Config

        from fewstep.registry.tiny import build_clip_tokenizer, build_t5_tokenizer

        extra = BACKBONES[name].extra
        transformer = {**FLUX_TRANSFORMER, "guidance_embeds": extra["guidance_embeds"]}
        write(folder / "transformer" / "config.json", transformer)
        write(folder / "vae" / "config.json", FLUX_VAE)
        write(folder / "scheduler" / "scheduler_config.json", extra["scheduler"])
        write(folder / "model_index.json", FLUX_MODEL_INDEX)
        CLIPTextConfig(**CLIP_L_TEXT).save_pretrained(folder / "text_encoder")
        T5Config(**T5_XXL).save_pretrained(folder / "text_encoder_2")
        # Tokenizers only turn text into ids; tiny ones keep random mode offline.
        build_clip_tokenizer(folder / "tokenizer")
        build_t5_tokenizer(folder / "tokenizer_2")
    elif name == INFINITEYOU.name:
        for variant in infusenet_variants(config):
            write(folder / INFU_VERSION / variant / "InfuseNetModel" / "config.json", INFUSENET)


# --------------------------------------------------------------------------- loading


@dataclass
class FluxParts:
    """What a generation job holds: never the text encoders."""

    transformer: Any
    vae: Any
    scheduler: Any
    infusenet: Any = None
    resampler: Any = None


def load_flux(
    config: dict[str, Any],
    backbone: str,
    adapter: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> FluxParts:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    weights = config["weights"]
    folder = model_folder(config, backbone)
    parts = FluxParts(
        transformer=load_component(FluxTransformer2DModel, folder / "transformer", weights, device, dtype),
        vae=load_component(AutoencoderKL, folder / "vae", weights, device, dtype),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
    )
    if adapter["kind"] == "infusenet":
        parts.infusenet, parts.resampler = load_infiniteyou(config, adapter["variant"], device, dtype)
    apply_memory_options(parts, config["memory"], device, dtype)
    return parts


def apply_memory_options(
    parts: FluxParts, memory: dict[str, Any], device: torch.device, dtype: torch.dtype
) -> None:
    """8-bit weight storage and CPU offloading for GPUs smaller than the whole model."""
    import torch

    big = [m for m in (parts.infusenet, parts.transformer) if m is not None]
    if memory["fp8_weights"]:
        for module in big:  # weights stored as float8 e4m3, each layer upcast to `dtype` as it runs
            module.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if memory["offload"] == "none":
        return
    if device.type != "cuda":
        raise WeightsError("config memory.offload needs a CUDA device; set it to none on the CPU")
    cpu = torch.device("cpu")
    for module in (*big, parts.vae):  # blocks stream in one group at a time, overlapped with compute
        module.to(cpu)
        module.enable_group_offload(
            device, cpu, offload_type="block_level", num_blocks_per_group=1, use_stream=True
        )


def load_infiniteyou(
    config: dict[str, Any], variant: str, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """InfuseNet (FluxControlNetModel) and the identity resampler of one variant."""
    import torch
    from diffusers import FluxControlNetModel

    from fewstep.families.resampler import PUBLISHED, Resampler, infer_config, load_resampler

    folder = model_folder(config, INFINITEYOU.name) / INFU_VERSION / variant
    infusenet = load_component(
        FluxControlNetModel, folder / "InfuseNetModel", config["weights"], device, dtype
    )
    if config["weights"] == "random":
        with torch.device(device), default_dtype(dtype):
            resampler = Resampler(PUBLISHED).eval()
    else:
        path = folder / "image_proj_model.bin"
        if not path.exists():
            raise WeightsError(f"missing {path}; run the prepare/download rule for infiniteyou first")
        resampler = load_resampler(path, infer_config(path)).to(device, dtype)
    return infusenet, resampler


def load_flux_text_encoders(
    config: dict[str, Any], backbone: str, device: torch.device, dtype: torch.dtype
) -> Any:
    """A text-only FluxPipeline (CLIP-L + T5), used once per sweep to embed prompts."""
    from diffusers import FluxPipeline
    from transformers import CLIPTextModel, T5EncoderModel

    folder = model_folder(config, backbone)
    weights = config["weights"]
    return FluxPipeline.from_pretrained(
        folder,
        transformer=None,
        vae=None,
        text_encoder=load_component(CLIPTextModel, folder / "text_encoder", weights, device, dtype),
        text_encoder_2=load_component(T5EncoderModel, folder / "text_encoder_2", weights, device, dtype),
        dtype=dtype,
    )


def face_analyzer(config: dict[str, Any], pack: str | None = None):
    """insightface detection + recognition over a prepared pack (scoring's by default); on the
    GPU unless the config's device is the CPU (and onnxruntime has its CUDA provider)."""
    from fewstep.faces.analyzer import FaceAnalyzer

    folder, gpu = model_folder(config, INSIGHTFACE.name), config["device"] != "cpu"
    return FaceAnalyzer(folder, pack or config["face"]["pack"], gpu=gpu)


def load_arcface_irse(config: dict[str, Any], device: torch.device):
    """The IR-SE50 ArcFace InfiniteYou conditions on (its layout is read from the file)."""
    from fewstep.faces.arcface_irse import load_irse50

    return load_irse50(model_folder(config, ARCFACE_IRSE.name) / ARCFACE_IRSE.extra["file"], "auto", device)
