"""The fast decoder2: many photos, tilts, search angles and models per pass, with the reference's answers.

`BatchedEvaluator.decode(photos, secrets)` takes photos already prepared once (`views.PhotoViews`: tilted, fitted,
rotated by every search angle, EDT-filled) and runs every localizer of the run over the same views:

    views (photos × tilts × angles) ──► localizer forward in batches ──► logits resized to the image size
        ──► ROI per item (crop_mask_and_image or the user's function) ──► SDecoder in batches ──► probabilities
        ──► per (photo, tilt): BCE per angle, GT-BCE selection and blind selection, bits, box, mask IoU

The oracle (ROI from the ground-truth mask) does not depend on any localizer, so it is decoded once per photo and
tilt and reported under the name "oracle". With the default ROI step the crop depends only on the view and the box,
so a (view, box) pair already decoded in the step (the teacher's box equal to a student's, or to the oracle's) is
not decoded again. BatchNorm runs in the run's `bn_mode` (`bn.inference_context`: "demo"
gives each image its own statistics inside a batch, as the demo's batch-1 `train()` does), so batching never changes
an answer. Forward passes are timed per model (synchronised on CUDA).
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core import metrics
from harness.core.bn import BnMode, inference_context
from harness.core.constants import ORACLE
from harness.core.roi import (
    Box,
    NonFiniteLogits,
    RoiFn,
    as_roi_result,
    box_from_mask,
    check_finite,
    crop_box,
    crop_mask_and_image,
    region_mask,
)
from harness.pipeline.views import PhotoViews


@dataclass(frozen=True)
class NamedLocalizer:
    name: str  # the label in records (unique within a run)
    role: str  # "teacher" or "student"
    module: nn.Module
    mask_from: str | None = None  # student_use_teacher_mask: the ROI comes from this localizer's mask


@dataclass(frozen=True)
class Decode:
    """What one model (or the oracle) read from one photo under one tilt.

    `bce` has one value per search angle (inf where that angle gave no ROI; empty when the sample failed); `chosen`
    and `blind` index the search angles (GT-BCE and blind selection); `probs` are the probabilities at the chosen
    angle; `iou` compares the mask that gave the ROI (logit > 0, whole mask) with the ground-truth mask at the
    chosen angle (at the first angle when no ROI was found), as `Decoder2Reference` does.
    """

    status: str  # "ok", "roi_empty" or "failed"
    reason: str = ""
    bce: tuple[float, ...] = ()
    chosen: int | None = None
    probs: np.ndarray | None = None  # float32 (n_bits,)
    blind: int | None = None
    blind_probs: np.ndarray | None = None
    box: Box | None = None
    iou: float | None = None


@dataclass
class Timings:
    """Seconds spent per model, per step; `items` counts (photo, tilt, angle) views, `rois` the ROIs decoded."""

    localizer_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    roi_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    sdecoder_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    items: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rois: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def total_s(self, name: str) -> float:
        return self.localizer_s[name] + self.roi_s[name] + self.sdecoder_s[name]


@dataclass
class _View:
    """One (photo, tilt, angle) seen by one model: its ROI, then the SDecoder's logits for it."""

    index: int = -1  # position of the view among the step's images
    box: Box | None = None
    roi: torch.Tensor | None = None  # a user ROI function's 3×400×400 crop; the default crop is made from `box`
    iou: float | None = None  # of the predicted mask against the ground truth, where one exists
    logits: torch.Tensor | None = None  # (n_bits,); None: no ROI at this angle
    error: str | None = None

    @property
    def shared_crop(self) -> bool:
        """The ROI is `crop_box(image, box)`: any model with the same box at this view has the same SDecoder input."""
        return self.roi is None and self.box is not None


