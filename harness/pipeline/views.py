"""The photo side of decoder2, prepared once per photo and shared by every model of a run.

For each photo: decode it, then for every tilt condition tilt it (`geometry.tilt_photo`), fit it to 400×400 and
rotate it by each search angle with the EDT border fill. The result, `PhotoViews`, holds uint8 pixels
(T tilts × A angles × S × S × 3) and, when the sample has a ground-truth mask, the mask taken through the same
geometry. This runs in DataLoader workers; a photo that cannot be decoded gives `PhotoViews` with `error` set, so one
corrupt file fails its own rows and the run goes on.

EDT work is not repeated while it fits: the border sources of a validity fill depend only on the size and angle and
are cached per process within `geometry.CACHE_BYTES` (a cache bounded in bytes, so a huge photo's maps are computed,
used and dropped rather than pinning gigabytes in every worker); a black fill depends on the pixels and is computed
once per rotated image, which every model then shares. The results equal `geometry.tilt_photo`, `fit` and
`rotate_fill` bit for bit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image, ImageDraw

from harness import conditions
from harness.core import geometry
from harness.core.constants import CONDITION_SEED, MAX_PHOTO_PIXELS, PHOTO_SIDE, SEARCH_ANGLES
from harness.core.processes import die_with_parent
from harness.data import Sample, load_image
from harness.data.images import load_upright, open_image, upright


@dataclass(frozen=True)
class ViewSpec:
    tilts: tuple[float, ...]
    angles: tuple[float, ...] = SEARCH_ANGLES
    fill: geometry.Fill = "black"  # EDT border of the search rotation: "black" (the demo) or "validity"
    size: int = PHOTO_SIDE  # decoder2's fit
    # camera conditions (harness.conditions) as (name, severity) points; empty: one tilt condition per `tilts` entry
    points: tuple[tuple[str, tuple[float, ...]], ...] = ()
    seed: int = CONDITION_SEED  # where the conditions' random draws (noise) start, per sample and severity
    exif_transpose: bool = False  # turn the photo (and its mask) upright by its EXIF orientation first

    def condition_points(self) -> tuple[tuple[str, tuple[float, ...]], ...]:
        """The photo's condition axis, in order: the points, or ("tilt", (t,)) per tilt."""
        return self.points or tuple(("tilt", (t,)) for t in self.tilts)


@dataclass
class PhotoViews:
    """One photo under every (tilt, angle): what the localizers see, and the ground truth taken the same way."""

    index: int  # position of the sample in the dataset
    sample_id: str
    pixels: np.ndarray | None  # uint8 T×A×S×S×3, None when the photo failed
    gt_masks: np.ndarray | None  # bool T×A×S×S, None without a ground-truth mask
    error: str | None = None
    n_tilts: int = 0
    mask_error: str | None = None  # why the ground-truth mask is missing (unreadable file): the oracle rows fail

    def images(self, tilt_index: int) -> torch.Tensor:
        """A×3×S×S float32 in [0, 1], exactly `geometry.to_tensor` of each view."""
        views = torch.from_numpy(self.pixels[tilt_index])  # A×S×S×3 uint8
        return (views.to(torch.float32) / 255).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------- geometry


def rotate_view(img: Image.Image, angle_deg: float, fill: geometry.Fill) -> np.ndarray:
    """`geometry.rotate_fill(img, angle_deg, fill=fill)` as an array, reusing cached or skipped EDT work."""
    rotated = np.asarray(img.rotate(angle_deg))  # PIL's default filter (NEAREST), as the demo's img.rotate
    if fill == "validity":
        return _fill(rotated, *_validity_sources(img.size, float(angle_deg), None))
    if fill != "black":
        raise ValueError(f"unknown fill {fill!r}; expected one of {geometry.FILLS}")
    invalid = geometry.black_mask(rotated)
    if not invalid.any():
        return rotated  # nothing to fill: the EDT index map would be the identity
    iy, ix = geometry.edt_indices(invalid)
    return _fill(rotated, *_sources(invalid, iy, ix))


