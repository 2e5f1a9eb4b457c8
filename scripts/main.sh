#!/usr/bin/env bash
# The main job on the embedded default, then the markdown report (reports/REPORT.md and reports/plots/):
#   1. the tilt sweep: the suites in full mode on the shipped zoo (100 reference photos, tilts -5..+5; the set is
#      generated once and cached under data/eval). Extra arguments go to this pytest run.
#   2. camera conditions beyond the tilt: every condition's default grid (docs/conditions.md) and two
#      combinations, on the first 5 + 1 reference photos (data/profile): fewer photos than the sweep, so each
#      severity's 95 % CI is wider (the report gives it)
#   3. as deployed: the zoo in eager PyTorch, ONNX Runtime fp32 and int8 (suites in full mode on data/profile:
#      accuracy over the tilt sweep, agreement with eager, latency)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=.venv/bin/python
$py -m pytest -q suites --benchmark "$@"
$py -m harness.data reference --n-marked 5 --n-clean 1 --out data/profile
conditions=()
for name in tilt scale perspective_pitch perspective_yaw perspective blur motion_blur jpeg brightness contrast gamma \
    noise tilt+jpeg perspective+blur; do
  conditions+=(--condition "$name")
done
$py -m harness.eval --zoo students --sdecoder reference_sdecoder --data data/profile --bn-mode eval --mode profile \
    --workers 1 --quiet --out reports/results/full/conditions "${conditions[@]}"
$py -m pytest -q suites --benchmark --data data/profile --runtime onnxruntime --runtime onnxruntime-int8 \
    --results-dir reports/results/full/deploy
$py -m harness.report --results reports/results/full --out reports
