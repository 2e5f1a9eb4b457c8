"""Losses: the ground-truth mask loss, the knowledge-distillation losses, and the seed's decode loss.

Each distillation loss is an `nn.Module` whose `forward` argument names are what `loss_forward_mappings` maps
recorders to (MMRazor's names: `s_feature`/`t_feature` for L2, `preds_S`/`preds_T` for divergences), and whose
constructor takes `loss_weight` plus its own options, so a `distill_losses` entry of an MMRazor config builds
unchanged. Every loss computes in fp32, even inside an autocast region: KD losses in fp16 overflow to NaN.

A localizer has ONE mask channel. Softmax over one channel is identically 1, so a softmax KL on it is always zero;
`KLDivergence` refuses such an input. Use `BinaryKLDivergence` (soft targets σ(z_T/τ)), `L2Loss` on logits, or
`ChannelWiseDivergence` (a softmax over space, meaningful for one channel).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core.constants import ROI_SIDE, SEARCH_ANGLES
from harness.core.geometry import rotate_tensor
from harness.distill.warp import crop_boxes


def _fp32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def _no_autocast(device_type: str):
    return torch.autocast(device_type, enabled=False) if device_type in ("cuda", "cpu") else nullcontext()


def _check_same_shape(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: student shape {tuple(a.shape)} != teacher shape {tuple(b.shape)}; "
                         "add a connector or record a matching module")


# ---------------------------------------------------------------------------------------------- ground truth


class MaskLoss(nn.Module):
    """BCE + Dice of mask logits against the ground-truth mask; logits are resized (bilinear) to the mask size.

    Samples without a ground-truth mask (`has_mask` false) do not count.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, eps: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight, self.eps = bce_weight, dice_weight, eps

    def forward(self, logits: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        with _no_autocast(logits.device.type):
            logits, mask = _fp32(logits, mask)
            if logits.shape[-2:] != mask.shape[-2:]:
                logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            keep = torch.ones(len(mask), device=mask.device) if has_mask is None else has_mask.float()
            count = keep.sum().clamp(min=1.0)
            bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none").flatten(1).mean(1)
            prob = torch.sigmoid(logits).flatten(1)
            target = mask.flatten(1)
            dice = 1 - (2 * (prob * target).sum(1) + self.eps) / (prob.sum(1) + target.sum(1) + self.eps)
            return {
                "loss_bce": self.bce_weight * (bce * keep).sum() / count,
                "loss_dice": self.dice_weight * (dice * keep).sum() / count,
            }


# ---------------------------------------------------------------------------------------------- distillation


class L2Loss(nn.Module):
    """Squared L2 distance of features (MMRazor's L2Loss: same options, same defaults).

    normalize: each sample's flattened feature is scaled to unit norm (× mult) first. div_element: divide the sum by
    the number of elements instead of the batch size. dist: the square root of the sum instead (torch.dist).
    """

    def __init__(self, loss_weight: float = 1.0, normalize: bool = True, mult: float = 1.0,
                 div_element: bool = False, dist: bool = False):
        super().__init__()
        self.loss_weight, self.normalize, self.mult = loss_weight, normalize, mult
        self.div_element, self.dist = div_element, dist

    def _normalise(self, feature: torch.Tensor) -> torch.Tensor:
        flat = feature.reshape(feature.shape[0], -1)
        return flat / flat.norm(2, dim=1, keepdim=True).clamp(min=1e-12) * self.mult

    def forward(self, s_feature: torch.Tensor, t_feature: torch.Tensor) -> torch.Tensor:
        _check_same_shape("L2Loss", s_feature, t_feature)
        with _no_autocast(s_feature.device.type):
            s_feature, t_feature = _fp32(s_feature, t_feature)
            if self.normalize:
                s_feature, t_feature = self._normalise(s_feature), self._normalise(t_feature)
            loss = (s_feature - t_feature).pow(2).sum()
            if self.dist:
                loss = loss.sqrt()
            elif self.div_element:
                loss = loss / s_feature.numel()
            else:
                loss = loss / s_feature.shape[0]
            return self.loss_weight * loss


class BinaryKLDivergence(nn.Module):
    """KL(σ(z_T/τ) ‖ σ(z_S/τ)) per pixel for one-channel (sigmoid) mask logits, mean over pixels, × τ².

    The soft-target BCE minus the teacher's entropy: zero exactly when student and teacher logits agree.
    """

    def __init__(self, loss_weight: float = 1.0, tau: float = 1.0):
        super().__init__()
        self.loss_weight, self.tau = loss_weight, tau

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:
        _check_same_shape("BinaryKLDivergence", preds_S, preds_T)
        with _no_autocast(preds_S.device.type):
            s, t = (x / self.tau for x in _fp32(preds_S, preds_T))
            p_t = torch.sigmoid(t)
            # KL of Bernoulli(p_t) to Bernoulli(p_s), written with log-sigmoids for stability.
            kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
            return self.loss_weight * self.tau ** 2 * kl.mean()


class SoftBCE(nn.Module):
    """BCE of student logits against the teacher's soft targets σ(z_T/τ), mean over pixels, × τ².

    Same gradient as BinaryKLDivergence; its value carries the teacher's entropy, so it is not zero at agreement.
    """

    def __init__(self, loss_weight: float = 1.0, tau: float = 1.0):
        super().__init__()
        self.loss_weight, self.tau = loss_weight, tau

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:
        _check_same_shape("SoftBCE", preds_S, preds_T)
        with _no_autocast(preds_S.device.type):
            s, t = (x / self.tau for x in _fp32(preds_S, preds_T))
            return self.loss_weight * self.tau ** 2 * F.binary_cross_entropy_with_logits(s, torch.sigmoid(t))


class ChannelWiseDivergence(nn.Module):
    """Channel-wise distillation (Shu et al. 2021): per channel, a softmax over the H×W positions; KL(T ‖ S) × τ²,
    divided by channels × batch so the value does not grow with the image size."""

    def __init__(self, loss_weight: float = 1.0, tau: float = 1.0):
        super().__init__()
        self.loss_weight, self.tau = loss_weight, tau

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:
        _check_same_shape("ChannelWiseDivergence", preds_S, preds_T)
        with _no_autocast(preds_S.device.type):
            s, t = _fp32(preds_S, preds_T)
            n, c = s.shape[:2]
            s, t = s.reshape(n * c, -1) / self.tau, t.reshape(n * c, -1) / self.tau
            log_p_t = F.log_softmax(t, dim=1)
            kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=1))).sum()
            return self.loss_weight * self.tau ** 2 * kl / (n * c)


