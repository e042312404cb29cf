"""Image grids of the report: identities (or references) x steps, and the weights mark below a picture."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


# --------------------------------------------------------------- image grids
def even(values: list[Any], most: int) -> list[Any]:
    """At most `most` values, evenly spaced, first and last kept."""
    if len(values) <= most:
        return values
    picks = np.unique(np.round(np.linspace(0, len(values) - 1, most)).astype(int))
    return [values[i] for i in picks]


def image_grid(
    references: dict[str, np.ndarray],
    columns: list[str],
    tiles: dict[tuple[str, str], Path | None],
    tile: int = 128,
):
    """Rows = identities (reference picture first), one column per label; a missing tile is grey."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    label_h = 20
    canvas = Image.new("RGB", ((len(columns) + 1) * tile, label_h + len(references) * tile), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), "reference", fill="black", font=font)
    for col, label in enumerate(columns, start=1):
        draw.text((col * tile + 4, 3), label, fill="black", font=font)
    for row, (identity, reference) in enumerate(references.items()):
        y = label_h + row * tile
        canvas.paste(Image.fromarray(reference).convert("RGB").resize((tile, tile)), (0, y))
        draw.text((4, y + tile - 16), identity, fill="white", font=font, stroke_width=2, stroke_fill="black")
        for col, label in enumerate(columns, start=1):
            path = tiles.get((identity, label))
            if path is not None and Path(path).exists():
                with Image.open(path) as image:
                    canvas.paste(
                        image.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST), (col * tile, y)
                    )
            else:
                draw.rectangle([col * tile, y, (col + 1) * tile - 1, y + tile - 1], fill="#bbbbbb")
                draw.text((col * tile + 4, y + 4), "missing", fill="black", font=font)
    return canvas


def marked(image, mark: str, band: int = 18):
    """`image` (PIL) with a band below it that carries `mark` in red."""
    from PIL import Image, ImageDraw, ImageFont

    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image.convert("RGB"), (0, 0))
    font = ImageFont.load_default(size=12)
    ImageDraw.Draw(out).text((4, image.height + 2), mark, fill="#a00000", font=font)
    return out


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
