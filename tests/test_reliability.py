"""Bad inputs that must end well: a broken mask fails only what needs it; behaviours of the records no other test
holds (word_ok, p = 0.5, the resume identity, all-zero logits through both evaluators)."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from PIL import Image
from tiny_world import BrightLocalizer, CellSDecoder, make_dataset

from harness.core import geometry
from harness.data import load_dataset, load_image
from harness.pipeline.batched import BatchedEvaluator, Decode, NamedLocalizer
from harness.pipeline.reference import Decoder2Config, Decoder2Reference
from harness.pipeline.views import ViewSpec, prepare
from harness.run import EvalConfig, EvalError, Models, ModelSpec, evaluate
from harness.run.records import to_csv

STUDENT = Path(__file__).resolve().parent.parent / "students" / "student_pidnet_s" / "weights.pt"

evaluate_module = importlib.import_module("harness.run.evaluate")  # the module (harness.run exports the function)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_marked=2, n_clean=1)


def _config(data_dir, **kw) -> EvalConfig:
    base = dict(localizers=(ModelSpec("bright", role="teacher"),), sdecoder=ModelSpec("cells"), data=str(data_dir),
                tilts=(0.0, 2.0))
    return EvalConfig(**{**base, **kw})


def _models(localizer: nn.Module | None = None, sdecoder: nn.Module | None = None) -> Models:
    return Models([NamedLocalizer("bright", "teacher", localizer or BrightLocalizer())], sdecoder or CellSDecoder(),
                  {"bright": None})


def _records(run) -> pd.DataFrame:
    return pd.read_csv(run / "records.csv", dtype=str, keep_default_na=False)  # as written, text


# ------------------------------------------------------------------------------------- a mask broken mid-run


def test_a_mask_truncated_during_the_run_fails_only_the_rows_that_need_it(data_dir, tmp_path, monkeypatch):
    copy = tmp_path / "data"
    copy.mkdir()
    for f in data_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    evaluate(_config(copy), tmp_path / "clean", models=_models(), progress=False)
    real_load = evaluate_module.load_dataset

    def load_then_truncate(root):  # the dataset was valid when the run started; the mask breaks afterwards
        dataset = real_load(root)
        mask = copy / "p001_mask.png"
        mask.write_bytes(mask.read_bytes()[:200])
        return dataset

    monkeypatch.setattr(evaluate_module, "load_dataset", load_then_truncate)
    evaluate(_config(copy, workers=1), tmp_path / "broken", models=_models(), progress=False)

    clean, broken = _records(tmp_path / "clean"), _records(tmp_path / "broken")
    hit = broken["sample_id"] == "s001"
    oracle = broken[hit & (broken["model"] == "oracle")]
    assert (oracle["status"] == "failed").all() and len(oracle) == 2
    assert oracle["reason"].str.contains("p001_mask.png").all()  # the file that failed, not the photo
    assert not oracle["reason"].str.contains("p001.png").any()
    predicted = broken[hit & (broken["model"] == "bright")].reset_index(drop=True)
    before = clean[(clean["sample_id"] == "s001") & (clean["model"] == "bright")].reset_index(drop=True)
    assert (predicted["status"] == "ok").all()
    for column in ("bits", "bits_correct", "bce_0", "bce_p3", "bce_m3", "chosen_angle", "x0", "y1"):  # kept answers
        assert predicted[column].tolist() == before[column].tolist()
    assert (predicted["iou"] == "").all() and (before["iou"] != "").all()  # only the IoU needs the mask
    others = ~hit
    assert broken[others].equals(clean[others])  # every other row as in the clean run


def test_a_broken_photo_names_the_photo_file(data_dir, tmp_path):
    copy = tmp_path / "data"
    copy.mkdir()
    for f in data_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    sample = load_dataset(copy)[0]
    (copy / "p000.png").write_bytes(b"not a png")
    out = prepare(sample, 0, ViewSpec((0.0,)))
    assert out.pixels is None and "cannot load p000.png" in out.error


# ------------------------------------------------------------------------------------- word_ok, p = 0.5


def _one_record(data_dir, probs: np.ndarray, secret: np.ndarray) -> dict[str, str]:
    cfg = _config(data_dir)
    sample = load_dataset(data_dir)[0]
    decode = Decode("ok", "", (0.1, 0.2, 0.3), 0, probs.astype(np.float32), 0, probs.astype(np.float32), (1, 2, 3, 4),
                    0.5)
    record = evaluate_module.make_record(cfg, "bright", "teacher", sample, 0.0, decode, secret)
    rows = to_csv([record], cfg.angles).splitlines()
    return dict(zip(rows[0].split(","), rows[1].split(",")))


def test_word_ok_in_the_records_needs_every_bit(data_dir):
    secret = np.tile(np.array([1, 0], np.uint8), 50)
    right = np.where(secret == 1, 0.9, 0.1)
    assert _one_record(data_dir, right, secret)["word_ok"] == "1"
    one_wrong = right.copy()
    one_wrong[17] = 1 - one_wrong[17]  # 99 of 100 bits right
    row = _one_record(data_dir, one_wrong, secret)
    assert row["bits_correct"] == "99" and row["bit_acc"] == "0.99" and row["word_ok"] == "0"


def test_a_probability_of_exactly_one_half_is_bit_1_in_the_records(data_dir):
    secret = np.tile(np.array([1, 0], np.uint8), 50)
    half = np.full(100, 0.5)
    row = _one_record(data_dir, half, secret)
    assert row["bits"] == "f" * 25 and row["bits_correct"] == "50"  # every bit read 1: the 50 ones are right


class ZeroSDecoder(nn.Module):
    """Logits exactly 0: every probability is sigmoid(0) = 0.5."""

    def forward(self, roi: torch.Tensor) -> torch.Tensor:
        return torch.zeros(roi.shape[0], 100)


def test_a_decoder_that_reads_one_half_everywhere_writes_all_ones_through_a_run(data_dir, tmp_path):
    evaluate(_config(data_dir, oracle=False), tmp_path / "run", models=_models(sdecoder=ZeroSDecoder()),
             progress=False)
    rows = _records(tmp_path / "run")
    secrets = {s.id: s.secret for s in load_dataset(data_dir)}
    reference = next(s for s in secrets.values() if s is not None)
    ok = rows[rows["status"] == "ok"]
    assert len(ok) > 0 and (ok["bits"] == "f" * 25).all()
    for row in ok.itertuples():
        secret = secrets[row.sample_id] if secrets[row.sample_id] is not None else reference
        assert int(row.bits_correct) == int(secret.sum())


# ------------------------------------------------------------------------------------- the resume identity


def test_a_resumed_run_with_a_changed_checkpoint_file_is_refused(data_dir, tmp_path):
    weights = torch.load(STUDENT, weights_only=True)
    ckpt = tmp_path / "student.pt"
    torch.save(weights, ckpt)
    cfg = EvalConfig(localizers=(ModelSpec("pidnet_s", str(ckpt), input_size=128, role="teacher"),),
                     sdecoder=ModelSpec("reference_sdecoder"), data=str(data_dir), tilts=(0.0,), bn_mode="eval",
                     chunk_size=1, oracle=False)
    evaluate(cfg, tmp_path / "run", progress=False)
    first = (tmp_path / "run" / "records.csv").read_text()
    (tmp_path / "run" / "parts" / "chunk-00002.csv").unlink()  # as if the run had stopped before its last photo
    (tmp_path / "run" / "records.csv").unlink()
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key] = weights[key] + 0.01  # the same file name, other weights
    torch.save(weights, ckpt)
    with pytest.raises(EvalError, match="different run"):
        evaluate(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "records.csv").exists()  # nothing merged from the two checkpoints
    torch.save(torch.load(STUDENT, weights_only=True), ckpt)  # the original weights: the resume goes on
    evaluate(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "records.csv").read_text() == first


# ------------------------------------------------------------------------------ logits exactly 0 everywhere


class ZeroLocalizer(nn.Module):
    """Mask logits exactly 0 at every pixel: on the ROI threshold (logit > 0), so no pixel is in the mask."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x[:, :1, ::2, ::2]


