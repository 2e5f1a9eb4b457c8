"""A run with camera conditions through the gate (per condition, naming it) and the report (profile, tables, plots,
failure gallery); a tilt-only run keeps its gate entry and report as they were."""
from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from tiny_world import BrightLocalizer, CellSDecoder, make_dataset

from harness.outputs.gate import ModelScore, compare, read_baseline, read_results, write_baseline
from harness.outputs.profile import conditions_section, paired_difference
from harness.outputs.report import write_report
from harness.pipeline.batched import NamedLocalizer
from harness.run import EvalConfig, Models, ModelSpec, evaluate

CONDITIONS = (("blur", ((0.0,), (2.0,))), ("tilt+jpeg", ((0.0, 100.0), (5.0, 50.0))))


def _models() -> Models:
    return Models([NamedLocalizer("bright", "teacher", BrightLocalizer()),
                   NamedLocalizer("bright_s", "student", BrightLocalizer(bias=0.5, stride=4))],
                  CellSDecoder(), {"bright": None, "bright_s": None})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cond_out")
    data = make_dataset(root / "data", n_marked=2, n_clean=1)
    base = dict(localizers=(ModelSpec("bright", role="teacher"), ModelSpec("bright_s")), sdecoder=ModelSpec("cells"),
                data=str(data), chunk_size=2, mode="quick")
    evaluate(EvalConfig(**base, conditions=CONDITIONS), root / "cond", models=_models(), progress=False)
    evaluate(EvalConfig(**base, tilts=(0.0, 5.0)), root / "tilt", models=_models(), progress=False)
    return root


def test_gate_covers_each_condition_and_names_the_one_that_dropped(runs, tmp_path):
    results = read_results(runs / "cond")
    score = results.scores["bright_s"]
    assert [c for c, _ in score.worst_by_condition] == ["blur", "tilt+jpeg"]
    assert "blur=0,2 tilt+jpeg=0:100,5:50" == results.measurement.conditions
    baseline_path = tmp_path / "baseline.json"
    write_baseline(baseline_path, results)
    doc = json.loads(baseline_path.read_text())["modes"]["quick"]
    assert set(doc["models"]["bright_s"]["worst_by_condition"]) == {"blur", "tilt+jpeg"}
    baseline = read_baseline(baseline_path, "quick")
    assert baseline.scores == results.scores and baseline.measurement == results.measurement
    rows, ok = compare(baseline, results.scores, 0.5)
    assert ok and {r[-1] for r in rows} == {"ok"}

    worse = dict(score.worst_by_condition)
    worse["tilt+jpeg"] -= 2.0
    current = {**results.scores, "bright_s": replace(score, worst_by_condition=tuple(sorted(worse.items())))}
    rows, ok = compare(baseline, current, 0.5)
    assert not ok
    verdict = next(r[-1] for r in rows if r[0] == "bright_s")
    assert verdict == "REGRESSED at tilt+jpeg -2.00"  # the mean and the worst tilt did not move: the condition did
    missing = {**results.scores, "bright_s": replace(score, worst_by_condition=score.worst_by_condition[:1])}
    assert "tilt+jpeg missing" in next(r[-1] for r in compare(baseline, missing, 0.5)[0] if r[0] == "bright_s")
    # a tilt-only run measures something else than this baseline: the gate refuses to compare
    assert baseline.measurement.differences(read_results(runs / "tilt").measurement)


def test_tilt_only_gate_entries_keep_their_form(runs, tmp_path):
    results = read_results(runs / "tilt")
    assert all(s.worst_by_condition == () for s in results.scores.values())
    write_baseline(tmp_path / "b.json", results)
    doc = json.loads((tmp_path / "b.json").read_text())["modes"]["quick"]
    assert "conditions" not in doc["measurement"]
    assert set(doc["models"]["bright"]) == {"checkpoint_sha256", "mean_bit_acc", "min_tilt_bit_acc", "n_records"}
    assert isinstance(ModelScore(1.0, 1.0, 1).to_dict(), dict)


def test_report_holds_the_profile_tables_plots_and_gallery(runs, tmp_path):
    path = write_report(runs / "cond", tmp_path / "rep")
    text = path.read_text()
    assert "## Camera conditions: the robustness profile" in text and text.index("## Camera") < text.index(
        "## Provenance")
    assert "| model    | blur" in text and "### tilt+jpeg" in text and "![worst photo-conditions of bright_s]" in text
    for name in ("condition_blur.png", "condition_tilt_jpeg.png", "gallery_bright.png", "gallery_bright_s.png"):
        assert (tmp_path / "rep" / "plots" / name).stat().st_size > 1000, name
    again = write_report(runs / "cond", tmp_path / "rep2").read_text()
    assert again == text  # pure formatting: the same results, the same markdown
    assert conditions_section(runs / "tilt", tmp_path / "x") is None
    assert "Camera conditions" not in write_report(runs / "tilt", tmp_path / "rep3").read_text()


def test_paired_difference_is_over_photos():
    rows = []
    for sample, (s, t) in {"a": (0.9, 1.0), "b": (0.8, 1.0), "c": (1.0, 1.0)}.items():
        for model, acc in (("stu", s), ("tea", t)):
            rows.append(dict(model=model, sample_id=sample, condition="blur", severity="2", status="ok", bit_acc=acc,
                             watermarked=1, roi_source="predicted"))
    d, se, n = paired_difference(pd.DataFrame(rows), "stu", "tea", "blur", "2")
    assert n == 3 and d == pytest.approx(-10.0) and se == pytest.approx(10.0 / 3 ** 0.5)
