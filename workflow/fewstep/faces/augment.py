"""Same-photo augmentations: the spread of an identity score that no change of person causes.

A face and its own flipped, cropped, rescaled or colour-jittered copy show one person, so the
largest drop in similarity over these copies is a floor below which a difference in identity
similarity says nothing about likeness: the basis of each encoder's non-inferiority margin
(docs/statistics.md, benchmarks/identity_margins.py, tests/test_trained_faces.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance


def augmentations(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Name -> the picture flipped, cropped, rescaled (0.6x, 1.5x) or colour-jittered
    (brightness 0.75 / 1.25, saturation 0.5, contrast 1.3, hue +10 of 256), uint8 RGB."""
    image = Image.fromarray(rgb)
    w, h = image.size
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + 10) % 256
    out = {
        "flip": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "crop": image.crop((int(0.08 * w), int(0.02 * h), w - int(0.12 * w), h - int(0.16 * h))),
        "scale 0.6": image.resize((int(w * 0.6), int(h * 0.6)), Image.Resampling.BICUBIC),
        "scale 1.5": image.resize((int(w * 1.5), int(h * 1.5)), Image.Resampling.BICUBIC),
        "brightness 0.75": ImageEnhance.Brightness(image).enhance(0.75),
        "brightness 1.25": ImageEnhance.Brightness(image).enhance(1.25),
        "saturation 0.5": ImageEnhance.Color(image).enhance(0.5),
        "contrast 1.3": ImageEnhance.Contrast(image).enhance(1.3),
        "hue +10": Image.fromarray(hsv, "HSV").convert("RGB"),
    }
    return {name: np.ascontiguousarray(np.asarray(picture)) for name, picture in out.items()}


def suggested_margin(drops: list[float], step: float = 0.005) -> float:
    """The largest same-photo drop in similarity, rounded up to `step` (NaN without any)."""
    finite = [d for d in drops if np.isfinite(d)]
    return float(np.ceil(max(finite) / step - 1e-9) * step) if finite else float("nan")
