"""Record schema and CSV form; chunk parts merged in a fixed order; the benchmark's pieces on tiny models."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_world import BrightLocalizer, CellSDecoder, make_dataset

from harness.bench import pipeline as bench
from harness.data import load_dataset
from harness.pipeline.batched import NamedLocalizer
from harness.run.evaluate import bits_hex
from harness.run.records import Record, columns, finished_chunks, merge_parts, part_path, to_csv, write_atomic

ANGLES = (0.0, 3.0, -3.0)


def _record(model="m", sample_id="s1", tilt=0.0, roi_source="predicted", **kw) -> Record:
    base = dict(model=model, role="student", sample_id=sample_id, kind="random", watermarked=True, tilt_deg=tilt,
                roi_source=roi_source, bn_mode="demo", mode="quick", status="ok")
    return Record(**{**base, **kw})


def test_columns_name_the_search_angles():
    cols = columns(ANGLES)
    assert cols[cols.index("chosen_angle") + 1:cols.index("chosen_angle") + 4] == ["bce_0", "bce_p3", "bce_m3"]
    assert cols[-4:] == ["x0", "y0", "x1", "y1"]
    assert "bce_p1.5" in columns((0.0, 1.5))


def test_csv_cells_are_deterministic_text():
    rec = _record(bce=(0.1234567891, math.inf, -0.0), chosen_angle=0.0, bit_acc=0.97, word_ok=False,
                  box=(1, 2, 30, 40), iou=None)
    header, row = to_csv([rec], ANGLES).splitlines()
    cells = dict(zip(header.split(","), row.split(",")))
    assert cells["bce_0"] == "0.123457" and cells["bce_p3"] == "inf" and cells["bce_m3"] == "0"
    assert cells["word_ok"] == "0" and cells["iou"] == "" and cells["x1"] == "30" and cells["tilt_deg"] == "0"
    with pytest.raises(ValueError, match="BCE values"):
        to_csv([_record(bce=(0.1,))], ANGLES)


def test_parts_merge_sorted_whatever_their_order(tmp_path):
    a = [_record(sample_id="s2", tilt=-1.0), _record(sample_id="s1", tilt=2.0, roi_source="oracle", model="oracle")]
    b = [_record(sample_id="s1", tilt=-5.0), _record(sample_id="s1", tilt=10.0)]
    write_atomic(part_path(tmp_path, 1), to_csv(a, ANGLES))
    write_atomic(part_path(tmp_path, 0), to_csv(b, ANGLES))
    assert finished_chunks(tmp_path) == {0, 1}
    rows = [line.split(",")[:6] for line in merge_parts(tmp_path, 2).splitlines()[1:]]
    assert [(r[0], r[2], r[5]) for r in rows] == [("m", "s1", "-5"), ("m", "s1", "10"), ("m", "s2", "-1"),
                                                 ("oracle", "s1", "2")]
    with pytest.raises(FileNotFoundError, match="chunk 2"):
        merge_parts(tmp_path, 3)
    assert not list(tmp_path.rglob("*.tmp"))


def test_bits_hex_keeps_leading_zeros():
    bits = np.zeros(100, np.uint8)
    bits[-1] = 1
    assert bits_hex(bits) == "0" * 24 + "1" and len(bits_hex(np.ones(100, np.uint8))) == 25


def test_benchmark_pieces_count_the_same_views(tmp_path):
    torch.set_num_threads(1)
    dataset = load_dataset(make_dataset(tmp_path, n_marked=2, n_clean=0))
    cfg = bench.BenchConfig(n=2, tilts=(0.0,), reference_n=1, batch_size=4, workers=0)
    localizers = [NamedLocalizer("t", "teacher", BrightLocalizer()), NamedLocalizer("s", "student", BrightLocalizer(1))]
    reference = bench.time_reference(cfg, dataset, localizers, CellSDecoder())
    batched, evaluator = bench.time_batched(cfg, dataset, localizers, CellSDecoder())
    floor = bench.time_floor(cfg, localizers, CellSDecoder(), dict(evaluator.timings.rois))
    assert (reference.views, batched.views, floor.views) == (1 * 3 * 2, 2 * 3 * 2, 2 * 3 * 2)
    assert evaluator.timings.rois["t"] == 6 and all(t.seconds > 0 for t in (reference, batched, floor))
    text = bench.report(cfg, [reference, batched, floor])
    assert "batched / reference throughput" in text and "batched wall / floor" in text
