"""decoder2, plain: one photo, one angle at a time, in the demo's order. The yardstick of the batched evaluator.

    photo ─fit 400×400 (LANCZOS)─► for angle in (0, +3, −3):
        rotate (PIL) + EDT fill ─► to_tensor ─► localizer (batch 1, no_grad, BN mode) ─► logits at image size
        ─► crop_mask_and_image(raw logits, image) ─► SDecoder ─► sigmoid ─► BCE against the secret
    keep the angle with the lowest BCE (ties: the first) ─► bits = p ≥ 0.5 ─► bit accuracy

Per angle, an empty mask gives no ROI: its BCE is ``inf`` (never kept) and its blind score ``-inf``. When no angle
has an ROI the status is ``roi_empty``. Non-finite localizer or SDecoder logits make the sample ``failed`` (the
demo would crash there); the BCE of angles not reached is then ``nan``.

Variants, as conditions of the same chain:
- ``mask_localizer`` (the ``student_use_teacher_mask`` switch): the ROI comes from another localizer's mask (the
  teacher's) on the same rotated image; with the same SDecoder this is the teacher's own result.
- ``oracle_mask``: the ROI comes from the ground-truth mask, taken through fit (``fit_mask``) and each search
  rotation (``rotate_mask``, nearest); no localizer runs.
- ``gt_mask``: scores the mask that gave the ROI (logits > 0, whole mask) by IoU against the ground-truth mask at
  the chosen angle (at the first angle when none was chosen).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from harness.core import geometry, metrics
from harness.core.bn import BN_MODES, BnMode, inference_contexts
from harness.core.constants import PHOTO_SIDE, SEARCH_ANGLES
from harness.core.roi import (
    Box,
    NonFiniteLogits,
    RoiResult,
    as_roi_result,
    box_from_mask,
    check_finite,
    crop_box,
    resolve_roi_fn,
)

Selection = Literal["gt_bce", "blind"]
SELECTIONS = ("gt_bce", "blind")


@dataclass(frozen=True)
class Decoder2Config:
    angles: tuple[float, ...] = SEARCH_ANGLES
    size: int = PHOTO_SIDE  # decoder2's fit
    rotate_resample: int | None = None  # None: PIL's default for Image.rotate (NEAREST), as the demo
    fill: geometry.Fill = "black"  # "black": border found by value, as the demo; "validity": exact border
    bn_mode: BnMode = "demo"  # "demo": per-image BatchNorm statistics (train() at batch 1); "eval": running stats
    roi_fn: str | None = None  # dotted path of a user ROI function; None: crop_mask_and_image
    selection: Selection = "gt_bce"  # "gt_bce": lowest BCE against the secret; "blind": highest mean |logit|

    def __post_init__(self) -> None:
        if not self.angles:
            raise ValueError("Decoder2Config.angles is empty")
        if self.fill not in geometry.FILLS:
            raise ValueError(f"Decoder2Config.fill {self.fill!r}: expected one of {geometry.FILLS}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"Decoder2Config.bn_mode {self.bn_mode!r}: expected one of {BN_MODES}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"Decoder2Config.selection {self.selection!r}: expected one of {SELECTIONS}")


@dataclass(frozen=True)
class AngleReading:
    """What one search angle gave: its ROI box, the SDecoder's logits and probabilities, BCE, blind score, IoU."""

    angle: float
    box: Box | None
    logits: torch.Tensor | None  # (n_bits,), None without ROI
    probs: torch.Tensor | None
    bce: float  # inf without ROI
    blind: float  # mean |logit|; -inf without ROI
    mask_iou: float | None = None


