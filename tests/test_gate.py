"""The regression gate: what it compares (the summary's figures, per model and checkpoint), what it refuses to compare
(another measurement), and how it fails (exit 1) or cannot run (exit 2, the file named, never a traceback)."""
import json
import math

import pytest

from harness.gate import main as gate_main
from harness.outputs import gate
from harness.run.records import Record, to_csv
from harness.run.results import Provenance, Summary
from harness.run.summary import aggregate, read_records

ANGLES = (0.0, 3.0, -3.0)
SHA = {"teacher": "1" * 64, "student": "2" * 64}


def _write_run(root, accs_by_model, mode="quick", dataset="d" * 64, checkpoints=None, tilts=None, bn_mode="eval",
               sdecoder_sha=None):
    """An evaluation run folder: records.csv and the summary.json the evaluator writes for them (NaN: a failed row)."""
    records = []
    for model, accs in accs_by_model.items():
        for i, (tilt, acc) in enumerate(accs):
            failed = math.isnan(acc)
            common = dict(model=model, role="student", sample_id=f"s{i}", kind="random", watermarked=True,
                          tilt_deg=float(tilt), bn_mode=bn_mode, mode=mode)
            records.append(Record(**common, roi_source="predicted", status="failed" if failed else "ok",
                                  bit_acc=None if failed else acc))
            records.append(Record(**common, roi_source="oracle", status="ok", bit_acc=1.0))
    text = to_csv(records, ANGLES)
    checkpoints = {m: SHA.get(m) for m in accs_by_model} if checkpoints is None else checkpoints
    tilts = sorted({float(t) for accs in accs_by_model.values() for t, _ in accs}) if tilts is None else tilts
    prov = Provenance(config={"mode": mode, "bn_mode": bn_mode, "tilts": tilts, "angles": list(ANGLES),
                              "sdecoder": {"arch": "reference_sdecoder", "name": ""}},
                      git_commit="c0ffee", versions={"python": "3"}, device="cpu", torch_threads=1,
                      checkpoints={**checkpoints, "sdecoder:reference_sdecoder": sdecoder_sha},
                      dataset_hash=dataset, date="today")
    root.mkdir(parents=True, exist_ok=True)
    (root / "records.csv").write_text(text)
    (root / "summary.json").write_text(Summary(aggregate(read_records(text), 100), prov, {}).to_json())
    return root


GOOD = {"teacher": [(0, 1.0), (0, 0.98), (3, 0.99)], "student": [(0, 0.97), (0, 0.95), (3, 0.96)]}


def _gate(base, res, *extra) -> int:
    return gate_main(["--baseline", str(base), "--results", str(res), *extra])


@pytest.fixture
def baseline(tmp_path):
    _write_run(tmp_path / "base_run", GOOD)
    base = tmp_path / "baseline.json"
    assert _gate(base, tmp_path / "base_run", "--update") == 0
    return base


def test_update_stores_what_was_measured_and_how_then_passes(tmp_path, baseline, capsys):
    entry = json.loads(baseline.read_text())["modes"]["quick"]
    assert entry["models"]["student"] == {"checkpoint_sha256": SHA["student"], "mean_bit_acc": pytest.approx(96.0),
                                          "min_tilt_bit_acc": pytest.approx(96.0), "n_records": 3}
    assert entry["measurement"] == {"mode": "quick", "dataset_hash": "d" * 64, "sdecoder": "reference_sdecoder",
                                    "sdecoder_sha256": None, "tilts": [0.0, 3.0], "angles": list(ANGLES),
                                    "bn_mode": "eval"}
    assert _gate(baseline, tmp_path / "base_run") == 0
    out = capsys.readouterr().out
    assert "student" in out and f"same {SHA['student'][:12]}" in out and "PASS" in out


def test_regression_fails_and_tolerance_is_settable(tmp_path, baseline):
    worse = dict(GOOD, student=[(0, 0.96), (0, 0.94), (3, 0.96)])  # mean −0.67 points
    _write_run(tmp_path / "res", worse)
    assert _gate(baseline, tmp_path / "res") == 1
    assert _gate(baseline, tmp_path / "res", "--tolerance", "1.0") == 0


