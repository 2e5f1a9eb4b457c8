"""Validation during training: bit accuracy through the decoder2 chain, and mask IoU, on a small fixed set.

`ValidationSet` holds the fitted 400×400 photos, masks and secrets in memory (uint8), made once per run.
`bit_accuracy` runs the decoder2 chain with the project's evaluator when it is available
(`harness.pipeline.batched.BatchedEvaluator`); otherwise an in-process twin of the same chain: rotate by each search
angle (edge fill), localize, crop the largest logit > 0 region, decode, keep the angle with the lowest BCE against the
secret. The backend used is reported with every result, so numbers from the two are never mixed up silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.distill.data import SceneSource, fit_scene
from harness.geometry import rotate_tensor
from harness.roi import crop_mask_and_image


@dataclass(frozen=True, eq=False)
class ValidationSet:
    images: torch.Tensor  # N×3×S×S uint8
    masks: torch.Tensor  # N×1×S×S uint8 (0/255); zeros where unknown
    has_mask: torch.Tensor  # N bool
    secrets: torch.Tensor  # N×100 float (0/1)
    has_secret: torch.Tensor  # N bool

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def from_scenes(scenes: SceneSource, image_size: int = 400) -> "ValidationSet":
        images, masks, has_mask, secrets, has_secret = [], [], [], [], []
        for i in range(len(scenes)):
            scene = scenes[i]
            image, mask = fit_scene(scene, image_size)
            images.append((image * 255).round().to(torch.uint8))
            has_mask.append(mask is not None)
            masks.append(((mask if mask is not None else torch.zeros(1, image_size, image_size)) > 0.5).to(torch.uint8) * 255)
            has_secret.append(scene.secret is not None)
            secrets.append(torch.zeros(100) if scene.secret is None else torch.from_numpy(np.asarray(scene.secret, np.float32)))
        return ValidationSet(torch.stack(images), torch.stack(masks), torch.tensor(has_mask), torch.stack(secrets),
                             torch.tensor(has_secret))


@torch.no_grad()
def _chain(mask_model: nn.Module, sdecoder: nn.Module, images: torch.Tensor, secrets: torch.Tensor,
           angles: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: bit accuracy of the best angle, and whether any angle found a region."""
    size = images.shape[-1]
    losses, bits_by_angle, found = [], [], []
    for angle in angles:
        turned = rotate_tensor(images, angle)
        logits = F.interpolate(mask_model(turned).float(), size=turned.shape[-2:], mode="bilinear", align_corners=False)
        rois = [crop_mask_and_image(mask, img, size).roi for mask, img in zip(logits, turned)]
        present = torch.tensor([roi is not None for roi in rois])
        stacked = torch.stack([roi if roi is not None else torch.zeros_like(img) for roi, img in zip(rois, turned)])
        out = sdecoder(stacked).float()
        bce = F.binary_cross_entropy_with_logits(out, secrets, reduction="none").mean(1)
        losses.append(torch.where(present, bce, torch.full_like(bce, float("inf"))))
        bits_by_angle.append((out >= 0).float())
        found.append(present)
    best = torch.stack(losses).argmin(0)
    bits = torch.stack(bits_by_angle)[best, torch.arange(len(best))]
    accuracy = (bits == secrets).float().mean(1)
    any_found = torch.stack(found).any(0)
    # An empty ROI at every angle reads nothing: count it as chance (0.5), the value of a guess.
    return torch.where(any_found, accuracy, torch.full_like(accuracy, 0.5)), any_found


@torch.no_grad()
def bit_accuracy(localizer: nn.Module, sdecoder: nn.Module, data: ValidationSet, batch_size: int = 16,
                 angles: Sequence[float] = (0.0, 3.0, -3.0), mask_localizer: nn.Module | None = None,
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean bit accuracy over the watermarked samples; `mask_localizer` (the teacher) crops instead when given.

    The chain runs the localizer in eval mode and restores its previous mode afterwards.
    """
    mask_model = mask_localizer if mask_localizer is not None else localizer
    was_training = mask_model.training
    mask_model.eval()
    try:
        keep = data.has_secret.nonzero().flatten()
        accs, found = [], []
        for start in range(0, len(keep), batch_size):
            idx = keep[start:start + batch_size]
            images = data.images[idx].float().div(255).to(device)
            acc, any_found = _chain(mask_model, sdecoder, images, data.secrets[idx].to(device), angles)
            accs.append(acc.cpu())
            found.append(any_found.cpu())
    finally:
        mask_model.train(was_training)
    if not accs:
        return {"bit_acc": float("nan"), "roi_empty_rate": float("nan")}
    return {"bit_acc": float(torch.cat(accs).mean()), "roi_empty_rate": float(1 - torch.cat(found).float().mean())}


@torch.no_grad()
def mask_iou(localizer: nn.Module, data: ValidationSet, batch_size: int = 16,
             device: torch.device | str = "cpu") -> float:
    """Mean IoU of (logit > 0) against the ground-truth mask at the photo's fitted size, over samples with a mask."""
    was_training = localizer.training
    localizer.eval()
    try:
        keep = data.has_mask.nonzero().flatten()
        ious = []
        for start in range(0, len(keep), batch_size):
            idx = keep[start:start + batch_size]
            images = data.images[idx].float().div(255).to(device)
            logits = F.interpolate(localizer(images).float(), size=images.shape[-2:], mode="bilinear",
                                   align_corners=False)
            pred, truth = (logits > 0).flatten(1).cpu(), (data.masks[idx] > 127).flatten(1)
            union = (pred | truth).sum(1).float()
            inter = (pred & truth).sum(1).float()
            ious.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
    finally:
        localizer.train(was_training)
    return float(torch.cat(ious).mean()) if ious else float("nan")
