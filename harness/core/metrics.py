"""Metrics of the decoder2 chain: BCE angle selection, bits, bit and word accuracy, mask IoU, binomial thresholds.

Conventions of the demo: probabilities are ``sigmoid`` of the SDecoder's logits, a bit is 1 when p ≥ 0.5 (0.5
counts as 1), bit accuracy compares ground truth first and prediction second, and the angle kept is the one whose
BCE against the ground-truth secret is lowest (ties: the first angle in search order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from harness.core.constants import BIT_THRESHOLD


@dataclass(frozen=True)
class Metric:
    """A figure the harness reports: its key in summaries, its heading, and which way is better."""

    key: str
    title: str
    higher_is_better: bool

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def heading(self) -> str:
        return f"{self.title} {self.arrow}"


# every metric a table shows, declared once: the ↑/↓ of every heading comes from here
METRICS = {m.key: m for m in (
    Metric("bit_acc", "bit acc %", True),
    Metric("tilt_min", "worst tilt %", True),
    Metric("word_acc", "word acc %", True),
    Metric("tpr", "TPR@FPR 1e-3 %", True),
    Metric("empirical_fpr", "empirical FPR %", False),
    Metric("mask_iou", "mean IoU", True),
    Metric("blind_bit_acc", "blind angle choice %", True),
    Metric("roi_empty_rate", "ROI empty %", False),
    Metric("failed", "failed", False),
    Metric("localizer_loss", "localizer loss (points)", False),
    Metric("vs_teacher", "student − teacher (points)", True),
    Metric("params", "params (M)", False),
    Metric("gflops", "GFLOPs@400 (2×MACs)", False),
    Metric("latency_ms", "latency p50 / p95 ms", False),
)}


def heading(key: str) -> str:
    """A table heading with its direction, e.g. "bit acc % ↑"."""
    return METRICS[key].heading


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


# ------------------------------------------------------------------------------------------- angle selection


def bce_per_sample(probs: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
    """Mean over bits of torch's binary cross-entropy (its log is clamped at −100): shape (...,) from (..., n_bits)."""
    probs, secret = _tensor(probs), _tensor(secret)
    if probs.shape != secret.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and secret {tuple(secret.shape)} differ in shape")
    return F.binary_cross_entropy(probs, secret.to(probs.dtype), reduction="none").mean(dim=-1)


def _first_best(values: Sequence[float], higher_is_better: bool) -> int | None:
    """Index of the best finite value; ties keep the first. None when no value is finite (no ROI at any angle)."""
    sign = -1.0 if higher_is_better else 1.0
    best, best_value = None, math.inf
    for i, v in enumerate(values):
        v = float(v)
        if math.isfinite(v) and sign * v < best_value:  # strict: a tie never replaces an earlier angle
            best, best_value = i, sign * v
    return best


def select_index(bces: Sequence[float]) -> int | None:
    """Position of the lowest BCE (ties: the first). inf or NaN marks an angle without ROI and is never kept."""
    return _first_best(bces, higher_is_better=False)


def select_angle(bces: Sequence[float], angles: Sequence[float]) -> float | None:
    """The angle with the lowest BCE against the ground-truth secret (ties: the first in search order)."""
    if len(bces) != len(angles):
        raise ValueError(f"{len(bces)} BCE values for {len(angles)} angles")
    i = select_index(bces)
    return None if i is None else angles[i]


def blind_score(logits: torch.Tensor) -> torch.Tensor:
    """Confidence of a decode without the secret: mean |logit| over bits, shape (...,)."""
    return _tensor(logits).abs().mean(dim=-1)


def select_index_blind(scores: Sequence[float]) -> int | None:
    """Position of the highest blind score (ties: the first); non-finite scores are never kept."""
    return _first_best(scores, higher_is_better=True)


def select_angle_blind(scores: Sequence[float], angles: Sequence[float]) -> float | None:
    """The angle whose decode is most confident (highest mean |logit|): selection without the ground truth."""
    if len(scores) != len(angles):
        raise ValueError(f"{len(scores)} scores for {len(angles)} angles")
    i = select_index_blind(scores)
    return None if i is None else angles[i]


# ------------------------------------------------------------------------------------------------------ bits