def test_a_drop_exactly_at_the_tolerance_passes(tmp_path):
    _write_run(tmp_path / "base_run", {"m": [(0, 0.98), (0, 0.98)]})
    base = tmp_path / "baseline.json"
    _gate(base, tmp_path / "base_run", "--update")
    _write_run(tmp_path / "res", {"m": [(0, 0.975), (0, 0.975)]})  # 97.5 against 98.0
    assert _gate(base, tmp_path / "res") == 0
    _write_run(tmp_path / "res", {"m": [(0, 0.974), (0, 0.974)]})
    assert _gate(base, tmp_path / "res") == 1
    # where float subtraction leaves noise (3.69 − 4.19 = −0.5000000000000004), the drop is still "at" 0.5
    rows, ok = gate.compare({"m": gate.ModelScore(4.19, 4.19, 2)}, {"m": gate.ModelScore(3.69, 3.69, 2)}, 0.5)
    assert ok and rows[0][-1] == "ok"


def test_a_collapse_at_one_tilt_fails_while_the_mean_drops_less_than_the_tolerance(tmp_path):
    before = {"m": [(t, 0.98) for t in (-3, -1, 1, 3) for _ in range(2)]}
    after = {"m": [(t, 0.968 if t == 3 else 0.98) for t in (-3, -1, 1, 3) for _ in range(2)]}  # −1.2 at +3°
    _write_run(tmp_path / "base_run", before)
    base = tmp_path / "baseline.json"
    _gate(base, tmp_path / "base_run", "--update")
    _write_run(tmp_path / "res", after)
    scores = gate.read_results(tmp_path / "res").scores["m"]
    assert 98.0 - scores.mean_bit_acc == pytest.approx(0.3)  # the mean alone would pass
    assert _gate(base, tmp_path / "res") == 1


def test_missing_model_fails(tmp_path, baseline):
    _write_run(tmp_path / "res", {"teacher": GOOD["teacher"]})
    assert _gate(baseline, tmp_path / "res") == 1


def test_a_new_model_fails_unless_allowed(tmp_path, baseline, capsys):
    _write_run(tmp_path / "res", {**GOOD, "student_v2": GOOD["student"]})
    assert _gate(baseline, tmp_path / "res") == 1
    assert "NEW" in capsys.readouterr().out
    assert _gate(baseline, tmp_path / "res", "--allow-new") == 0
    assert "new (allowed)" in capsys.readouterr().out


def test_fewer_records_than_the_baseline_fail_as_incomplete(tmp_path, baseline, capsys):
    _write_run(tmp_path / "res", {"teacher": GOOD["teacher"], "student": GOOD["student"][:2]})  # same figures
    assert _gate(baseline, tmp_path / "res") == 1
    assert "INCOMPLETE" in capsys.readouterr().out


def test_a_changed_localizer_checkpoint_is_judged_with_both_sha256_shown(tmp_path, baseline, capsys):
    _write_run(tmp_path / "res", GOOD, checkpoints={"teacher": SHA["teacher"], "student": "3" * 64})
    assert _gate(baseline, tmp_path / "res") == 0
    assert f"{SHA['student'][:12]} → {'3' * 12}" in capsys.readouterr().out
    _write_run(tmp_path / "res", dict(GOOD, student=[(0, 0.9)] * 3), checkpoints={**SHA, "student": "3" * 64})
    assert _gate(baseline, tmp_path / "res") == 1


@pytest.mark.parametrize("change, what", [
    (dict(dataset="e" * 64), "dataset_hash: baseline dddd"),
    (dict(tilts=[0.0, 3.0, 5.0]), "tilts: baseline [0, 3], results [0, 3, 5]"),
    (dict(bn_mode="demo"), "bn_mode: baseline eval, results demo"),
    (dict(sdecoder_sha="f" * 64), "sdecoder_sha256: baseline none (built-in weights), results ffff"),
])
def test_another_measurement_is_refused_saying_what_differs(tmp_path, baseline, capsys, change, what):
    _write_run(tmp_path / "res", GOOD, **change)
    assert _gate(baseline, tmp_path / "res") == 2
    err = capsys.readouterr().err
    assert "refused" in err and what in err


