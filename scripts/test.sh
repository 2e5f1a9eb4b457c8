#!/usr/bin/env bash
# The test command: the layering contract and the linter, unit and integration tests, the suites in quick mode (the
# shipped zoo on a handful of reference scenes), then the regression gate against the committed baseline. Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lint-imports
.venv/bin/ruff check harness tests suites conftest.py
.venv/bin/python -m pytest -q tests suites "$@"
.venv/bin/python -m harness.gate --baseline reports/baseline.json --results reports/results/quick
