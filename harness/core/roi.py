"""The ROI step of decoder2: from the localizer's raw mask logits to the SDecoder's 400×400 input.

``crop_mask_and_image`` thresholds the raw logits at 0 (logit > 0, never a sigmoid at 0.5), keeps the largest
8-connected region, crops its bounding box from the image and resizes the crop to 400×400 (bilinear,
align_corners=False). It is a named, replaceable step: a user's function with the same signature plugs in by
dotted path through ``resolve_roi_fn``. An empty mask gives ``RoiResult(None, None)``; the caller records
``roi_empty``. Non-finite logits raise ``NonFiniteLogits`` so the caller records ``failed``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from harness.core.constants import ROI_LOGIT_THRESHOLD, ROI_SIDE

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class NonFiniteLogits(ValueError):
    """The localizer (or SDecoder) produced NaN or ±inf; the sample is recorded as failed."""


@dataclass(frozen=True)
class RoiResult:
    roi: torch.Tensor | None  # 3×400×400, or None when the mask is empty
    box: Box | None


RoiFn = Callable[[torch.Tensor, torch.Tensor], RoiResult]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a bool H×W mask (ties: the first region in raster order)."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == int(np.argmax(sizes)) + 1


def bounding_box(mask: np.ndarray) -> Box | None:
    """Inclusive-exclusive box (x0, y0, x1, y1) of the True pixels, or None when there are none."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return int(x0), int(y0), int(x1) + 1, int(y1) + 1


def box_from_mask(mask: np.ndarray | torch.Tensor) -> Box | None:
    """Box of the largest connected region of a bool mask (the oracle ROI takes the ground-truth mask here)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {mask.shape}")
    return bounding_box(largest_component(mask))


def crop_box(image: torch.Tensor, box: Box, size: int = ROI_SIDE) -> torch.Tensor:
    """Crop ``box`` from a 3×H×W image and resize it to size×size (bilinear, align_corners=False)."""
    x0, y0, x1, y1 = box
    crop = image[:, y0:y1, x0:x1].unsqueeze(0)  # 1×3×h×w
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0]


def check_finite(logits: torch.Tensor, what: str = "mask logits") -> None:
    if not bool(torch.isfinite(logits).all()):
        n_bad = int((~torch.isfinite(logits)).sum())
        raise NonFiniteLogits(f"{what} hold {n_bad} non-finite values (NaN or inf)")


def region_mask(mask_logits: torch.Tensor) -> torch.Tensor:
    """decoder2's region: the pixels whose raw logit is above 0 (sigmoid above 0.5), any shape."""
    return mask_logits > ROI_LOGIT_THRESHOLD


def crop_mask_and_image(mask_logits: torch.Tensor, image: torch.Tensor, size: int = ROI_SIDE) -> RoiResult:
    """Raw logits 1×H×W at the image size and the 3×H×W image → the ROI (None when the mask is empty)."""
    if mask_logits.ndim != 3 or mask_logits.shape[0] != 1 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected mask_logits 1×H×W and image 3×H×W, got {tuple(mask_logits.shape)} "
                         f"and {tuple(image.shape)}")
    if mask_logits.shape[1:] != image.shape[1:]:
        raise ValueError(f"mask_logits {tuple(mask_logits.shape)} are not at the image size {tuple(image.shape)}")
    check_finite(mask_logits)
    box = box_from_mask(region_mask(mask_logits[0]))
    if box is None:
        return RoiResult(None, None)
    return RoiResult(crop_box(image, box, size), box)


def resolve_roi_fn(dotted_path: str | None) -> RoiFn:
    """The ROI function named "package.module:function" or "package.module.function"; None → the default."""
    if dotted_path is None:
        return crop_mask_and_image
    module_name, sep, attr = dotted_path.partition(":")
    if not sep:
        module_name, _, attr = dotted_path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"ROI function {dotted_path!r}: expected 'package.module:function' or "
                         f"'package.module.function'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ImportError(f"ROI function {dotted_path!r}: cannot import module {module_name!r} ({err})") from err
    fn = getattr(module, attr, None)
    if fn is None:
        raise ImportError(f"ROI function {dotted_path!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise TypeError(f"ROI function {dotted_path!r} is not callable")
    return fn


def as_roi_result(out: RoiResult | torch.Tensor | tuple | None, name: str = "ROI function") -> RoiResult:
    """Accept what a user's ROI function returns: a RoiResult, a (roi, box) pair, a bare ROI tensor, or None."""
    if isinstance(out, RoiResult):
        return out
    if out is None:
        return RoiResult(None, None)
    if isinstance(out, torch.Tensor):
        return RoiResult(out, None)
    if isinstance(out, tuple) and len(out) == 2:
        roi, box = out
        return RoiResult(roi, None if box is None else tuple(int(v) for v in box))
    raise TypeError(f"{name} returned {type(out).__name__}; expected RoiResult, (roi, box), a tensor or None")
