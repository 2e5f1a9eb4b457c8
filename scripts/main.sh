#!/usr/bin/env bash
# The main job on the embedded default: the suites in full mode on the shipped zoo (the reference evaluation set is
# generated once and cached under data/eval), then the markdown report. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q suites --benchmark "$@"
.venv/bin/python -m harness.report --results reports/results/full --out reports
