"""Reading reference and generated images, with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewstep.core.errors import InputError

if TYPE_CHECKING:  # numpy is imported where pixels are read: the grid's picture hashes need none
    import numpy as np


MIRRORED = "~mirrored"


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
    if name.startswith("insightface/"):
        from pathlib import Path

        import insightface.data

        folder = Path(insightface.data.__file__).parent / "images"
        stem = name.removeprefix("insightface/")
        matches = sorted(folder.glob(f"{stem}.*")) if stem and "/" not in stem else []
        if not matches:
            known = ", ".join(sorted(p.stem for p in folder.iterdir()))
            raise InputError(f"unknown builtin image {name!r}; insightface ships: {known}")
        return load_rgb(matches[0])
    import numpy as np
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None or name.startswith("_") or name in {"data_dir", "download_all", "file_hash"}:
        raise InputError(
            f"unknown builtin image {name!r}; use e.g. builtin:astronaut, builtin:coffee, "
            "builtin:insightface/Tom_Hanks_54745"
        )
    image = loader()
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


def identity_images(config: dict[str, Any], limit: int | None = None) -> dict[str, np.ndarray]:
    """Each configured identity's reference picture (of the first `limit` identities), by id."""
    return {i["id"]: load_rgb(i["image"]) for i in config["identities"][:limit]}
