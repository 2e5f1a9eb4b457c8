"""The trainer draws its augmentation from the camera-conditions registry: the recipe key, the sampler's draws
(deterministic, in range, leaving every other draw as it was) and the photo and mask a sample gets."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from harness.conditions import resolve
from harness.distill.config import ConditionAug, RecipeError, recipe_from_dict, recipe_to_json
from harness.distill.data import Draw, FixedScenes, Scene, StepBatchSampler, TrainSamples, conditioned

AUGS = [{"name": "blur", "severity": [0, 2]}, {"name": "tilt+jpeg", "severity": [[0, 5], [50, 100]], "p": 0.5}]


def test_recipe_key_reads_and_checks_conditions():
    recipe = recipe_from_dict({"data": {"conditions": AUGS}})
    assert recipe.data.conditions == (ConditionAug("blur", ((0.0, 2.0),)),
                                      ConditionAug("tilt+jpeg", ((0.0, 5.0), (50.0, 100.0)), 0.5))
    assert json.loads(recipe_to_json(recipe))["data"]["conditions"][1]["p"] == 0.5
    assert recipe_from_dict({}).data.conditions == ()
    for bad, match in [({"name": "fog", "severity": [0, 1]}, "unknown camera condition"),
                       ({"name": "blur", "severity": [2, 1]}, "low <= high"),
                       ({"name": "tilt+jpeg", "severity": [0, 5]}, "per part"),
                       ({"name": "blur", "severity": [0, 1], "p": 2}, "probability"),
                       ({"name": "blur"}, "expected")]:
        with pytest.raises(RecipeError, match=match):
            recipe_from_dict({"data": {"conditions": [bad]}}, "r.toml")


def _sampler(conditions=(), rank=0, world_size=1, batch=4):
    return StepBatchSampler(10, batch, seed=3, start_step=0, max_steps=5, tilt_deg=5.0, hflip=True, rank=rank,
                            world_size=world_size, conditions=conditions)


def test_sampler_draws_conditions_deterministically_in_range_without_moving_other_draws():
    augs = recipe_from_dict({"data": {"conditions": AUGS}}).data.conditions
    plain, with_conditions = _sampler(), _sampler(augs)
    for step in range(5):
        a, b = plain.draws(step), with_conditions.draws(step)
        assert [(d.index, d.tilt_deg, d.hflip) for d in a] == [(d.index, d.tilt_deg, d.hflip) for d in b]
        assert b == _sampler(augs).draws(step)
        for d in b:
            named = dict(d.conditions)
            assert 0 <= named["blur"][0] <= 2  # p = 1: always
            if "tilt+jpeg" in named:
                assert 0 <= named["tilt+jpeg"][0] <= 5 and 50 <= named["tilt+jpeg"][1] <= 100
    counts = [len(d.conditions) for s in range(5) for d in with_conditions.draws(s)]
    assert set(counts) == {1, 2}  # the p = 0.5 condition applies to some samples only
    # two ranks take the two halves of the one global batch a single process would draw at twice the batch size
    halves = _sampler(augs, 0, 2, 2).draws(1) + _sampler(augs, 1, 2, 2).draws(1)
    assert halves == _sampler(augs, batch=4).draws(1)


def _scene() -> Scene:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8))
    mask = np.zeros((200, 240), np.uint8)
    mask[50:150, 70:170] = 255
    return Scene(photo, Image.fromarray(mask, "L"), np.zeros(100, np.uint8))


def test_a_sample_gets_the_evaluations_condition_on_photo_and_mask():
    scene = _scene()
    draw = Draw(0, 0.0, False, (("scale", (0.5,)), ("noise", (5.0,))), condition_seed=11)
    out = conditioned(scene, draw)
    photo, mask = resolve("scale").apply(scene.photo, np.asarray(scene.mask) >= 128, (0.5,))
    photo, _ = resolve("noise").apply(photo, None, (5.0,), seed=11, index=0)
    assert np.array_equal(np.asarray(out.photo), np.asarray(photo))
    assert np.array_equal(np.asarray(out.mask) >= 128, mask) and (np.asarray(out.mask) >= 128).sum() == 50 * 50
    blurred = conditioned(scene, Draw(0, 0.0, False, (("blur", (2.0,)),)))
    assert blurred.mask is scene.mask and not np.array_equal(np.asarray(blurred.photo), np.asarray(scene.photo))
    assert conditioned(scene, Draw(0, 0.0, False)) is scene

    samples = TrainSamples(FixedScenes([scene]), 64)
    plain, zoomed = samples[Draw(0, 0.0, False)], samples[draw]
    assert zoomed["mask"].sum() < 0.5 * plain["mask"].sum()
    assert np.array_equal(samples[draw]["image"].numpy(), zoomed["image"].numpy())  # the same draw, the same sample
