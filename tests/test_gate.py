import json

import pandas as pd
import pytest

from harness import gate


def _write_records(root, accs_by_model, mode="quick"):
    rows = []
    for model, accs in accs_by_model.items():
        for i, (tilt, acc) in enumerate(accs):
            rows.append(dict(model=model, sample_id=f"s{i}", tilt_deg=tilt, roi_source="predicted",
                             bit_acc=acc, mode=mode))
            rows.append(dict(model=model, sample_id=f"s{i}", tilt_deg=tilt, roi_source="oracle",
                             bit_acc=1.0, mode=mode))
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "records.csv", index=False)


GOOD = {"teacher": [(0, 1.0), (0, 0.98), (3, 0.99)], "student": [(0, 0.97), (0, 0.95), (3, 0.96)]}


def test_update_then_pass(tmp_path, capsys):
    _write_records(tmp_path / "res", GOOD)
    base = tmp_path / "baseline.json"
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "res"), "--update"]) == 0
    doc = json.loads(base.read_text())
    assert doc["modes"]["quick"]["models"]["student"]["mean_bit_acc"] == pytest.approx(96.0)
    assert doc["modes"]["quick"]["models"]["student"]["min_tilt_bit_acc"] == pytest.approx(96.0)
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 0
    assert "student" in capsys.readouterr().out


def test_regression_fails_and_tolerance_is_settable(tmp_path):
    _write_records(tmp_path / "res", GOOD)
    base = tmp_path / "baseline.json"
    gate.main(["--baseline", str(base), "--results", str(tmp_path / "res"), "--update"])
    worse = dict(GOOD, student=[(0, 0.96), (0, 0.94), (3, 0.96)])  # mean −0.67 points
    _write_records(tmp_path / "res", worse)
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 1
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "res"), "--tolerance", "1.0"]) == 0


def test_missing_model_fails(tmp_path):
    _write_records(tmp_path / "res", GOOD)
    base = tmp_path / "baseline.json"
    gate.main(["--baseline", str(base), "--results", str(tmp_path / "res"), "--update"])
    _write_records(tmp_path / "res", {"teacher": GOOD["teacher"]})
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 1


def test_failed_samples_count_as_zero(tmp_path):
    _write_records(tmp_path / "res", {"m": [(0, 1.0), (0, float("nan"))]})
    _, scores = gate.read_results(tmp_path / "res")
    assert scores["m"].mean_bit_acc == pytest.approx(50.0)


def test_missing_or_corrupt_inputs_exit_2(tmp_path, capsys):
    base = tmp_path / "baseline.json"
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "none")]) == 2
    _write_records(tmp_path / "res", GOOD)
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 2
    assert "baseline not found" in capsys.readouterr().err
    base.write_text("{not json")
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 2
    assert "corrupt baseline" in capsys.readouterr().err
    (tmp_path / "res" / "records.csv").write_text("model,bit_acc\nx,1\n")
    assert gate.main(["--baseline", str(base), "--results", str(tmp_path / "res")]) == 2
