"""The report: every column the users paste into their notes, byte-identical markdown from the same results, clear
errors when results are missing."""
from __future__ import annotations

import json

import pytest
import torch

from harness import report
from harness.evaluate import EvalConfig, ModelSpec, Models, evaluate
from harness.pipeline.batched import NamedLocalizer
from tiny_world import BrightLocalizer, CellSDecoder, make_dataset


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
                       "input_gmacs": 0.07},
            "field:hrnet_w48": {"arch": "hrnet_w48", "role": "field", "params": 65_846_401, "tensors": 1839,
                                "conv_gmacs": 57.37, "total_gmacs": 57.62, "gflops": 115.24, "fp32_mib": 251.18}}
    (folder / "cost.json").write_text(json.dumps({"input_hw": [400, 400], "models": cost}))
    (folder / "latency.json").write_text(json.dumps({"bright": {"p50_ms": 12.5, "p95_ms": 14.0}}))
    return folder


def test_report_has_the_columns_and_is_byte_identical(results, tmp_path):
    first = report.write_report(results, tmp_path / "a" / "REPORT.md").read_text()
    second = report.write_report(results, tmp_path / "b" / "REPORT.md").read_text()
    assert first == second
    assert (tmp_path / "a" / "plots" / "bit_acc_vs_tilt.png").read_bytes() == \
        (tmp_path / "b" / "plots" / "bit_acc_vs_tilt.png").read_bytes()
    for column in ("role", "params (M)", "tensors", "GMACs@400", "GFLOPs@400 (2×MACs)", "GMACs@input", "fp32 MiB",
                   "latency p50 / p95 ms", "bit acc % (student/teacher)", "−5°~5° (min–max) %", "word acc %",
                   "TPR@FPR 1e-3 %", "mean IoU"):
        assert column in first, column
    assert "| bright_s " in first and "/" in first.split("| bright_s ")[1].split("\n")[0]  # student/teacher
    assert "12.5 / 14.0" in first
    assert "| 1.10 " in first and "| 0.07 " in first  # GMACs at 400 and at the model's own input
    assert "| 96 + flip " in first  # the flip test reads the photo twice: the input column says so
    assert "oracle (GT mask ROI)" in first and "Provenance" in first and "hrnet_w48" in first


def test_key_results_say_what_a_student_loses_at_its_worst_tilt():
    def entry(model, role, mean, per_tilt):
        return {"model": model, "role": role, "roi_source": "predicted", "bit_acc": {"mean": mean, "ci95": 0.01},
                "tilt_min": min(per_tilt.values()), "tilt_max": max(per_tilt.values()), "per_tilt": per_tilt}

    summary = {"results": [entry("t", "teacher", 0.95, {"-5": 0.94, "0": 0.96}),
                           entry("s", "student", 0.93, {"-5": 0.90, "0": 0.96}),
                           entry("u", "student", 0.96, {"-5": 0.95, "0": 0.97})]}
    table = report.key_results(report.Results(None, summary, {}, {}))
    assert "points below the teacher (mean)" in table and "worst tilt (points below)" in table
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[5:7]] for line in table.splitlines()[2:]}
    assert rows == {"t": ["—", "—"], "s": ["2.00", "4.00 at -5°"], "u": ["-1.00", "-1.00 at -5°"]}
    # a student measured at other tilts than the teacher has no worst tilt to report
    assert report._loss_to_teacher(entry("v", "student", 0.95, {"3": 0.95}), summary["results"][0]) == ["0.00", "—"]


def test_missing_results_exit_2(tmp_path, capsys):
    assert report.main(["--results", str(tmp_path), "--out", str(tmp_path / "R.md")]) == 2
    assert "missing results file" in capsys.readouterr().err
