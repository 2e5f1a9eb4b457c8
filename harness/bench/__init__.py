"""Benchmarks, above the layers they time: `python -m harness.bench.pipeline` (the batched evaluator against the
reference and the forward-pass floor), `python -m harness.bench.codec` (the reference codec against its targets),
`python -m harness.bench.distill` (training step throughput)."""
