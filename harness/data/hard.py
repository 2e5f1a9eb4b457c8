"""Hard-scene mining: a training set that repeats the scenes a localizer got wrong.

A localizer loses its bits on a few scenes in a hundred (a label whose edges fade into a background that looks like
it), so a random draw of training scenes spends almost every step on scenes it already reads. `hard_set` takes a
generated set and an evaluation of it (`records.csv` of `python -m harness.eval`), picks the watermarked scenes whose
mean mask IoU over the evaluated tilts is below a threshold, and writes a new set that holds every scene once and each
hard scene `repeat` more times (ids `ID#1`, `ID#2`, ...). Photos and masks are hard links into the source set (copies
where the file system refuses links), so the new set costs no disk and the source set stays untouched. `hard.json`
beside the manifest records the source set (with its generator record when it has one), the config and the hard ids.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from harness.data.manifest import MANIFEST_NAME, load_dataset, manifest_rows, write_manifest
from harness.data.synth import read_record

HARD_RECORD_NAME = "hard.json"


@dataclass(frozen=True)
class HardSetConfig:
    model: str  # the localizer's label in records.csv
    iou_below: float = 0.85  # a scene is hard when the localizer's mean mask IoU over tilts is below this
    repeat: int = 4  # extra copies of each hard scene

    def __post_init__(self):
        if not 0.0 < self.iou_below <= 1.0:
            raise ValueError(f"iou_below must lie in (0, 1], got {self.iou_below}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be at least 1 (extra copies of each hard scene), got {self.repeat}")


def hard_ids(records: pd.DataFrame, cfg: HardSetConfig) -> list[str]:
    """Sample ids of the watermarked scenes whose mean IoU (over tilts) under `cfg.model` is below the threshold."""
    missing = [c for c in ("model", "roi_source", "watermarked", "sample_id", "iou") if c not in records.columns]
    if missing:
        raise ValueError(f"records lack the column(s) {', '.join(missing)}: expected records.csv of harness.eval")
    rows = records[(records["model"] == cfg.model) & (records["roi_source"] == "predicted")
                   & (records["watermarked"] == 1)]
    if rows.empty:
        known = sorted(set(records["model"]))
        raise ValueError(f"records hold no predicted-ROI rows of watermarked scenes for model {cfg.model!r} "
                         f"(models: {', '.join(known)})")
    iou = rows["iou"].fillna(0.0).groupby(rows["sample_id"]).mean()  # no box at all counts as IoU 0
    return sorted(iou[iou < cfg.iou_below].index)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def hard_set(source: str | Path, records: pd.DataFrame, cfg: HardSetConfig, out: str | Path) -> list[str]:
    """Write the mined set to `out` (which must not hold a manifest yet); returns the hard sample ids."""
    source, out = Path(source), Path(out)
    if (out / MANIFEST_NAME).exists():
        raise FileExistsError(f"{out} already holds a {MANIFEST_NAME}; choose another folder")
    dataset = load_dataset(source)  # validated before anything is written
    hard = set(hard_ids(records, cfg))
    missing = sorted(hard - {sample.id for sample in dataset})
    if missing:
        raise ValueError(f"records name {len(missing)} sample(s) that {source} does not hold, e.g. {missing[0]!r}: "
                         f"were they made from another set?")
    rows = []
    for row in manifest_rows(source):  # the source's cells as written: copies carry them unchanged
        for name in filter(None, ((row.get(column) or "").strip() for column in ("file", "mask_file"))):
            _link(source / name, out / name)
        rows.append(row)
        sample_id = row["id"].strip()
        if sample_id in hard:
            rows += [{**row, "id": f"{sample_id}#{k}"} for k in range(1, cfg.repeat + 1)]
    write_manifest(out, rows)
    _write_record(source, cfg, sorted(hard), len(rows), out)
    return sorted(hard)


def _write_record(source: Path, cfg: HardSetConfig, hard: list[str], n_rows: int, out: Path) -> None:
    record = {"source": str(source), "source_synth": read_record(source),
              "config": asdict(cfg), "rows": n_rows, "hard_ids": hard}
    (out / HARD_RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_hard_record(out_dir: str | Path) -> dict | None:
    """A mined set's hard.json as written by `hard_set`, or None when the folder was not mined."""
    record = Path(out_dir) / HARD_RECORD_NAME
    return json.loads(record.read_text()) if record.is_file() else None
