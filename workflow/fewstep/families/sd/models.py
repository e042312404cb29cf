"""The registered SD models: `sd15`, `sdxl` (the base pipelines) and `ip-adapter` (h94/IP-Adapter).

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

BACKBONES: Mapping[str, ModelSpec] = {
    name: ModelSpec(name, family.folder, family.repo_id, recipe=BACKBONE_RECIPE)
    for name, family in FAMILIES.items()
}
IP_ADAPTER = ModelSpec(IP_ADAPTER_MODEL, "IP-Adapter", IP_ADAPTER_REPO, recipe=IP_ADAPTER_RECIPE)
register(*BACKBONES.values(), IP_ADAPTER)


def generation_weights(backbone: str, adapter: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Registry model -> the files or folders inside it that a generation job reads."""
    folders = {backbone: BACKBONE_FOLDERS}
    if adapter["kind"] == ADAPTER_KIND and adapter.get("file") == "faceid":  # h94/IP-Adapter-FaceID
        from fewstep.families.sd.faceid import generation_weights as faceid_weights

        return folders | faceid_weights(backbone)
    if adapter["kind"] == ADAPTER_KIND:
        file = FAMILIES[backbone].adapters[adapter.get("file", "plain")]
        folders[IP_ADAPTER_MODEL] = (f"{file.subfolder}/{file.weight_name}",)
    return folders


def negative_prompt(backbone: Mapping[str, Any]) -> str:
    """A backbone's classifier-free guidance negative prompt (empty unless configured)."""
    return backbone.get("negative_prompt") or ""


def reference_weights(backbone: str, file: str) -> dict[str, tuple[str, ...]]:
    """What a reference embedding job reads: the base model, the adapter file and its encoder."""
    adapter = FAMILIES[backbone].adapters[file]
    return {
        backbone: BACKBONE_FOLDERS,
        IP_ADAPTER_MODEL: (f"{adapter.subfolder}/{adapter.weight_name}", f"{adapter.encoder_path}/"),
    }
