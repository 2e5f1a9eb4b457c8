#!/usr/bin/env bash
# Creates .venv in the repository root (once) and installs the project with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! { .venv/bin/python -c "import harness, pytest, pytest_benchmark, torch, fvcore, importlinter, onnx, onnxruntime" 2>/dev/null \
        && [ -x .venv/bin/ruff ]; }; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
fi
