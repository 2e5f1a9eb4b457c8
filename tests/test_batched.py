"""The batched evaluator gives the reference's answers per sample: same angle, same bits, probabilities within 1e-5."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from tiny_world import BrightLocalizer, CellSDecoder, NanLocalizer, make_dataset

from harness.core import geometry
from harness.core.roi import RoiResult, crop_box, crop_mask_and_image, resolve_roi_fn
from harness.data import load_dataset, load_image
from harness.pipeline.batched import ORACLE, BatchedEvaluator, NamedLocalizer
from harness.pipeline.reference import Decoder2Config, Decoder2Reference
from harness.pipeline.views import ViewSpec, prepare

TILTS = (-2.5, 0.0, 3.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    torch.set_num_threads(1)
    return load_dataset(make_dataset(tmp_path_factory.mktemp("tiny"), n_marked=3, n_clean=0))


def _photo_and_mask(sample, tilt):
    photo = load_image(sample.path)
    mask = np.asarray(Image.open(sample.mask_path)) >= 128
    return geometry.tilt_photo(photo, tilt), geometry.tilt_mask(mask, tilt)


def _assert_same(ref, dec, angles):
    """One reference result against one batched Decode."""
    assert dec.status == ref.status, (dec.reason, ref.reason)
    assert dec.reason == ref.reason
    if ref.status == "failed":
        return
    assert dec.bce == pytest.approx(ref.bce, abs=1e-6)
    assert dec.iou == pytest.approx(ref.mask_iou, abs=1e-12) if ref.mask_iou is not None else dec.iou is None
    if ref.status == "roi_empty":
        return
    assert angles[dec.chosen] == ref.chosen_angle
    assert dec.box == ref.box
    torch.testing.assert_close(torch.from_numpy(dec.probs), ref.probs, rtol=0, atol=1e-5)
    assert np.array_equal(dec.probs >= 0.5, ref.bits.numpy().astype(bool))
    assert angles[dec.blind] == ref.blind_angle


@pytest.mark.parametrize("bn_mode", ["demo", "eval"])
def test_teacher_and_students_in_one_run_agree_with_the_reference(dataset, bn_mode):
    teacher, student = BrightLocalizer(), BrightLocalizer(bias=0.5, stride=4)
    sdecoder = CellSDecoder()
    spec = ViewSpec(TILTS)
    evaluator = BatchedEvaluator([NamedLocalizer("teacher", "teacher", teacher),
                                  NamedLocalizer("student", "student", student)],
                                 sdecoder, spec.angles, bn_mode=bn_mode, batch_size=5)
    photos = [prepare(s, i, spec) for i, s in enumerate(dataset)]
    out = evaluator.decode(photos, [s.secret for s in dataset])
    statuses = set()
    for name, model in (("teacher", teacher), ("student", student)):
        reference = Decoder2Reference(model, sdecoder, Decoder2Config(bn_mode=bn_mode))
        for i, sample in enumerate(dataset):
            for t, tilt in enumerate(TILTS):
                photo, mask = _photo_and_mask(sample, tilt)
                ref = reference.decode(photo, sample.secret, gt_mask=mask)
                _assert_same(ref, out[name][i][t], spec.angles)
                statuses.add(ref.chosen_angle)
    assert statuses == {0, 3, -3}  # the tilts exercise every search angle
    assert set(out) == {"teacher", "student", ORACLE}


def test_teacher_mask_switch_and_oracle_agree_with_the_reference(dataset):
    teacher, student, sdecoder = BrightLocalizer(), BrightLocalizer(bias=3.0), CellSDecoder()
    spec = ViewSpec((0.0, 3.0))
    evaluator = BatchedEvaluator([NamedLocalizer("teacher", "teacher", teacher),
                                  NamedLocalizer("student", "student", student, mask_from="teacher")],
                                 sdecoder, spec.angles, batch_size=4)
    photos = [prepare(s, i, spec) for i, s in enumerate(dataset)]
    out = evaluator.decode(photos, [s.secret for s in dataset])
    switched = Decoder2Reference(student, sdecoder, mask_localizer=teacher)
    oracle = Decoder2Reference(None, sdecoder)
    for i, sample in enumerate(dataset):
        for t, tilt in enumerate(spec.tilts):
            photo, mask = _photo_and_mask(sample, tilt)
            _assert_same(switched.decode(photo, sample.secret, gt_mask=mask), out["student"][i][t], spec.angles)
            _assert_same(oracle.decode(photo, sample.secret, oracle_mask=mask), out[ORACLE][i][t], spec.angles)
            assert out[ORACLE][i][t].iou is None
    assert evaluator.timings.rois["student"] == 0  # the teacher's crops were decoded once, for both


def test_user_roi_function_agrees_with_the_reference(dataset, monkeypatch):
    module = types.ModuleType("user_roi_for_tests")

    def inner_crop(mask_logits: torch.Tensor, image: torch.Tensor) -> RoiResult:
        """The default ROI shrunk by 4 px on each side: a user's own step."""
        result = crop_mask_and_image(mask_logits, image)
        if result.box is None:
            return result
        x0, y0, x1, y1 = result.box
        box = (x0 + 4, y0 + 4, x1 - 4, y1 - 4)
        return RoiResult(crop_box(image, box), box)

    module.inner_crop = inner_crop
    monkeypatch.setitem(sys.modules, "user_roi_for_tests", module)
    teacher, sdecoder = BrightLocalizer(), CellSDecoder()
    spec = ViewSpec((1.0,))
    evaluator = BatchedEvaluator([NamedLocalizer("teacher", "teacher", teacher)], sdecoder, spec.angles,
                                 roi_fn=resolve_roi_fn("user_roi_for_tests:inner_crop"), oracle=False)
    out = evaluator.decode([prepare(dataset[0], 0, spec)], [dataset[0].secret])
    photo, mask = _photo_and_mask(dataset[0], 1.0)
    ref = Decoder2Reference(teacher, sdecoder, Decoder2Config(roi_fn="user_roi_for_tests:inner_crop"))
    result = ref.decode(photo, dataset[0].secret, gt_mask=mask)
    _assert_same(result, out["teacher"][0][0], spec.angles)
    assert result.box[2] - result.box[0] < 200


