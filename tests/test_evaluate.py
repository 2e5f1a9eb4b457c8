"""Evaluation runs: resume gives identical records, bad inputs are recorded, pre-run errors, summary figures, CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from tiny_world import BrightLocalizer, CellSDecoder, NanLocalizer, TwoChannelLocalizer, make_dataset

import harness.run.summary as summary_module
from harness.eval import main as eval_main
from harness.pipeline.batched import BatchedEvaluator, NamedLocalizer
from harness.run import EvalConfig, EvalError, Models, ModelSpec, evaluate
from harness.run.options import parse_tilts
from harness.run.summary import aggregate

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
    assert whole.results[0].model == "bright" and whole.results[0].n_clean == len(TILTS)


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
    student = result.row("bright_s")
    assert student.roi_empty_rate == pytest.approx(4 / 5) and student.failed == 1
    assert student.bit_acc.mean == 0.0  # rows without bits count as 0, as the gate counts them
    teacher = result.row("bright")
    assert teacher.failed == len(nan_rows) + 1 and teacher.failures[0].reason


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
    assert entry.bit_acc.mean == _approx((1.0 + 0.7 + 0.64 + 0.0) / 4)
    assert entry.per_tilt == {"0": _approx(0.85), "1": _approx(0.32)}
    assert entry.tilt_min == _approx(0.32) and entry.tilt_max == _approx(0.85)
    assert entry.bit_acc_ok == _approx((1.0 + 0.7 + 0.64) / 3)
    assert entry.word_acc == _approx(0.25)
    det = {d.fpr: d for d in entry.detection}
    assert det[1e-2].threshold_bits == 63 and det[1e-2].tpr == _approx(0.75)
    assert det[1e-3].threshold_bits == 66 and det[1e-3].tpr == _approx(0.5)
    assert det[1e-3].empirical_fpr == _approx(0.5) and det[1e-3].n_clean == 2
    assert det[1e-6].threshold_bits == 74 and det[1e-6].empirical_fpr == 0.0
    assert entry.roi_empty_rate == _approx(1 / 6)
    assert entry.mask_iou == _approx((0.9 + 0.7 + 0.8 + 0.0) / 4)


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
    from harness.models import build_localizer
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


@pytest.mark.parametrize("option", ["--tilts", "--angles", "--fpr-secret", "--data", "--out", "--mode", "--roi-fn"])
@pytest.mark.parametrize("value", ["", "  "])
def test_cli_refuses_an_empty_option_value_by_name(tmp_path, data_dir, capsys, option, value):
    argv = {"--localizer": "bright", "--sdecoder": "cells", "--data": str(data_dir), "--out": str(tmp_path / "o")}
    argv[option] = value
    code = eval_main([a for k, v in argv.items() for a in (k, v)] + ["--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"{option} is empty" in err  # never the default sweep, never a run in the current folder
    assert not (tmp_path / "o").exists()


def test_parse_tilts_names_the_option_and_refuses_empty_items():
    for bad in ("", " ", "1,,2", "1,", ","):
        with pytest.raises(ValueError, match="--angles"):
            parse_tilts(bad, "--angles")


def test_an_empty_fpr_secret_is_refused(data_dir, tmp_path):
    with pytest.raises(EvalError, match="fpr_secret is empty"):
        evaluate(_config(data_dir, fpr_secret=""), tmp_path / "out", models=_models(), progress=False)


# ------------------------------------------------------------------------------------ photos without a mask (n/a)


def _without_masks(data_dir, out, ids: set[str]):
    """A copy of the dataset whose photos `ids` lose their ground-truth mask."""
    import csv

    out.mkdir()
    for f in data_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        if row["id"] in ids:
            row["mask_file"] = ""
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_photos_without_a_mask_have_no_oracle_row_and_no_iou(data_dir, tmp_path):
    whole = evaluate(_config(data_dir, tilts=(0.0,)), tmp_path / "all", models=_models(), progress=False)
    partial = _without_masks(data_dir, tmp_path / "data", {"s001"})
    result = evaluate(_config(partial, tilts=(0.0,)), tmp_path / "some", models=_models(), progress=False)
    frame = pd.read_csv(tmp_path / "some" / "records.csv", dtype={"sample_id": str}, keep_default_na=False)
    oracle = frame[frame["model"] == "oracle"]
    assert "s001" not in set(oracle["sample_id"]) and (oracle["status"] == "ok").all()  # no failed 0 % row
    assert set(frame.loc[(frame["sample_id"] == "s001"), "iou"]) == {""}  # IoU: n/a, not 0
    # photos with masks: their records are exactly those of the run where every photo has one
    lines_all = (tmp_path / "all" / "records.csv").read_text().splitlines()
    lines_some = (tmp_path / "some" / "records.csv").read_text().splitlines()
    assert [x for x in lines_all if ",s001," not in x] == [x for x in lines_some if ",s001," not in x]
    row = result.row("oracle", "oracle")
    assert (row.n_photos, row.n_watermarked) == (4, 3)  # the oracle counts only the photos with a mask
    assert whole.row("oracle", "oracle").n_photos == 5


def test_no_mask_at_all_gives_no_oracle_entry_and_no_iou(data_dir, tmp_path):
    bare = _without_masks(data_dir, tmp_path / "data", {f"s{i:03d}" for i in range(5)})
    result = evaluate(_config(bare, tilts=(0.0,)), tmp_path / "run", models=_models(), progress=False)
    assert result.row("oracle", "oracle") is None
    assert result.row("bright").mask_iou is None
    doc = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert doc["results"][0]["mask_iou"] is None  # null in JSON: n/a


# ------------------------------------------------------------------------------------------- the results contract


def test_summary_json_round_trips_byte_for_byte_and_names_malformed_keys(data_dir, tmp_path):
    from harness.run.results import ResultsFormatError, read_summary

    evaluate(_config(data_dir, tilts=(0.0,)), tmp_path / "run", models=_models(), progress=False)
    path = tmp_path / "run" / "summary.json"
    text = path.read_text()
    assert read_summary(path).to_json() == text
    doc = json.loads(text)
    assert list(doc["results"][0]) == ["model", "role", "roi_source", "n_rows", "n_watermarked", "n_clean",
                                       "n_photos", "bit_acc", "bit_acc_ok", "per_tilt", "tilt_min", "tilt_max",
                                       "word_acc", "blind_bit_acc", "detection", "mask_iou", "roi_empty_rate",
                                       "failed", "failures"]
    for mutate, where in [(lambda d: d["results"][1]["bit_acc"].update(mean="0.9"), "results[1].bit_acc.mean"),
                          (lambda d: d["results"][0].pop("n_rows"), "results[0].n_rows"),
                          (lambda d: d["provenance"]["config"].pop("tilts"), "provenance.config.tilts"),
                          (lambda d: d["provenance"].update(dataset_hash=7), "provenance.dataset_hash")]:
        bad = json.loads(text)
        mutate(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(ResultsFormatError, match=rf"{path}.*{where.replace('[', '.').replace(']', '.')}"):
            read_summary(path)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ResultsFormatError, match=f"{path}: not valid JSON"):
        read_summary(path)


def test_the_counts_0_rule_is_one_function():
    from harness.run.results import counted_bit_acc

    assert counted_bit_acc("ok", 0.97) == 0.97
    assert counted_bit_acc("roi_empty", None) == 0.0 and counted_bit_acc("failed", float("nan")) == 0.0
    status = pd.Series(["ok", "roi_empty", "failed", "ok"])
    values = pd.Series([0.9, np.nan, np.nan, 0.5])
    assert counted_bit_acc(status, values).tolist() == [0.9, 0.0, 0.0, 0.5]


def test_distill_compare_refuses_empty_tilts_by_name(tmp_path, capsys):
    from harness.distill.__main__ import main as distill_main

    code = distill_main(["compare", str(tmp_path), "--data", str(tmp_path), "--tilts", " ",
                         "--out", str(tmp_path / "o")])
    assert code == 2 and "--tilts is empty" in capsys.readouterr().err
