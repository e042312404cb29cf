"""Work done once per sweep, before any cell: prompt and identity embeddings.

Prompt embeddings are made once per family, prompt and prompt variant (`Family.prompt_variants`;
FLUX's CLIP pooled + T5 sequence are the same for FLUX.1-dev and FLUX.1-schnell, so one file per
prompt and sequence length serves every cell), and no generation job ever loads a text encoder.
Reference embeddings go through each family's `reference_encoder`, identity embeddings through
each family's `identity_encoder` (FLUX: InfiniteYou's face pipeline; SD1.5 and SDXL: IP-Adapter
FaceID's buffalo_l embedding of the same face), one file per identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fewstep.core.errors import ConfigError
from fewstep.core.io import atomic_write_bytes
from fewstep.core.paths import Paths
from fewstep.core.study import Prompt, Study
from fewstep.grid import Grid


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file, atomically: encoded in memory and written through Python, so a full disk
    is the one `DiskFullError` (safetensors' own writer raises a `SafetensorError` for it)."""
    from safetensors.torch import save

    data = save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, metadata)
    atomic_write_bytes(path, data)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})


#: metadata that says how long an embedding took and where, not what it holds (outside its digest)
TIMING_KEYS = ("encode_s", "encode_device_name")


def content_digest(path: Path) -> str:
    """sha256 of a tensor file's names, dtypes, shapes, values and metadata, in sorted order.

    The file's own bytes are not stable: safetensors writes metadata keys in hash order.
    Timing metadata (`TIMING_KEYS`) is left out: re-embedding the same inputs keeps the digest.
    """
    import hashlib
    import json

    tensors, metadata = load_tensors(path)
    metadata = {k: v for k, v in metadata.items() if k not in TIMING_KEYS}
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def embed_prompts(
    study: Study,
    family: str | None = None,
    prompt_ids: list[str] | None = None,
    variant: str | None = None,
    group: str | None = None,
) -> list[Path]:
    """Write prompt embeddings: every family, prompt and prompt variant (`Family.prompt_variants`)
    the cells use, or only the ones named (the `embed_prompt` rule: the prompts of one variant of
    one family, e.g. FLUX's ``L512`` or an SD negative prompt's ``N<hash>``, that its cells' roles
    render, of one prompt group with `group`: `Grid.variant_prompts`)."""
    grid = Grid.of(study)
    named = [grid.prompt(p) for p in prompt_ids] if prompt_ids else None
    written = []
    for name in [family] if family else grid.families:
        labels = [variant] if variant else list(grid.prompt_variants(name))
        variants = {label: grid.prompt_variant_backbone(name, label) for label in labels}
        jobs = [
            (prompt, label)
            for label in labels
            for prompt in (named or grid.variant_prompts(name, label, group))  # its cells' roles
        ]
        written += _embed_prompts(study, name, jobs, variants)
    return written


def _embed_prompts(
    study: Study, family: str, jobs: list[tuple[Prompt, str]], variants: dict[str, Any]
) -> list[Path]:
    """One file per (prompt, variant label) of `jobs` (label -> the backbone whose settings it
    embeds with), the family's text encoders loaded once."""
    from fewstep.core.provenance import device_name
    from fewstep.families.base import timed
    from fewstep.registry.load import resolve_device, resolve_dtype

    grid, paths = Grid.of(study), Paths(study)
    device = resolve_device(study.device)
    dtype = resolve_dtype(study.dtype, device)
    source = grid.text_encoder_backbone(family)
    encoder = grid.known_families[family].prompt_encoder(study, source, device, dtype)
    written = []
    # the bar ends its line before an error line is printed
    with tqdm(jobs, desc=f"prompt embeddings ({family})", unit="prompt") as bar:
        for prompt, label in bar:
            backbone = variants[label]
            tensors, encode_s = timed(device, encoder.encode, prompt["text"], backbone)
            path = paths.prompt_variant_embedding(family, prompt["id"], label)
            save_tensors(
                path,
                tensors,
                {
                    "prompt": prompt["text"],
                    **grid.known_families[family].prompt_metadata(backbone),
                    "text_encoders": source,
                    "weights": study.weights,
                    "encode_s": f"{encode_s:.6f}",
                    "encode_device_name": device_name(device),
                },
            )
            written.append(path)
    return written


