"""What a network costs: parameters, state_dict tensors, multiply-accumulates, fp32 size, latency.

Units, never mixed: fvcore counts one multiply-add as one "flop", so its totals are MACs; we report them as GMACs
(1e9 MACs) and give GFLOPs = 2 × total GMACs in its own, labelled column. fvcore ignores conv bias, counts eval-mode
BatchNorm as 2 per element and bilinear upsampling as 4 per output element, and skips element-wise ops (add, mul,
sigmoid) and pooling.

    python -m harness.cost [--models NAME ...] [--hw 400] [--latency]

prints one markdown row per registered localizer and sdecoder (bare network, factory defaults, batch 1).
"""
from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn


@dataclass(frozen=True)
class Cost:
    params: int
    tensors: int  # state_dict entries (parameters and buffers, BatchNorm counters included)
    conv_gmacs: float  # fvcore "conv" operator, 1e9 multiply-accumulates
    total_gmacs: float  # fvcore total, 1e9 multiply-accumulates
    gflops: float  # 2 × total_gmacs (one MAC = two floating-point operations)
    fp32_mib: float  # params × 4 bytes / 2^20
    input_hw: tuple[int, int]


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    device: str
    threads: int
    repeats: int


def model_cost(model: nn.Module, input_hw: tuple[int, int] = (400, 400)) -> Cost:
    """Counts for `model` on one 3×H×W input, in eval mode (the model's mode is restored afterwards)."""
    params = sum(p.numel() for p in model.parameters())
    conv, total = _fvcore_macs(model, input_hw)
    return Cost(
        params=params,
        tensors=len(model.state_dict()),
        conv_gmacs=conv / 1e9,
        total_gmacs=total / 1e9,
        gflops=2 * total / 1e9,
        fp32_mib=params * 4 / 2**20,
        input_hw=tuple(input_hw),
    )


def _fvcore_macs(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    x = _probe_input(model, input_hw)
    was_training = model.training
    model.eval()  # BatchNorm counts 2 per element in eval mode, 5 in train mode
    try:
        with warnings.catch_warnings(), _quiet_fvcore_logs():
            warnings.simplefilter("ignore")  # torch.jit deprecation (fvcore's import) and tracer warnings
            from fvcore.nn import FlopCountAnalysis

            analysis = (FlopCountAnalysis(model, x).unsupported_ops_warnings(False)
                        .uncalled_modules_warnings(False).tracer_warnings("none")
                        .set_op_handle("aten::matmul", _matmul_macs))
            total = analysis.total()
            conv = analysis.by_operator().get("conv", 0)
    finally:
        model.train(was_training)
    return int(conv), int(total)


def _matmul_macs(inputs: list, outputs: list) -> int:
    """aten::matmul for any ranks (fvcore's own handle asserts 2-D operands and fails on matrix @ vector)."""
    from fvcore.nn.jit_handles import get_shape

    contraction = get_shape(inputs[0])[-1]
    return math.prod(get_shape(outputs[0])) * contraction


class _quiet_fvcore_logs:
    """fvcore reports every skipped op (add, mul, sigmoid, ...) through logging; those ops are skipped by design."""

    def __enter__(self):
        self._logger = logging.getLogger("fvcore")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


def _probe_input(model: nn.Module, input_hw: tuple[int, int]) -> torch.Tensor:
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    return torch.zeros(1, 3, *input_hw, device=device, dtype=dtype)


def count_conv_macs(model: nn.Module, input_hw: tuple[int, int]) -> int:
    """Conv2d multiply-accumulates for one input, counted by forward hooks (fvcore's rule: bias ignored).

    Only shapes matter, so a model built on the "meta" device gives the count of a 66 M-param network at once.
    """
    total = 0

    def hook(conv: nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        # each output element: in_channels/groups × kh × kw MACs
        total += (out.numel() // out.shape[0]) * conv.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(_probe_input(model, input_hw))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def measure_latency(fn_or_model: Callable[[torch.Tensor], object], x: torch.Tensor, warmup: int = 3,
                    repeats: int = 20) -> Latency:
    """Wall-clock latency of `fn_or_model(x)` under inference_mode; a model's train/eval mode is left as is.

    On CUDA every call is bracketed by synchronisations, so the time is the kernels' time, not the launch time.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    cuda = x.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times_ms = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            fn_or_model(x)
            sync()
            if i >= warmup:
                times_ms.append((time.perf_counter() - start) * 1e3)
    device = torch.cuda.get_device_name(x.device) if cuda else str(x.device)
    return Latency(
        p50_ms=statistics.median(times_ms),
        p95_ms=float(np.percentile(times_ms, 95)),
        device=device,
        threads=torch.get_num_threads(),
        repeats=repeats,
    )


def measure_throughput(fn_or_model: Callable[[torch.Tensor], object], x: torch.Tensor, warmup: int = 2,
                       repeats: int = 5) -> float:
    """Images per second of `fn_or_model` on the batch `x` (median batch time of `repeats`, after `warmup`)."""
    latency = measure_latency(fn_or_model, x, warmup, repeats)
    return x.shape[0] / (latency.p50_ms / 1e3)