@dataclass(frozen=True)
class Decoder2Result:
    status: str  # "ok", "roi_empty" or "failed"
    angles: tuple[float, ...]
    bce: tuple[float, ...]  # per angle: inf where the ROI was empty, nan where not reached (failed)
    blind_scores: tuple[float, ...] = ()  # per angle mean |logit|: -inf where the ROI was empty
    reason: str = ""
    chosen_angle: float | None = None
    probs: torch.Tensor | None = None  # (n_bits,) at the chosen angle
    bits: torch.Tensor | None = None  # uint8, p ≥ 0.5
    bit_acc: float | None = None
    bits_correct: int | None = None
    box: Box | None = None  # ROI box at the chosen angle
    blind_angle: float | None = None  # the angle a decoder without the secret would keep
    blind_bit_acc: float | None = None
    mask_iou: float | None = None
    readings: tuple[AngleReading, ...] = field(default=(), repr=False)


class Decoder2Reference:
    """The decoder2 chain for one photo at a time; models follow the Localizer and SDecoder contracts."""

    def __init__(self, localizer: nn.Module | None, sdecoder: nn.Module, config: Decoder2Config = Decoder2Config(),
                 mask_localizer: nn.Module | None = None):
        self.localizer, self.sdecoder, self.config = localizer, sdecoder, config
        self.mask_localizer = mask_localizer  # student_use_teacher_mask: the ROI comes from this one's mask
        self.roi_fn = resolve_roi_fn(config.roi_fn)

    # ------------------------------------------------------------------------------------------------- story

    def decode(self, photo: Image.Image, secret, gt_mask: np.ndarray | None = None,
               oracle_mask: np.ndarray | None = None) -> Decoder2Result:
        """Read ``secret`` from ``photo`` (PIL, converted to RGB); masks are bool arrays at the photo's size."""
        secret = _secret_tensor(secret)
        image = geometry.fit(_rgb(photo), self.config.size)
        gt = None if gt_mask is None else geometry.fit_mask(_at_photo_size(gt_mask, photo, "gt_mask"), self.config.size)
        oracle = None if oracle_mask is None else geometry.fit_mask(
            _at_photo_size(oracle_mask, photo, "oracle_mask"), self.config.size)
        readings: list[AngleReading] = []
        try:
            with torch.no_grad(), inference_contexts(self._models(oracle is not None), self.config.bn_mode):
                for angle in self.config.angles:
                    readings.append(self._read_angle(image, angle, secret, gt, oracle))
        except NonFiniteLogits as err:
            return self._failed(readings, f"angle {self.config.angles[len(readings)]:g}: {err}")
        return self._select(readings, secret)

    def _read_angle(self, image: Image.Image, angle: float, secret: torch.Tensor, gt: np.ndarray | None,
                    oracle: np.ndarray | None) -> AngleReading:
        view = geometry.to_tensor(geometry.rotate_fill(image, angle, self.config.rotate_resample, self.config.fill))
        view = view.to(self._device())
        if oracle is not None:
            roi, iou = self._oracle_roi(view, geometry.rotate_mask(oracle, angle)), None
        else:
            logits = self._mask_logits(view)  # 1×H×W raw logits
            roi = as_roi_result(self.roi_fn(logits, view))
            iou = None if gt is None else metrics.mask_iou(logits[0] > 0, geometry.rotate_mask(gt, angle))
        if roi.roi is None:
            return AngleReading(angle, None, None, None, math.inf, -math.inf, iou)
        return self._decode_roi(angle, roi, secret, iou)

    def _decode_roi(self, angle: float, roi: RoiResult, secret: torch.Tensor, iou: float | None) -> AngleReading:
        logits = self.sdecoder(roi.roi.unsqueeze(0))[0].float().cpu()  # (n_bits,)
        check_finite(logits, "SDecoder logits")
        probs = torch.sigmoid(logits)
        bce = float(metrics.bce_per_sample(probs, secret))
        return AngleReading(angle, roi.box, logits, probs, bce, float(metrics.blind_score(logits)), iou)

    def _select(self, readings: list[AngleReading], secret: torch.Tensor) -> Decoder2Result:
        angles = self.config.angles
        bces = tuple(r.bce for r in readings)
        blinds = tuple(r.blind for r in readings)
        gt_i, blind_i = metrics.select_index(bces), metrics.select_index_blind(blinds)
        chosen_i = gt_i if self.config.selection == "gt_bce" else blind_i
        if chosen_i is None:
            return Decoder2Result("roi_empty", angles, bces, blinds, "no ROI at any search angle",
                                  mask_iou=readings[0].mask_iou, readings=tuple(readings))
        chosen = readings[chosen_i]
        bits = metrics.bits_from_probs(chosen.probs)
        blind_bits = metrics.bits_from_probs(readings[blind_i].probs)
        return Decoder2Result(
            "ok", angles, bces, blinds, chosen_angle=chosen.angle, probs=chosen.probs, bits=bits,
            bit_acc=float(metrics.bit_acc(secret, bits)), bits_correct=int(metrics.bits_correct(secret, bits)),
            box=chosen.box, blind_angle=angles[blind_i], blind_bit_acc=float(metrics.bit_acc(secret, blind_bits)),
            mask_iou=chosen.mask_iou, readings=tuple(readings))

    def _failed(self, readings: list[AngleReading], reason: str) -> Decoder2Result:
        missing = len(self.config.angles) - len(readings)
        return Decoder2Result("failed", self.config.angles, tuple(r.bce for r in readings) + (math.nan,) * missing,
                              tuple(r.blind for r in readings) + (math.nan,) * missing, reason,
                              readings=tuple(readings))

    # ----------------------------------------------------------------------------------------------- pieces

    def _mask_logits(self, view: torch.Tensor) -> torch.Tensor:
        """Raw mask logits of the ROI localizer, resized to the image size (bilinear, align_corners=False)."""
        localizer = self.mask_localizer if self.mask_localizer is not None else self.localizer
        if localizer is None:
            raise ValueError("Decoder2Reference has no localizer: pass one, a mask_localizer, or an oracle_mask")
        out = localizer(view.unsqueeze(0))  # 1×1×h×w
        if out.ndim != 4 or out.shape[:2] != (1, 1):
            raise ValueError(f"localizer returned shape {tuple(out.shape)}; expected 1×1×h×w mask logits")
        check_finite(out, "localizer logits")  # before any user ROI function sees them
        return F.interpolate(out, size=view.shape[1:], mode="bilinear", align_corners=False)[0]

    def _oracle_roi(self, view: torch.Tensor, mask: np.ndarray) -> RoiResult:
        box = box_from_mask(mask)
        return RoiResult(None, None) if box is None else RoiResult(crop_box(view, box), box)

    def _models(self, oracle: bool) -> list[nn.Module]:
        roi_model = self.mask_localizer if self.mask_localizer is not None else self.localizer
        return [m for m in (None if oracle else roi_model, self.sdecoder) if m is not None]

    def _device(self) -> torch.device:
        for model in (self.localizer, self.mask_localizer, self.sdecoder):
            for tensor in [] if model is None else [*model.parameters(), *model.buffers()]:
                return tensor.device
        return torch.device("cpu")


def _rgb(photo: Image.Image) -> Image.Image:
    if not isinstance(photo, Image.Image):
        raise TypeError(f"photo must be a PIL image (harness.data.load_image reads files), got {type(photo).__name__}")
    return photo if photo.mode == "RGB" else photo.convert("RGB")


def _secret_tensor(secret) -> torch.Tensor:
    bits = torch.tensor(np.asarray(secret))  # a copy: secrets may be read-only views of the manifest
    if bits.ndim != 1 or not bool(((bits == 0) | (bits == 1)).all()):
        raise ValueError(f"secret must be a 1-D sequence of 0/1 bits, got shape {tuple(bits.shape)} "
                         f"with values {sorted(set(bits.flatten().tolist()))[:5]}")
    return bits.to(torch.float32)


def _at_photo_size(mask: np.ndarray, photo: Image.Image, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != (photo.height, photo.width):
        raise ValueError(f"{name} has shape {mask.shape}; the photo is {photo.height}×{photo.width}")
    return mask.astype(bool)
