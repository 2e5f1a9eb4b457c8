"""Hard-scene mining: which scenes are hard, how the mined set repeats them, and what it refuses."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import harness.data.synth as synth
from harness.data import load_dataset
from harness.data.__main__ import main as data_main
from harness.data.hard import HardSetConfig, hard_ids


@pytest.fixture(autouse=True)
def stand_in_codec(monkeypatch):
    """The mining is under test, not the codec: an identity stand-in keeps the generated set fast."""
    monkeypatch.setattr(synth, "watermark", lambda label, bits, key: label)
    monkeypatch.setattr(synth, "codec_fingerprint", lambda: "stand-in")


def _records(ious: dict[str, list[float | None]], model: str = "t") -> pd.DataFrame:
    rows = [{"model": model, "roi_source": "predicted", "watermarked": 1, "sample_id": sample_id, "iou": iou}
            for sample_id, per_tilt in ious.items() for iou in per_tilt]
    oracle = [{**row, "model": "oracle", "roi_source": "oracle", "iou": 0.0} for row in rows]  # never counted
    return pd.DataFrame(rows + oracle)


def test_hard_means_a_low_mean_iou_over_tilts_and_no_box_counts_as_zero():
    records = _records({"a": [0.95, 0.9], "b": [0.95, 0.5], "c": [0.99, None], "d": [0.86, 0.84]})
    assert hard_ids(records, HardSetConfig(model="t", iou_below=0.85)) == ["b", "c"]
    assert hard_ids(records, HardSetConfig(model="t", iou_below=0.96)) == ["a", "b", "c", "d"]


def test_an_unknown_model_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"model 'x' \(models: oracle, t\)"):
        hard_ids(_records({"a": [0.5]}), HardSetConfig(model="x"))


def test_the_mined_set_holds_every_scene_once_and_each_hard_one_repeat_more_times(tmp_path: Path, capsys):
    pool = tmp_path / "pool"
    assert data_main(["synth", "--kind", "random", "--n", "3", "--seed", "3", "--out", str(pool)]) == 0
    records = tmp_path / "records.csv"
    _records({"img_00000": [0.9], "img_00001": [0.2], "img_00002": [0.99]}).to_csv(records, index=False)
    out = tmp_path / "mined"
    args = ["hard", str(pool), "--records", str(records), "--model", "t", "--repeat", "2", "--out", str(out)]
    assert data_main(args) == 0
    assert "1 hard scenes" in capsys.readouterr().out  # written 3 times, the others once
    mined, source = load_dataset(out, decode=True), load_dataset(pool)
    assert [s.id for s in mined] == ["img_00000", "img_00001", "img_00001#1", "img_00001#2", "img_00002"]
    repeat = mined.by_id("img_00001#2")
    assert repeat.file == source.by_id("img_00001").file and repeat.mask_file == source.by_id("img_00001").mask_file
    assert (repeat.secret == source.by_id("img_00001").secret).all()
    assert repeat.path.read_bytes() == source.by_id("img_00001").path.read_bytes()
    record = json.loads((out / "hard.json").read_text())
    assert record["hard_ids"] == ["img_00001"] and record["rows"] == 5 and record["source_synth"]["config"]["seed"] == 3
    assert data_main(args) == 2  # an existing mined set is never overwritten
    assert "already holds a manifest.csv" in capsys.readouterr().err


def test_records_of_another_set_are_refused(tmp_path: Path, capsys):
    pool = tmp_path / "pool"
    assert data_main(["synth", "--kind", "random", "--n", "1", "--seed", "3", "--out", str(pool)]) == 0
    records = tmp_path / "records.csv"
    _records({"marked/img_00007": [0.1]}).to_csv(records, index=False)
    assert data_main(["hard", str(pool), "--records", str(records), "--model", "t",
                      "--out", str(tmp_path / "mined")]) == 2
    assert "records name 1 sample(s) that" in capsys.readouterr().err
    pd.DataFrame({"sample_id": ["img_00000"]}).to_csv(records, index=False)
    assert data_main(["hard", str(pool), "--records", str(records), "--model", "t", "--out", str(tmp_path / "m")]) == 2
    assert "records lack the column(s) model, roi_source, watermarked, iou" in capsys.readouterr().err
    assert data_main(["hard", str(pool), "--records", str(tmp_path / "none.csv"), "--model", "t",
                      "--out", str(tmp_path / "m")]) == 2
    assert "none.csv" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [{"iou_below": 0.0}, {"iou_below": 1.5}, {"repeat": 0}])
def test_a_config_that_mines_nothing_or_everything_is_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        HardSetConfig(model="t", **bad)
