"""Natural-looking image content for the reference world: label hosts and scene backgrounds.

Both are random crops of the sample images scikit-image ships inside its wheel (no download), resized to the
requested size, grey sources turned into RGB (sometimes tinted), sometimes blended with a smooth procedural
texture. Every draw comes from the generator passed in, so the same generator state gives the same pixels.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

# Sources loaded through skimage.data: every one ships inside the scikit-image wheel.
COLOUR_SOURCES = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
    "motorcycle_left", "motorcycle_right",
)
GREY_SOURCES = ("camera", "brick", "grass", "gravel", "moon", "text", "page")

# Smallest crop side as a fraction of the source's shorter side: smaller crops zoom in, larger show more scene.
MIN_CROP_FRACTION = 0.35


def _load_source(name: str) -> np.ndarray:
    import skimage.data as skdata  # imported lazily: it is slow to import and only needed once

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skdata.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    return getattr(skdata, name)()


@lru_cache(maxsize=1)
def source_images() -> tuple[tuple[str, Image.Image], ...]:
    """The sample images as PIL images ("RGB" for colour sources, "L" for grey ones), loaded once."""
    images = []
    for name in COLOUR_SOURCES + GREY_SOURCES:
        array = _load_source(name)
        if array.ndim == 3:
            array = np.ascontiguousarray(array[..., :3])  # drop an alpha channel where a source carries one
        images.append((name, Image.fromarray(array, "RGB" if array.ndim == 3 else "L")))
    return tuple(images)


def _random_crop(rng: np.random.Generator, image: Image.Image, size: int) -> Image.Image:
    """A square crop at a random place and zoom, resized to size×size (LANCZOS, so downscales stay clean)."""
    width, height = image.size
    short = min(width, height)
    side = int(rng.uniform(MIN_CROP_FRACTION, 1.0) * short)
    side = max(side, 16)
    x0 = int(rng.integers(0, width - side + 1))
    y0 = int(rng.integers(0, height - side + 1))
    crop = image.crop((x0, y0, x0 + side, y0 + side))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)  # faster big downscales


def _to_rgb(rng: np.random.Generator, crop: Image.Image) -> np.ndarray:
    """RGB float array in [0, 255]; a grey crop is tinted towards a random colour half of the time."""
    array = np.asarray(crop, dtype=np.float32)
    if array.ndim == 3:
        return array
    grey = array[..., None]
    if rng.random() < 0.5:
        return np.repeat(grey, 3, axis=2)
    tint = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
    return grey * tint


def procedural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth coloured noise (a bicubic upsampling of a small random grid), float in [0, 255]."""
    cells = int(rng.integers(2, 9))
    grid = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid, "RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32)


def draw_source(rng: np.random.Generator) -> int:
    """Index into `source_images()` of the next natural crop: the first draw a crop takes from its generator."""
    return int(rng.integers(0, len(source_images())))


def same_scene(first: str, second: str) -> bool:
    """Whether two sources show one scene: the same image, or the stereo pair's two views of one motorcycle."""
    return first.removesuffix("_left").removesuffix("_right") == second.removesuffix("_left").removesuffix("_right")


def _natural_crop(rng: np.random.Generator, size: int, used: list[str] | None) -> np.ndarray:
    return _crop_of(rng, draw_source(rng), size, used)


def _crop_of(rng: np.random.Generator, source: int, size: int, used: list[str] | None) -> np.ndarray:
    name, image = source_images()[source]
    if used is not None:
        used.append(name)
    return _to_rgb(rng, _random_crop(rng, image, size))


def label_content(rng: np.random.Generator, size: int = 400, used: list[str] | None = None) -> np.ndarray:
    """A label host: uint8 size×size×3, a natural crop, a third of the time blended with a smooth texture.

    `used`, when given, receives the name of the source image the crop was cut from.
    """
    content = _natural_crop(rng, size, used)
    if rng.random() < 1 / 3:
        alpha = rng.uniform(0.15, 0.45)
        content = (1 - alpha) * content + alpha * procedural_texture(rng, size)
    return np.clip(content + 0.5, 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, size: int = 400, source: int | None = None,
               used: list[str] | None = None) -> np.ndarray:
    """A scene background: uint8 size×size×3; mostly natural crops, sometimes a plain smooth texture or a blend.

    With `source` (an index into `source_images()`), a plain crop of that image: the scene a label cut from the same
    image sits in, where only the watermark and the label's edge tell the two apart. `used`, when given, receives the
    names of the source images the background was cut from (none for a plain texture, two for a blend).
    """
    if source is not None:
        content = _crop_of(rng, source, size, used)
    elif (choice := rng.random()) < 0.15:  # drawn only for a free background, so a forced one leaves it untaken
        content = procedural_texture(rng, size)
    elif choice < 0.35:
        alpha = rng.uniform(0.3, 0.7)
        content = (1 - alpha) * _natural_crop(rng, size, used) + alpha * _natural_crop(rng, size, used)
    else:
        content = _natural_crop(rng, size, used)
    return np.clip(content + 0.5, 0, 255).astype(np.uint8)