def tilt_view(photo: Image.Image, tilt_deg: float) -> Image.Image:
    """`geometry.tilt_photo` with the validity index map taken from the cache."""
    rotated = np.asarray(photo.rotate(tilt_deg, resample=Image.BICUBIC))
    return Image.fromarray(_fill(rotated, *_validity_sources(photo.size, float(tilt_deg), Image.BICUBIC)))


def _sources(invalid: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of the invalid pixels and of the valid pixels they copy (the EDT map elsewhere is identity)."""
    index = np.int32 if invalid.size < 2**31 else np.int64  # half the bytes for any photo below 2 gigapixels
    targets = np.flatnonzero(invalid).astype(index, copy=False)
    return targets, iy.ravel()[targets].astype(index) * invalid.shape[1] + ix.ravel()[targets]


@geometry.byte_cache()
def _validity_sources(size: tuple[int, int], angle_deg: float, resample: int | None) -> tuple[np.ndarray, np.ndarray]:
    # Only the border pixels' sources are kept (bounded in bytes, per process); the full H×W index map they come
    # from is computed here and dropped, not cached: for a large photo it is 8 bytes a pixel per tilt.
    invalid = geometry.validity_mask(size, angle_deg, resample)
    iy, ix = geometry.edt_indices(invalid)
    return _sources(invalid, iy, ix)


def _fill(rotated: np.ndarray, targets: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """`rotated[iy, ix]` computed only where it differs from `rotated` (the border pixels)."""
    if targets.size == 0:
        return rotated
    out = rotated.copy()
    flat = out.reshape(-1, *out.shape[2:])
    flat[targets] = rotated.reshape(-1, *rotated.shape[2:])[sources]
    return out


def ground_truth_mask(sample: Sample) -> np.ndarray | None:
    """The label's mask in photo pixels: the mask file, else the quad filled, else None."""
    if sample.mask_path is not None:
        return np.asarray(open_image(sample.mask_path).convert("L")) >= 128
    if sample.quad is not None:
        img = Image.new("L", sample.size, 0)
        ImageDraw.Draw(img).polygon([tuple(p) for p in np.asarray(sample.quad)], fill=255)
        return np.asarray(img) >= 128
    return None


# ----------------------------------------------------------------------------------------------- preparation


def photo_too_large(size: tuple[int, int]) -> str | None:
    """Why a photo of this (W, H) is not evaluated, or None: above MAX_PHOTO_PIXELS its tilt (run at full size, see
    `_views_at_tilt`) would need more memory than the harness allows a worker."""
    pixels = size[0] * size[1]
    if pixels <= MAX_PHOTO_PIXELS:
        return None
    return (f"photo is {size[0]}×{size[1]} = {pixels:,} pixels, above the {MAX_PHOTO_PIXELS:,} the harness evaluates "
            "(the camera tilt runs on the full-size photo before decoder2's 400×400 fit); downscale it first")


def prepare(sample: Sample, index: int, spec: ViewSpec) -> PhotoViews:
    """Every view of one photo. A photo that fails to load gives PhotoViews with `error`, the file named; a mask
    that fails gives the views without ground truth and `mask_error`, so only the rows that need the mask fail."""
    too_large = photo_too_large(sample.size)
    if too_large:
        return PhotoViews(index, sample.id, None, None, f"{sample.file}: {too_large}",
                          n_tilts=len(spec.condition_points()))
    try:
        photo, orientation = load_upright(sample.path) if spec.exif_transpose else (load_image(sample.path), None)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError...: all mean "this file is unusable"
        reason = f"cannot load {sample.file}: {type(error).__name__}: {error}"
        return PhotoViews(index, sample.id, None, None, reason, n_tilts=len(spec.condition_points()))
    mask, mask_error = None, None
    try:
        mask = ground_truth_mask(sample)
        if mask is not None and orientation is not None:  # the mask file and quad are at the stored photo's size
            mask = np.asarray(upright(Image.fromarray(mask), orientation))
    except Exception as error:  # only what needs the mask fails: the oracle rows; the predicted rows lose their IoU
        source = f"mask_file {sample.mask_file}" if sample.mask_file else "the quad's mask"
        mask, mask_error = None, f"cannot load {source}: {type(error).__name__}: {error}"
    if spec.points:
        views = [_views_at_point(photo, mask, point, index, spec) for point in spec.points]
        masks = None if mask is None else np.stack([m for _, m in views])
        return PhotoViews(index, sample.id, np.stack([v for v, _ in views]), masks, n_tilts=len(views),
                          mask_error=mask_error)
    pixels = np.stack([_views_at_tilt(photo, tilt, spec) for tilt in spec.tilts])
    masks = None if mask is None else np.stack([_masks_at_tilt(mask, tilt, spec) for tilt in spec.tilts])
    return PhotoViews(index, sample.id, pixels, masks, n_tilts=len(spec.tilts), mask_error=mask_error)


def _views_at_point(photo: Image.Image, mask: np.ndarray | None, point: tuple[str, tuple[float, ...]], index: int,
                    spec: ViewSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """One condition point: a pure tilt as today (cached EDT maps); any other condition from the registry, applied
    to the photo and its mask, then today's chain at tilt 0 (an identity: PIL's rotate by 0 is a copy)."""
    name, severity = point
    tilt = severity[0] if name == "tilt" else 0.0
    if name != "tilt":
        photo, mask = conditions.resolve(name).apply(photo, mask, severity, spec.seed, index)
    return _views_at_tilt(photo, tilt, spec), None if mask is None else _masks_at_tilt(mask, tilt, spec)


def _views_at_tilt(photo: Image.Image, tilt_deg: float, spec: ViewSpec) -> np.ndarray:
    # The tilt is the camera's, so it comes first, on the full-size photo; decoder2's 400×400 fit follows. Fitting
    # first would be cheaper for a huge photo but changes the views, hence the answers (tests/test_memory.py: the
    # centre crop of a tilted 4:3 photo shows photo content where a tilted square shows its filled border, and the
    # bicubic resampling runs at another scale), so memory is bounded by MAX_PHOTO_PIXELS and byte-bounded caches.
    fitted = geometry.fit(tilt_view(photo, tilt_deg), spec.size)
    return np.stack([rotate_view(fitted, angle, spec.fill) for angle in spec.angles])  # A×S×S×3


def _masks_at_tilt(mask: np.ndarray, tilt_deg: float, spec: ViewSpec) -> np.ndarray:
    fitted = geometry.fit_mask(geometry.tilt_mask(mask, tilt_deg), spec.size)
    return np.stack([geometry.rotate_mask(fitted, angle) for angle in spec.angles])  # A×S×S


class ViewDataset(torch.utils.data.Dataset):
    """Samples (by dataset index) → PhotoViews, for a DataLoader with workers (batch_size=None)."""

    def __init__(self, samples: list[Sample], indices: list[int], spec: ViewSpec):
        self.samples, self.indices, self.spec = samples, indices, spec

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> PhotoViews:
        index = self.indices[i]
        return prepare(self.samples[index], index, self.spec)


def view_loader(samples: list[Sample], indices: list[int], spec: ViewSpec, workers: int) -> torch.utils.data.DataLoader:
    """Photos in index order, decoded and prepared in `workers` processes (0: in this process)."""
    return torch.utils.data.DataLoader(ViewDataset(samples, indices, spec), batch_size=None, shuffle=False,
                                       num_workers=workers, collate_fn=_keep, persistent_workers=False,
                                       worker_init_fn=partial(die_with_parent, os.getpid()) if workers else None)


def _keep(item: PhotoViews) -> PhotoViews:
    return item  # no collation: PhotoViews travel as they are (numpy arrays pickle through the worker queue)
