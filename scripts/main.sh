#!/usr/bin/env bash
# The main job on the embedded default: reference data (generated once, cached), then its summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f data/eval/manifest.csv ]; then
  .venv/bin/python -m harness.data synth --kind random --background yes --n 200 --seed 1000 --tilt-range 0 --out data/eval
fi
.venv/bin/python -m harness.data check data/eval
