"""Aggregation of per-sample records into a summary, and the provenance every summary carries.

Per (model, roi_source), over the watermarked rows (clean rows only feed the empirical FPR):

    bit_acc          mean bit accuracy and the half-width of its 95 % CI; a row whose ROI was empty or that failed
                     read no bits and counts as 0 (`results.counted_bit_acc`, the rule the gate and the paired
                     comparison call too), never silently dropped
    bit_acc_ok       the same mean over rows with status ok only (what the decoder reads when it gets a ROI)
    per_tilt         mean bit accuracy per tilt, and its min and max over tilts
    word_acc         share of rows with all bits right
    blind_bit_acc    mean bit accuracy had the angle been chosen without the secret (highest mean |logit|)
    detection        per target FPR: the exact binomial threshold k (bits correct), the TPR (watermarked rows with
                     ≥ k bits right) and, beside it, the empirical FPR (clean rows with ≥ k bits of the reference
                     secret right), with the number of clean rows it rests on
    mask_iou         mean IoU of the mask that gave the ROI against the ground-truth mask (where known)
    roi_empty_rate, failed, failures (the first few reasons)

Every float is rounded to 6 significant digits, so the same records give the same summary, byte for byte.
"""
from __future__ import annotations

import datetime as _dt
import io
import math
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.core import metrics
from harness.core.constants import ROI_SOURCES
from harness.run.results import SummaryRow, counted_bit_acc

TARGET_FPRS = (1e-2, 1e-3, 1e-6)
MAX_LISTED_FAILURES = 20
PACKAGES = ("torch", "torchvision", "numpy", "scipy", "pillow", "pandas", "scikit-image")


def read_records(text: str) -> pd.DataFrame:
    """records.csv text → DataFrame with ids kept as text (an id "007" stays "007")."""
    return pd.read_csv(io.StringIO(text), dtype={"model": str, "role": str, "sample_id": str, "kind": str,
                                                 "bits": str, "reason": str, "mode": str}, keep_default_na=False,
                       na_values={c: [""] for c in ("chosen_angle", "bits_correct", "bit_acc", "word_ok",
                                                    "blind_angle", "blind_bit_acc", "iou")})


def aggregate(records: pd.DataFrame, n_bits: int, fprs: tuple[float, ...] = TARGET_FPRS) -> list[SummaryRow]:
    """One row per (model, roi_source), ordered by model then ROI source."""
    groups = records.groupby(["model", "roi_source"], sort=False)
    keys = sorted(groups.groups, key=lambda k: (k[0], ROI_SOURCES.index(k[1])))
    return [SummaryRow.from_dict(_model_entry(groups.get_group(k), n_bits, fprs), "aggregate") for k in keys]


def _model_entry(rows: pd.DataFrame, n_bits: int, fprs: tuple[float, ...]) -> dict:
    marked, clean = rows[rows["watermarked"] == 1], rows[rows["watermarked"] == 0]
    acc = counted_bit_acc(marked["status"], marked["bit_acc"])
    mean, half = metrics.mean_ci95(acc.to_numpy())
    per_tilt = acc.groupby(marked["tilt_deg"]).mean()
    entry = {
        "model": rows["model"].iloc[0], "role": rows["role"].iloc[0], "roi_source": rows["roi_source"].iloc[0],
        "n_rows": len(rows), "n_watermarked": len(marked), "n_clean": len(clean),
        "n_photos": int(rows["sample_id"].nunique()),
        "bit_acc": {"mean": mean, "ci95": half},
        "bit_acc_ok": mean_or_nan(marked.loc[marked["status"] == "ok", "bit_acc"]),
        "per_tilt": {f"{t:g}": float(v) for t, v in per_tilt.items()},
        "tilt_min": float(per_tilt.min()) if len(per_tilt) else math.nan,
        "tilt_max": float(per_tilt.max()) if len(per_tilt) else math.nan,
        "word_acc": mean_or_nan(counted_bit_acc(marked["status"], marked["word_ok"])),
        "blind_bit_acc": mean_or_nan(counted_bit_acc(marked["status"], marked["blind_bit_acc"])),
        "detection": [detection(marked, clean, n_bits, fpr) for fpr in fprs],
        "mask_iou": mean_or_nan(rows["iou"].dropna()),
        "roi_empty_rate": mean_or_nan((rows["status"] == "roi_empty").astype(float)),
        "failed": int((rows["status"] == "failed").sum()),
        "failures": _failures(rows),
    }
    return rounded(entry)


def detection(marked: pd.DataFrame, clean: pd.DataFrame, n_bits: int, fpr: float) -> dict:
    k = metrics.binomial_threshold(n_bits, fpr)
    return {"fpr": fpr, "threshold_bits": k,
            "tpr": metrics.tpr_at_fpr(counted_bit_acc(marked["status"], marked["bits_correct"]).to_numpy(), k),
            "empirical_fpr": metrics.empirical_fpr(counted_bit_acc(clean["status"], clean["bits_correct"]).to_numpy(),
                                                   k),
            "n_clean": len(clean)}


def _failures(rows: pd.DataFrame) -> list[dict]:
    bad = rows[rows["status"] == "failed"]
    return [{"sample_id": r.sample_id, "tilt_deg": float(r.tilt_deg), "reason": r.reason}
            for r in bad.head(MAX_LISTED_FAILURES).itertuples()]


def mean_or_nan(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def rounded(value):
    """Floats at 6 significant digits (NaN and inf → None, for strict JSON); numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.6g}") if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------------------------------- provenance


def git_commit() -> str:
    """The commit of the checkout holding this package, with "+dirty" when it has changes; "unknown" outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(dev)})"
    return f"{device} ({platform.machine()}, {platform.processor() or sys.platform})"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
