"""Geometric camera conditions: tilt (roll), scale (distance), perspective (pitch, yaw, oblique), with their masks.

Each moves pixels by a map about the photo's centre; the exposed border (outside the source photo) is filled from
the nearest valid pixel by an exact-validity EDT, as the tilt condition has always done, and the ground-truth mask
goes through the same map with NEAREST (outside the photo there is no label). `points` moves continuous (x, y)
coordinates (the image spans [0, W] × [0, H]) the same way, so a quad and a mask can be compared.

Perspective is a plane homography: the label's plane turned by θ about an axis through the photo's centre and seen
by a pinhole camera of focal length `PERSPECTIVE_FOCAL` × the photo's longer side at the distance where the frontal
view has scale 1 (the centre stays put). Positive pitch: the top edge recedes; positive yaw: the right edge recedes;
positive `perspective`: the top-right corner recedes (the axis runs from the top-left to the bottom-right corner).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from harness.conditions.registry import register_condition
from harness.core import geometry
from harness.core.constants import PERSPECTIVE_FOCAL

# ----------------------------------------------------------------------------------------------------- tilt


def _tilt_points(pts: np.ndarray, severity: float, size: tuple[int, int]) -> np.ndarray:
    return geometry.tilt_points(pts, severity, size)


@register_condition("tilt", identity=0, grid=(-30, -10, -5, 0, 5, 10, 30), ladder=(3, 5, 10), unit="degrees",
                    source="handheld roll; VideoSeal Rotate 10/30 (45/90 beyond a label photo)", geometric=True,
                    points=_tilt_points)
def tilt(photo, mask, severity, seed):
    """Today's tilt: `geometry.tilt_photo` / `geometry.tilt_mask`, pixel for pixel."""
    return geometry.tilt_photo(photo, severity), None if mask is None else geometry.tilt_mask(mask, severity)


# ------------------------------------------------------------------------------------------- warps and fills


def _warp(photo: Image.Image, mask: np.ndarray | None, method: int, data: tuple[float, ...]):
    """Photo through PIL's transform (BICUBIC, exposed pixels EDT-filled), mask through NEAREST (no fill)."""
    warped = np.asarray(photo.transform(photo.size, method, data, resample=Image.BICUBIC))
    targets, sources = _validity(photo.size, method, data)
    out = warped
    if targets.size:  # `warped[iy, ix]` of the EDT map, computed only where it differs (the exposed pixels)
        out = warped.copy()
        out.reshape(-1, 3)[targets] = warped.reshape(-1, 3)[sources]
    if mask is None:
        return Image.fromarray(out), None
    mask_img = Image.fromarray(np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))
    return Image.fromarray(out), np.asarray(mask_img.transform(photo.size, method, data, Image.NEAREST)) >= 128