@pytest.mark.parametrize("fill", ["black", "validity"])
def test_views_equal_the_geometry_functions_bit_for_bit(dataset, fill):
    spec = ViewSpec((-1.5, 0.0, 4.0), fill=fill)
    sample = dataset[0]
    photos = prepare(sample, 0, spec)
    photo = load_image(sample.path)
    for t, tilt in enumerate(spec.tilts):
        fitted = geometry.fit(geometry.tilt_photo(photo, tilt))
        expected = torch.stack([geometry.to_tensor(geometry.rotate_fill(fitted, a, fill=fill)) for a in spec.angles])
        assert torch.equal(photos.images(t), expected)


def test_black_fill_also_fills_true_black_pixels_as_the_demo():
    photo = Image.fromarray(np.full((50, 60, 3), 90, np.uint8))
    photo.paste((0, 0, 0), (20, 20, 30, 30))  # a black patch inside the picture
    from harness.pipeline.views import rotate_view
    for angle in (0.0, 3.0):
        expected = np.asarray(geometry.rotate_fill(photo, angle, fill="black"))
        assert np.array_equal(rotate_view(photo, angle, "black"), expected)
    assert (rotate_view(photo, 0.0, "black") != 0).all()


def test_failures_match_the_reference_and_never_stop_the_batch(dataset, tmp_path):
    sdecoder = CellSDecoder()
    broken = NanLocalizer(below=2.0)  # every view is "dark": NaN logits everywhere
    empty = BrightLocalizer(bias=-50.0)  # no logit above 0: empty ROI at every angle
    spec = ViewSpec((0.0,))
    evaluator = BatchedEvaluator([NamedLocalizer("broken", "student", broken),
                                  NamedLocalizer("empty", "student", empty)], sdecoder, spec.angles)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    bad_sample = type(dataset[1])(**{**dataset[1].__dict__, "path": corrupt, "file": "corrupt.png"})
    photos = [prepare(dataset[0], 0, spec), prepare(bad_sample, 1, spec)]
    out = evaluator.decode(photos, [dataset[0].secret, dataset[1].secret])
    photo, mask = _photo_and_mask(dataset[0], 0.0)
    for name, model in (("broken", broken), ("empty", empty)):
        ref = Decoder2Reference(model, sdecoder).decode(photo, dataset[0].secret, gt_mask=mask)
        _assert_same(ref, out[name][0][0], spec.angles)
        assert out[name][1][0].status == "failed" and "corrupt.png" in out[name][1][0].reason
    assert out["broken"][0][0].status == "failed" and "localizer logits" in out["broken"][0][0].reason
    assert out["empty"][0][0].status == "roi_empty"
    assert out[ORACLE][0][0].status == "ok"


def test_batch_size_never_changes_an_answer(dataset):
    spec = ViewSpec((0.0, -2.0))
    photos = [prepare(s, i, spec) for i, s in enumerate(dataset)]
    runs = []
    for batch_size in (1, 7):
        evaluator = BatchedEvaluator([NamedLocalizer("t", "teacher", BrightLocalizer())], CellSDecoder(),
                                     spec.angles, batch_size=batch_size, oracle=False)
        runs.append(evaluator.decode(photos, [s.secret for s in dataset])["t"])
    for one, seven in zip(*runs):
        for a, b in zip(one, seven):
            assert a.chosen == b.chosen and a.box == b.box
            np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)


def test_duplicate_or_unknown_names_are_refused():
    loc = NamedLocalizer("a", "teacher", nn.Identity())
    with pytest.raises(ValueError, match="unique"):
        BatchedEvaluator([loc, loc], nn.Identity(), (0.0,))
    with pytest.raises(ValueError, match="mask_from"):
        BatchedEvaluator([NamedLocalizer("b", "student", nn.Identity(), mask_from="zz")], nn.Identity(), (0.0,))