class KLDivergence(nn.Module):
    """Softmax KL(T ‖ S) over the channel dimension (vanilla KD), × τ², mean over batch and positions.

    Refuses a one-channel input: a softmax over one channel is identically 1 and the loss would be silently zero.
    """

    def __init__(self, loss_weight: float = 1.0, tau: float = 1.0, reduction: str = "batchmean",
                 teacher_detach: bool = True):
        super().__init__()
        if reduction not in ("batchmean", "sum", "mean", "none"):
            raise ValueError(f"KLDivergence: unknown reduction {reduction!r}")
        self.loss_weight, self.tau, self.reduction, self.teacher_detach = loss_weight, tau, reduction, teacher_detach

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:
        _check_same_shape("KLDivergence", preds_S, preds_T)
        if preds_S.dim() < 2 or preds_S.shape[1] == 1:
            raise ValueError("KLDivergence: input has one channel, where a softmax is identically 1 and the KL is "
                             "always zero; use BinaryKLDivergence, L2Loss or ChannelWiseDivergence for a mask logit")
        with _no_autocast(preds_S.device.type):
            s, t = _fp32(preds_S, preds_T)
            if self.teacher_detach:
                t = t.detach()
            log_p_t = F.log_softmax(t / self.tau, dim=1)
            kl = log_p_t.exp() * (log_p_t - F.log_softmax(s / self.tau, dim=1))
            per_sample = kl.reshape(kl.shape[0], kl.shape[1], -1).sum(1).mean(1)  # sum over classes, mean positions
            reduced = {"batchmean": per_sample.mean(), "mean": kl.mean(), "sum": kl.sum(), "none": per_sample}
            loss = reduced[self.reduction]
            return self.loss_weight * self.tau ** 2 * loss


# ---------------------------------------------------------------------------------------------- decode loss


def largest_region_boxes(logits: torch.Tensor) -> list[tuple[int, int, int, int] | None]:
    """Per sample, decoder2's ROI box (x0, y0, x1, y1 exclusive) of the largest region of logit > 0, or None."""
    from harness.core.roi import box_from_mask, region_mask

    return [box_from_mask(plane) for plane in region_mask(logits.detach()[:, 0]).cpu()]


