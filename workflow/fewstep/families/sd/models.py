"""The registered SD models: `sd15`, `sdxl` (the base pipelines), `ip-adapter` (h94/IP-Adapter),
`ip-adapter-faceid` (h94/IP-Adapter-FaceID's files, `faceid`) and the distillations' publishers
(`distillations.PUBLISHERS`: SDXL-Lightning, Hyper-SD, the two LCM-LoRAs, SDXL-Turbo), each
fetching only the pinned files of the distillations the sweep uses.

Each spec carries its `Recipe`: ``fetch`` brings the hub files a sweep uses (the base model's
component folders in fp16 safetensors, text encoders only when the model embeds the prompts;
from h94/IP-Adapter only the adapter files and image-encoder folders of the sweep's adapters),
``tiny`` builds the seeded stand-ins (`tiny`), ``random`` writes the published configs
(`random_weights`). A recipe reads the sweep only through its `Usage`. Importing this module
registers the specs; nothing here imports torch at module level.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewstep.families.sd import faceid
from fewstep.families.sd.distillations import DISTILLATIONS, PUBLISHERS, SDXL_TURBO_SCHEDULER, Distillation
from fewstep.families.sd.specs import FAMILIES, IP_ADAPTER_REPO, SDFamily, ip_adapter_patterns
from fewstep.registry.catalog import register
from fewstep.registry.hub import fetch_snapshot
from fewstep.registry.spec import ModelSpec, Recipe, Usage

ADAPTER_KIND = "ip_adapter"
#: the registry model holding h94/IP-Adapter's files
IP_ADAPTER_MODEL = "ip-adapter"
#: what a generation job reads of a base model folder (the weights digest covers these)
BACKBONE_FOLDERS = ("model_index.json", "scheduler/", "unet/", "vae/")


def _family(spec: ModelSpec) -> SDFamily:
    return FAMILIES[spec.name]


def _backbone_patterns(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return _family(spec).allow_patterns(text_encoders=usage.embeds_text)


def _backbone_required(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    family = _family(spec)
    required = ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json"]
    if usage.embeds_text:
        required += [f"{name}/config.json" for name in family.text_encoders]
    return required


def _backbone_tiny(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.sd.tiny import build_tiny_pipeline

    build_tiny_pipeline(_family(spec), folder)


def _backbone_random(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.sd.random_weights import write_random_pipeline

    write_random_pipeline(_family(spec), folder)


def adapter_uses(usage: Usage) -> list[tuple[SDFamily, str]]:
    """(base model, adapter file) pairs of the sweep's h94/IP-Adapter cells (not FaceID's), sorted."""
    pairs = {
        (family, adapter.get("file", "plain"))
        for family, adapter in usage.family_adapters
        if family in FAMILIES and adapter["kind"] == ADAPTER_KIND and adapter.get("file") != "faceid"
    }
    return [(FAMILIES[family], file) for family, file in sorted(pairs)]


def _ip_adapter_patterns(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    """The adapter files used and their image encoders (the reference embedding jobs load them)."""
    return ip_adapter_patterns([(family, file, True) for family, file in adapter_uses(usage)])


def _ip_adapter_tiny(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.sd.tiny import build_tiny_ip_adapter

    for family, file in adapter_uses(usage):
        build_tiny_ip_adapter(folder, [family], [file])


def _ip_adapter_random(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.sd.random_weights import write_random_ip_adapter

    for family, file in adapter_uses(usage):
        write_random_ip_adapter(folder, family, [file])


BACKBONE_RECIPE = Recipe(
    fetch=fetch_snapshot,
    tiny=_backbone_tiny,
    required=_backbone_required,
    random=_backbone_random,
    patterns=_backbone_patterns,
)
IP_ADAPTER_RECIPE = Recipe(
    fetch=fetch_snapshot,
    tiny=_ip_adapter_tiny,
    required=_ip_adapter_patterns,  # exact file names: each must be there
    random=_ip_adapter_random,
    patterns=_ip_adapter_patterns,
)


def distillation_of(backbone: Mapping[str, Any]) -> Distillation | None:
    """The backbone's ``distillation`` (None: the base model itself)."""
    name = backbone.get("distillation")
    return None if name is None else DISTILLATIONS[backbone.get("family", "flux")][name]


def used_distillations(spec: ModelSpec, usage: Usage) -> list[Distillation]:
    """The distillations of publisher `spec` that the sweep's cells load, by file."""
    used = {d.file: d for d in map(distillation_of, usage.backbones) if d and d.publisher == spec.name}
    return [used[file] for file in sorted(used)]