class BatchedEvaluator:
    """decoder2 for several localizers sharing one SDecoder, photos and views prepared once.

    Args:
        localizers: the models of the run; their names label the records.
        sdecoder: B×3×400×400 → B×n_bits logits.
        angles: the search angles, in the order the views were rotated (ties keep the first).
        bn_mode: "demo" or "eval".
        batch_size: views per localizer forward and ROIs per SDecoder forward.
        roi_fn: the ROI step (raw logits 1×H×W, image 3×H×W) → RoiResult.
        oracle: also decode with the ground-truth mask as the ROI source.
        device: where the forward passes run; views, logits and ROI crops stay on the CPU.
    """

    def __init__(self, localizers: list[NamedLocalizer], sdecoder: nn.Module, angles: tuple[float, ...],
                 bn_mode: BnMode = "demo", batch_size: int = 8, roi_fn: RoiFn = crop_mask_and_image,
                 oracle: bool = True, device: str | torch.device = "cpu"):
        names = [m.name for m in localizers]
        if len(set(names)) != len(names) or ORACLE in names:
            raise ValueError(f"localizer names must be unique and not {ORACLE!r}: {names}")
        unknown = [m.mask_from for m in localizers if m.mask_from is not None and m.mask_from not in names]
        if unknown:
            raise ValueError(f"mask_from names a localizer not in the run: {unknown} (run: {names})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.localizers, self.sdecoder, self.angles = localizers, sdecoder, tuple(angles)
        self.bn_mode, self.batch_size, self.roi_fn, self.oracle = bn_mode, batch_size, roi_fn, oracle
        self.device = torch.device(device)
        self.timings = Timings()
        self.on_views: Callable[[int], None] | None = None  # called with the size of each localizer batch (progress)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.localizers] + ([ORACLE] if self.oracle else [])

    @torch.inference_mode()
    def decode(self, photos: list[PhotoViews], secrets: list[np.ndarray]) -> dict[str, list[list[Decode]]]:
        """Per model name (and "oracle"): per photo, per tilt, the Decode. A photo that failed fails all its rows.

        `secrets[i]` is the secret photo i is scored against (GT-BCE selection, bits correct).
        """
        ready = [p for p in photos if p.error is None]
        images = torch.cat([p.images(t) for p in ready for t in range(p.n_tilts)]) if ready else None
        masks = {m.name: self._localize(m, images) for m in self.localizers} if ready else {}
        decoded: dict[tuple[int, Box], torch.Tensor] = {}  # (view, box) → SDecoder logits, shared by all models
        results = {}
        for model in self.localizers:
            views = self._rois(model.name, masks[model.mask_from or model.name], images, ready) if ready else []
            results[model.name] = self._decode_views(model.name, views, images, photos, secrets, decoded)
        if self.oracle:
            views = self._oracle_rois(ready) if ready else []
            results[ORACLE] = self._decode_views(ORACLE, views, images, photos, secrets, decoded)
        return results

    def _decode_views(self, name: str, views: list[_View], images: torch.Tensor | None, photos: list[PhotoViews],
                      secrets: list[np.ndarray], decoded: dict) -> list[list[Decode]]:
        """SDecoder over the views' ROIs, then per photo and tilt the selection among the search angles."""
        self._run_sdecoder(name, views, images, decoded)
        decodes, n, n_angles = [], 0, len(self.angles)
        for photo, secret in zip(photos, secrets):
            if photo.error is not None:
                decodes.append([Decode("failed", photo.error) for _ in range(photo.n_tilts)])
                continue
            decodes.append([self._choose(views[n + t * n_angles:n + (t + 1) * n_angles], secret)
                            for t in range(photo.n_tilts)])
            n += photo.n_tilts * n_angles
        return decodes

    # ---------------------------------------------------------------------------------------------- forwards

    def _localize(self, model: NamedLocalizer, images: torch.Tensor) -> tuple[torch.Tensor, list[str | None]]:
        """Raw mask logits N×1×S×S on the CPU at the image size, and per view the reason its logits are unusable."""
        size = tuple(images.shape[-2:])
        chunks, errors = [], []
        with inference_context(model.module, self.bn_mode):
            for out in self._forward(model.module, images, self.timings.localizer_s, model.name):
                errors.extend(_non_finite(item, "localizer logits") for item in out)  # checked before resizing
                if tuple(out.shape[-2:]) != size:
                    out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
                chunks.append(out)
                if self.on_views is not None:
                    self.on_views(out.shape[0])
        self.timings.items[model.name] += images.shape[0]
        return torch.cat(chunks), errors

    def _forward(self, module: nn.Module, inputs: torch.Tensor, clock: dict[str, float], name: str):
        """Outputs of `module` over `inputs` in batches of `batch_size`, on the CPU as float32; timed per model."""
        for start in range(0, inputs.shape[0], self.batch_size):
            yield self._timed(module, inputs[start:start + self.batch_size], clock, name)

    def _timed(self, module: nn.Module, batch: torch.Tensor, clock: dict[str, float], name: str) -> torch.Tensor:
        batch = batch.to(self.device)
        self._sync()
        t0 = time.perf_counter()
        out = module(batch)
        self._sync()
        clock[name] += time.perf_counter() - t0
        return out.float().cpu()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # time the kernels, not their launch

    def _run_sdecoder(self, name: str, views: list[_View], images: torch.Tensor | None, decoded: dict) -> None:
        """Fill `logits` of every view with a ROI: the SDecoder in batches of `batch_size` ROIs.

        A default crop already decoded in this step (the same view and box, from another model or the oracle) is
        not decoded again: the same input gives the same logits.
        """
        todo = []
        for view in views:
            if view.shared_crop and (view.index, view.box) in decoded:
                view.logits = decoded[(view.index, view.box)]
            elif view.roi is not None or view.shared_crop:
                todo.append(view)
        self.timings.rois[name] += len(todo)
        with inference_context(self.sdecoder, self.bn_mode):
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start:start + self.batch_size]
                out = self._timed(self.sdecoder, self._crops(name, batch, images), self.timings.sdecoder_s, name)
                for view, logits in zip(batch, out):
                    view.logits, view.roi = logits, None  # the crop is no longer needed
                    if view.shared_crop:
                        decoded[(view.index, view.box)] = logits

    def _crops(self, name: str, views: list[_View], images: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        rois = torch.stack([crop_box(images[v.index], v.box) if v.roi is None else v.roi for v in views])
        self.timings.roi_s[name] += time.perf_counter() - t0
        return rois  # K×3×400×400

    # -------------------------------------------------------------------------------------------------- ROIs

    def _rois(self, name: str, masks: tuple[torch.Tensor, list[str | None]], images: torch.Tensor,
              photos: list[PhotoViews]) -> list[_View]:
        """One _View per (photo, tilt, angle), in the order of `images`: the ROI from the model's raw logits."""
        logits, errors = masks
        t0, views = time.perf_counter(), []
        for photo in photos:
            for t in range(photo.n_tilts):
                for a, angle in enumerate(self.angles):
                    n = len(views)
                    gt = None if photo.gt_masks is None else photo.gt_masks[t, a]
                    views.append(self._roi(n, logits[n], images[n], gt, angle, errors[n]))
        self.timings.roi_s[name] += time.perf_counter() - t0
        return views

    def _roi(self, n: int, mask_logits: torch.Tensor, image: torch.Tensor, gt: np.ndarray | None, angle: float,
             error: str | None) -> _View:
        if error is not None:
            return _View(n, error=f"angle {angle:g}: {error}")
        iou = None if gt is None else metrics.mask_iou(region_mask(mask_logits[0]), gt)
        if self.roi_fn is crop_mask_and_image:
            # the default step, split: the box now, the crop only if no model decoded this view and box yet
            return _View(n, box_from_mask(region_mask(mask_logits[0])), iou=iou)
        try:
            result = as_roi_result(self.roi_fn(mask_logits, image))
        except Exception as err:  # a user's ROI function: any error fails this sample, never the run
            return _View(n, error=f"angle {angle:g}: ROI function raised {type(err).__name__}: {err}")
        return _View(n, result.box, result.roi, iou)

    def _oracle_rois(self, photos: list[PhotoViews]) -> list[_View]:
        """The ROI from the ground-truth mask's box, at every (photo, tilt, angle); no localizer runs."""
        t0, views = time.perf_counter(), []
        for photo in photos:
            for t in range(photo.n_tilts):
                for a in range(len(self.angles)):
                    if photo.gt_masks is None:  # an unreadable mask file says which, and fails these rows only
                        reason = photo.mask_error or "no ground-truth mask for the oracle ROI"
                        views.append(_View(len(views), error=reason))
                    else:
                        views.append(_View(len(views), box_from_mask(photo.gt_masks[t, a])))
        self.timings.roi_s[ORACLE] += time.perf_counter() - t0
        return views

    # --------------------------------------------------------------------------------------------- selection

    def _choose(self, views: list[_View], secret: np.ndarray) -> Decode:
        """GT-BCE and blind selection among the search angles, as Decoder2Reference (failures in angle order)."""
        for angle, view in zip(self.angles, views):
            reason = view.error or (None if view.logits is None else _non_finite(view.logits, "SDecoder logits"))
            if reason is not None:
                return Decode("failed", reason if view.error else f"angle {angle:g}: {reason}")
        logits = [v.logits for v in views]
        bce = tuple(_bce(x, secret) for x in logits)
        chosen = metrics.select_index(bce)
        if chosen is None:
            return Decode("roi_empty", "no ROI at any search angle", bce, iou=views[0].iou)
        blind = metrics.select_index_blind([-math.inf if x is None else float(metrics.blind_score(x)) for x in logits])
        return Decode("ok", "", bce, chosen, _probs(logits[chosen]), blind, _probs(logits[blind]),
                      views[chosen].box, views[chosen].iou)


def _non_finite(logits: torch.Tensor, what: str) -> str | None:
    try:
        check_finite(logits, what)
    except NonFiniteLogits as err:
        return str(err)
    return None


def _bce(logits: torch.Tensor | None, secret: np.ndarray) -> float:
    """BCE of the decode against the secret; inf where the angle gave no ROI (never selected)."""
    if logits is None:
        return math.inf
    return float(metrics.bce_per_sample(torch.sigmoid(logits), torch.tensor(np.asarray(secret))))


def _probs(logits: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(logits).numpy()
