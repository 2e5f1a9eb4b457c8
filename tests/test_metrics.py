"""Metrics: torch BCE per sample, first-lowest angle selection, p ≥ 0.5 bits, binomial thresholds, intervals."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from harness.core import metrics as m


def test_bce_per_sample_is_torch_bce_with_log_clamp():
    probs = torch.tensor([[0.0, 1.0, 0.25, 0.9], [0.5, 0.5, 0.5, 0.5]])
    secret = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 1]], dtype=torch.uint8)
    got = m.bce_per_sample(probs, secret)
    expected_0 = (100.0 + 0.0 - math.log(0.75) - math.log(0.9)) / 4  # log(0) clamped at −100
    torch.testing.assert_close(got, torch.tensor([expected_0, math.log(2)]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        m.bce_per_sample(probs, secret[:, :3])


def test_select_angle_lowest_first_on_ties_and_skips_missing():
    angles = (0, 3, -3)
    assert m.select_angle([0.3, 0.2, 0.25], angles) == 3
    assert m.select_angle([0.2, 0.2, 0.1 + 0.1], angles) == 0  # tie: first in search order
    assert m.select_angle([float("inf"), 0.4, 0.4], angles) == 3
    assert m.select_angle([float("nan"), float("inf"), 0.9], angles) == -3
    assert m.select_angle([float("inf")] * 3, angles) is None
    with pytest.raises(ValueError, match="angles"):
        m.select_angle([0.1], angles)


def test_blind_selection_highest_mean_abs_logit():
    logits = torch.tensor([[1.0, -1.0], [2.0, -0.5], [-2.0, 0.5]])
    scores = m.blind_score(logits).tolist()
    assert scores == [1.0, 1.25, 1.25]
    assert m.select_angle_blind(scores, (0, 3, -3)) == 3
    assert m.select_angle_blind([float("-inf"), float("nan"), 0.0], (0, 3, -3)) == -3


def test_bits_accuracy_and_words():
    probs = torch.tensor([0.5, 0.4999, 0.9, 0.0])
    bits = m.bits_from_probs(probs)
    assert bits.tolist() == [1, 0, 1, 0] and bits.dtype == torch.uint8
    secret = torch.tensor([1, 1, 1, 0])
    assert m.bit_acc(secret, bits).item() == 0.75
    assert m.bits_correct(secret, bits).item() == 3
    assert not m.word_success(secret, bits).item()
    assert m.word_success(secret, bits, max_errors=1).item()
    batch = m.bit_acc(np.array([[1, 0], [0, 0]]), np.array([[1, 0], [1, 1]]))
    assert batch.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        m.bit_acc(secret, bits[:3])


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True
    b[:2, 1:3] = True
    assert m.mask_iou(a, b) == pytest.approx(2 / 6)
    assert m.mask_iou(torch.from_numpy(a), torch.from_numpy(a)) == 1.0
    assert m.mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    with pytest.raises(ValueError, match="shape"):
        m.mask_iou(a, b[:3])


@pytest.mark.parametrize("fpr,k", [(1e-2, 63), (1e-3, 66), (1e-6, 74), (1e-9, 80)])
def test_binomial_threshold_for_100_bits(fpr, k):
    assert m.binomial_threshold(100, fpr) == k
    assert m.binomial_tail(100, k) <= fpr < m.binomial_tail(100, k - 1)
    assert m.binomial_tail(100, k) == pytest.approx(stats.binom.sf(k - 1, 100, 0.5), rel=1e-9)


def test_binomial_threshold_edges():
    assert m.binomial_threshold(10, 1e-9) == 11  # no count is that rare among 10 bits
    assert m.binomial_threshold(10, 0.99) == 2  # P[≥1] = 1023/1024 > 0.99 ≥ P[≥2] = 1013/1024
    assert m.binomial_threshold(10, 0.9999) == 1
    with pytest.raises(ValueError, match="fpr"):
        m.binomial_threshold(100, 0.0)


def test_tpr_and_empirical_fpr():
    assert m.tpr_at_fpr([100, 66, 65, 90], 66) == 0.75
    assert m.empirical_fpr([50, 48, 70, 52], 66) == 0.25
    assert math.isnan(m.tpr_at_fpr([], 66))


def test_mean_ci95_student_t():
    values = [0.9, 0.95, 1.0, 0.85]
    mean, half = m.mean_ci95(values)
    lo, hi = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(0.925)
    assert half == pytest.approx((hi - lo) / 2)
    assert math.isnan(m.mean_ci95([1.0])[1])
    assert math.isnan(m.mean_ci95([])[0])
