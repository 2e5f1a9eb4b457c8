"""Regression gate: `python -m harness.gate --baseline reports/baseline.json --results reports/results/`.

Compares each baseline model's mean bit accuracy and its minimum over tilts (predicted ROI, GT-BCE selection) with
fresh results and exits

    0  every model within the tolerance (default 0.5 points),
    1  a model dropped by more than the tolerance, or a baseline model is missing from the results,
    2  the baseline or the results are missing or unreadable (a clear message says which).

Results are the per-sample `records.csv` files under the results folder; the baseline stores, per run mode
(`quick` for CI, `full` for the benchmark sweep), the figures the shipped zoo reached. `--update` rewrites the
baseline from the results on purpose.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tabulate import tabulate


class GateInputError(Exception):
    """The baseline or the results cannot be read: exit code 2."""


@dataclass(frozen=True)
class ModelScore:
    mean_bit_acc: float  # percent
    min_tilt_bit_acc: float  # percent, the lowest per-tilt mean
    n_records: int


def read_results(results: Path) -> tuple[str, dict[str, ModelScore]]:
    """Scores per model from every records.csv under `results`, and the run mode they were made in."""
    files = sorted(results.rglob("records.csv")) if results.is_dir() else []
    if not files:
        raise GateInputError(f"no results: no records.csv under {results}")
    frames = []
    for f in files:
        try:
            frames.append(pd.read_csv(f))
        except Exception as exc:  # noqa: BLE001  (any parse failure is the same user-facing fault)
            raise GateInputError(f"corrupt results file {f}: {exc}") from exc
    records = pd.concat(frames, ignore_index=True)
    missing = {"model", "tilt_deg", "roi_source", "bit_acc", "mode"} - set(records.columns)
    if missing:
        raise GateInputError(f"results lack columns {sorted(missing)} (files: {', '.join(map(str, files))})")
    modes = sorted(records["mode"].unique())
    if len(modes) != 1:
        raise GateInputError(f"results mix run modes {modes}; gate one mode at a time")
    # Clean photos have no secret of their own (they feed the false-positive rate), so they carry no bit accuracy.
    marked = records["watermarked"] == 1 if "watermarked" in records.columns else True
    return modes[0], _scores(records[(records["roi_source"] == "predicted") & marked])


def _scores(records: pd.DataFrame) -> dict[str, ModelScore]:
    scores = {}
    for model, rows in records.groupby("model", sort=True):
        # A sample whose ROI was empty or that failed read no bits: it counts as 0 %, never silently dropped.
        acc = rows["bit_acc"].fillna(0.0) * 100.0
        per_tilt = acc.groupby(rows["tilt_deg"]).mean()
        scores[str(model)] = ModelScore(round(float(acc.mean()), 4), round(float(per_tilt.min()), 4), len(rows))
    return scores


def read_baseline(path: Path, mode: str) -> dict[str, ModelScore]:
    if not path.is_file():
        raise GateInputError(f"baseline not found: {path} (create it with --update)")
    try:
        doc = json.loads(path.read_text())
        entries = doc["modes"][mode]["models"]
        return {name: ModelScore(**fig) for name, fig in entries.items()}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise GateInputError(f"corrupt baseline {path}: no usable entry for mode {mode!r} ({exc!r})") from exc


def compare(baseline: dict[str, ModelScore], current: dict[str, ModelScore], tolerance: float) -> tuple[list, bool]:
    """Rows of the delta table, and whether every baseline model passed."""
    rows, ok = [], True
    for name, base in sorted(baseline.items()):
        cur = current.get(name)
        if cur is None:
            rows.append([name, base.mean_bit_acc, None, None, base.min_tilt_bit_acc, None, None, "MISSING"])
            ok = False
            continue
        d_mean = cur.mean_bit_acc - base.mean_bit_acc
        d_min = cur.min_tilt_bit_acc - base.min_tilt_bit_acc
        passed = d_mean >= -tolerance and d_min >= -tolerance
        ok &= passed
        rows.append([name, base.mean_bit_acc, cur.mean_bit_acc, d_mean,
                     base.min_tilt_bit_acc, cur.min_tilt_bit_acc, d_min, "ok" if passed else "REGRESSED"])
    return rows, ok


def write_baseline(path: Path, mode: str, scores: dict[str, ModelScore]) -> None:
    doc = json.loads(path.read_text()) if path.is_file() else {"modes": {}}
    doc["modes"][mode] = {"models": {name: vars(s) for name, s in sorted(scores.items())}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.gate", description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, default=Path("reports/baseline.json"))
    ap.add_argument("--results", type=Path, default=Path("reports/results"))
    ap.add_argument("--tolerance", type=float, default=0.5, help="allowed drop in percentage points")
    ap.add_argument("--update", action="store_true", help="write the results as the new baseline")
    args = ap.parse_args(argv)
    try:
        mode, current = read_results(args.results)
        if args.update:
            write_baseline(args.baseline, mode, current)
            print(f"baseline {args.baseline} updated for mode {mode!r}: {', '.join(sorted(current))}")
            return 0
        baseline = read_baseline(args.baseline, mode)
    except GateInputError as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    rows, ok = compare(baseline, current, args.tolerance)
    headers = ["model", "base mean %", "mean %", "Δ mean", "base min-tilt %", "min-tilt %", "Δ min", "verdict"]
    print(f"gate ({mode} mode, tolerance {args.tolerance} points)")
    print(tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f", missingval="—"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
