"""The report: every column the users paste into their notes, byte-identical markdown from the same results, clear
errors when results are missing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_world import BrightLocalizer, CellSDecoder, make_dataset

from harness.outputs import report
from harness.pipeline.batched import NamedLocalizer
from harness.report import main as report_main
from harness.run import EvalConfig, Models, ModelSpec, evaluate
from harness.run.results import BitAcc, Provenance, Summary, SummaryRow


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    data = make_dataset(root / "data", n_marked=3, n_clean=1)
    cfg = EvalConfig(localizers=(ModelSpec("bright", role="teacher"), ModelSpec("bright_s")),
                     sdecoder=ModelSpec("cells"), data=str(data), tilts=(-2.0, 0.0), mode="quick")
    models = Models([NamedLocalizer("bright", "teacher", BrightLocalizer()),
                     NamedLocalizer("bright_s", "student", BrightLocalizer(bias=0.5, stride=4))],
                    CellSDecoder(), {"bright": None, "bright_s": None})
    folder = root / "results"
    evaluate(cfg, folder / "robustness", models=models, progress=False)
    cost = {"bright": {"arch": "bright", "role": "teacher", "params": 2_000_000, "tensors": 12, "conv_gmacs": 1.0,
                       "total_gmacs": 1.1, "gflops": 2.2, "fp32_mib": 7.6, "input_size": 96, "flip_test": True,
                       "input_gmacs": 0.07, "checkpoint_sha256": None},
            "field:hrnet_w48": {"arch": "hrnet_w48", "role": "field", "params": 65_846_401, "tensors": 1839,
                                "conv_gmacs": 57.37, "total_gmacs": 57.62, "gflops": 115.24, "fp32_mib": 251.18}}
    (folder / "cost.json").write_text(json.dumps({"input_hw": [400, 400], "models": cost}))
    (folder / "latency.json").write_text(json.dumps({"bright": {"p50_ms": 12.5, "p95_ms": 14.0,
                                                                "checkpoint_sha256": None}}))
    return folder


def test_report_has_the_columns_and_is_byte_identical(results, tmp_path):
    first = report.write_report(results, tmp_path / "a").read_text()
    second = report.write_report(results, tmp_path / "b").read_text()
    assert first == second
    assert (tmp_path / "a" / "plots" / "bit_acc_vs_tilt.png").read_bytes() == \
        (tmp_path / "b" / "plots" / "bit_acc_vs_tilt.png").read_bytes()
    # every metric's heading carries its direction, from harness.core.metrics.METRICS
    for column in ("role", "params (M) ↓", "tensors", "GMACs@400", "GFLOPs@400 (2×MACs) ↓", "GMACs@input", "fp32 MiB",
                   "latency p50 / p95 ms ↓", "bit acc % ↑ (student/teacher)", "−2°~0° (min–max) % ↑", "word acc % ↑",
                   "TPR@FPR 1e-3 % ↑", "mean IoU ↑"):
        assert column in first, column
    assert "| bright_s " in first and "/" in first.split("| bright_s ")[1].split("\n")[0]  # student/teacher
    assert "12.5 / 14.0" in first
    assert "| 1.10 " in first and "| 0.07 " in first  # GMACs at 400 and at the model's own input
    assert "| 96 + flip " in first  # the flip test reads the photo twice: the input column says so
    assert "oracle (GT mask ROI)" in first and "Provenance" in first and "hrnet_w48" in first


def _row(model, role, mean, per_tilt, roi_source="predicted", n=4, iou=0.9, arch=None) -> SummaryRow:
    return SummaryRow(model=model, role=role, roi_source=roi_source, n_rows=n, n_watermarked=n, n_clean=0,
                      n_photos=n, bit_acc=BitAcc(mean, 0.01), bit_acc_ok=mean, per_tilt=per_tilt,
                      tilt_min=min(per_tilt.values()), tilt_max=max(per_tilt.values()), word_acc=0.5,
                      blind_bit_acc=mean, detection=(), mask_iou=iou, roi_empty_rate=0.0, failed=0)


def _results(rows, tilts=(-5.0, 0.0), checkpoints=None, cost=None, latency=None) -> report.Results:
    checkpoints = {r.model: None for r in rows} if checkpoints is None else checkpoints
    prov = Provenance(config={"mode": "custom", "bn_mode": "eval", "tilts": list(tilts), "angles": [0.0, 3.0, -3.0],
                              "sdecoder": {"arch": "cells", "name": ""}},
                      git_commit="c0ffee", versions={}, device="cpu", torch_threads=1, checkpoints=checkpoints,
                      dataset_hash="d" * 64, date="today")
    return report.Results(Path("r"), Summary(list(rows), prov, {}), cost or {}, latency or {})


def test_key_results_show_student_minus_teacher_signed_and_never_call_the_teacher_a_student():
    rows = [_row("t", "teacher", 0.95, {"-5": 0.94, "0": 0.96}),
            _row("s", "student", 0.93, {"-5": 0.90, "0": 0.96}),
            _row("u", "student", 0.96, {"-5": 0.95, "0": 0.97})]
    table = report.key_results(_results(rows))
    assert "student − teacher (points) ↑, mean" in table and "points below" not in table
    body = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[5:7]] for line in table.splitlines()[2:]}
    # a student above its teacher reads as a gain (+), one below as a loss (−), at its worst tilt against the teacher
    assert body == {"t": ["—", "—"], "s": ["-2.00", "-4.00 at -5°"], "u": ["+1.00", "+1.00 at -5°"]}
    # a student measured at other tilts than the teacher has no worst tilt to report
    assert report._against_teacher(_row("v", "student", 0.95, {"3": 0.95}), rows[0]) == ["+0.00", "—"]
    # the teacher reads best and shares the students' architecture: it is the teacher row, never a best student
    cost = {m: {"arch": "hrnet", "checkpoint_sha256": None} for m in ("t", "s", "u")}
    top = [_row("t", "teacher", 0.99, {"-5": 0.99, "0": 0.99})] + rows[1:]
    table = report.key_results(_results(top, cost=cost))
    roles = [(line.split("|")[1].strip(), line.split("|")[2].strip()) for line in table.splitlines()[2:]]
    assert roles == [("t", "teacher"), ("u", "student")]


def test_headings_name_the_sweep_that_ran(results, tmp_path):
    narrow = _results([_row("t", "teacher", 0.95, {"-3": 0.94, "3": 0.96})], tilts=(-3.0, -1.0, 1.0, 3.0))
    assert report.sweep_heading(narrow) == "−3°~3° (min–max) % ↑"
    text = report.write_report(results, tmp_path).read_text()
    assert "−2°~0° (min–max) % ↑" in text and "−5°~5°" not in text  # the fixture's run covered −2 and 0
    assert "searched at 0/+3/−3°" in text


def test_cost_and_latency_join_only_the_evaluated_checkpoint():
    rows = [_row("t", "teacher", 0.95, {"0": 0.95}), _row("s", "student", 0.93, {"0": 0.93})]
    cost = {"t": {"arch": "hrnet_w18", "params": 9_640_000, "gflops": 22.77, "checkpoint_sha256": "a" * 64},
            "s": {"arch": "pidnet_s", "params": 7_620_000, "gflops": 7.37, "checkpoint_sha256": "b" * 64}}
    latency = {"t": {"p50_ms": 129.2, "p95_ms": 140.7, "checkpoint_sha256": "a" * 64},
               "s": {"p50_ms": 28.5, "p95_ms": 30.6}}  # written before latency.json recorded a checkpoint
    res = _results(rows, tilts=(0.0,), checkpoints={"t": "a" * 64, "s": "c" * 64}, cost=cost, latency=latency)
    table = report.main_table(res)
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "9.64" in lines["t"] and "129.2 / 140.7" in lines["t"]
    assert "7.62" not in lines["s"] and "pidnet_s" not in lines["s"] and "28.5" not in lines["s"]
    assert f"cost.json: `s` left out: it measured checkpoint `{'b' * 12}…`, the accuracy is of `{'c' * 12}…`" in table
    assert "latency.json: `s` left out: it records no checkpoint sha256" in table
    assert "left out" not in report.main_table(_results(rows[:1], checkpoints={"t": "a" * 64}, cost=cost))


def test_no_ground_truth_mask_reads_n_a_not_zero():
    rows = [_row("t", "teacher", 0.95, {"0": 0.95}, iou=None), _row("s", "student", 0.93, {"0": 0.93}, iou=None)]
    table = report.ablation_table(_results(rows))
    body = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:4]]
    assert body[0] == ["t", "95.00", "n/a", "n/a", "95.00", "0.00", "n/a"]
    assert "-" not in body[1][3] and "n/a" in report.main_table(_results(rows))
    # the oracle read only the photos with a mask: no loss over other photos
    partial = rows + [_row("oracle", "oracle", 0.99, {"0": 0.99}, roi_source="oracle", n=3)]
    table = report.ablation_table(_results(partial))
    assert "| 99.00 " in table and "| 4.00 " not in table and "it read 3 watermarked rows" in table
    full = rows + [_row("oracle", "oracle", 0.99, {"0": 0.99}, roi_source="oracle", n=4)]
    assert "| 4.00 " in report.ablation_table(_results(full))


def test_an_eval_run_folder_reports_into_its_own_folder(tmp_path, results, capsys):
    run = results / "robustness"  # an evaluation run folder: summary.json and records.csv directly in it
    assert report_main(["--results", str(run)]) == 0
    assert (run / "report" / "REPORT.md").is_file() and (run / "report" / "plots" / "bit_acc_vs_tilt.png").is_file()
    assert report_main(["--results", str(results), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert "12.5 / 14.0" in text  # the suites folder: cost and latency joined
    assert "default: RESULTS/report" in _help(capsys)


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        report_main(["--help"])
    return capsys.readouterr().out


def test_malformed_summary_exits_2_naming_the_file_and_key(tmp_path, results, capsys):
    import shutil

    shutil.copytree(results / "robustness", tmp_path / "run")
    path = tmp_path / "run" / "summary.json"
    doc = json.loads(path.read_text())
    doc["results"][0]["tilt_min"] = "low"
    path.write_text(json.dumps(doc))
    assert report_main(["--results", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "results[0].tilt_min" in err
    path.write_text(path.read_text()[:100])
    assert report_main(["--results", str(tmp_path / "run")]) == 2
    assert str(path) in capsys.readouterr().err


def test_missing_results_exit_2(tmp_path, capsys):
    assert report_main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "missing results file" in capsys.readouterr().err
