"""Decoder2Reference end to end with tiny models: selection, teacher mask, oracle ROI, empty ROI, failures, BN mode."""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from harness.core import geometry
from harness.core.roi import RoiResult
from harness.pipeline.reference import Decoder2Config, Decoder2Reference

SIZE = 64  # the chain's fit size in these tests (the ROI is still 400×400)
LABEL = (12, 14, 52, 54)  # x0, y0, x1, y1 of the 40×40 label in the fitted photo
DARK, ZERO_CELL, ONE_CELL = 0.1, 0.6, 1.0


class SquareLocalizer(nn.Module):
    """Conv → BatchNorm → 1×1 conv: positive logits on bright pixels once the image's own statistics remove the mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.head = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 3)
            self.head.weight.fill_(8.0)
            self.head.bias.fill_(-2.0)
            self.bn.running_mean.fill_(-1.0)  # with running statistics (eval) every pixel looks bright

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.head(self.bn(self.conv(x))), 2)  # logits at half resolution, as real networks


class ConstantLocalizer(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1, x.shape[2] // 4, x.shape[3] // 4), self.value) + self.anchor


class CellSDecoder(nn.Module):
    """Mean brightness of each of 10×10 cells of the ROI: bright cell ⇔ bit 1."""

    def forward(self, roi: torch.Tensor) -> torch.Tensor:
        cells = F.adaptive_avg_pool2d(roi.mean(dim=1, keepdim=True), 10).flatten(1)  # B×100
        return 12.0 * (cells - (ZERO_CELL + ONE_CELL) / 2)


class ConstantSDecoder(nn.Module):
    def forward(self, roi: torch.Tensor) -> torch.Tensor:
        return torch.linspace(-2, 2, 100).expand(roi.shape[0], 100)


def _secret(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, 100).astype(np.uint8)


def _scene(secret: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """An 80×64 photo (fit crops 8 columns each side) with a 40×40 label of 4 px cells; and its mask."""
    arr = np.full((64, 80, 3), DARK, np.float64)
    cells = np.where(secret.reshape(10, 10) == 1, ONE_CELL, ZERO_CELL)
    x0, y0, x1, y1 = LABEL
    arr[y0:y1, x0 + 8 : x1 + 8] = np.kron(cells, np.ones((4, 4)))[..., None]
    mask = np.zeros((64, 80), bool)
    mask[y0:y1, x0 + 8 : x1 + 8] = True
    return Image.fromarray((arr * 255).round().astype(np.uint8)), mask


def _reader(localizer=None, sdecoder=None, **config) -> Decoder2Reference:
    return Decoder2Reference(localizer if localizer is not None else SquareLocalizer(),
                             sdecoder if sdecoder is not None else CellSDecoder(),
                             Decoder2Config(size=SIZE, **config))


def test_end_to_end_reads_the_secret_at_zero_degrees():
    secret = _secret()
    photo, mask = _scene(secret)
    result = _reader().decode(photo, secret, gt_mask=mask)
    assert result.status == "ok" and result.chosen_angle == 0
    assert result.box == LABEL
    assert result.bit_acc == 1.0 and result.bits_correct == 100
    assert torch.equal(result.bits, torch.from_numpy(secret))
    assert result.probs.shape == (100,)
    assert result.bce[0] < min(result.bce[1:])
    assert result.mask_iou > 0.9
    assert result.blind_angle == 0 and result.blind_bit_acc == 1.0


def test_tilted_photo_is_read_at_the_opposite_search_angle():
    secret = _secret(1)
    photo, _ = _scene(secret)
    result = _reader().decode(geometry.tilt_photo(photo, 3.0), secret)
    assert result.chosen_angle == -3
    assert result.bce[2] < result.bce[0]


def test_teacher_mask_reproduces_the_teachers_result_exactly():
    secret = _secret(2)
    photo, _ = _scene(secret)
    teacher = SquareLocalizer()
    student = ConstantLocalizer(1.0)  # its own mask would be the whole image
    own = _reader(student).decode(photo, secret)
    assert own.box == (0, 0, SIZE, SIZE)
    teachers = _reader(teacher).decode(photo, secret)
    switched = Decoder2Reference(student, CellSDecoder(), Decoder2Config(size=SIZE),
                                 mask_localizer=teacher).decode(photo, secret)
    assert switched.chosen_angle == teachers.chosen_angle and switched.box == teachers.box
    assert switched.bce == teachers.bce
    torch.testing.assert_close(switched.probs, teachers.probs, rtol=0, atol=0)
    assert torch.equal(switched.bits, teachers.bits)


def test_oracle_mask_gives_the_label_box_without_a_localizer():
    secret = _secret(3)
    photo, mask = _scene(secret)
    result = Decoder2Reference(None, CellSDecoder(), Decoder2Config(size=SIZE)).decode(photo, secret, oracle_mask=mask)
    assert result.status == "ok" and result.box == LABEL and result.bit_acc == 1.0
    with pytest.raises(ValueError, match="oracle_mask has shape"):
        _reader().decode(photo, secret, oracle_mask=mask[:10])


def test_empty_roi_at_every_angle_is_recorded():
    secret = _secret()
    photo, _ = _scene(secret)
    result = _reader(ConstantLocalizer(-1.0)).decode(photo, secret)
    assert result.status == "roi_empty"
    assert result.bce == (math.inf,) * 3
    assert result.chosen_angle is None and result.bits is None and result.bit_acc is None


def test_empty_roi_at_one_angle_is_never_kept():
    secret = _secret(4)
    photo, _ = _scene(secret)
    zero_view = geometry.to_tensor(geometry.rotate_fill(geometry.fit(photo, SIZE), 0))

    class EmptyAtZero(SquareLocalizer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = super().forward(x)
            return torch.full_like(logits, -5.0) if torch.equal(x[0], zero_view) else logits

    result = _reader(EmptyAtZero()).decode(photo, secret)
    assert result.bce[0] == math.inf and result.blind_scores[0] == -math.inf
    assert result.status == "ok" and result.chosen_angle in (3, -3)


def test_non_finite_logits_fail_the_sample():
    secret = _secret()
    photo, _ = _scene(secret)
    result = _reader(ConstantLocalizer(float("nan"))).decode(photo, secret)
    assert result.status == "failed" and "localizer logits" in result.reason and "angle 0" in result.reason
    assert all(math.isnan(b) for b in result.bce)

    class NanSDecoder(nn.Module):
        def forward(self, roi: torch.Tensor) -> torch.Tensor:
            return torch.full((roi.shape[0], 100), float("nan"))

    result = _reader(sdecoder=NanSDecoder()).decode(photo, secret)
    assert result.status == "failed" and "SDecoder logits" in result.reason


def test_ties_keep_the_first_angle_in_search_order():
    secret = _secret()
    photo, _ = _scene(secret)
    result = _reader(sdecoder=ConstantSDecoder(), angles=(3, 0, -3)).decode(photo, secret)
    assert result.bce[0] == result.bce[1] == result.bce[2]
    assert result.chosen_angle == 3 and result.blind_angle == 3


def test_bn_mode_demo_uses_image_statistics_and_leaves_running_stats():
    secret = _secret(5)
    photo, _ = _scene(secret)
    localizer = SquareLocalizer()
    before = {k: v.clone() for k, v in localizer.state_dict().items()}
    assert _reader(localizer).decode(photo, secret).box == LABEL
    assert all(torch.equal(v, localizer.state_dict()[k]) for k, v in before.items())
    assert localizer.training  # flags restored
    # eval mode uses the running statistics (mean 0, var 1): every pixel is positive, the box is the whole image
    assert _reader(localizer, bn_mode="eval").decode(photo, secret).box == (0, 0, SIZE, SIZE)


def test_user_roi_function_by_dotted_path(monkeypatch):
    module = types.ModuleType("user_roi_fns")

    def left_half(mask_logits: torch.Tensor, image: torch.Tensor) -> RoiResult:
        box = (0, 0, image.shape[2] // 2, image.shape[1])
        return RoiResult(F.interpolate(image[None, :, :, : box[2]], size=(400, 400), mode="bilinear")[0], box)

    module.left_half = left_half
    monkeypatch.setitem(sys.modules, "user_roi_fns", module)
    secret = _secret()
    photo, _ = _scene(secret)
    assert _reader(roi_fn="user_roi_fns:left_half").decode(photo, secret).box == (0, 0, SIZE // 2, SIZE)
    with pytest.raises(ImportError, match="no attribute"):
        _reader(roi_fn="user_roi_fns:missing")


def test_bad_inputs_name_the_item():
    photo, _ = _scene(_secret())
    with pytest.raises(ValueError, match="secret"):
        _reader().decode(photo, [0, 1, 2])
    with pytest.raises(ValueError, match="fill"):
        Decoder2Config(fill="white")
    with pytest.raises(ValueError, match="selection"):
        Decoder2Config(selection="best")
    with pytest.raises(TypeError, match="PIL"):
        _reader().decode(np.zeros((4, 4, 3)), _secret())


def test_blind_selection_option():
    secret = _secret(6)
    photo, _ = _scene(secret)
    tilted = geometry.tilt_photo(photo, -3.0)
    by_bce = _reader().decode(tilted, secret)
    blind = _reader(selection="blind").decode(tilted, secret)
    assert by_bce.chosen_angle == 3
    best = max(range(3), key=lambda i: blind.blind_scores[i])
    assert blind.chosen_angle == blind.blind_angle == blind.angles[best] == by_bce.blind_angle
    assert blind.bit_acc == blind.blind_bit_acc == by_bce.blind_bit_acc


# ------------------------------------------------------------------------------------- the registry's own models


def _codec_scene() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    from skimage import data

    from harness.codec import embed

    bits = _secret(7)
    label = np.asarray(Image.fromarray(data.astronaut()).resize((400, 400)))
    photo = np.full((480, 560, 3), 40, np.uint8)
    photo[40:440, 80:480] = embed(label, bits, key=0)
    mask = np.zeros(photo.shape[:2], bool)
    mask[40:440, 80:480] = True
    return Image.fromarray(photo), mask, bits


def test_reference_codec_through_the_chain_with_the_oracle_roi():
    from harness.codec import ReferenceSDecoder

    photo, mask, bits = _codec_scene()
    result = Decoder2Reference(None, ReferenceSDecoder(0)).decode(photo, bits, oracle_mask=mask)
    assert result.status == "ok" and result.chosen_angle == 0
    assert result.box == (33, 33, 367, 367)  # fit: 480×560 → central 480×480 → 400×400; label 400 px → 333 px
    assert result.bit_acc >= 0.8  # chance is 0.5; the wiring (fit, crop, resize, BCE) must hold


def test_teacher_mask_with_registry_models():
    from harness.codec import ReferenceSDecoder
    from harness.models import build_localizer

    photo, _, bits = _codec_scene()
    torch.manual_seed(1)
    teacher = build_localizer("hrnet_w18_small_v1", input_size=64, num_classes=1)  # ≥ 64: 2×2 at 1/32
    student = build_localizer("hrnet_w18_small_v1", input_size=64, num_classes=1)
    sdecoder, config = ReferenceSDecoder(0), Decoder2Config(size=128)  # small: this checks wiring, not accuracy
    own = Decoder2Reference(teacher, sdecoder, config).decode(photo, bits)
    switched = Decoder2Reference(student, sdecoder, config, mask_localizer=teacher).decode(photo, bits)
    assert own.status == switched.status
    assert own.bce == switched.bce and own.box == switched.box and own.chosen_angle == switched.chosen_angle
    if own.probs is not None:
        torch.testing.assert_close(switched.probs, own.probs, rtol=0, atol=0)
