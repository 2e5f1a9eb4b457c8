"""Geometry of the decoder2 chain: fit, PIL rotation with an EDT border fill, the tilt condition, torch twins.

decoder2 fits the photo to 400×400 (``ImageOps.fit``, LANCZOS), then for each search angle rotates it with PIL
(``img.rotate(angle)``: NEAREST, expand=False, about the image centre) and fills the exposed black border with the
nearest valid pixel found by a Euclidean distance transform. The functions here reproduce those steps exactly, and
expose the parts (border mask, EDT index map) so a batched caller can cache the index map per size and angle.

Coordinates follow PIL: positive angles turn the picture counter-clockwise on screen; points are continuous image
coordinates in which the image spans [0, W] × [0, H] and pixel (column i, row j) has its centre at (i + 0.5, j + 0.5).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from scipy import ndimage

from harness.core.constants import PHOTO_SIDE

Fill = Literal["black", "validity"]
FILLS = ("black", "validity")


def fit(img: Image.Image, size: int = PHOTO_SIDE) -> Image.Image:
    """Centre-crop to a square and resize to size×size with LANCZOS, as decoder2 does first."""
    return ImageOps.fit(img, (size, size), Image.LANCZOS)


# ---------------------------------------------------------------------------------------------- EDT border fill


def edt_indices(invalid_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index map (iy, ix) of the nearest valid pixel for every pixel (a valid pixel maps to itself).

    ``distance_transform_edt`` measures the distance to the nearest zero, so the invalid pixels are the non-zeros.
    When no pixel is valid there is nothing to copy from: the map is the identity (the image stays as it is).
    """
    invalid_mask = np.asarray(invalid_mask, dtype=bool)
    if invalid_mask.ndim != 2:
        raise ValueError(f"invalid_mask must be H×W, got shape {invalid_mask.shape}")
    if invalid_mask.all():
        iy, ix = np.indices(invalid_mask.shape)
        return iy, ix
    iy, ix = ndimage.distance_transform_edt(invalid_mask, return_distances=False, return_indices=True)
    return iy, ix


def edt_fill(arr: np.ndarray, invalid_mask: np.ndarray) -> np.ndarray:
    """Copy into every invalid pixel of ``arr`` (H×W or H×W×C) the value of its nearest valid pixel."""
    iy, ix = edt_indices(invalid_mask)
    return arr[iy, ix]


def black_mask(arr: np.ndarray) -> np.ndarray:
    """Pixels whose channels are all 0: decoder2 finds its rotation border by value (so true black counts too)."""
    arr = np.asarray(arr)
    return (arr == 0).all(axis=2) if arr.ndim == 3 else arr == 0


def _rotate(img: Image.Image, angle_deg: float, resample: int | None) -> Image.Image:
    # resample=None keeps PIL's own default for Image.rotate (NEAREST), as the demo's img.rotate(angle).
    return img.rotate(angle_deg) if resample is None else img.rotate(angle_deg, resample=resample)


# ------------------------------------------------------------------------------------- caches bounded in bytes

# Every cache of EDT maps holds at most this many bytes per process (each DataLoader worker has its own). A map's size
# grows with the photo's pixels (a 12000×9000 photo's index map is 864 MB), so a cache bounded in entries is not
# bounded at all; a map larger than the whole budget is computed, used and dropped, never kept.
CACHE_BYTES = 128 * 2**20


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    raise TypeError(f"byte_cache: cannot size a {type(value).__name__}")


class ByteCache:
    """A least-recently-used cache of numpy results bounded in bytes (`budget`), not in entries."""

    def __init__(self, fn: Callable[..., Any], budget: int):
        self.fn, self.budget = fn, budget
        self._entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self.nbytes = 0
        self.__wrapped__ = fn
        self.__doc__ = fn.__doc__

    def __call__(self, *key: Any) -> Any:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            return hit[0]
        value = self.fn(*key)
        size = _nbytes(value)
        if size <= self.budget:
            self._entries[key] = (value, size)
            self.nbytes += size
            while self.nbytes > self.budget:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.nbytes -= dropped
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def cache_clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


def byte_cache(budget: int = CACHE_BYTES) -> Callable[[Callable[..., Any]], ByteCache]:
    """Decorator: memoise a function of hashable arguments returning arrays (or tuples of them), `budget` bytes."""
    return lambda fn: ByteCache(fn, budget)


@byte_cache()
def _validity_invalid(size: tuple[int, int], angle_deg: float, resample: int | None) -> np.ndarray:
    valid = _rotate(Image.new("L", size, 255), angle_deg, resample)
    invalid = np.asarray(valid) == 0  # PIL writes 0 where the source point falls outside the image
    invalid.flags.writeable = False
    return invalid


def validity_mask(size: tuple[int, int], angle_deg: float, resample: int | None = None) -> np.ndarray:
    """Invalid (exposed) pixels of a (W, H) image rotated by ``angle_deg``: an all-valid image rotated the same way.

    Cached per (size, angle, resample) within CACHE_BYTES; the array is read-only.
    """
    return _validity_invalid(tuple(size), float(angle_deg), resample)


@byte_cache()
def _validity_indices(size: tuple[int, int], angle_deg: float, resample: int | None) -> tuple[np.ndarray, ...]:
    maps = edt_indices(_validity_invalid(size, angle_deg, resample))
    for m in maps:
        m.flags.writeable = False
    return maps


def validity_indices(size: tuple[int, int], angle_deg: float, resample: int | None = None) -> tuple[np.ndarray, ...]:
    """EDT index map (iy, ix) for fill="validity" at (W, H) size and angle, cached within CACHE_BYTES; read-only."""
    return _validity_indices(tuple(size), float(angle_deg), resample)


