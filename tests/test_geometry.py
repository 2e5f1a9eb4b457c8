"""decoder2 geometry: fit, PIL rotation + EDT fill (black and validity), the tilt condition, the torch twin."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from harness.core import geometry
from harness.core.geometry import (
    edt_indices,
    fit,
    rotate_fill,
    rotate_tensor,
    tilt_mask,
    tilt_photo,
    tilt_points,
    to_tensor,
)


def _noise_image(h: int = 24, w: int = 24, seed: int = 0, low: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(low, 256, size=(h, w, 3), dtype=np.uint8))


def _smooth_image(h: int, w: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    arr = np.stack([128 + 100 * np.sin(x / 5), 128 + 100 * np.cos(y / 7), 128 + 60 * np.sin((x + y) / 9)], axis=2)
    return Image.fromarray(arr.round().astype(np.uint8))


def test_fit_is_imageops_fit_lanczos():
    img = _noise_image(30, 50)
    out = fit(img, size=16)
    assert out.size == (16, 16)
    assert np.array_equal(np.asarray(out), np.asarray(ImageOps.fit(img, (16, 16), Image.LANCZOS)))


def test_black_fill_at_zero_degrees_fills_genuine_black():
    arr = np.asarray(_noise_image()).copy()
    arr[5, 7] = 0  # a genuinely black pixel: the demo's value test fills it even at 0°
    out = np.asarray(rotate_fill(Image.fromarray(arr), 0.0))
    assert (out[5, 7] != 0).any()
    assert tuple(out[5, 7]) in {tuple(arr[5 + dy, 7 + dx]) for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0))}
    keep = np.ones(arr.shape[:2], bool)
    keep[5, 7] = False
    assert np.array_equal(out[keep], arr[keep])


def test_validity_fill_keeps_genuine_black():
    arr = np.asarray(_noise_image()).copy()
    arr[5, 7] = 0
    out = np.asarray(rotate_fill(Image.fromarray(arr), 0.0, fill="validity"))
    assert np.array_equal(out, arr)


@pytest.mark.parametrize("fill", ["black", "validity"])
def test_rotation_border_gets_nearest_valid_pixel(fill):
    img = _noise_image(20, 26)
    rotated = np.asarray(img.rotate(17))  # PIL default filter (NEAREST), as decoder2
    out = np.asarray(rotate_fill(img, 17, fill=fill))
    invalid = (rotated == 0).all(axis=2)
    assert invalid.sum() > 20
    assert np.array_equal(out[~invalid], rotated[~invalid])
    assert not (out == 0).all(axis=2).any()
    # every filled pixel copies a valid pixel at the minimal Euclidean distance (ties may pick any of them)
    vy, vx = np.nonzero(~invalid)
    valid_values = {(y, x): tuple(rotated[y, x]) for y, x in zip(vy, vx)}
    for y, x in zip(*np.nonzero(invalid)):
        d2 = (vy - y) ** 2 + (vx - x) ** 2
        nearest = {valid_values[(vy[i], vx[i])] for i in np.nonzero(d2 == d2.min())[0]}
        assert tuple(out[y, x]) in nearest


def test_validity_mask_matches_black_border_for_nearest_rotation():
    img = _noise_image(21, 33)  # no black pixel, so the value test finds exactly the exposed border
    black = (np.asarray(img.rotate(-3)) == 0).all(axis=2)
    assert black.any()
    assert np.array_equal(geometry.validity_mask(img.size, -3), black)


def test_validity_indices_are_cached_and_read_only():
    a = geometry.validity_indices((40, 30), 3.0)
    b = geometry.validity_indices((40, 30), 3)
    assert a[0] is b[0]
    assert a[0].shape == (30, 40)
    with pytest.raises(ValueError):
        a[0][0, 0] = 1


def test_edt_indices_all_invalid_is_identity():
    iy, ix = edt_indices(np.ones((3, 4), bool))
    assert np.array_equal(iy, np.indices((3, 4))[0])
    assert np.array_equal(ix, np.indices((3, 4))[1])


def test_to_tensor_exact_and_rejects_grey():
    img = _noise_image(5, 6, low=0)
    t = to_tensor(img)
    assert t.shape == (3, 5, 6) and t.dtype == torch.float32
    assert torch.equal(t, torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1))
    with pytest.raises(ValueError, match="RGB"):
        to_tensor(img.convert("L"))


def _blob_image(h: int, w: int, cx: float, cy: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 3.0**2))


def _centroid(weights: np.ndarray) -> tuple[float, float]:
    y, x = np.mgrid[0 : weights.shape[0], 0 : weights.shape[1]] + 0.5
    return float((weights * x).sum() / weights.sum()), float((weights * y).sum() / weights.sum())


def test_tilt_points_follow_pil_rotation_direction():
    h, w, cx, cy = 60, 80, 58.0, 30.0
    blob = _blob_image(h, w, cx, cy)
    img = Image.fromarray(np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, axis=2))
    tilted = np.asarray(tilt_photo(img, 30.0), np.float64)[..., 0]
    moved = tilt_points(np.array([[cx, cy]]), 30.0, (w, h))[0]
    assert moved[1] < cy - 5  # positive angle: a point right of centre goes up (counter-clockwise)
    got = _centroid(np.where(tilted > 10, tilted, 0))
    assert abs(got[0] - moved[0]) < 0.2 and abs(got[1] - moved[1]) < 0.2


def test_tilt_mask_follows_the_photo():
    h, w = 60, 80
    mask = np.zeros((h, w), bool)
    mask[20:35, 45:70] = True
    quad = np.array([[45, 20], [70, 20], [70, 35], [45, 35]], float)
    for resample in ("nearest", "bilinear"):
        tilted = tilt_mask(mask, -4.0, resample=resample)
        assert abs(int(tilted.sum()) - int(mask.sum())) < 0.05 * mask.sum()
        centre = geometry.tilt_quad(quad, -4.0, (w, h)).mean(axis=0)
        got = _centroid(tilted.astype(float))
        assert abs(got[0] - centre[0]) < 0.5 and abs(got[1] - centre[1]) < 0.5
    with pytest.raises(ValueError, match="resample"):
        tilt_mask(mask, 1.0, resample="cubic")


def test_tilt_photo_has_no_exposed_black():
    out = np.asarray(tilt_photo(_noise_image(30, 30), 5.0))
    assert not (out == 0).all(axis=2).any()


@pytest.mark.parametrize("h,w", [(32, 32), (30, 44)])
def test_rotate_tensor_matches_pil_bilinear_inside(h, w):
    img = _smooth_image(h, w)
    pil = to_tensor(img.rotate(4.0, resample=Image.BILINEAR))
    ours = rotate_tensor(to_tensor(img)[None], 4.0)[0]
    inner = (slice(None), slice(4, h - 4), slice(4, w - 4))
    # PIL truncates its 8-bit bilinear output, so ours sits up to one grey level above; a wrong convention is ≫ 1
    torch.testing.assert_close(ours[inner], pil[inner], atol=1 / 255 + 1e-6, rtol=0)


def test_rotate_tensor_identity_per_sample_angles_and_gradient():
    x = torch.rand(2, 3, 8, 10, requires_grad=True)
    torch.testing.assert_close(rotate_tensor(x, 0.0), x)
    out = rotate_tensor(x, torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(out[0], x[0])
    assert not torch.allclose(out[1], x[1])
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_fit_mask_and_rotate_mask_follow_the_photo_geometry():
    mask = np.zeros((30, 60), bool)
    mask[10:20, 30:45] = True  # fit keeps the central 30×30 square: columns 15..45
    fitted = geometry.fit_mask(mask, size=60)
    assert fitted.shape == (60, 60)
    ys, xs = np.nonzero(fitted)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 39, 30, 59)
    assert np.array_equal(geometry.rotate_mask(fitted, 0), fitted)
    rotated = geometry.rotate_mask(fitted, 90)
    assert np.array_equal(rotated, np.rot90(fitted))  # PIL's positive angle: counter-clockwise
    with pytest.raises(ValueError, match="H×W"):
        geometry.fit_mask(np.zeros((2, 2, 3)), size=4)
