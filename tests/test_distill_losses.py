"""Distillation losses: zero at agreement, positive otherwise; the one-channel KL trap; the decode loss."""
from __future__ import annotations

import pytest
import torch

from harness.distill.losses import (
    BinaryKLDivergence,
    ChannelWiseDivergence,
    DecodeLoss,
    KLDivergence,
    L2Loss,
    MaskLoss,
    SoftBCE,
    soft_boxes,
)
from harness.distill.warp import crop_boxes
from tests.distill_world import TinySDecoder

ONE_CHANNEL_LOSSES = [L2Loss(), L2Loss(normalize=False, div_element=True), BinaryKLDivergence(tau=2.0),
                      ChannelWiseDivergence(tau=2.0)]


@pytest.mark.parametrize("loss", ONE_CHANNEL_LOSSES, ids=lambda loss: repr(loss))
def test_kd_loss_is_zero_when_equal_and_positive_when_different(loss):
    teacher = torch.randn(2, 1, 8, 8)
    student = teacher + 0.5 * torch.randn(2, 1, 8, 8)
    assert float(loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(student, teacher)) > 1e-4


def test_multiclass_kl_is_zero_when_equal_and_positive_when_different():
    teacher = torch.randn(2, 3, 4, 4)
    assert float(KLDivergence()(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(KLDivergence(tau=2.0)(teacher + torch.randn(2, 3, 4, 4), teacher)) > 1e-4


def test_soft_bce_gradient_vanishes_at_agreement_and_matches_binary_kl():
    teacher = torch.randn(2, 1, 6, 6)
    student = (teacher + torch.randn(2, 1, 6, 6)).requires_grad_(True)
    grad_bce = torch.autograd.grad(SoftBCE(tau=2.0)(student, teacher), student)[0]
    grad_kl = torch.autograd.grad(BinaryKLDivergence(tau=2.0)(student, teacher), student)[0]
    torch.testing.assert_close(grad_bce, grad_kl)
    same = teacher.clone().requires_grad_(True)
    assert float(torch.autograd.grad(SoftBCE()(same, teacher), same)[0].abs().max()) < 1e-7
    assert float(SoftBCE()(torch.randn(2, 1, 6, 6), teacher)) > float(SoftBCE()(teacher, teacher))


def test_kl_divergence_refuses_one_channel():
    with pytest.raises(ValueError, match="one channel"):
        KLDivergence()(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4))


def test_channel_wise_divergence_is_normalised_per_channel_and_batch():
    student, teacher = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    single = ChannelWiseDivergence()(student, teacher)
    doubled = ChannelWiseDivergence()(torch.cat([student, student]), torch.cat([teacher, teacher]))
    torch.testing.assert_close(single, doubled)


def test_l2_options_follow_mmrazor():
    student, teacher = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    raw = ((student - teacher) ** 2).sum()
    torch.testing.assert_close(L2Loss(normalize=False)(student, teacher), raw / 4)
    torch.testing.assert_close(L2Loss(normalize=False, div_element=True)(student, teacher), raw / student.numel())
    torch.testing.assert_close(L2Loss(normalize=False, dist=True, loss_weight=2.0)(student, teacher), 2 * raw.sqrt())
    assert float(L2Loss()(2 * teacher, teacher)) == pytest.approx(0.0, abs=1e-6)  # normalised: scale-free


def test_shape_mismatch_names_the_loss():
    with pytest.raises(ValueError, match="L2Loss: student shape"):
        L2Loss()(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 8, 8))


def test_losses_compute_in_fp32_under_autocast():
    student, teacher = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = [loss(student.bfloat16(), teacher.bfloat16()) for loss in ONE_CHANNEL_LOSSES]
    assert all(v.dtype == torch.float32 for v in values)


def test_mask_loss_prefers_the_true_mask_and_skips_samples_without_one():
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    good, bad = (mask * 2 - 1) * 8, -(mask * 2 - 1) * 8
    low = MaskLoss()(good[:, :, ::2, ::2], mask)  # logits at half resolution are resized to the mask
    high = MaskLoss()(bad, mask)
    assert float(low["loss_bce"] + low["loss_dice"]) < 0.05 < float(high["loss_bce"] + high["loss_dice"])
    mixed = torch.cat([good[:1], bad[1:]])
    only_first = MaskLoss()(mixed, mask, has_mask=torch.tensor([True, False]))
    assert float(only_first["loss_bce"]) < 0.05


def test_soft_boxes_are_exact_for_a_rectangle_and_differentiable():
    logits = torch.full((1, 1, 40, 40), -30.0)
    logits[:, :, 10:30, 4:20] = 30.0  # rows 10..29, columns 4..19
    logits.requires_grad_(True)
    box = soft_boxes(logits, margin=0.1)
    expected = torch.tensor([[4 / 20 - 1, 10 / 20 - 1, 20 / 20 - 1, 30 / 20 - 1]])
    torch.testing.assert_close(box.detach(), expected, atol=2e-3, rtol=0)
    soft = torch.randn(1, 1, 40, 40).requires_grad_(True)
    soft_boxes(soft).sum().backward()
    assert soft.grad.abs().sum() > 0


def test_crop_boxes_takes_the_box_content():
    image = torch.zeros(1, 1, 40, 40)
    image[:, :, 10:30, 4:20] = 1.0
    box = torch.tensor([[4 / 20 - 1, 10 / 20 - 1, 20 / 20 - 1, 30 / 20 - 1]])
    crop = crop_boxes(image, box, 16)
    assert float(crop.min()) > 0.99


def test_decode_loss_reaches_the_localizer_and_takes_the_best_angle():
    torch.manual_seed(0)
    loss = DecodeLoss(loss_weight=2.0, sdecoder=TinySDecoder(), size=64)
    image = torch.rand(2, 3, 64, 64)
    logits = torch.randn(2, 1, 16, 16).requires_grad_(True)
    secret = torch.randint(0, 2, (2, 100)).float()
    value = loss(logits, image, secret)
    per_angle = loss.per_angle(logits, image, secret)
    torch.testing.assert_close(value, 2.0 * per_angle.min(0).values.mean())
    value.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    assert all(not p.requires_grad for p in loss.sdecoder.parameters())
    assert not loss.train().sdecoder.training
