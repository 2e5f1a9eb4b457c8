"""`python -m harness.gate`: the regression gate's command line (the gate itself: `harness.outputs.gate`).

    python -m harness.gate --results reports/results/quick            # judge a run against reports/baseline.json
    python -m harness.gate --results runs/mine --baseline ci/baseline.json --update   # store a run as the baseline

Exit codes: 0 pass; 1 a model dropped by more than the tolerance (mean or worst tilt), is missing, has fewer
records than the baseline, or is new to the baseline (without --allow-new); 2 the results measure something else
than the baseline (dataset, SDecoder, tilts, angles, BatchNorm mode: the message says what differs), or a file is
missing, truncated or malformed (the message names it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

from harness.outputs.gate import (
    CONDITION_HEADERS,
    HEADERS,
    GateInputError,
    compare,
    condition_rows,
    read_baseline,
    read_results,
    write_baseline,
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every default shown, the epilog (usage, exit codes) kept as written."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.gate", description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[1:]), formatter_class=_Formatter)
    ap.add_argument("--baseline", type=Path, default=Path("reports/baseline.json"),
                    help="the baseline file (one entry per run mode)")
    ap.add_argument("--results", type=Path, default=Path("reports/results/quick"),
                    help="one run: an eval run folder or a suites results folder (records.csv + summary.json)")
    ap.add_argument("--tolerance", type=float, default=0.5,
                    help="allowed drop in percentage points (a drop exactly at it passes)")
    ap.add_argument("--allow-new", action="store_true", help="a model the baseline lacks passes instead of failing")
    ap.add_argument("--update", action="store_true", help="write the results as the baseline of their mode")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = read_results(args.results)
        if args.update:
            write_baseline(args.baseline, results)
            print(f"baseline {args.baseline} updated for mode {results.mode!r}: {', '.join(sorted(results.scores))}")
            return 0
        baseline = read_baseline(args.baseline, results.mode)
    except GateInputError as exc:
        print(f"gate: {exc}", file=sys.stderr)
        return 2
    m = results.measurement
    if baseline.measurement is None:
        print(f"gate: warning: the baseline's {m.mode!r} entry records no measurement (dataset, SDecoder, tilts); "
              "it cannot be checked: rewrite it with --update", file=sys.stderr)
    else:
        differences = baseline.measurement.differences(m)
        if differences:
            print(f"gate: refused: {args.results} measures something else than the baseline's {m.mode!r} entry "
                  f"({args.baseline}); the figures cannot be compared:\n  " + "\n  ".join(differences),
                  file=sys.stderr)
            return 2
    rows, ok = compare(baseline, results.scores, args.tolerance, args.allow_new)
    print(f"gate ({m.mode} mode, tolerance {args.tolerance:g} points; dataset {m.dataset_hash[:12]}, SDecoder "
          f"{m.sdecoder}, tilts {', '.join(f'{t:g}' for t in m.tilts)}, BatchNorm {m.bn_mode})")
    print(tabulate(rows, headers=HEADERS, tablefmt="github", floatfmt=".2f", missingval="—"))
    per_condition = condition_rows(baseline, results.scores)
    if per_condition:  # a run with camera conditions: each condition's worst severity, gated like the worst tilt
        print(f"\nconditions ({m.conditions}):")
        print(tabulate(per_condition, headers=CONDITION_HEADERS, tablefmt="github", floatfmt=".2f", missingval="—"))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