@lru_cache(maxsize=8)
def _validity(size: tuple[int, int], method: int, data: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of a warp's exposed pixels (an all-valid image warped the same way reads 0 there) and of the
    nearest valid pixel each copies (EDT), int32, read-only: only the border is kept, so a cache entry of a large
    photo stays small (8 entries: a run's photo sizes × severities come in order)."""
    valid = Image.new("L", size, 255).transform(size, method, data, resample=Image.BICUBIC)
    invalid = np.asarray(valid) == 0
    targets = np.flatnonzero(invalid)
    if targets.size == 0:
        sources = targets
    else:
        iy, ix = geometry.edt_indices(invalid)
        sources = iy.ravel()[targets] * size[0] + ix.ravel()[targets]
    targets, sources = targets.astype(np.int32), sources.astype(np.int32)
    for a in (targets, sources):
        a.flags.writeable = False
    return targets, sources


def _apply_h(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be N×2 (x, y), got shape {pts.shape}")
    homog = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ h.T
    return homog[:, :2] / homog[:, 2:3]


def _pil_data(forward: np.ndarray) -> tuple[float, ...]:
    """PIL's transform data samples the source at the inverse map of each output point, normalised to h33 = 1."""
    inv = np.linalg.inv(forward)
    inv = inv / inv[2, 2]
    return tuple(float(v) for v in inv.ravel()[:8])


# ---------------------------------------------------------------------------------------------------- scale


def _scale_h(severity: float, size: tuple[int, int]) -> np.ndarray:
    cx, cy = size[0] / 2, size[1] / 2
    return np.array([[severity, 0, cx * (1 - severity)], [0, severity, cy * (1 - severity)], [0, 0, 1]], np.float64)


def _scale_points(pts, severity, size):
    return _apply_h(_scale_h(severity, size), pts)


@register_condition("scale", identity=1, grid=(0.5, 0.75, 1, 1.25, 1.5), ladder=(0.9, 0.75, 0.5), unit="zoom factor",
                    source="label farther (0.5: half the size) / closer; VideoSeal Resize 0.5/0.75",
                    geometric=True, points=_scale_points)
def scale(photo, mask, severity, seed):
    """Zoom about the centre by `severity` (< 1: farther, the label smaller; > 1: closer, cropped)."""
    if severity <= 0:
        raise ValueError(f"scale {severity}: the zoom factor must be positive")
    if severity == 1:
        return photo, mask
    data = _pil_data(_scale_h(severity, photo.size))[:6]
    return _warp(photo, mask, Image.AFFINE, data)


# ---------------------------------------------------------------------------------------------- perspective


def plane_homography(size: tuple[int, int], axis_deg: float, theta_deg: float) -> np.ndarray:
    """Frontal photo → the label's plane turned by θ about the in-plane axis at `axis_deg` through the centre."""
    w, h = size
    cx, cy, f = w / 2, h / 2, PERSPECTIVE_FOCAL * max(w, h)
    ux, uy = math.cos(math.radians(axis_deg)), math.sin(math.radians(axis_deg))
    t = -math.radians(theta_deg)  # the sign that makes a positive pitch push the top edge away
    c, s = math.cos(t), math.sin(t)
    cross = np.array([[0, 0, uy], [0, 0, -ux], [-uy, ux, 0]], np.float64)
    rot = c * np.eye(3) + s * cross + (1 - c) * np.outer([ux, uy, 0], [ux, uy, 0])
    k = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]], np.float64)
    plane = np.stack([rot[:, 0], rot[:, 1], np.array([0, 0, f])], axis=1)  # (X, Y, 1) → camera point
    centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    forward = k @ plane @ centre
    return forward / forward[2, 2]


def _perspective(axis_deg: float):
    def points(pts, severity, size):
        return _apply_h(plane_homography(size, axis_deg, severity), pts)

    def apply(photo, mask, severity, seed):
        if abs(severity) >= 80:
            raise ValueError(f"perspective {severity}°: the plane must face the camera (|θ| < 80°)")
        if severity == 0:
            return photo, mask
        return _warp(photo, mask, Image.PERSPECTIVE, _pil_data(plane_homography(photo.size, axis_deg, severity)))

    return points, apply


_PERSPECTIVE_SOURCE = "label shot off-axis by a phone, 20–40° common; VideoSeal Perspective distortion 0.2–0.5"
_pitch_points, _pitch = _perspective(0.0)
_yaw_points, _yaw = _perspective(90.0)
_oblique_points, _oblique = _perspective(45.0)
register_condition("perspective_pitch", identity=0, grid=(-40, -20, 0, 20, 40), ladder=(10, 20, 40), unit="degrees",
                   source=_PERSPECTIVE_SOURCE, geometric=True, points=_pitch_points)(_pitch)
register_condition("perspective_yaw", identity=0, grid=(-40, -20, 0, 20, 40), ladder=(10, 20, 40), unit="degrees",
                   source=_PERSPECTIVE_SOURCE, geometric=True, points=_yaw_points)(_yaw)
register_condition("perspective", identity=0, grid=(-40, -20, 0, 20, 40), ladder=(10, 20, 40), unit="degrees",
                   source=_PERSPECTIVE_SOURCE, geometric=True, points=_oblique_points)(_oblique)