def soft_boxes(logits: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Differentiable ROI boxes (B×4, normalised x0, y0, x1, y1) from mask logits B×1×H×W.

    Which region: the largest connected component of logit > 0, as decoder2's crop chooses it (not differentiable).
    Where exactly: the first and second moments of σ(logits) inside that component's box grown by `margin` of the
    image side. For a uniform rectangle of width w the variance is w²/12, so centre ± √3·σ is its exact box; for a
    slightly rotated label it is a little tighter than the axis-aligned bounding box. The moments are smooth in
    the logits, so the crop's gradient reaches the localizer. An empty mask falls back to the whole image's moments.
    """
    b, _, h, w = logits.shape
    prob = torch.sigmoid(logits.float())[:, 0]
    window = torch.zeros_like(prob)
    for i, box in enumerate(largest_region_boxes(logits)):
        if box is None:
            window[i] = 1.0
            continue
        x0, y0, x1, y1 = box
        grow_x, grow_y = int(round(margin * w)), int(round(margin * h))
        window[i, max(0, y0 - grow_y):min(h, y1 + grow_y), max(0, x0 - grow_x):min(w, x1 + grow_x)] = 1.0
    weight = prob * window + 1e-8 * window
    # pixel centres in normalised coordinates (align_corners=False)
    xs = (torch.arange(w, device=logits.device, dtype=torch.float32) + 0.5) / w * 2 - 1
    ys = (torch.arange(h, device=logits.device, dtype=torch.float32) + 0.5) / h * 2 - 1
    mass = weight.sum((1, 2))
    cx = (weight.sum(1) * xs).sum(1) / mass
    cy = (weight.sum(2) * ys).sum(1) / mass
    var_x = (weight.sum(1) * (xs[None] - cx[:, None]) ** 2).sum(1) / mass
    var_y = (weight.sum(2) * (ys[None] - cy[:, None]) ** 2).sum(1) / mass
    half_x = (3 * var_x + 1e-12).sqrt().clamp(min=1.0 / w)
    half_y = (3 * var_y + 1e-12).sqrt().clamp(min=1.0 / h)
    return torch.stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y], dim=1)


class DecodeLoss(nn.Module):
    """The seed's training-time decode loss, differentiable end to end in the localizer's logits.

    For each angle of the search (0, +3°, −3°): rotate the 400×400 image and the student's logits (upsampled to
    400×400) together (grid_sample, border padding), take the ROI box from the rotated raw logits (`soft_boxes`),
    crop it from the rotated image and resize to 400×400 (affine grid_sample, so the box carries gradient), decode
    it with the frozen SDecoder and score the secret by BCE. A sample's loss is its minimum over angles; the loss
    is the batch mean × loss_weight. Samples without a secret do not count.
    """

    def __init__(self, loss_weight: float = 1.0, sdecoder: nn.Module | None = None, key: int = 0,
                 angles: Sequence[float] = SEARCH_ANGLES, size: int = ROI_SIDE, margin: float = 0.1):
        super().__init__()
        if sdecoder is None:
            from harness.codec import ReferenceSDecoder

            sdecoder = ReferenceSDecoder(key)
        self.sdecoder = sdecoder.eval().requires_grad_(False)
        self.loss_weight, self.angles, self.size, self.margin = loss_weight, tuple(angles), size, margin

    def train(self, mode: bool = True) -> "DecodeLoss":
        super().train(mode)
        self.sdecoder.eval()  # frozen decoder: always evaluation mode
        return self

    def per_angle(self, logits: torch.Tensor, image: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
        """A×B per-sample BCE (mean over the secret's bits), one row per angle."""
        size = (self.size, self.size)
        image = image.float()
        if image.shape[-2:] != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        rows = []
        for angle in self.angles:
            turned_image, turned_logits = rotate_tensor(image, angle), rotate_tensor(logits, angle)
            roi = crop_boxes(turned_image, soft_boxes(turned_logits, self.margin), self.size)
            bits = self.sdecoder(roi).float()
            rows.append(F.binary_cross_entropy_with_logits(bits, secret.float(), reduction="none").mean(1))
        return torch.stack(rows)

    def forward(self, logits: torch.Tensor, image: torch.Tensor, secret: torch.Tensor,
                has_secret: torch.Tensor | None = None) -> torch.Tensor:
        with _no_autocast(logits.device.type):
            per_sample = self.per_angle(logits, image, secret).min(dim=0).values
            keep = torch.ones_like(per_sample) if has_secret is None else has_secret.float()
            return self.loss_weight * (per_sample * keep).sum() / keep.sum().clamp(min=1.0)


LOSSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (L2Loss, BinaryKLDivergence, SoftBCE, ChannelWiseDivergence, KLDivergence, DecodeLoss)
}
