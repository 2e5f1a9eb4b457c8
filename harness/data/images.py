"""Reading photos: one conversion to RGB used by every part of the harness.

Modes other than RGB are converted, never refused, and the conversion is named so a dataset can record it:

- "L", "1", "P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV": PIL's own `convert("RGB")` (an alpha channel is
  dropped, not composited: the colour under it is kept).
- 16/32-bit integer grey ("I;16", "I;16B", "I;16L", "I"): value / 257, rounded and clipped, so 65535 → 255.
- float grey ("F"): values clipped to [0, 255] and rounded.

EXIF orientation is not applied: decoder2 opens photos with a plain `Image.open`, and so do we.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def conversion_note(mode: str) -> str | None:
    """How a photo of this PIL mode is converted to RGB ("L→RGB", ...), or None when it already is RGB."""
    if mode == "RGB":
        return None
    if mode in _SIXTEEN_BIT_MODES:
        return f"{mode}→RGB (16-bit scaled to 8)"
    if mode == "F":
        return "F→RGB (clipped to 0..255)"
    return f"{mode}→RGB"


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """The image as RGB and a note of the conversion ("L→RGB", ...), or None when it already was RGB."""
    mode = image.mode
    note = conversion_note(mode)
    if mode == "RGB":
        return image, note
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB"), note
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB"), note
    return image.convert("RGB"), note


def read_header(path: str | Path) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode from the file's header, pixels not decoded (an unidentifiable file raises)."""
    with Image.open(path) as image:
        return image.size, image.mode


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image (a truncated or corrupt file raises here, not later)."""
    with Image.open(path) as image:
        image.load()
        return image.copy()  # detached from the file, which the context manager closes


def load_image_with_conversion(path: str | Path) -> tuple[Image.Image, str | None]:
    """The photo at `path` as an RGB PIL image, and the conversion applied (None when it was RGB)."""
    return to_rgb(open_image(path))


def load_image(path: str | Path) -> Image.Image:
    """The photo at `path` as an RGB PIL image, converted the same way for every caller."""
    return load_image_with_conversion(path)[0]
