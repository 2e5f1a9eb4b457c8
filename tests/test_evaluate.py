"""Evaluation runs: resume gives identical records, bad inputs are recorded, pre-run errors, summary figures, CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import harness.summary as summary_module
from harness.eval import main as eval_main
from harness.eval import parse_tilts
from harness.evaluate import EvalConfig, EvalError, ModelSpec, Models, evaluate
from harness.pipeline.batched import BatchedEvaluator, NamedLocalizer
from harness.summary import aggregate
from tiny_world import BrightLocalizer, CellSDecoder, NanLocalizer, TwoChannelLocalizer, make_dataset

TILTS = (-3.0, 0.0, 1.5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    torch.set_num_threads(1)
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_marked=4, n_clean=1)


def _config(data_dir, **kw) -> EvalConfig:
    base = dict(localizers=(ModelSpec("bright", role="teacher"), ModelSpec("bright_s")),
                sdecoder=ModelSpec("cells"), data=str(data_dir), tilts=TILTS, chunk_size=2, photos_per_step=2)
    return EvalConfig(**{**base, **kw})


def _models(teacher=None, student=None, sdecoder=None) -> Models:
    return Models([NamedLocalizer("bright", "teacher", teacher or BrightLocalizer()),
                   NamedLocalizer("bright_s", "student", student or BrightLocalizer(bias=0.5, stride=4))],
                  sdecoder or CellSDecoder(), {"bright": None, "bright_s": None})


def _deterministic(summary_path) -> dict:
    doc = json.loads(summary_path.read_text())
    doc.pop("timing")
    doc["provenance"].pop("date")
    doc["provenance"]["config"].pop("workers")
    return doc


def test_interrupted_run_resumes_to_identical_records_and_summary(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(summary_module, "git_commit", lambda: "c0ffee")  # the checkout may move between the runs
    cfg = _config(data_dir)
    whole = evaluate(cfg, tmp_path / "whole", models=_models(), progress=False)
    records = (tmp_path / "whole" / "records.csv").read_text()

    calls = {"n": 0}
    original = BatchedEvaluator.decode

    def stop_after_two_steps(self, photos, secrets):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # the run is killed during its third step
        return original(self, photos, secrets)

    monkeypatch.setattr(BatchedEvaluator, "decode", stop_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, tmp_path / "resumed", models=_models(), progress=False)
    parts = sorted(p.name for p in (tmp_path / "resumed" / "parts").glob("chunk-*.csv"))
    assert parts == ["chunk-00000.csv", "chunk-00001.csv"]
    assert not (tmp_path / "resumed" / "records.csv").exists()

    monkeypatch.setattr(BatchedEvaluator, "decode", original)
    resumed_calls = {"n": 0}

    def counting(self, photos, secrets):
        resumed_calls["n"] += 1
        return original(self, photos, secrets)

    monkeypatch.setattr(BatchedEvaluator, "decode", counting)
    with_workers = _config(data_dir, workers=1)  # views prepared in a DataLoader process this time
    evaluate(with_workers, tmp_path / "resumed", models=_models(), progress=False)
    assert resumed_calls["n"] == 1  # only the last chunk (one photo) was decoded again
    assert (tmp_path / "resumed" / "records.csv").read_text() == records
    assert _deterministic(tmp_path / "resumed" / "summary.json") == _deterministic(tmp_path / "whole" / "summary.json")

    frame = pd.read_csv(tmp_path / "whole" / "records.csv", dtype={"sample_id": str})
    assert len(frame) == 5 * len(TILTS) * 3  # photos × tilts × (teacher, student, oracle)
    assert set(frame["roi_source"]) == {"predicted", "oracle"}
    assert set(frame.loc[frame["model"] == "oracle", "role"]) == {"oracle"}
    assert (frame["status"] == "ok").all()
    assert not {"ms", "date"} & set(frame.columns)  # timings live in timings.csv
    assert whole.results[0]["model"] == "bright" and whole.results[0]["n_clean"] == len(TILTS)


def test_changed_configuration_refuses_the_out_dir(data_dir, tmp_path):
    evaluate(_config(data_dir, tilts=(0.0,)), tmp_path, models=_models(), progress=False)
    with pytest.raises(EvalError, match="different run"):
        evaluate(_config(data_dir, tilts=(0.0, 1.0)), tmp_path, models=_models(), progress=False)


def test_bad_inputs_are_recorded_and_the_run_goes_on(data_dir, tmp_path):
    broken_copy = tmp_path / "data"
    broken_copy.mkdir()
    for f in data_dir.iterdir():
        (broken_copy / f.name).write_bytes(f.read_bytes())
    photo = (broken_copy / "p002.png").read_bytes()
    (broken_copy / "p002.png").write_bytes(photo[: len(photo) // 2])  # a truncated photo in the middle of the set

    models = _models(teacher=NanLocalizer(below=0.345), student=BrightLocalizer(bias=-50.0))
    result = evaluate(_config(broken_copy, tilts=(0.0,)), tmp_path / "run", models=models, progress=False)
    frame = pd.read_csv(tmp_path / "run" / "records.csv", dtype={"sample_id": str}, keep_default_na=False)
    by = {(r.model, r.sample_id): r for r in frame.itertuples()}
    assert by[("bright", "s002")].status == "failed" and "p002.png" in by[("bright", "s002")].reason
    assert by[("oracle", "s002")].status == "failed"
    nan_rows = frame[(frame["model"] == "bright") & frame["reason"].str.contains("localizer logits")]
    assert len(nan_rows) >= 1 and (nan_rows["status"] == "failed").all()
    assert (frame.loc[(frame["model"] == "bright_s") & (frame["sample_id"] != "s002"), "status"] == "roi_empty").all()
    assert (frame.loc[(frame["model"] == "oracle") & (frame["sample_id"] != "s002"), "status"] == "ok").all()
    student = next(r for r in result.results if r["model"] == "bright_s")
    assert student["roi_empty_rate"] == pytest.approx(4 / 5) and student["failed"] == 1
    assert student["bit_acc"]["mean"] == 0.0  # rows without bits count as 0, as the gate counts them
    teacher = next(r for r in result.results if r["model"] == "bright")
    assert teacher["failed"] == len(nan_rows) + 1 and teacher["failures"][0]["reason"]


def test_pre_run_errors_name_the_model(data_dir, tmp_path):
    class WideSDecoder(nn.Module):
        def forward(self, roi):
            return torch.zeros(roi.shape[0], 64)

    with pytest.raises(EvalError, match="B×100"):
        evaluate(_config(data_dir), tmp_path / "a", models=_models(sdecoder=WideSDecoder()), progress=False)
    with pytest.raises(EvalError, match="'bright_s'.*one channel"):
        evaluate(_config(data_dir), tmp_path / "b", models=_models(student=TwoChannelLocalizer()), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(EvalError, match="fpr_secret"):
        _config(data_dir, fpr_secret="01") and evaluate(_config(data_dir, fpr_secret="01"), tmp_path / "c",
                                                        models=_models(), progress=False)
    with pytest.raises(EvalError, match="bn_mode"):
        _config(data_dir, bn_mode="train")


def _approx(value):
    return pytest.approx(value, rel=1e-5)  # summaries keep 6 significant digits


def _records(rows) -> pd.DataFrame:
    cols = ["model", "role", "roi_source", "sample_id", "watermarked", "tilt_deg", "status", "reason",
            "bit_acc", "bits_correct", "word_ok", "blind_bit_acc", "iou"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def test_summary_figures_by_hand():
    m = ("m", "student", "predicted")
    rows = [
        m + ("a", 1, 0.0, "ok", "", 1.00, 100, 1, 1.00, 0.9),
        m + ("b", 1, 0.0, "ok", "", 0.70, 70, 0, 0.60, 0.7),
        m + ("a", 1, 1.0, "ok", "", 0.64, 64, 0, 0.64, 0.8),
        m + ("b", 1, 1.0, "roi_empty", "no ROI", np.nan, np.nan, np.nan, np.nan, 0.0),
        m + ("c", 0, 0.0, "ok", "", 0.66, 66, 0, 0.5, np.nan),  # clean: 66 bits of the reference secret
        m + ("c", 0, 1.0, "ok", "", 0.50, 50, 0, 0.5, np.nan),
    ]
    (entry,) = aggregate(_records(rows), n_bits=100)
    assert entry["bit_acc"]["mean"] == _approx((1.0 + 0.7 + 0.64 + 0.0) / 4)
    assert entry["per_tilt"] == {"0": _approx(0.85), "1": _approx(0.32)}
    assert entry["tilt_min"] == _approx(0.32) and entry["tilt_max"] == _approx(0.85)
    assert entry["bit_acc_ok"] == _approx((1.0 + 0.7 + 0.64) / 3)
    assert entry["word_acc"] == _approx(0.25)
    det = {d["fpr"]: d for d in entry["detection"]}
    assert det[1e-2]["threshold_bits"] == 63 and det[1e-2]["tpr"] == _approx(0.75)
    assert det[1e-3]["threshold_bits"] == 66 and det[1e-3]["tpr"] == _approx(0.5)
    assert det[1e-3]["empirical_fpr"] == _approx(0.5) and det[1e-3]["n_clean"] == 2
    assert det[1e-6]["threshold_bits"] == 74 and det[1e-6]["empirical_fpr"] == 0.0
    assert entry["roi_empty_rate"] == _approx(1 / 6)
    assert entry["mask_iou"] == _approx((0.9 + 0.7 + 0.8 + 0.0) / 4)


def test_parse_tilts():
    assert parse_tilts("-5:5:1") == tuple(float(t) for t in range(-5, 6))
    assert parse_tilts("-1:0.5:0.25") == (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5)
    assert parse_tilts("-2.5, 0,3") == (-2.5, 0.0, 3.0)
    for bad in ("5:-5:1", "0:1:0", "a,b", "1,1", "1:2", ""):
        with pytest.raises(ValueError, match="tilts"):
            parse_tilts(bad)


def test_cli_reports_a_bad_dataset_by_row_and_exits_2(tmp_path, capsys):
    (tmp_path / "manifest.csv").write_text("id,file,secret\ns1,missing.png,\n")
    code = eval_main(["--localizer", "hrnet_w18_small_v1", "--sdecoder", "reference_sdecoder", "--data",
                      str(tmp_path), "--tilts", "-1:1:1", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "missing.png" in err


def test_cli_zoo_without_cards_exits_2(tmp_path, capsys):
    code = eval_main(["--zoo", str(tmp_path), "--sdecoder", "reference_sdecoder", "--data", str(tmp_path),
                      "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2 and "no model cards" in capsys.readouterr().err


def _cli_config(*argv):
    from harness.eval import build_parser, config_from_args
    return config_from_args(build_parser().parse_args(["--sdecoder", "reference_sdecoder", "--data", "d", "--out", "o",
                                                       *argv]))


def test_cli_takes_a_students_input_size_from_its_training_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"name": "hrnet_w18_small_v1", "input_size": 128}}))
    ckpt = run / "student.pt"
    cfg = _cli_config("--localizer", "hrnet_w18", "--localizer", f"hrnet_w18_small_v1={ckpt}")
    assert [m.input_size for m in cfg.localizers] == [None, 128]
    assert "hrnet_w18_small_v1 runs at input 128" in capsys.readouterr().err
    # an explicit size wins; a run of another architecture says nothing about this checkpoint
    cfg = _cli_config("--localizer", f"hrnet_w18_small_v1={ckpt}", "--input-size", "hrnet_w18_small_v1=96",
                      "--localizer", f"pidnet_s={ckpt}")
    assert [m.input_size for m in cfg.localizers] == [96, None]
    err = capsys.readouterr().err
    assert "hrnet_w18_small_v1 runs at" not in err  # the explicit size is the user's own choice: no note
    assert f"pidnet_s runs at the photo's own size (400): no run config.json or model card beside {ckpt}" in err


def test_cli_takes_the_input_size_from_the_card_beside_the_checkpoint(tmp_path):
    (tmp_path / "card.toml").write_text('name = "s"\narch = "pidnet_s"\nrole = "student"\ninput_size = 160\n'
                                        'checkpoint = "weights.pt"\n')
    cfg = _cli_config("--localizer", f"pidnet_s={tmp_path / 'weights.pt'}",
                      "--localizer", f"pidnet_s={tmp_path / 'other.pt'}")
    assert [m.input_size for m in cfg.localizers] == [160, None]


def test_cli_says_when_a_card_asks_for_the_flip_test_it_does_not_get(tmp_path, capsys):
    (tmp_path / "card.toml").write_text('name = "s"\narch = "pidnet_s"\nrole = "student"\ninput_size = 160\n'
                                        'flip_test = true\ncheckpoint = "weights.pt"\n')
    cfg = _cli_config("--localizer", f"p:pidnet_s={tmp_path / 'weights.pt'}")
    assert not cfg.localizers[0].flip_test
    assert "p runs without the flip test its card asks for (--flip-test p adds it)" in capsys.readouterr().err
    cfg = _cli_config("--localizer", f"p:pidnet_s={tmp_path / 'weights.pt'}", "--flip-test", "p")
    assert cfg.localizers[0].flip_test and "without the flip test" not in capsys.readouterr().err


def test_cli_labels_name_models_in_the_records(tmp_path, data_dir, capsys):
    from harness.zoo import build_localizer
    ckpts = []
    for seed in (0, 1):  # two checkpoints of one architecture, as when a teacher is compared with its last phase
        torch.manual_seed(seed)
        ckpts.append(tmp_path / f"w{seed}.pt")
        torch.save(build_localizer("hrnet_w18_small_v1", 64).backbone.state_dict(), ckpts[-1])
    common = ["--sdecoder", "reference_sdecoder", "--data", str(data_dir), "--tilts", "0", "--no-oracle",
              "--input-size", "hrnet_w18_small_v1=64", "--workers", "0", "--quiet"]
    twice = [f"hrnet_w18_small_v1={c}" for c in ckpts]
    assert eval_main(["--localizer", twice[0], "--localizer", twice[1], *common, "--out", str(tmp_path / "x")]) == 2
    assert "distinct label (--localizer LABEL:NAME=CKPT)" in capsys.readouterr().err

    code = eval_main(["--localizer", f"old:{twice[0]}", "--localizer", f"new:{twice[1]}", *common,
                      "--out", str(tmp_path / "run")])
    assert code == 0
    records = pd.read_csv(tmp_path / "run" / "records.csv")
    assert sorted(records["model"].unique()) == ["new", "old"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    shas = summary["provenance"]["checkpoints"]
    assert shas["old"] != shas["new"]


def test_cli_labels_parse_and_take_their_own_input_size():
    with pytest.raises(ValueError, match="LABEL:NAME=CHECKPOINT"):
        _cli_config("--localizer", ":hrnet_w18=t.pt")
    (spec,) = _cli_config("--localizer", "p3:hrnet_w18").localizers
    assert (spec.label, spec.arch, spec.ckpt) == ("p3", "hrnet_w18", None)
    # a size given for a label wins over one given for its architecture
    cfg = _cli_config("--localizer", "a:pidnet_s", "--localizer", "b:pidnet_s", "--input-size", "a=96")
    assert [m.input_size for m in cfg.localizers] == [96, None]
    cfg = _cli_config("--localizer", "a:pidnet_s", "--localizer", "b:pidnet_s", "--input-size", "a=96",
                      "--input-size", "pidnet_s=64")
    assert [m.input_size for m in cfg.localizers] == [96, 64]


def test_cli_flip_test_by_label_or_architecture(tmp_path):
    cfg = _cli_config("--localizer", "a:pidnet_s", "--localizer", "b:pidnet_s", "--flip-test", "a")
    assert [m.flip_test for m in cfg.localizers] == [True, False]
    cfg = _cli_config("--localizer", "a:pidnet_s", "--localizer", "hrnet_w18", "--flip-test", "pidnet_s")
    assert [m.flip_test for m in cfg.localizers] == [True, False]
    with pytest.raises(ValueError, match=r"--flip-test \['c'\]: no localizer"):
        _cli_config("--localizer", "a:pidnet_s", "--flip-test", "c")
    # --student-use-teacher-mask keeps every other field of the student
    cfg = _cli_config("--localizer", "pidnet_s", "--localizer", "s:hrnet_w18", "--flip-test", "s",
                      "--student-use-teacher-mask")
    assert (cfg.localizers[1].flip_test, cfg.localizers[1].mask_from) == (True, "pidnet_s")
    # --zoo: the card's flip_test, or the option's
    for name, flip in (("t", "true"), ("s", "false")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "card.toml").write_text(f'name = "{name}"\narch = "pidnet_s"\nrole = "student"\n'
                                                   f'flip_test = {flip}\n')
    assert [m.flip_test for m in _cli_config("--zoo", str(tmp_path)).localizers] == [False, True]
    assert [m.flip_test for m in _cli_config("--zoo", str(tmp_path), "--flip-test", "s").localizers] == [True, True]
