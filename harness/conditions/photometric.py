"""Photometric camera conditions: focus and motion blur, JPEG, brightness, contrast, gamma, sensor noise.

They change pixel values only, so the ground-truth mask passes through unchanged. At the identity severity each
returns the photo itself (the plain chain's pixels).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

from harness.conditions.registry import register_condition


@register_condition("blur", identity=0, grid=(0, 1, 2, 3), ladder=(1, 2, 3), unit="sigma px",
                    source="defocus; VideoSeal GaussianBlur kernels 3–17 (torchvision sigma 0.8–2.9)")
def blur(photo, mask, severity, seed):
    """Gaussian focus blur of standard deviation `severity` photo pixels (PIL's GaussianBlur radius is the sigma)."""
    if severity < 0:
        raise ValueError(f"blur sigma {severity} must be ≥ 0")
    return (photo if severity == 0 else photo.filter(ImageFilter.GaussianBlur(severity))), mask


@register_condition("motion_blur", identity=0, grid=(0, 3, 7, 15), ladder=(3, 7, 15), unit="length px",
                    source="handheld shake at 1/30–1/60 s: a few to 15 px on a label photo")
def motion_blur(photo, mask, severity, seed):
    """Horizontal linear motion blur over `severity` pixels (a box of that length; a fractional end weighs less)."""
    if severity < 0:
        raise ValueError(f"motion blur length {severity} must be ≥ 0")
    if severity <= 1:
        return photo, mask
    full = int(np.floor(severity))
    frac = severity - full
    weights = np.ones(full + (2 if frac > 0 else 0))
    if frac > 0:
        weights[0] = weights[-1] = frac / 2
    if len(weights) % 2 == 0:
        weights = np.append(weights, 0.0)  # odd length: centred
    weights /= weights.sum()
    arr = np.asarray(photo, np.float32)
    out = ndimage.convolve1d(arr, weights.astype(np.float32), axis=1, mode="nearest")
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)), mask


@register_condition("jpeg", identity=100, grid=(100, 90, 80, 60, 40), ladder=(90, 70, 50), unit="quality",
                    source="phones save at 85–95; VideoSeal JPEG 40/60/80 (100 here means not re-encoded)")
def jpeg(photo, mask, severity, seed):
    """JPEG round trip at quality `severity` (PIL, 4:2:0); 100 is taken as the identity: no re-encoding."""
    if not 1 <= severity <= 100:
        raise ValueError(f"jpeg quality {severity} must be within 1..100")
    if severity == 100:
        return photo, mask
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=int(round(severity)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB"), mask


@register_condition("brightness", identity=1, grid=(0.5, 0.75, 1, 1.25, 1.5), ladder=(0.8, 0.65, 0.5), unit="factor",
                    source="under/over-exposure; VideoSeal Brightness 0.5/1.5")
def brightness(photo, mask, severity, seed):
    """PIL ImageEnhance.Brightness (pixels × factor), as torchvision's adjust_brightness."""
    if severity < 0:
        raise ValueError(f"brightness factor {severity} must be ≥ 0")
    return (photo if severity == 1 else ImageEnhance.Brightness(photo).enhance(severity)), mask


@register_condition("contrast", identity=1, grid=(0.5, 0.75, 1, 1.25, 1.5), ladder=(0.8, 0.65, 0.5), unit="factor",
                    source="flat light / tone curve; VideoSeal Contrast 0.5/1.5")
def contrast(photo, mask, severity, seed):
    """PIL ImageEnhance.Contrast (blend with the mean grey), as torchvision's adjust_contrast."""
    if severity < 0:
        raise ValueError(f"contrast factor {severity} must be ≥ 0")
    return (photo if severity == 1 else ImageEnhance.Contrast(photo).enhance(severity)), mask


@register_condition("gamma", identity=1, grid=(0.5, 0.75, 1, 1.5, 2), ladder=(1.25, 1.5, 2), unit="exponent",
                    source="tone curves of phone pipelines (sRGB ≈ 2.2 against linear)")
def gamma(photo, mask, severity, seed):
    """out = 255 · (in / 255) ^ gamma, through a rounded lookup table."""
    if severity <= 0:
        raise ValueError(f"gamma {severity} must be > 0")
    if severity == 1:
        return photo, mask
    lut = np.rint(255 * (np.arange(256) / 255) ** severity).astype(np.uint8)
    return Image.fromarray(lut[np.asarray(photo)]), mask


@register_condition("noise", identity=0, grid=(0, 2, 5, 10, 20), ladder=(2, 5, 10), unit="sigma (0–255)",
                    source="sensor noise: σ ≈ 1–3 at base ISO, 8–15 in dim light (8-bit)")
def noise(photo, mask, severity, seed):
    """Additive Gaussian noise of standard deviation `severity` grey levels, drawn from `seed`, rounded, clipped."""
    if severity < 0:
        raise ValueError(f"noise sigma {severity} must be ≥ 0")
    if severity == 0:
        return photo, mask
    arr = np.asarray(photo, np.float32)
    draw = np.random.default_rng(seed).standard_normal(arr.shape, dtype=np.float32) * np.float32(severity)
    return Image.fromarray(np.clip(np.rint(arr + draw), 0, 255).astype(np.uint8)), mask
