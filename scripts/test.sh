#!/usr/bin/env bash
# The test command: unit and integration tests, the suites in quick mode, then the regression gate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
