"""The photo side of decoder2, prepared once per photo and shared by every model of a run.

For each photo: decode it, then for every tilt condition tilt it (`geometry.tilt_photo`), fit it to 400×400 and
rotate it by each search angle with the EDT border fill. The result, `PhotoViews`, holds uint8 pixels
(T tilts × A angles × S × S × 3) and, when the sample has a ground-truth mask, the mask taken through the same
geometry. This runs in DataLoader workers; a photo that cannot be decoded gives `PhotoViews` with `error` set, so one
corrupt file fails its own rows and the run goes on.

EDT work is never repeated: the index map of a validity fill depends only on the size and angle and is cached
(`geometry.validity_indices`); a black fill depends on the pixels and is computed once per rotated image, which
every model then shares. The results equal `geometry.tilt_photo`, `fit` and `rotate_fill` bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw

from harness import geometry
from harness.data import Sample, load_image
from harness.data.images import open_image

DECODER2_ANGLES = (0.0, 3.0, -3.0)  # the demo's search angles, in the demo's order (ties keep the first)
ROI_SIDE = 400


@dataclass(frozen=True)
class ViewSpec:
    tilts: tuple[float, ...]
    angles: tuple[float, ...] = DECODER2_ANGLES
    fill: geometry.Fill = "black"  # EDT border of the search rotation: "black" (the demo) or "validity"
    size: int = ROI_SIDE


@dataclass
class PhotoViews:
    """One photo under every (tilt, angle): what the localizers see, and the ground truth taken the same way."""

    index: int  # position of the sample in the dataset
    sample_id: str
    pixels: np.ndarray | None  # uint8 T×A×S×S×3, None when the photo failed
    gt_masks: np.ndarray | None  # bool T×A×S×S, None without a ground-truth mask
    error: str | None = None
    n_tilts: int = 0

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
    targets = np.flatnonzero(invalid)
    return targets, (iy.ravel()[targets] * invalid.shape[1] + ix.ravel()[targets])


@lru_cache(maxsize=256)
def _validity_sources(size: tuple[int, int], angle_deg: float, resample: int | None) -> tuple[np.ndarray, np.ndarray]:
    iy, ix = geometry.validity_indices(size, angle_deg, resample)
    return _sources(geometry.validity_mask(size, angle_deg, resample), iy, ix)


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


def prepare(sample: Sample, index: int, spec: ViewSpec) -> PhotoViews:
    """Every view of one photo; a photo or mask that fails to load gives PhotoViews with the reason."""
    try:
        photo = load_image(sample.path)
        mask = ground_truth_mask(sample)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError...: all mean "this file is unusable"
        reason = f"cannot load {sample.file}: {type(error).__name__}: {error}"
        return PhotoViews(index, sample.id, None, None, reason, n_tilts=len(spec.tilts))
    pixels = np.stack([_views_at_tilt(photo, tilt, spec) for tilt in spec.tilts])
    masks = None if mask is None else np.stack([_masks_at_tilt(mask, tilt, spec) for tilt in spec.tilts])
    return PhotoViews(index, sample.id, pixels, masks, n_tilts=len(spec.tilts))


def _views_at_tilt(photo: Image.Image, tilt_deg: float, spec: ViewSpec) -> np.ndarray:
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
                                       num_workers=workers, collate_fn=_keep, persistent_workers=False)


def _keep(item: PhotoViews) -> PhotoViews:
    return item  # no collation: PhotoViews travel as they are (numpy arrays pickle through the worker queue)