def _distilled_files(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return sorted({file for d in used_distillations(spec, usage) for file in d.files})


def _distilled_tiny(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.sd.tiny import build_tiny_distillation

    for distillation in used_distillations(spec, usage):
        build_tiny_distillation(distillation, folder)


def _distilled_random(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """Random mode times the base architecture (`distilled`): only a UNet folder's scheduler."""
    from fewstep.core.io import atomic_write_json

    if any(d.form == "unet_folder" for d in used_distillations(spec, usage)):
        atomic_write_json(Path(folder) / "scheduler" / "scheduler_config.json", SDXL_TURBO_SCHEDULER)


DISTILLED_RECIPE = Recipe(
    fetch=fetch_snapshot,
    tiny=_distilled_tiny,
    required=_distilled_files,  # exact file names: each must be there
    random=_distilled_random,
    patterns=_distilled_files,
)
DISTILLED: Mapping[str, ModelSpec] = {
    name: ModelSpec(
        name, p.folder, p.repo_id, extra={"published_gb": dict(p.published_gb)}, recipe=DISTILLED_RECIPE
    )
    for name, p in PUBLISHERS.items()
}

#: GB of the download estimate: the published fp16 weight files the patterns name, per repo
PUBLISHED_GB = {
    "sd15": {
        "unet/diffusion_pytorch_model.fp16.safetensors": 1.72,
        "vae/diffusion_pytorch_model.fp16.safetensors": 0.17,
        "text_encoder/model.fp16.safetensors": 0.25,
    },
    "sdxl": {
        "unet/diffusion_pytorch_model.fp16.safetensors": 5.14,
        "vae/diffusion_pytorch_model.fp16.safetensors": 0.17,
        "text_encoder/model.fp16.safetensors": 0.25,
        "text_encoder_2/model.fp16.safetensors": 1.39,
    },
    IP_ADAPTER_MODEL: {
        "models/ip-adapter_sd15.bin": 0.04,
        "models/ip-adapter-plus_sd15.bin": 0.10,
        "models/image_encoder/model.safetensors": 2.53,
        "sdxl_models/ip-adapter_sdxl.bin": 0.70,
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.bin": 0.85,
        "sdxl_models/image_encoder/model.safetensors": 3.69,
    },
}
BACKBONES: Mapping[str, ModelSpec] = {
    name: ModelSpec(
        name,
        family.folder,
        family.repo_id,
        extra={"published_gb": PUBLISHED_GB[name]},
        recipe=BACKBONE_RECIPE,
    )
    for name, family in FAMILIES.items()
}
IP_ADAPTER = ModelSpec(
    IP_ADAPTER_MODEL,
    "IP-Adapter",
    IP_ADAPTER_REPO,
    extra={"published_gb": PUBLISHED_GB[IP_ADAPTER_MODEL]},
    recipe=IP_ADAPTER_RECIPE,
)


def faceid_families(usage: Usage) -> list[str]:
    """The SD families of the sweep's FaceID cells, sorted."""
    return sorted({family for family, adapter in usage.family_adapters if faceid.is_faceid(adapter)})


def _faceid_files(config: Mapping[str, Any], spec: ModelSpec, usage: Usage) -> list[str]:
    return [faceid.FACEID_FILES[family].weight_name for family in faceid_families(usage)]


def _faceid_tiny(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.families.sd.tiny import tiny_unet_config

    for family in faceid_families(usage):
        unet = tiny_unet_config(FAMILIES[family])
        faceid.write_faceid_file(folder, FAMILIES[family], unet, rank=4, std=0.2)


def _faceid_random(config: Mapping[str, Any], spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """Nothing to write: random mode draws the published shapes on the device (`attach_faceid`)."""
    folder.mkdir(parents=True, exist_ok=True)


FACEID = ModelSpec(
    faceid.FACEID_MODEL,
    "IP-Adapter-FaceID",
    faceid.FACEID_REPO,
    extra={"published_gb": {"ip-adapter-faceid_sd15.bin": 0.1, "ip-adapter-faceid_sdxl.bin": 1.1}},
    recipe=Recipe(
        fetch=fetch_snapshot,
        tiny=_faceid_tiny,
        required=_faceid_files,
        random=_faceid_random,
        patterns=_faceid_files,
    ),
)
register(*BACKBONES.values(), IP_ADAPTER, *DISTILLED.values(), FACEID)


def generation_weights(
    backbone: str, adapter: Mapping[str, Any], distillation: Distillation | None = None
) -> dict[str, tuple[str, ...]]:
    """Registry model -> the files or folders inside it that a generation job reads."""
    folders = {backbone: BACKBONE_FOLDERS}
    if distillation is not None:
        folders[distillation.publisher] = distillation.files
    if faceid.is_faceid(adapter):  # h94/IP-Adapter-FaceID
        return folders | faceid.generation_weights(backbone)
    if adapter["kind"] == ADAPTER_KIND:
        file = FAMILIES[backbone].adapters[adapter.get("file", "plain")]
        folders[IP_ADAPTER_MODEL] = (f"{file.subfolder}/{file.weight_name}",)
    return folders


def negative_prompt(backbone: Mapping[str, Any]) -> str | None:
    """A backbone's classifier-free guidance negative prompt, None when unset: the pipeline's own
    default then applies (SD1.5 encodes ``""``; SDXL uses zero embeddings, its model index's
    ``force_zeros_for_empty_prompt``), as `encode_prompt(negative_prompt=None)` does."""
    return backbone.get("negative_prompt")


def reference_weights(backbone: str, file: str) -> dict[str, tuple[str, ...]]:
    """What a reference embedding job reads: the base model, the adapter file and its encoder."""
    adapter = FAMILIES[backbone].adapters[file]
    return {
        backbone: BACKBONE_FOLDERS,
        IP_ADAPTER_MODEL: (f"{adapter.subfolder}/{adapter.weight_name}", f"{adapter.encoder_path}/"),
    }
