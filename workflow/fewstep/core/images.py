"""Reading reference and generated images, with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fewstep.core.errors import InputError

if TYPE_CHECKING:  # numpy is imported where pixels are read: the grid's picture hashes need none
    import numpy as np


MIRRORED = "~mirrored"


#: names in `skimage.data.__all__` that are no picture
NOT_PICTURES = {"data_dir", "download_all", "file_hash", "lbp_frontal_face_cascade_filename"}


def _package_folder(name: str) -> Path | None:
    """Where an installed package lives, found without importing it (None: not installed)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _insightface_samples() -> Path:
    """insightface's sample pictures folder."""
    return _package_folder("insightface") / "data" / "images"


def _skimage_pictures() -> list[str] | None:
    """The picture names of `skimage.data`, read from its stub (`__all__`) without importing
    scikit-image; None where it is not installed or the stub does not say."""
    import ast

    folder = _package_folder("skimage")
    stub = folder / "data" / "__init__.pyi" if folder else None
    if stub is None or not stub.is_file():
        return None
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return [name for name in ast.literal_eval(node.value) if name not in NOT_PICTURES]
    return None


def builtin_problem(name: str) -> str | None:
    """What is wrong with `builtin:<name>` (one line), or None when an installed package ships it.
    Imports nothing, so the config check runs it at parse time, also in the scheduler's lean env,
    which lacks the packages: there the check is left to the job (`load_rgb`)."""
    name = name.removesuffix(MIRRORED)
    if name.startswith("insightface/"):
        if _package_folder("insightface") is None:
            return None
        folder = _insightface_samples()
        stem = name.removeprefix("insightface/")
        if stem and "/" not in stem and any(folder.glob(f"{stem}.*")):
            return None
        known = ", ".join(sorted(p.stem for p in folder.iterdir()))
        return f"unknown builtin image {name!r}; insightface ships: {known}"
    pictures = _skimage_pictures()
    if pictures is None or name in pictures:
        return None
    return (
        f"unknown builtin image {name!r}; use e.g. builtin:astronaut, builtin:coffee, "
        "builtin:insightface/Tom_Hanks_54745"
    )


def _builtin(name: str) -> np.ndarray:
    """Pictures installed packages already carry (no network).

    `builtin:<name>` is a scikit-image picture (astronaut, coffee, chelsea, rocket, ...);
    `builtin:insightface/<name>` one of insightface's samples (Tom_Hanks_54745, t1);
    `<name>~mirrored` the same picture flipped left to right (the demo's stand-in for a held-out
    photo: no package ships a second photo of one person).
    """
    if name.endswith(MIRRORED):
        import numpy as np

        return np.ascontiguousarray(_builtin(name.removesuffix(MIRRORED))[:, ::-1])
    problem = builtin_problem(name)
    if problem:
        raise InputError(problem)
    if name.startswith("insightface/"):
        return load_rgb(sorted(_insightface_samples().glob(f"{name.removeprefix('insightface/')}.*"))[0])
    import numpy as np
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[:, :, :3])


def load_rgb(spec: str | Path) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a path or `builtin:<name>`."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    spec = str(spec)
    if spec.startswith("builtin:"):
        return _builtin(spec.removeprefix("builtin:"))
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"image {path} does not exist; fix the path")
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(
            f"image {path} cannot be read ({type(err).__name__}); replace or re-create it"
        ) from None


def picture_source(spec: str) -> str:
    """What a reference picture's pixels depend on: a builtin's name, or the sha256 of the
    file's bytes (so replacing a picture's content at the same path counts as a change)."""
    from fewstep.core.io import sha256_file

    if spec.startswith("builtin:"):
        return spec
    path = Path(spec)
    return f"sha256:{sha256_file(path)}" if path.is_file() else f"missing:{spec}"


def rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.ascontiguousarray(image[:, :, ::-1])
