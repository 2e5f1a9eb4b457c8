"""`python -m harness.report`: results → a markdown report and plots (the formatting: `harness.outputs.report`).

    python -m harness.report --results runs/mine                 # an eval run folder → runs/mine/report/REPORT.md
    python -m harness.report --results reports/results/full --out reports   # the main job's reports/REPORT.md

--results is an evaluation run folder (summary.json, records.csv) or a suites results folder (robustness/summary.json,
cost.json, latency.json). Exit codes: 0 written, 2 the results are missing or malformed (the file is named).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.outputs.report import ReportError, default_results, write_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.splitlines()[0],
                                 epilog="\n".join(__doc__.splitlines()[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=None,
                    help="an eval run folder or a suites results folder (default: reports/results/full when the "
                         "full sweep has run, else reports/results/quick)")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for REPORT.md and plots/ (default: RESULTS/report; a path ending in .md names the "
                         "markdown file)")
    args = ap.parse_args(argv)
    try:
        path = write_report(args.results or default_results(), args.out)
    except ReportError as err:
        print(f"report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
