"""Reading photos: one conversion to RGB used by every part of the harness.

Modes other than RGB are converted, never refused, and the conversion is named so a dataset can record it:

- "L", "1", "P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV": PIL's own `convert("RGB")` (an alpha channel is
  dropped, not composited: the colour under it is kept).
- 16/32-bit integer grey ("I;16", "I;16B", "I;16L", "I"): value / 257, rounded and clipped, so 65535 → 255.
- float grey ("F"): values clipped to [0, 255] and rounded.

EXIF orientation is not applied by default: decoder2 opens photos with a plain `Image.open`, and so do we. A team
whose phones store photos sideways with an orientation tag turns it on (`--exif-transpose`, `exif_transpose=True`):
the photo is turned upright by `ImageOps.exif_transpose` and its mask file, at the stored photo's size, the same way.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

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


def large_photo(size: tuple[int, int]) -> bool:
    """Whether Pillow would warn about a photo of this (W, H) as a possible decompression bomb (more pixels than
    Image.MAX_IMAGE_PIXELS). The harness opens such photos quietly; `python -m harness.data check` names them."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and size[0] * size[1] > limit


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    # Pillow's DecompressionBombWarning would print a raw warning line per large photo (and per worker); the size is
    # known from the header and reported plainly instead. Its DecompressionBombError (twice the limit) still raises.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            yield image


def read_header(path: str | Path) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL mode from the file's header, pixels not decoded (an unidentifiable file raises)."""
    with _opened(path) as image:
        return image.size, image.mode


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image (a truncated or corrupt file raises here, not later)."""
    with _opened(path) as image:
        image.load()
        return image.copy()  # detached from the file, which the context manager closes


def load_image_with_conversion(path: str | Path) -> tuple[Image.Image, str | None]:
    """The photo at `path` as an RGB PIL image, and the conversion applied (None when it was RGB)."""
    return to_rgb(open_image(path))


def load_image(path: str | Path) -> Image.Image:
    """The photo at `path` as an RGB PIL image, converted the same way for every caller."""
    return load_image_with_conversion(path)[0]


EXIF_ORIENTATION = 0x0112  # the EXIF tag phones write instead of turning the pixels


def exif_orientation(path: str | Path) -> int | None:
    """The photo's EXIF orientation (2..8: stored turned or mirrored), or None when it has none or it is 1 (upright)."""
    with _opened(path) as image:
        value = image.getexif().get(EXIF_ORIENTATION)
    return int(value) if isinstance(value, int) and value not in (0, 1) else None


def upright(image: Image.Image, orientation: int | None) -> Image.Image:
    """`image` turned as an EXIF `orientation` says (the transposition `ImageOps.exif_transpose` applies), e.g. a
    mask stored at the photo's stored size; None or 1: unchanged."""
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation or 1)
    return image if method is None else image.transpose(method)


def load_upright(path: str | Path) -> tuple[Image.Image, int | None]:
    """The photo as RGB turned upright by its EXIF orientation, and the orientation applied (None: none)."""
    image = open_image(path)
    orientation = image.getexif().get(EXIF_ORIENTATION)
    orientation = int(orientation) if isinstance(orientation, int) and orientation not in (0, 1) else None
    return to_rgb(ImageOps.exif_transpose(image) if orientation else image)[0], orientation
