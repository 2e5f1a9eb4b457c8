"""Two readings of the same photos, compared photo by photo: is B better than A, or is the difference noise?

    python -m harness.paired runs/heldout:teacher_hrnet_w18 runs/heldout_new:teacher_hrnet_w18
    python -m harness.paired runs/heldout:teacher_hrnet_w18 runs/heldout:student_lite_hrnet_18   # what a student loses

Each side is RUN:MODEL, a results folder holding `records.csv` and a model named in it (MODEL may be left out when
the folder holds a single model). Only the watermarked photos and tilts that both sides read are compared. A row
whose ROI was empty or that failed read no bits and counts as 0 (`harness.run.results.counted_bit_acc`, the rule
the summary and the gate call too).

The unit is the photo, not the row: the tilts of one photo share its scene, so its rows are not independent. Each
photo's bit accuracy is its mean over tilts, and the difference B − A gets its paired standard error and 95 %
interval over photos. Two models that read the same photos differ far less from photo to photo than their two
confidence intervals suggest, so a paired difference settles questions the summary's intervals cannot. The tables
then show the difference per tilt and list the photos that moved most, each with both masks' IoU, to tell whether
a box moved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from harness.conditions import parse_severity
from harness.core import metrics
from harness.run.results import counted_bit_acc
from harness.run.summary import read_records

MOVED_POINTS = 0.5  # a photo "moved" when its mean over tilts changed by more than this many points


class PairedInputError(Exception):
    """A side cannot be read or the two sides share nothing to compare: exit code 2."""


@dataclass(frozen=True)
class Side:
    run: Path
    model: str | None

    @property
    def label(self) -> str:
        return f"{self.run}:{self.model}"


@dataclass(frozen=True)
class Paired:
    a: Side
    b: Side
    per_photo: pd.DataFrame  # index sample_id; columns a, b, d (points), iou_a, iou_b
    per_point: pd.DataFrame  # index: the tilt ("+3°") or "condition severity"; columns a, b, d, se (points)
    only_a: int  # photos only side A read
    only_b: int

    @property
    def n_photos(self) -> int:
        return len(self.per_photo)

    def difference(self) -> tuple[float, float, float]:
        """Mean of B − A in points, its standard error and the half-width of its 95 % interval."""
        d = self.per_photo["d"].to_numpy()
        mean, half = metrics.mean_ci95(d)
        return mean, _se(d), half


def parse_side(text: str) -> Side:
    run, sep, model = text.rpartition(":")
    if not sep or not run:
        return Side(Path(text), None)
    return Side(Path(run), model or None)


def load_side(side: Side) -> tuple[Side, pd.DataFrame]:
    """The side's watermarked rows, with its model resolved, bit accuracy in points (failed rows as 0)."""
    path = side.run / "records.csv"
    if not path.is_file():
        raise PairedInputError(f"no records.csv in {side.run}")
    try:
        records = read_records(path.read_text())
    except Exception as exc:  # noqa: BLE001  (any parse failure is the same user-facing fault)
        raise PairedInputError(f"corrupt results file {path}: {exc}") from exc
    side = Side(side.run, side.model or _only_model(records, path))
    rows = records[(records["model"] == side.model) & (records["watermarked"] == 1)]
    if rows.empty:
        raise PairedInputError(f"{path} has no watermarked rows of model {side.model!r}; "
                               f"its models: {', '.join(sorted(records['model'].unique()))}")
    # A model read with both ROI sources is compared on its own mask's reading.
    if rows["roi_source"].nunique() > 1:
        rows = rows[rows["roi_source"] == "predicted"]
    return side, _with_points(rows.assign(points=counted_bit_acc(rows["status"], rows["bit_acc"]) * 100.0))


def _with_points(rows: pd.DataFrame) -> pd.DataFrame:
    """Each row's point of the sweep: its tilt, or in a camera-conditions run its condition and severity (a run's
    conditions are compared point by point, never pooled with one another)."""
    if "condition" not in rows.columns:
        return rows.assign(point=[f"{t:+g}°" for t in rows["tilt_deg"]], order=[(t,) for t in rows["tilt_deg"]])
    severities = rows["severity"].astype(str)
    return rows.assign(point=rows["condition"].astype(str) + " " + severities,
                       order=[(c, *parse_severity(s)) for c, s in zip(rows["condition"], severities)])


def _only_model(records: pd.DataFrame, path: Path) -> str:
    models = sorted(records["model"].unique())
    if len(models) != 1:
        raise PairedInputError(f"{path} holds models {', '.join(models)}; name one as RUN:MODEL")
    return models[0]


