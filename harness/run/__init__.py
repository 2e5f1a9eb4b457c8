"""Evaluation runs: what a run is (ModelSpec, EvalConfig), its parsing from text, the evaluation itself, the
per-sample records and the summary with its provenance."""
from harness.run.evaluate import Models, Summary, evaluate
from harness.run.spec import EvalConfig, EvalError, ModelSpec, zoo_specs

__all__ = ["EvalConfig", "EvalError", "ModelSpec", "zoo_specs", "Models", "Summary", "evaluate"]