@pytest.mark.parametrize("bn_mode", ["demo", "eval"])
def test_all_zero_logits_give_the_references_answers(data_dir, bn_mode):
    dataset = load_dataset(data_dir)
    tilts = (0.0, 2.0)
    localizer, sdecoder = ZeroLocalizer(), CellSDecoder()
    spec = ViewSpec(tilts)
    evaluator = BatchedEvaluator([NamedLocalizer("zero", "teacher", localizer)], sdecoder, spec.angles,
                                 bn_mode=bn_mode)
    photos = [prepare(s, i, spec) for i, s in enumerate(dataset)]
    secrets = [s.secret if s.secret is not None else dataset[0].secret for s in dataset]
    out = evaluator.decode(photos, secrets)["zero"]
    reference = Decoder2Reference(localizer, sdecoder, Decoder2Config(bn_mode=bn_mode))
    for i, sample in enumerate(dataset):
        photo = load_image(sample.path)
        mask = np.asarray(Image.open(sample.mask_path)) >= 128
        for t, tilt in enumerate(tilts):
            ref = reference.decode(geometry.tilt_photo(photo, tilt), secrets[i],
                                   gt_mask=geometry.tilt_mask(mask, tilt))
            dec = out[i][t]
            assert (dec.status, dec.reason) == (ref.status, ref.reason) == ("roi_empty", "no ROI at any search angle")
            assert dec.bce == ref.bce and all(b == float("inf") for b in dec.bce)
            assert dec.chosen is None and ref.chosen_angle is None and dec.probs is None and ref.probs is None
            assert dec.iou == pytest.approx(ref.mask_iou, abs=1e-12) and dec.iou == 0.0
