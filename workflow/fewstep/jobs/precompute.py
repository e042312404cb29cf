"""Work done once per sweep, before any cell: prompt and identity embeddings.

Prompt embeddings are made once per family, prompt and prompt variant (`Family.prompt_variants`;
FLUX's CLIP pooled + T5 sequence are the same for FLUX.1-dev and FLUX.1-schnell, so one file per
prompt and sequence length serves every cell), and no generation job ever loads a text encoder.
Reference embeddings go through each family's `reference_encoder`. Identity embeddings follow
InfiniteYou: insightface detection (det sizes 640, 320, 160), the chosen face's
5 keypoints, `norm_crop` to 112 px, and the IR-SE50 ArcFace embedding (InfuseNet's); IP-Adapter
FaceID's buffalo_l `w600k_r50` normed embedding of the same face when FaceID cells read it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fewstep.core.errors import ConfigError
from fewstep.core.io import atomic_write_bytes
from fewstep.core.paths import Paths
from fewstep.core.study import Prompt, Study, StudyLike, as_study
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
    study: StudyLike,
    family: str | None = None,
    prompt_ids: list[str] | None = None,
    variant: str | None = None,
) -> list[Path]:
    """Write prompt embeddings: every family, prompt and prompt variant (`Family.prompt_variants`)
    the cells use, or only the ones named (the `embed_prompt` rule: every prompt as one variant of
    one family, e.g. FLUX's ``L512`` or an SD negative prompt's ``N<hash>``)."""
    study = as_study(study)
    grid = Grid(study)
    prompts = [grid.prompt(p) for p in prompt_ids] if prompt_ids else list(study.prompts)
    written = []
    for name in [family] if family else grid.families:
        labels = [variant] if variant else list(grid.prompt_variants(name))
        variants = {label: grid.prompt_variant_backbone(name, label) for label in labels}
        written += _embed_prompts(study, name, prompts, variants)
    return written


def _embed_prompts(study: Study, family: str, prompts: list[Prompt], variants: dict[str, Any]) -> list[Path]:
    """One file per prompt and variant (label -> the backbone whose settings it embeds with),
    the family's text encoders loaded once."""
    from fewstep.core.provenance import device_name
    from fewstep.families.base import timed
    from fewstep.registry.load import resolve_device, resolve_dtype

    grid, paths = Grid(study), Paths(study)
    device = resolve_device(study.device)
    dtype = resolve_dtype(study.dtype, device)
    source = grid.text_encoder_backbone(family)
    encoder = grid.known_families[family].prompt_encoder(study, source, device, dtype)
    written = []
    jobs = [(p, label) for p in prompts for label in variants]
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
    study: StudyLike,
    family: str | None = None,
    file: str | None = None,
    reference_ids: list[str] | None = None,
) -> list[Path]:
    """Write the image embeddings (``image_embeds``) of every reference the adapter cells read,
    through each family's `reference_encoder`, or of those named (the `embed_reference` rule: one
    family x adapter file x reference per job)."""
    study = as_study(study)
    from PIL import Image

    from fewstep.core.images import load_rgb
    from fewstep.core.provenance import device_name
    from fewstep.families.base import timed
    from fewstep.registry.load import resolve_device, resolve_dtype

    grid, paths = Grid(study), Paths(study)
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


def embed_identities(study: StudyLike, identity_ids: list[str] | None = None) -> list[Path]:
    """Write one embedding file (face box, keypoints, and the embedding of each recogniser the
    sweep's identity cells read: `Grid.identity_encoders`) per identity, or for the identities named
    (the `embed_identity` rule: one identity per job). Every recogniser embeds the face the
    identity's face policy chose."""
    study = as_study(study)
    from fewstep.core.errors import InputError
    from fewstep.core.images import load_rgb, rgb_to_bgr
    from fewstep.core.provenance import device_name
    from fewstep.faces.analyzer import aligned_crop
    from fewstep.faces.arcface_irse import embed_aligned_bgr
    from fewstep.faces.models import (
        ARCFACE_IRSE,
        CONDITIONING_FACE_PACK,
        EMBEDDING_TENSORS,
        FACEID_ENCODER,
        face_analyzer,
        load_arcface_irse,
        load_faceid_encoder,
    )

    grid, paths = Grid(study), Paths(study)
    identities = [grid.identity(i) for i in identity_ids] if identity_ids else list(study.identities)
    analyzer = face_analyzer(study, CONDITIONING_FACE_PACK)
    encoders = grid.identity_encoders
    embedders = {}
    if ARCFACE_IRSE.name in encoders:  # a handful of 112 px faces: CPU is enough
        irse = load_arcface_irse(study, torch.device("cpu"))
        embedders[ARCFACE_IRSE.name] = lambda bgr, kps: embed_aligned_bgr(irse, aligned_crop(bgr, kps))
    if FACEID_ENCODER.name in encoders:
        embedders[FACEID_ENCODER.name] = load_faceid_encoder(study).embed
    written = []
    with tqdm(identities, desc="identity embeddings", unit="identity") as bar:
        for identity in bar:
            image = load_rgb(identity["image"])
            bgr = rgb_to_bgr(image)
            start = time.perf_counter()
            found = analyzer.analyze(bgr, study.face.policy)
            if found is None:
                raise InputError(
                    f"identities[{identity['id']}]: no face found in {identity['image']}; "
                    "use a picture with one clearly visible face"
                )
            face = found.face
            embeddings = {
                EMBEDDING_TENSORS[name]: torch.from_numpy(np.asarray(embed(bgr, face.kps), np.float32))[None]
                for name, embed in embedders.items()
            }
            encode_s = time.perf_counter() - start  # detection, alignment and the recognisers
            path = paths.identity_embedding(identity["id"])
            save_tensors(
                path,
                {
                    **embeddings,
                    "bbox": torch.tensor(face.bbox, dtype=torch.float32),
                    "kps": torch.tensor(face.kps, dtype=torch.float32),
                    "det_score": torch.tensor([face.det_score], dtype=torch.float32),
                },
                {
                    "identity": identity["id"],
                    "image": identity["image"],
                    "n_faces": str(found.n_faces),
                    "policy": study.face.policy,
                    "encoders": ",".join(embedders),
                    "weights": study.weights,
                    "height": str(image.shape[0]),
                    "width": str(image.shape[1]),
                    "encode_s": f"{encode_s:.6f}",
                    "encode_device_name": device_name("cpu"),
                },
            )
            written.append(path)
    return written