def bits_from_probs(probs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """p ≥ 0.5 → 1 (0.5 counts as 1), as uint8; a numpy array gives a numpy array, anything else a tensor."""
    if isinstance(probs, np.ndarray):
        return (probs >= BIT_THRESHOLD).astype(np.uint8)
    return (_tensor(probs) >= BIT_THRESHOLD).to(torch.uint8)


def count_correct(secret: np.ndarray, bits: np.ndarray) -> int:
    """Bits of one read equal to the secret (numpy, one message)."""
    secret, bits = np.asarray(secret), np.asarray(bits)
    if secret.shape != bits.shape:
        raise ValueError(f"secret {secret.shape} and bits {bits.shape} differ in shape")
    return int((secret.astype(np.uint8) == bits.astype(np.uint8)).sum())


def word_read(n_correct, n_bits: int, max_errors: int = 0):
    """The whole message read: at most `max_errors` of its `n_bits` wrong (an int, an array or a tensor)."""
    return n_bits - n_correct <= max_errors


def _check_bits(secret: torch.Tensor, bits: torch.Tensor) -> None:
    if secret.shape != bits.shape:
        raise ValueError(f"secret {tuple(secret.shape)} and bits {tuple(bits.shape)} differ in shape")


def bits_correct(secret: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Number of bits equal to the ground truth, shape (...,)."""
    secret, bits = _tensor(secret), _tensor(bits)
    _check_bits(secret, bits)
    return (secret.to(torch.uint8) == bits.to(torch.uint8)).sum(dim=-1)


def bit_acc(secret: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Mean bitwise equality, ground truth first, prediction second; shape (...,)."""
    secret, bits = _tensor(secret), _tensor(bits)
    _check_bits(secret, bits)
    return (secret.to(torch.uint8) == bits.to(torch.uint8)).float().mean(dim=-1)


def word_success(secret: torch.Tensor, bits: torch.Tensor, max_errors: int = 0) -> torch.Tensor:
    """The whole message read with at most ``max_errors`` wrong bits (0: exact match), bool of shape (...,)."""
    secret = _tensor(secret)
    return word_read(bits_correct(secret, bits), secret.shape[-1], max_errors)


# ------------------------------------------------------------------------------------------------------ masks


def mask_iou(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Intersection over union of two bool H×W masks; 1.0 when both are empty (they agree)."""
    pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    gt = gt.detach().cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted mask {pred.shape} and ground-truth mask {gt.shape} differ in shape")
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = int(np.logical_or(pred, gt).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, gt).sum()) / union


# ------------------------------------------------------------------------------------- detection at fixed FPR


def binomial_tail(n_bits: int, k: int) -> float:
    """P[Binom(n_bits, 0.5) ≥ k]: the chance that an unwatermarked image matches k or more bits of the secret."""
    k = max(k, 0)
    return float(Fraction(sum(math.comb(n_bits, i) for i in range(k, n_bits + 1)), 2**n_bits))


def binomial_threshold(n_bits: int = 100, fpr: float = 1e-3) -> int:
    """Smallest k with P[Binom(n_bits, 0.5) ≥ k] ≤ fpr (exact); n_bits + 1 when no count is that rare.

    For 100 bits: 63 / 66 / 74 / 80 for an FPR of 1e-2 / 1e-3 / 1e-6 / 1e-9.
    """
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    limit = Fraction(fpr) * 2**n_bits  # compare counts of outcomes, exactly
    tail = 0
    for k in range(n_bits, -1, -1):
        tail += math.comb(n_bits, k)
        if tail > limit:
            return k + 1
    return 0


def _rate_at_least(counts: Sequence[int], k: int) -> float:
    counts = np.asarray(counts)
    return float("nan") if counts.size == 0 else float((counts >= k).mean())


def tpr_at_fpr(bits_correct_watermarked: Sequence[int], k: int) -> float:
    """Share of watermarked images detected (≥ k correct bits); k from ``binomial_threshold``. NaN when empty."""
    return _rate_at_least(bits_correct_watermarked, k)


def empirical_fpr(bits_correct_clean: Sequence[int], k: int) -> float:
    """Share of clean (unwatermarked) images that reach ≥ k bits of the secret. NaN when empty."""
    return _rate_at_least(bits_correct_clean, k)


# ------------------------------------------------------------------------------------------------ intervals


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t confidence interval (NaN half-width below 2 values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan")
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return mean, float(half)