def border_mask(rotated: Image.Image, angle_deg: float, resample: int | None = None,
                fill: Fill = "black") -> np.ndarray:
    """The pixels of ``rotated`` to fill: by black value (the demo) or by exact validity of the rotation."""
    if fill == "black":
        return black_mask(np.asarray(rotated))
    if fill == "validity":
        return validity_mask(rotated.size, angle_deg, resample)
    raise ValueError(f"unknown fill {fill!r}; expected one of {FILLS}")


def rotate_fill(img: Image.Image, angle_deg: float, resample: int | None = None, fill: Fill = "black") -> Image.Image:
    """decoder2's rotation: PIL rotate (expand=False) then EDT fill of the border; angle 0 fills too, as the demo."""
    rotated = _rotate(img, angle_deg, resample)
    invalid = border_mask(rotated, angle_deg, resample, fill)
    return Image.fromarray(edt_fill(np.asarray(rotated), invalid))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → 3×H×W float32 in [0, 1], exactly ``np.asarray(img, float32) / 255``."""
    arr = np.asarray(img, np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"to_tensor expects an RGB image, got mode {img.mode!r} (array shape {arr.shape})")
    return torch.from_numpy(arr / 255).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------- the tilt condition


def tilt_photo(img: Image.Image, tilt_deg: float) -> Image.Image:
    """Camera tilt applied to the photo before the chain: BICUBIC rotate (smooth), corners EDT-filled exactly."""
    return rotate_fill(img, tilt_deg, resample=Image.BICUBIC, fill="validity")


def rotate_mask(mask: np.ndarray, angle_deg: float, resample: Literal["nearest", "bilinear"] = "nearest") -> np.ndarray:
    """A bool H×W mask rotated as PIL rotates the photo; outside the photo there is no label (no fill).

    The 0/255 mask is rotated with NEAREST (or BILINEAR) and kept where ≥ 128.
    """
    filters = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}
    if resample not in filters:
        raise ValueError(f"unknown mask resample {resample!r}; expected one of {tuple(filters)}")
    img = _mask_image(mask)
    return np.asarray(img.rotate(angle_deg, resample=filters[resample])) >= 128


def tilt_mask(mask: np.ndarray, tilt_deg: float, resample: Literal["nearest", "bilinear"] = "nearest") -> np.ndarray:
    """The tilt of a ground-truth mask ("bilinear" gives smoother edges than "nearest")."""
    return rotate_mask(mask, tilt_deg, resample)


def fit_mask(mask: np.ndarray, size: int = PHOTO_SIDE) -> np.ndarray:
    """A bool mask through the same crop and scale as ``fit`` (LANCZOS on 0/255, then kept where ≥ 128)."""
    return np.asarray(ImageOps.fit(_mask_image(mask), (size, size), Image.LANCZOS)) >= 128


def _mask_image(mask: np.ndarray) -> Image.Image:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {mask.shape}")
    return Image.fromarray(np.where(mask.astype(bool), 255, 0).astype(np.uint8))  # uint8 H×W → mode "L"


def tilt_points(points: np.ndarray, tilt_deg: float, size: tuple[int, int]) -> np.ndarray:
    """Points (N×2, x y, continuous coordinates) moved as PIL's rotate moves the picture of a (W, H) image."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be N×2 (x, y), got shape {pts.shape}")
    cx, cy = size[0] / 2, size[1] / 2
    a = math.radians(tilt_deg)
    dx, dy = pts[:, 0] - cx, pts[:, 1] - cy
    # y points down, so a counter-clockwise turn on screen is x' = cos·dx + sin·dy, y' = −sin·dx + cos·dy.
    return np.stack([math.cos(a) * dx + math.sin(a) * dy + cx, -math.sin(a) * dx + math.cos(a) * dy + cy], axis=1)


def tilt_quad(quad: np.ndarray, tilt_deg: float, size: tuple[int, int]) -> np.ndarray:
    """A label's quad (4×2 corners, x y) under the tilt of a (W, H) photo."""
    quad = np.asarray(quad, dtype=np.float64)
    if quad.shape != (4, 2):
        raise ValueError(f"quad must be 4×2 (x, y corners), got shape {quad.shape}")
    return tilt_points(quad, tilt_deg, size)


# ----------------------------------------------------------------------------------------------- torch twins


def rotation_theta(angle_deg: float | torch.Tensor, height: int, width: int, batch: int = 1) -> torch.Tensor:
    """B×2×3 ``affine_grid`` matrices (align_corners=False) for PIL's rotation about the image centre.

    Output point (u, v) in normalised coordinates samples the input at
    (cos·u − sin·(H/W)·v, sin·(W/H)·u + cos·v): PIL's inverse map rewritten for non-square images.
    """
    angle = torch.as_tensor(angle_deg, dtype=torch.float64).reshape(-1)
    if angle.numel() == 1:
        angle = angle.expand(batch)
    if angle.numel() != batch:
        raise ValueError(f"got {angle.numel()} angles for a batch of {batch}")
    a = torch.deg2rad(angle)
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    rows = [torch.stack([cos, -sin * height / width, zero], 1), torch.stack([sin * width / height, cos, zero], 1)]
    return torch.stack(rows, 1)


def rotate_tensor(x: torch.Tensor, angle_deg: float | torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Differentiable twin of PIL's rotate for B×C×H×W: grid_sample with border padding (the border is filled)."""
    if x.ndim != 4:
        raise ValueError(f"rotate_tensor expects B×C×H×W, got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    theta = rotation_theta(angle_deg, h, w, b).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