def embed_references(
    study: Study,
    family: str | None = None,
    file: str | None = None,
    reference_ids: list[str] | None = None,
) -> list[Path]:
    """Write the image embeddings (``image_embeds``) of every reference the adapter cells read,
    through each family's `reference_encoder`, or of those named (the `embed_reference` rule: one
    family x adapter file x reference per job)."""
    from PIL import Image

    from fewstep.core.images import load_rgb
    from fewstep.core.provenance import device_name
    from fewstep.families.base import timed
    from fewstep.registry.load import resolve_device, resolve_dtype

    grid, paths = Grid.of(study), Paths(study)
    device = resolve_device(study.device)
    dtype = resolve_dtype(study.dtype, device)
    files = sorted({a for f, a, _ in grid.reference_embeddings_needed() if family is None or f == family})
    if file is not None and file not in files:
        raise ConfigError(
            f"embed-references --file {file}: no adapter cell of the sweep reads it; use {' or '.join(files)}"
        )
    needed = [
        (f, a, r)
        for f, a, r in grid.reference_embeddings_needed()
        if (family is None or f == family)
        and (file is None or a == file)
        and (not reference_ids or r in reference_ids)
    ]
    written, encoders = [], {}
    with tqdm(needed, desc="reference embeddings", unit="reference") as bar:
        for name, adapter_file, reference_id in bar:
            if (name, adapter_file) not in encoders:
                encoder = grid.known_families[name].reference_encoder(study, adapter_file, device, dtype)
                encoders[name, adapter_file] = encoder
            reference = grid.reference(reference_id)
            image = Image.fromarray(load_rgb(reference["image"]))
            embeds, encode_s = timed(device, encoders[name, adapter_file].encode, image)
            path = paths.reference_embedding(name, adapter_file, reference_id)
            save_tensors(
                path,
                {"image_embeds": embeds},
                {
                    "reference": reference_id,
                    "image": reference["image"],
                    "picture": grid.reference_pictures[reference_id],
                    "role": reference["role"],
                    "family": name,
                    "file": adapter_file,
                    "weights": study.weights,
                    "height": str(image.height),
                    "width": str(image.width),
                    "encode_s": f"{encode_s:.6f}",
                    "encode_device_name": device_name(device),
                },
            )
            written.append(path)
    return written


def embed_identities(study: Study, identity_ids: list[str] | None = None) -> list[Path]:
    """Write one embedding file per identity, or for the identities named (the `embed_identity`
    rule: one identity per job): the tensors of every family whose adapters read identity
    embeddings, each through its `Family.identity_encoder` (FLUX: face box, keypoints, ArcFace)."""
    from fewstep.core.errors import InputError
    from fewstep.core.images import load_rgb
    from fewstep.core.provenance import device_name
    from fewstep.families.base import timed
    from fewstep.registry.load import resolve_device

    grid, paths = Grid.of(study), Paths(study)
    needed = grid.identity_adapters()
    if not needed:
        raise ConfigError(
            "embed-identities: no cell of the sweep reads identity embeddings; nothing to embed"
        )
    identities = [grid.identity(i) for i in identity_ids] if identity_ids else list(study.identities)
    device = resolve_device(study.device)
    encoders = [
        grid.known_families[f].identity_encoder(study, adapters, device) for f, adapters in needed.items()
    ]
    written = []
    with tqdm(identities, desc="identity embeddings", unit="identity") as bar:
        for identity in bar:
            image = load_rgb(identity["image"])
            tensors, metadata, encode_s = {}, {}, 0.0
            for encoder in encoders:
                embedding, seconds = timed(encoder.device, encoder.encode, image)
                if embedding is None:
                    raise InputError(
                        f"identities[{identity['id']}]: no face found in {identity['image']}; "
                        "use a picture with one clearly visible face"
                    )
                clash = sorted(
                    name
                    for name in set(tensors) & set(embedding.tensors)
                    if not torch.equal(tensors[name], embedding.tensors[name])
                )
                if clash:  # a family would overwrite another's input (SD1.5 and SDXL share FaceID's)
                    raise ValueError(f"identity encoders write different tensors under {clash}")
                tensors |= embedding.tensors
                metadata |= embedding.metadata
                encode_s += seconds  # detection, alignment and embedding of every family
            path = paths.identity_embedding(identity["id"])
            save_tensors(
                path,
                tensors,
                {
                    "identity": identity["id"],
                    "image": identity["image"],
                    **metadata,
                    "weights": study.weights,
                    "height": str(image.shape[0]),
                    "width": str(image.shape[1]),
                    "encode_s": f"{encode_s:.6f}",
                    "encode_device_name": ", ".join(sorted({device_name(e.device) for e in encoders})),
                },
            )
            written.append(path)
    return written
