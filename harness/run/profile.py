"""Per-condition figures of a run with camera conditions: records → `conditions.json` beside summary.json.

Per (model, roi_source, condition, severity), over the watermarked rows (clean rows feed the empirical FPR), with the
summary's rules (a row without bits counts 0):

    bit_acc          mean and the half-width of its 95 % CI
    word_acc         share of rows with every bit right
    detection        per target FPR: the binomial threshold, the TPR and the empirical FPR on clean rows
    mask_iou         mean IoU of the mask that gave the ROI against the ground truth (taken through the condition)
    roi_empty_rate, failed, n_watermarked, n_photos

and per (model, roi_source, condition) its worst severity: the severity whose mean bit accuracy is lowest (the gate's
"lowest per-tilt mean", per condition; a tie goes to the severity farthest from the identity). Severities are in
numeric order.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from harness.conditions import parse_severity, resolve
from harness.core import metrics
from harness.core.constants import ROI_SOURCES
from harness.run.results import BitAcc, Detection, counted_bit_acc
from harness.run.summary import TARGET_FPRS, detection, mean_or_nan, rounded

NUMERIC = ("chosen_angle", "bits_correct", "bit_acc", "word_ok", "blind_angle", "blind_bit_acc", "iou")


def read_condition_records(text: str) -> pd.DataFrame:
    """records.csv text → DataFrame, ids, conditions and severities kept as text ("3:70", "007")."""
    return pd.read_csv(io.StringIO(text), dtype={"model": str, "role": str, "sample_id": str, "kind": str,
                                                 "bits": str, "reason": str, "mode": str, "condition": str,
                                                 "severity": str}, keep_default_na=False,
                       na_values={c: [""] for c in NUMERIC})


def severity_order(severity: str) -> tuple[float, ...]:
    return parse_severity(severity)


@dataclass(frozen=True)
class ConditionRow:
    """One model's figures at one severity of one condition (the summary's rules, per severity)."""

    model: str
    role: str
    roi_source: str
    condition: str
    severity: str  # as written in the records: "3", "0.5", "3:70" for a combination
    n_watermarked: int
    n_clean: int
    n_photos: int
    bit_acc: BitAcc
    word_acc: float | None
    detection: tuple[Detection, ...]
    mask_iou: float | None
    roi_empty_rate: float | None
    failed: int

    def tpr_at(self, fpr: float) -> float | None:
        return next((d.tpr for d in self.detection if d.fpr == fpr), None)

    @classmethod
    def from_entry(cls, entry: dict) -> ConditionRow:
        return cls(**{**entry, "bit_acc": BitAcc(**entry["bit_acc"]),
                      "detection": tuple(Detection(**d) for d in entry["detection"])})


@dataclass(frozen=True)
class WorstSeverity:
    """A model's lowest severity of one condition: what the profile shows and the gate compares."""

    model: str
    role: str
    roi_source: str
    condition: str
    worst_severity: str | None  # None: no severity read any bits
    worst_bit_acc: float | None
    severities: tuple[str, ...]


@dataclass(frozen=True)
class ConditionProfile:
    """`conditions.json`: the rows per severity and the worst severity per condition."""

    rows: tuple[ConditionRow, ...]
    worst: tuple[WorstSeverity, ...]

    @classmethod
    def from_dict(cls, doc: dict) -> ConditionProfile:
        worst = tuple(WorstSeverity(**dict(w, severities=tuple(w["severities"]))) for w in doc["worst"])
        return cls(tuple(ConditionRow.from_entry(r) for r in doc["rows"]), worst)

    def to_dict(self) -> dict:
        rows = [dict(asdict(r), detection=[asdict(d) for d in r.detection]) for r in self.rows]
        return {"rows": rows, "worst": [dict(asdict(w), severities=list(w.severities)) for w in self.worst]}


def aggregate_conditions(records: pd.DataFrame, n_bits: int, fprs: tuple[float, ...] = TARGET_FPRS
                         ) -> ConditionProfile:
    """Per severity and per condition, ordered by model, ROI source, condition, severity. A records frame without a
    `condition` column (a tilt-only run) reads as condition "tilt"."""
    if "condition" not in records.columns:
        records = records.assign(condition="tilt", severity=[f"{t:g}" for t in records["tilt_deg"]])
    keys = ["model", "roi_source", "condition", "severity"]
    groups = records.groupby(keys, sort=False)
    order = sorted(groups.groups, key=lambda k: (k[0], ROI_SOURCES.index(k[1]), k[2], severity_order(k[3])))
    rows = [ConditionRow.from_entry(_entry(groups.get_group(k), n_bits, fprs)) for k in order]
    keys = dict.fromkeys((r.model, r.roi_source, r.condition) for r in rows)  # in the rows' order
    return ConditionProfile(tuple(rows), tuple(_worst([r for r in rows if (r.model, r.roi_source, r.condition) == k])
                                               for k in keys))


def _worst(mine: list[ConditionRow]) -> WorstSeverity:
    """The severity with the lowest mean bit accuracy (ties: the one farthest from the identity)."""
    first = mine[0]
    scored = [r for r in mine if r.bit_acc.mean is not None]
    low = min(scored, key=lambda r: (r.bit_acc.mean, -_distance(first.condition, r.severity)), default=None)
    return WorstSeverity(first.model, first.role, first.roi_source, first.condition,
                         None if low is None else low.severity, None if low is None else low.bit_acc.mean,
                         tuple(r.severity for r in mine))


def _distance(condition: str, severity: str) -> float:
    """How far a severity is from the condition's identity (ties of the worst severity go to the farthest)."""
    try:
        identity = resolve(condition).identity
    except (KeyError, ValueError):
        return 0.0
    values = parse_severity(severity)
    return sum(abs(math.log(v / i)) if v > 0 and i > 0 else abs(v - i) for v, i in zip(values, identity))


def _entry(rows: pd.DataFrame, n_bits: int, fprs: tuple[float, ...]) -> dict:
    marked, clean = rows[rows["watermarked"] == 1], rows[rows["watermarked"] == 0]
    acc = counted_bit_acc(marked["status"], marked["bit_acc"])
    mean, half = metrics.mean_ci95(acc.to_numpy()) if len(acc) else (math.nan, math.nan)
    entry = {
        "model": rows["model"].iloc[0], "role": rows["role"].iloc[0], "roi_source": rows["roi_source"].iloc[0],
        "condition": rows["condition"].iloc[0], "severity": rows["severity"].iloc[0],
        "n_watermarked": len(marked), "n_clean": len(clean), "n_photos": int(rows["sample_id"].nunique()),
        "bit_acc": {"mean": mean, "ci95": half},
        "word_acc": mean_or_nan(counted_bit_acc(marked["status"], marked["word_ok"])),
        "detection": [detection(marked, clean, n_bits, fpr) for fpr in fprs],
        "mask_iou": mean_or_nan(rows["iou"].dropna()),
        "roi_empty_rate": mean_or_nan((rows["status"] == "roi_empty").astype(float)),
        "failed": int((rows["status"] == "failed").sum()),
    }
    return rounded(entry)


def read_conditions(path: Path) -> ConditionProfile:
    """A run's `conditions.json`; a malformed file is an error naming it."""
    try:
        return ConditionProfile.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a conditions.json of this harness ({type(err).__name__}: {err})") from err


def conditions_json(records_text: str, n_bits: int) -> str:
    """The text of `conditions.json`: the same records give the same bytes."""
    profile = aggregate_conditions(read_condition_records(records_text), n_bits)
    return json.dumps(profile.to_dict(), indent=2, allow_nan=False) + "\n"
