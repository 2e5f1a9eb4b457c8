"""Latency: batch 1, a 400×400 photo into each localizer (its wrapper resizes to the network's input size), timed
by pytest-benchmark (`benchmark.pedantic`, warm-up then rounds); accuracy figures ride along in `extra_info`."""
from __future__ import annotations

import numpy as np
import torch

from harness.summary import device_description
from harness.zoo import build_localizer

from suite_results import write_result

_latency: dict[str, dict] = {}


def _accuracy(summary, label: str) -> dict:
    for entry in summary.results:
        if entry["model"] == label and entry["roi_source"] == "predicted":
            return {"bit_acc": entry["bit_acc"]["mean"], "tilt_min": entry["tilt_min"], "tilt_max": entry["tilt_max"]}
    return {}


def test_localizer_latency(benchmark, localizer_spec, robustness, settings):
    _, summary = robustness
    spec = localizer_spec
    model = build_localizer(spec.arch, spec.input_size, spec.ckpt, spec.flip_test).eval()
    photo = torch.rand(1, 3, 400, 400, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = benchmark.pedantic(model, args=(photo,), rounds=settings.latency_rounds, warmup_rounds=2)
    assert logits.shape[:2] == (1, 1) and torch.isfinite(logits).all()
    figures = {"role": spec.role, "input_size": spec.input_size, "flip_test": spec.flip_test,
               "device": device_description("cpu"), "threads": torch.get_num_threads(),
               **_percentiles(benchmark), **_accuracy(summary, localizer_spec.label)}
    benchmark.extra_info.update(figures)
    _latency[localizer_spec.label] = figures
    write_result(settings, "latency.json", _latency)


def _percentiles(benchmark) -> dict:
    if benchmark.stats is None:  # --benchmark-disable: the function ran once, untimed
        return {}
    times_ms = np.asarray(benchmark.stats.stats.data) * 1e3
    return {"p50_ms": float(np.percentile(times_ms, 50)), "p95_ms": float(np.percentile(times_ms, 95)),
            "rounds": int(times_ms.size)}
