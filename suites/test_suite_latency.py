"""Latency: batch 1, a 400×400 photo into each localizer (its wrapper resizes to the network's input size), timed
by pytest-benchmark (`benchmark.pedantic`, warm-up then rounds); accuracy figures ride along in `extra_info`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from suite_results import write_result

from harness.models import build_localizer, sha256_file
from harness.models.cost import measure_throughput
from harness.run.runtime import build_deployed
from harness.run.summary import device_description

_latency: dict[str, dict] = {}


def _accuracy(summary, label: str) -> dict:
    row = summary.row(label, "predicted")
    return {} if row is None else {"bit_acc": row.bit_acc.mean, "tilt_min": row.tilt_min, "tilt_max": row.tilt_max}


def test_localizer_latency(benchmark, localizer_spec, robustness, settings):
    _, summary = robustness
    spec = localizer_spec
    model = build_localizer(spec.arch, spec.input_size, spec.ckpt, spec.flip_test).eval() if spec.runtime == "torch" \
        else build_deployed(spec, settings.out / "robustness", torch.get_num_threads())[0]  # the run's own file
    photo = torch.rand(1, 3, 400, 400, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = benchmark.pedantic(model, args=(photo,), rounds=settings.latency_rounds, warmup_rounds=2)
    assert logits.shape[:2] == (1, 1) and torch.isfinite(logits).all()
    figures = {"role": spec.role, "input_size": spec.input_size, "flip_test": spec.flip_test,
               "checkpoint_sha256": sha256_file(spec.ckpt) if spec.ckpt else None,  # joined to accuracy by it
               "device": device_description("cpu"), "threads": torch.get_num_threads(),
               **_percentiles(benchmark), **_accuracy(summary, localizer_spec.label),
               **_deployed(spec, model, settings)}
    benchmark.extra_info.update(figures)
    _latency[localizer_spec.label] = figures
    write_result(settings, "latency.json", _latency)


def _deployed(spec, model, settings) -> dict:
    """Runtime, size on disk (the .onnx file; eager: its checkpoint) and, with --benchmark, throughput at the
    evaluator's batch 8: the deployment table's figures."""
    path = getattr(model, "path", None) or (spec.ckpt and Path(spec.ckpt))
    doc = {"runtime": spec.runtime, "mib_on_disk": path.stat().st_size / 2**20 if path else None}
    if settings.mode == "full":
        doc["throughput_ips_b8"] = measure_throughput(model, torch.rand(8, 3, 400, 400), 1, 3)
    return doc


def _percentiles(benchmark) -> dict:
    if benchmark.stats is None:  # --benchmark-disable: the function ran once, untimed
        return {}
    times_ms = np.asarray(benchmark.stats.stats.data) * 1e3
    return {"p50_ms": float(np.percentile(times_ms, 50)), "p95_ms": float(np.percentile(times_ms, 95)),
            "rounds": int(times_ms.size)}
