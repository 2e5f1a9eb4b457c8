"""crop_mask_and_image: raw logits > 0, largest 8-connected region, inclusive-exclusive box, bilinear 400×400."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.core.roi import (
    NonFiniteLogits,
    RoiResult,
    as_roi_result,
    box_from_mask,
    crop_box,
    crop_mask_and_image,
    resolve_roi_fn,
)


def _logits(h: int = 40, w: int = 50) -> torch.Tensor:
    return torch.full((1, h, w), -3.0)


def test_largest_component_box_and_crop():
    logits, image = _logits(), torch.rand(3, 40, 50)
    logits[0, 5:9, 2:6] = 2.0  # small region (16 px)
    logits[0, 10:30, 20:45] = 0.5  # large region
    out = crop_mask_and_image(logits, image)
    assert out.box == (20, 10, 45, 30)
    expected = F.interpolate(image[None, :, 10:30, 20:45], size=(400, 400), mode="bilinear", align_corners=False)[0]
    assert out.roi.shape == (3, 400, 400)
    torch.testing.assert_close(out.roi, expected, rtol=0, atol=0)


def test_threshold_is_strictly_above_zero_on_raw_logits():
    logits = _logits()
    logits[0, 10:20, 10:20] = 0.0  # sigmoid 0.5: not in the mask
    logits[0, 12:14, 30:33] = 1e-4
    assert crop_mask_and_image(logits, torch.rand(3, 40, 50)).box == (30, 12, 33, 14)


def test_diagonal_neighbours_are_one_region():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True
    mask[3:5, 3:5] = True  # touches the first square only at a corner
    mask[7:10, 0:2] = True  # 6 px, larger than either square alone but smaller than both together
    assert box_from_mask(mask) == (1, 1, 5, 5)


def test_equal_regions_keep_the_first_in_raster_order():
    mask = np.zeros((10, 10), bool)
    mask[6:8, 1:3] = True
    mask[1:3, 6:8] = True
    assert box_from_mask(mask) == (6, 1, 8, 3)
    assert box_from_mask(torch.from_numpy(mask)) == (6, 1, 8, 3)


def test_empty_mask_gives_no_roi():
    out = crop_mask_and_image(_logits(), torch.rand(3, 40, 50))
    assert out == RoiResult(None, None)
    assert box_from_mask(np.zeros((4, 4), bool)) is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_raise(bad):
    logits = _logits()
    logits[0, 3, 4] = bad
    with pytest.raises(NonFiniteLogits, match="non-finite"):
        crop_mask_and_image(logits, torch.rand(3, 40, 50))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="image size"):
        crop_mask_and_image(_logits(40, 50), torch.rand(3, 40, 51))
    with pytest.raises(ValueError, match="1×H×W"):
        crop_mask_and_image(torch.zeros(40, 50), torch.rand(3, 40, 50))


def test_crop_box_size():
    assert crop_box(torch.rand(3, 20, 20), (2, 3, 7, 9), size=16).shape == (3, 16, 16)


def test_resolve_roi_fn_forms_and_errors():
    assert resolve_roi_fn(None) is crop_mask_and_image
    assert resolve_roi_fn("harness.core.roi:crop_mask_and_image") is crop_mask_and_image
    assert resolve_roi_fn("harness.core.roi.crop_mask_and_image") is crop_mask_and_image
    with pytest.raises(ImportError, match="no_such_module"):
        resolve_roi_fn("no_such_module:f")
    with pytest.raises(ImportError, match="'nope'"):
        resolve_roi_fn("harness.core.roi:nope")
    with pytest.raises(TypeError, match="not callable"):
        resolve_roi_fn("harness.core.roi:ROI_SIDE")
    with pytest.raises(ValueError, match="expected"):
        resolve_roi_fn("plainname")


def test_as_roi_result_accepts_user_returns():
    roi = torch.zeros(3, 400, 400)
    assert as_roi_result(roi).roi is roi
    assert as_roi_result((roi, np.array([1, 2, 3, 4]))).box == (1, 2, 3, 4)
    assert as_roi_result(None) == RoiResult(None, None)
    with pytest.raises(TypeError, match="returned list"):
        as_roi_result([roi])
