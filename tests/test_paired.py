"""Photo-by-photo comparison of two readings: the paired difference, its standard error, and the inputs it refuses."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.outputs import paired
from harness.paired import main as paired_main
from harness.run.records import Record, to_csv

ANGLES = (0.0, 3.0, -3.0)


def _record(model, sample_id, tilt, bit_acc, watermarked=True, status="ok", iou=0.9) -> Record:
    return Record(model=model, role="student", sample_id=sample_id, kind="random", watermarked=watermarked,
                  tilt_deg=tilt, roi_source="predicted", bn_mode="eval", mode="full", status=status,
                  bit_acc=bit_acc, iou=iou)


def _write(run, accs: dict[str, dict[str, list[float]]], tilts=(-1.0, 0.0, 1.0)):
    """accs: model → photo → bit accuracy per tilt (NaN: the row failed)."""
    records = []
    for model, photos in accs.items():
        for photo, values in photos.items():
            for tilt, acc in zip(tilts, values):
                failed = math.isnan(acc)
                records.append(_record(model, photo, tilt, None if failed else acc,
                                       status="failed" if failed else "ok"))
        records.append(_record(model, "clean/c0", 0.0, 0.5, watermarked=False))  # never compared
    run.mkdir(parents=True, exist_ok=True)
    (run / "records.csv").write_text(to_csv(records, ANGLES))
    return run


def _compare(a, b) -> paired.Paired:
    side_a, rows_a = paired.load_side(paired.parse_side(a))
    side_b, rows_b = paired.load_side(paired.parse_side(b))
    return paired.pair(side_a, rows_a, side_b, rows_b)


def test_difference_and_standard_error_are_over_photos(tmp_path):
    old = {"p1": [0.9, 0.9, 0.9], "p2": [0.8, 0.8, 0.8], "p3": [1.0, 1.0, 1.0]}
    new = {"p1": [1.0, 1.0, 1.0], "p2": [0.8, 0.9, 0.7], "p3": [0.94, 0.94, 0.94]}
    run = _write(tmp_path / "run", {"old": old, "new": new})
    p = _compare(f"{run}:old", f"{run}:new")
    d = np.array([10.0, 0.0, -6.0])  # per photo, mean over tilts, in points
    mean, se, half = p.difference()
    assert p.n_photos == 3
    assert mean == pytest.approx(d.mean())
    assert se == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    assert half > 2 * se  # Student t with 2 degrees of freedom
    assert p.per_point.loc["+0°", "d"] == pytest.approx((10 + 10 - 6) / 3)
    text = paired.render(p, top=2)
    assert "+1.33 points" in text and "up by more than 0.5 points: 1; down: 1" in text
    assert "p1" in text and "p3" in text and "p2" not in text.split("moved most")[1]


def test_failed_rows_count_as_zero_and_only_shared_photos_and_tilts_are_compared(tmp_path):
    a = _write(tmp_path / "a", {"m": {"p1": [1.0, 1.0, 1.0], "p2": [1.0, 1.0, 1.0], "only_a": [1.0, 1.0, 1.0]}})
    b = _write(tmp_path / "b", {"m": {"p1": [1.0, float("nan")], "p2": [1.0, 1.0]}}, tilts=(0.0, 1.0))
    p = _compare(str(a), str(b))  # one model per run: the name may be left out
    assert (p.only_a, p.only_b) == (1, 0)
    assert list(p.per_point.index) == ["+0°", "+1°"]
    assert p.per_photo.loc["p1", "b"] == pytest.approx(50.0)
    assert p.difference()[0] == pytest.approx(-25.0)
    assert "Left out: 1 photos only A read" in paired.render(p, top=3)


def test_bad_sides_exit_2_naming_what_is_wrong(tmp_path, capsys):
    run = _write(tmp_path / "run", {"teacher": {"p1": [1.0] * 3}, "student": {"p1": [0.9] * 3}})
    other = _write(tmp_path / "other", {"teacher": {"q1": [1.0] * 3}})
    cases = [([str(tmp_path / "none"), f"{run}:teacher"], "no records.csv in"),
             ([str(run), f"{run}:teacher"], "name one as RUN:MODEL"),
             ([f"{run}:techer", f"{run}:teacher"], "its models: student, teacher"),
             ([f"{run}:teacher", f"{other}:teacher"], "share no watermarked photo")]
    for argv, message in cases:
        assert paired_main(argv) == 2
        assert message in capsys.readouterr().err


def test_cli_prints_the_three_tables(tmp_path, capsys):
    run = _write(tmp_path / "run", {"teacher": {"p1": [1.0] * 3, "p2": [0.9] * 3},
                                    "student": {"p1": [0.95] * 3, "p2": [0.9] * 3}})
    assert paired_main([f"{run}:teacher", f"{run}:student", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "B − A: **-2.50 points** over 2 photos" in out
    assert "| tilt or condition" in out and "| photo" in out
    assert "| p1 " in out and "| p2 " not in out  # --top 1


def test_empty_rois_count_as_zero_through_the_shared_rule_and_missing_iou_reads_n_a(tmp_path):
    records = [_record("a", "p1", 0.0, 1.0), _record("a", "p2", 0.0, 1.0, iou=None),
               _record("b", "p1", 0.0, None, status="roi_empty", iou=0.0),
               _record("b", "p2", 0.0, 1.0, iou=None)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.csv").write_text(to_csv(records, ANGLES))
    p = _compare(f"{run}:a", f"{run}:b")
    assert p.per_photo.loc["p1", "b"] == 0.0 and p.difference()[0] == pytest.approx(-50.0)
    moved = paired.render(p, top=2).split("moved most")[1]
    p2 = next(line for line in moved.splitlines() if line.startswith("| p2"))
    assert [c.strip() for c in p2.split("|")[-3:-1]] == ["n/a", "n/a"]  # no ground-truth mask: n/a, not 0 or blank
    assert "| 0.00 " in next(line for line in moved.splitlines() if line.startswith("| p1"))  # a real 0 stays 0


def test_a_conditions_run_is_compared_per_condition_and_severity_never_pooled(tmp_path):
    import pandas as pd

    points = [("blur", "0"), ("blur", "3"), ("jpeg", "100"), ("jpeg", "40")]
    rows = []
    for model, loss_at_blur3 in (("teacher", 0.0), ("student", 0.2)):
        for photo in ("p1", "p2"):
            for condition, severity in points:
                acc = 0.9 - (loss_at_blur3 if (condition, severity) == ("blur", "3") else 0.0)
                rows.append(dict(vars(_record(model, photo, 0.0, acc)), condition=condition, severity=severity))
    frame = pd.read_csv(__import__("io").StringIO(to_csv([_record("x", "p", 0.0, 1.0)], ANGLES)))
    frame = pd.DataFrame([{c: r.get(c, "") for c in frame.columns} | {"condition": r["condition"],
                          "severity": r["severity"], "watermarked": 1} for r in rows])
    run = tmp_path / "run"
    run.mkdir()
    frame.to_csv(run / "records.csv", index=False)
    p = _compare(f"{run}:teacher", f"{run}:student")
    assert list(p.per_point.index) == ["blur 0", "blur 3", "jpeg 40", "jpeg 100"]  # each point apart, in order
    assert p.per_point.loc["blur 3", "d"] == pytest.approx(-20.0)
    assert p.per_point.loc["jpeg 40", "d"] == pytest.approx(0.0)
