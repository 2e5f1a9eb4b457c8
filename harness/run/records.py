"""Per-sample result records: the schema, their CSV form, and chunked parts merged into one file.

One record is one row per (model, sample, tilt_deg, roi_source); with camera conditions beyond the tilt, per
(model, sample, condition, severity, roi_source), the `condition` and `severity` columns following tilt_deg.
Records hold answers only, never timings, so the same configuration gives a byte-identical `records.csv` whether the
run was interrupted, resumed or sharded.

A run writes one part per chunk of samples (`parts/chunk-00003.csv`) through a temporary file and a rename, so a
part on disk is always complete; a resumed run skips the chunks whose part exists. At the end the parts are merged,
sorted by (model, sample_id, tilt_deg, roi_source), into `records.csv`.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, fields
from pathlib import Path

from harness.core.constants import ROI_SOURCES


def angle_tag(angle: float) -> str:
    """Column suffix of a search angle: 0 → "0", +3 → "p3", -3 → "m3", 1.5 → "p1.5"."""
    if angle == 0:
        return "0"
    return f"{'p' if angle > 0 else 'm'}{abs(angle):g}"


@dataclass(frozen=True)
class Record:
    """What one model read from one sample under one condition.

    `bce` holds the BCE per search angle in the order of the run's angles (inf where that angle gave no ROI);
    `bits` the decoded bits as a hex string (25 digits for 100 bits); `box` the ROI (x0, y0, x1, y1) at the chosen
    angle. For a clean sample (no secret) bits are scored against the run's reference secret (see `evaluate`).
    """

    model: str
    role: str  # "teacher", "student" or "oracle"
    sample_id: str
    kind: str
    watermarked: bool  # False: a clean photo, scored against the run's reference secret
    tilt_deg: float
    roi_source: str  # "predicted" (the model's mask) or "oracle" (the ground-truth mask)
    bn_mode: str
    mode: str  # the run's label ("quick", "full", ...): the gate compares like with like
    status: str  # "ok", "roi_empty" or "failed"
    reason: str = ""
    chosen_angle: float | None = None
    bce: tuple[float, ...] = ()
    bits_correct: int | None = None
    bit_acc: float | None = None
    word_ok: bool | None = None
    bits: str = ""
    blind_angle: float | None = None
    blind_bit_acc: float | None = None
    iou: float | None = None
    box: tuple[int, int, int, int] | None = None
    # the camera condition (harness.conditions) and its severity as text ("3:70" for tilt+jpeg); columns of a run
    # with conditions other than the tilt only, right after tilt_deg (a tilt-only run's records stay as they were)
    condition: str = "tilt"
    severity: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, float, str]:
        return (self.model, self.sample_id, self.condition, self.severity, self.tilt_deg, self.roi_source)


CONDITION_COLUMNS = ("condition", "severity")


def columns(angles: tuple[float, ...], conditions: bool = False) -> list[str]:
    """CSV header of a run with these search angles (and the condition columns when it has conditions)."""
    head = [f.name for f in fields(Record) if f.name not in ("bce", "box", *CONDITION_COLUMNS)]
    if conditions:
        at = head.index("tilt_deg") + 1
        head = head[:at] + list(CONDITION_COLUMNS) + head[at:]
    at = head.index("chosen_angle") + 1
    return head[:at] + [f"bce_{angle_tag(a)}" for a in angles] + head[at:] + ["x0", "y0", "x1", "y1"]


def _cell(value: object) -> str:
    """Deterministic text of one value: floats at 6 decimals so tiny last-bit differences never show."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        text = f"{value:.6f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)


def to_row(record: Record, angles: tuple[float, ...], conditions: bool = False) -> list[str]:
    if record.bce and len(record.bce) != len(angles):
        raise ValueError(f"record {record.key} has {len(record.bce)} BCE values for {len(angles)} angles")
    values: dict[str, object] = {f.name: getattr(record, f.name) for f in fields(Record)}
    bce = record.bce or (None,) * len(angles)
    values.update({f"bce_{angle_tag(a)}": v for a, v in zip(angles, bce)})
    values.update(zip(("x0", "y0", "x1", "y1"), record.box or (None,) * 4))
    return [_cell(values[c]) for c in columns(angles, conditions)]


def sort_key(record: Record) -> tuple:
    """(model, sample_id, condition, severity, tilt_deg, ROI source): a tilt-only run sorts as it always did."""
    return _order(record.model, record.sample_id, record.condition, record.severity, record.tilt_deg,
                  record.roi_source)


def _order(model: str, sample_id: str, condition: str, severity: str, tilt_deg: float, roi_source: str) -> tuple:
    values = tuple(float(v) for v in severity.split(":")) if severity else (tilt_deg,)
    return (model, sample_id, condition, values, tilt_deg, ROI_SOURCES.index(roi_source))


def to_csv(records: list[Record], angles: tuple[float, ...], conditions: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns(angles, conditions))
    for record in sorted(records, key=sort_key):
        writer.writerow(to_row(record, angles, conditions))
    return buffer.getvalue()


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader never sees a partial file (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def part_path(out_dir: Path, chunk: int) -> Path:
    return out_dir / "parts" / f"chunk-{chunk:05d}.csv"


def finished_chunks(out_dir: Path) -> set[int]:
    """Chunks whose part is on disk (complete by construction: parts appear only by rename)."""
    parts = (out_dir / "parts").glob("chunk-*.csv")
    return {int(p.stem.split("-")[1]) for p in parts}


def merge_parts(out_dir: Path, n_chunks: int) -> str:
    """All parts' rows, sorted deterministically under one header: the text of `records.csv`."""
    header, rows = None, []
    for chunk in range(n_chunks):
        path = part_path(out_dir, chunk)
        if not path.is_file():
            raise FileNotFoundError(f"part {path} is missing: chunk {chunk} was never finished")
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            part_header = next(reader)
            if header is not None and part_header != header:
                raise ValueError(f"part {path} has columns {part_header}, expected {header}")
            header = part_header
            rows.extend(reader)
    if header is None:
        raise ValueError(f"no parts to merge under {out_dir / 'parts'}")
    rows.sort(key=lambda r: _row_sort_key(r, header))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _row_sort_key(row: list[str], header: list[str]) -> tuple:
    at = {name: i for i, name in enumerate(header)}
    condition = row[at["condition"]] if "condition" in at else "tilt"
    severity = row[at["severity"]] if "severity" in at else ""
    return _order(row[at["model"]], row[at["sample_id"]], condition, severity, float(row[at["tilt_deg"]]),
                  row[at["roi_source"]])
