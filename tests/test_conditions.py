"""Camera conditions: the registry, identities that read exactly as the plain chain, masks that follow the geometry,
bit-identical repeats, and runs with conditions that resume and shard to the same records."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from test_torchrun import ENTRY, TESTS, _run
from tiny_world import BrightLocalizer, CellSDecoder, make_dataset, torchrun

import harness.run.summary as summary_module
from harness.conditions import (
    condition_seed,
    list_conditions,
    parse_condition,
    resolve,
    severity_text,
)
from harness.core import geometry
from harness.data import load_dataset
from harness.pipeline.batched import BatchedEvaluator, NamedLocalizer
from harness.pipeline.views import ViewSpec, prepare, tilt_view
from harness.run import EvalConfig, EvalError, Models, ModelSpec, evaluate

REQUIRED = ("tilt", "scale", "perspective", "perspective_pitch", "perspective_yaw", "blur", "motion_blur", "jpeg",
            "brightness", "contrast", "gamma", "noise")
GEOMETRIC = ("tilt", "scale", "perspective", "perspective_pitch", "perspective_yaw")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_marked=2, n_clean=1)


def _photo(seed: int = 0, size=(220, 180)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _quad_mask(quad: np.ndarray, size) -> np.ndarray:
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in quad], fill=255)
    return np.asarray(img) >= 128


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ----------------------------------------------------------------------------------------------- the registry


def test_registry_holds_every_condition_with_a_grid_of_three_and_its_identity():
    assert set(REQUIRED) <= set(list_conditions())
    for name in list_conditions():
        c = resolve(name)
        grid = c.default_grid()
        assert c.identity in grid and len([g for g in grid if g != c.identity]) >= 3, name
        assert c.parts[0].source and c.parts[0].unit
    combo = resolve("tilt+jpeg")
    assert combo.default_grid()[0] == (0.0, 100.0) and len(combo.default_grid()) == 4
    assert combo.tilt_deg((3.0, 70.0)) == 3.0 and resolve("blur").tilt_deg((2.0,)) == 0.0


def test_condition_text_parses_grids_pairs_and_ranges():
    assert parse_condition("blur") == ("blur", ((0.0,), (1.0,), (2.0,), (3.0,)))
    assert parse_condition("jpeg=90,50") == ("jpeg", ((90.0,), (50.0,)))
    assert parse_condition("tilt+jpeg=3:70,5:50") == ("tilt+jpeg", ((3.0, 70.0), (5.0, 50.0)))
    assert parse_condition("tilt=-2:2:2") == ("tilt", ((-2.0,), (0.0,), (2.0,)))
    assert severity_text((3.0, 70.0)) == "3:70" and severity_text((-0.0,)) == "0"
    with pytest.raises(KeyError, match="unknown camera condition 'fog'"):
        parse_condition("fog=1")
    with pytest.raises(ValueError, match="takes 2 severities"):
        parse_condition("tilt+jpeg=3")
    with pytest.raises(ValueError, match="twice"):
        parse_condition("blur=1,1")


def test_cli_condition_option_builds_the_run():
    from harness.eval import build_parser, config_from_args

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(
            ["--localizer", "hrnet_w18", "--sdecoder", "reference_sdecoder", "--data", "d", "--out", "o", *argv]))

    c = cfg("--condition", "blur=0,2", "--condition", "tilt+jpeg=3:70")
    assert c.conditions == (("blur", ((0.0,), (2.0,))), ("tilt+jpeg", ((3.0, 70.0),))) and c.has_conditions
    assert c.tilts == (0.0, 3.0)
    assert c.condition_points() == (("blur", (0.0,)), ("blur", (2.0,)), ("tilt+jpeg", (3.0, 70.0)))
    only_tilt = cfg("--condition", "tilt=-5,0,5")  # the tilt alone is today's run: --tilts, no condition columns
    assert only_tilt.tilts == (-5.0, 0.0, 5.0) and only_tilt.conditions == () and not only_tilt.has_conditions
    with pytest.raises(EvalError, match="appears twice"):
        EvalConfig((ModelSpec("x"),), ModelSpec("y"), "d", conditions=(("blur", (1,)), ("blur", (2,))))


# ---------------------------------------------------------------------------------- identity and determinism


@pytest.mark.parametrize("name", REQUIRED + ("tilt+jpeg", "perspective+blur"))
def test_identity_severity_returns_the_photo_and_mask_untouched(name):
    photo, mask = _photo(), np.zeros((180, 220), bool)
    mask[40:120, 60:160] = True
    c = resolve(name)
    out, out_mask = c.apply(photo, mask, c.identity, seed=0, index=3)
    assert np.array_equal(np.asarray(out), np.asarray(photo)) and np.array_equal(out_mask, mask)


@pytest.mark.parametrize("name", REQUIRED + ("tilt+jpeg", "perspective+blur"))
def test_every_condition_is_bit_identical_across_runs_and_changes_the_photo(name):
    c = resolve(name)
    severity = c.default_grid()[-1] if c.default_grid()[-1] != c.identity else c.default_grid()[0]
    mask = np.zeros((180, 220), bool)
    mask[40:120, 60:160] = True
    a, ma = c.apply(_photo(), mask, severity, seed=0, index=5)
    b, mb = c.apply(_photo(), mask, severity, seed=0, index=5)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(ma, mb)
    assert a.mode == "RGB" and a.size == (220, 180) and ma.shape == mask.shape
    assert not np.array_equal(np.asarray(a), np.asarray(_photo()))


def test_noise_is_seeded_per_sample_and_severity():
    noise = resolve("noise")
    draw = [np.asarray(noise.apply(_photo(), None, (5.0,), seed=0, index=i)[0]) for i in (0, 0, 1)]
    assert np.array_equal(draw[0], draw[1]) and not np.array_equal(draw[0], draw[2])
    assert condition_seed(0, 0, "noise", 5.0) != condition_seed(0, 0, "noise", 10.0)
    assert condition_seed(0, 0, "noise", 5.0) != condition_seed(1, 0, "noise", 5.0)


# ----------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("severity", [-7.0, 0.0, 2.5, 30.0])
def test_tilt_condition_is_todays_tilt_pixel_for_pixel(severity):
    photo, mask = _photo(1), np.zeros((180, 220), bool)
    mask[30:100, 50:150] = True
    out, out_mask = resolve("tilt").apply(photo, mask, (severity,))
    assert np.array_equal(np.asarray(out), np.asarray(tilt_view(photo, severity)))
    assert np.array_equal(out_mask, geometry.tilt_mask(mask, severity))


@pytest.mark.parametrize("name,severity", [("tilt", (10.0,)), ("scale", (0.6,)), ("scale", (1.4,)),
                                           ("perspective_pitch", (35.0,)), ("perspective_pitch", (-25.0,)),
                                           ("perspective_yaw", (30.0,)), ("perspective", (-40.0,)),
                                           ("tilt+perspective", (8.0, 25.0)), ("perspective+blur", (20.0, 2.0))])
def test_masks_follow_the_geometry_of_the_quad(name, severity):
    size = (440, 400)
    quad = np.array([[140.0, 110.0], [330.0, 130.0], [310.0, 300.0], [120.0, 280.0]])
    c = resolve(name)
    _, warped = c.apply(_photo(2, size), _quad_mask(quad, size), severity)
    expected = _quad_mask(c.points(quad, severity, size), size)
    assert _iou(warped, expected) > 0.98, (name, severity, _iou(warped, expected))


def test_perspective_signs_recede_the_named_edge():
    size = (400, 300)
    corners = np.array([[0.0, 0.0], [400.0, 0.0], [400.0, 300.0], [0.0, 300.0]])
    pitch = resolve("perspective_pitch").points(corners, (30.0,), size)
    assert pitch[1, 0] - pitch[0, 0] < pitch[2, 0] - pitch[3, 0]  # top edge shorter: it recedes
    yaw = resolve("perspective_yaw").points(corners, (30.0,), size)
    assert yaw[2, 1] - yaw[1, 1] < yaw[3, 1] - yaw[0, 1]  # right edge shorter
    assert np.allclose(resolve("scale").points(np.array([[200.0, 150.0]]), (0.5,), size), [[200.0, 150.0]])


# ----------------------------------------------------------------------------------------------- views, runs


def test_views_at_identity_equal_the_plain_chain(data_dir):
    dataset = load_dataset(data_dir)
    plain = prepare(dataset[0], 0, ViewSpec((0.0,)))
    points = tuple((name, resolve(name).identity) for name in REQUIRED + ("tilt+jpeg",))
    views = prepare(dataset[0], 0, ViewSpec((0.0,), points=points))
    assert views.n_tilts == len(points)
    for i in range(len(points)):
        assert np.array_equal(views.pixels[i], plain.pixels[0]), points[i]
        assert np.array_equal(views.gt_masks[i], plain.gt_masks[0]), points[i]


def _models() -> Models:
    return Models([NamedLocalizer("bright", "teacher", BrightLocalizer()),
                   NamedLocalizer("bright_s", "student", BrightLocalizer(bias=0.5, stride=4))],
                  CellSDecoder(), {"bright": None, "bright_s": None})


def _config(data_dir, **kw) -> EvalConfig:
    base = dict(localizers=(ModelSpec("bright", role="teacher"), ModelSpec("bright_s")),
                sdecoder=ModelSpec("cells"), data=str(data_dir), chunk_size=1, photos_per_step=1)
    return EvalConfig(**{**base, **kw})


def test_identity_records_are_the_plain_runs_records(data_dir, tmp_path):
    evaluate(_config(data_dir, tilts=(0.0,)), tmp_path / "plain", models=_models(), progress=False)
    conditions = tuple((name, (resolve(name).identity,)) for name in REQUIRED + ("tilt+jpeg",))
    evaluate(_config(data_dir, conditions=conditions), tmp_path / "cond", models=_models(), progress=False)
    plain_text = (tmp_path / "plain" / "records.csv").read_text()
    assert "condition" not in plain_text.splitlines()[0]  # a tilt-only run keeps its columns
    plain = pd.read_csv(tmp_path / "plain" / "records.csv", dtype=str, keep_default_na=False)
    cond = pd.read_csv(tmp_path / "cond" / "records.csv", dtype=str, keep_default_na=False)
    assert list(cond.columns) == [*plain.columns[:6], "condition", "severity", *plain.columns[6:]]
    for name, _ in conditions:
        rows = cond[cond["condition"] == name].drop(columns=["condition", "severity"]).reset_index(drop=True)
        assert rows.equals(plain), name  # bit-identical: BCE, bits, boxes, IoU
    doc = json.loads((tmp_path / "cond" / "conditions.json").read_text())
    assert {w["condition"] for w in doc["worst"]} == {n for n, _ in conditions}
    assert not (tmp_path / "plain" / "conditions.json").exists()


def test_conditions_run_resumes_to_identical_records(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(summary_module, "git_commit", lambda: "c0ffee")
    cfg = _config(data_dir, conditions=(("noise", ((0.0,), (10.0,))), ("tilt+jpeg", ((0.0, 100.0), (5.0, 50.0))),
                                        ("perspective", ((30.0,),))))
    evaluate(cfg, tmp_path / "whole", models=_models(), progress=False)
    calls = {"n": 0}
    original = BatchedEvaluator.decode

    def stop_after_one_step(self, photos, secrets):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return original(self, photos, secrets)

    monkeypatch.setattr(BatchedEvaluator, "decode", stop_after_one_step)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, tmp_path / "resumed", models=_models(), progress=False)
    monkeypatch.setattr(BatchedEvaluator, "decode", original)
    evaluate(_config(data_dir, conditions=cfg.conditions, workers=1), tmp_path / "resumed", models=_models(),
             progress=False)
    for name in ("records.csv", "conditions.json"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "whole" / name).read_text()
    frame = pd.read_csv(tmp_path / "whole" / "records.csv", dtype={"severity": str})
    assert len(frame) == 3 * 5 * 3  # photos × points × (teacher, student, oracle)
    noisy = frame[(frame["condition"] == "noise") & (frame["severity"] == "10")]
    assert set(noisy["tilt_deg"]) == {0} and set(frame.loc[frame["condition"] == "tilt+jpeg", "tilt_deg"]) == {0, 5}


def test_two_processes_write_the_conditions_records_of_one(tmp_path):
    data = make_dataset(tmp_path / "data", n_marked=2, n_clean=1)
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY.format(tests=str(TESTS)))
    args = ["--localizer", "tiny_bright", "--localizer", "tiny_bright_coarse", "--sdecoder", "tiny_cells",
            "--data", str(data), "--condition", "noise=0,8", "--condition", "tilt+blur=2:1.5",
            "--chunk-size", "1", "--workers", "0", "--quiet"]
    single = _run([sys.executable, str(entry), *args, "--out", str(tmp_path / "one")], tmp_path)
    assert single.returncode == 0, single.stderr
    command = [*torchrun(entry)]
    double = _run([*command, *args, "--out", str(tmp_path / "two")], tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    one = (tmp_path / "one" / "records.csv").read_text()
    assert (tmp_path / "two" / "records.csv").read_text() == one
    assert len(one.splitlines()) == 1 + 3 * 3 * 3 and ",tilt+blur,2:1.5," in one