def test_failed_samples_count_as_zero(tmp_path):
    _write_run(tmp_path / "res", {"m": [(0, 1.0), (0, float("nan"))]})
    assert gate.read_results(tmp_path / "res").scores["m"].mean_bit_acc == pytest.approx(50.0)


def test_truncated_or_malformed_results_exit_2_naming_the_file(tmp_path, baseline, capsys):
    res = _write_run(tmp_path / "res", GOOD)
    records, summary = res / "records.csv", res / "summary.json"
    text = records.read_text()
    for broken, path in [(text[: len(text) - 40], records),  # cut in the middle of a row
                         (text[: text.rindex("\n", 0, len(text) - 1) + 1], records)]:  # a whole row lost
        records.write_text(broken)
        assert _gate(baseline, res) == 2
        assert str(path) in capsys.readouterr().err
    records.write_text(text)
    good_summary = summary.read_text()
    summary.write_text(good_summary[: len(good_summary) // 2])
    assert _gate(baseline, res) == 2
    assert str(summary) in capsys.readouterr().err
    doc = json.loads(good_summary)
    doc["provenance"]["config"].pop("mode")
    summary.write_text(json.dumps(doc))
    assert _gate(baseline, res) == 2
    err = capsys.readouterr().err
    assert str(summary) in err and "provenance.config.mode" in err
    summary.unlink()
    assert _gate(baseline, res) == 2
    assert "summary.json is missing" in capsys.readouterr().err


def test_a_wrong_typed_or_missing_baseline_entry_exits_2_naming_the_file(tmp_path, baseline, capsys):
    _write_run(tmp_path / "res", GOOD)
    doc = json.loads(baseline.read_text())
    doc["modes"]["quick"]["models"]["student"]["mean_bit_acc"] = "96.0"
    baseline.write_text(json.dumps(doc))
    assert _gate(baseline, tmp_path / "res") == 2
    err = capsys.readouterr().err
    assert str(baseline) in err and "modes.quick.models.student.mean_bit_acc: expected a number" in err
    doc["modes"] = {"full": doc["modes"]["quick"]}
    baseline.write_text(json.dumps(doc))
    assert _gate(baseline, tmp_path / "res") == 2
    assert "no entry for mode 'quick' (it has: full)" in capsys.readouterr().err


def test_missing_or_corrupt_inputs_exit_2(tmp_path, capsys):
    base = tmp_path / "baseline.json"
    assert gate_main(["--baseline", str(base), "--results", str(tmp_path / "none")]) == 2
    _write_run(tmp_path / "res", GOOD)
    assert gate_main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 2
    assert "baseline not found" in capsys.readouterr().err
    base.write_text("{not json")
    assert gate_main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 2
    assert "corrupt baseline" in capsys.readouterr().err
    (tmp_path / "res" / "records.csv").write_text("model,bit_acc\nx,1\n")
    assert gate_main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 2
    assert "lacks columns" in capsys.readouterr().err


def test_a_baseline_without_measurement_is_compared_with_a_warning(tmp_path, capsys):
    _write_run(tmp_path / "res", GOOD)
    legacy = {"modes": {"quick": {"models": {"teacher": {"mean_bit_acc": 99.0, "min_tilt_bit_acc": 98.0,
                                                         "n_records": 3},
                                             "student": {"mean_bit_acc": 96.0, "min_tilt_bit_acc": 96.0,
                                                         "n_records": 3}}}}}
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(legacy))
    assert _gate(base, tmp_path / "res") == 0
    assert "records no measurement" in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        gate_main(["--help"])
    out = capsys.readouterr().out
    for default in ("reports/baseline.json", "reports/results/quick", "0.5", "Exit codes"):
        assert default in out