def pair(a: Side, rows_a: pd.DataFrame, b: Side, rows_b: pd.DataFrame) -> Paired:
    points = set(rows_a["point"]) & set(rows_b["point"])
    rows_a, rows_b = rows_a[rows_a["point"].isin(points)], rows_b[rows_b["point"].isin(points)]
    photos_a, photos_b = set(rows_a["sample_id"]), set(rows_b["sample_id"])
    common = sorted(photos_a & photos_b)
    if not common:
        raise PairedInputError(f"{a.label} and {b.label} share no watermarked photo at a common tilt or condition")
    rows_a, rows_b = rows_a[rows_a["sample_id"].isin(common)], rows_b[rows_b["sample_id"].isin(common)]
    per_photo = pd.DataFrame({"a": _by(rows_a, "sample_id", "points"), "b": _by(rows_b, "sample_id", "points")})
    per_photo["d"] = per_photo["b"] - per_photo["a"]
    per_photo["iou_a"] = _by(rows_a, "sample_id", "iou")
    per_photo["iou_b"] = _by(rows_b, "sample_id", "iou")
    return Paired(a, b, per_photo, _per_point(rows_a, rows_b), len(photos_a - photos_b), len(photos_b - photos_a))


def _by(rows: pd.DataFrame, key: str, column: str) -> pd.Series:
    return rows.groupby(key)[column].mean()


def _per_point(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> pd.DataFrame:
    """Per tilt (or condition and severity), in sweep order: A, B, B − A and its paired standard error."""
    a = rows_a.pivot_table(index="sample_id", columns="point", values="points", aggfunc="mean")
    b = rows_b.pivot_table(index="sample_id", columns="point", values="points", aggfunc="mean")
    d = b - a
    order = dict(zip(rows_a["point"], rows_a["order"]))
    table = pd.DataFrame({"a": a.mean(), "b": b.mean(), "d": d.mean(),
                          "se": [_se(d[p].dropna().to_numpy()) for p in d.columns]})
    return table.loc[sorted(table.index, key=order.__getitem__)]


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan


# ------------------------------------------------------------------------------------------------------ render


def render(p: Paired, top: int) -> str:
    return "\n\n".join([_headline(p), _tilt_table(p), _moved_table(p, top)]) + "\n"


def _headline(p: Paired) -> str:
    mean, se, half = p.difference()
    d = p.per_photo["d"]
    rows = [["A", p.a.label, f"{p.per_photo['a'].mean():.2f}"],
            ["B", p.b.label, f"{p.per_photo['b'].mean():.2f}"]]
    lines = [tabulate(rows, headers=["", "run:model", "bit acc %"], tablefmt="github"), "",
             f"B − A: **{mean:+.2f} points** over {p.n_photos} photos{_spread(mean, se, half)}.",
             f"Photos up by more than {MOVED_POINTS:g} points: {int((d > MOVED_POINTS).sum())}; "
             f"down: {int((d < -MOVED_POINTS).sum())}."]
    if p.only_a or p.only_b:
        lines.append(f"Left out: {p.only_a} photos only A read, {p.only_b} only B read.")
    return "\n".join(lines)


def _spread(mean: float, se: float, half: float) -> str:
    if math.isnan(se):
        return " (one photo: no standard error)"
    if se == 0:
        return " (every photo moved alike)"
    return (f", standard error {se:.2f}, 95 % interval [{mean - half:+.2f}, {mean + half:+.2f}] "
            f"({mean / se:+.1f} standard errors)")


def _tilt_table(p: Paired) -> str:
    rows = [[point, f"{r.a:.2f}", f"{r.b:.2f}", f"{r.d:+.2f}", f"{r.se:.2f}"] for point, r in p.per_point.iterrows()]
    return tabulate(rows, headers=["tilt or condition", "A %", "B %", "B − A", "se"], tablefmt="github",
                    disable_numparse=True)


def _moved_table(p: Paired, top: int) -> str:
    moved = p.per_photo.reindex(p.per_photo["d"].abs().sort_values(ascending=False, kind="stable").index).head(top)
    rows = [[sid, f"{r.a:.1f}", f"{r.b:.1f}", f"{r.d:+.1f}", _iou(r.iou_a), _iou(r.iou_b)]
            for sid, r in moved.iterrows()]
    return ("Photos that moved most (mean over the tilts or conditions):\n\n"
            + tabulate(rows, headers=["photo", "A %", "B %", "B − A", "IoU A", "IoU B"], tablefmt="github",
                       disable_numparse=True))


def _iou(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"  # no ground-truth mask: no IoU, never a 0
