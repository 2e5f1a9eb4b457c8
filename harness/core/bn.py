"""BatchNorm modes for evaluation.

The demo runs both networks in ``train()`` under ``no_grad()`` at batch 1, so every BatchNorm normalises the image
with the image's own statistics (and, as a side effect, moves the running statistics). ``bn_mode="demo"`` gives the
same numbers without the side effect and for any batch size: per image, batch-1 BatchNorm in training is instance
normalisation with the BatchNorm's affine weights and eps (biased variance). ``bn_mode="eval"`` is ordinary
inference with the running statistics.

Only BatchNorm layers change. ``inference_context`` also puts every other module in ``eval()`` (dropout off, a
single output), which is what an evaluation wants; the demo's models have no other train-time behaviour.
"""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm  # BatchNorm1d/2d/3d, SyncBatchNorm, their lazy forms

BnMode = Literal["demo", "eval"]
BN_MODES = ("demo", "eval")
_ABSENT = object()


class BatchNormModeError(ValueError):
    """A BatchNorm cannot be run in the requested mode (e.g. one value per channel at batch 1 in demo mode)."""


def _per_sample_forward(bn: _BatchNorm, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Batch-1 training BatchNorm applied to each sample on its own, running statistics untouched."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:
            raise BatchNormModeError(f"BatchNorm {name!r} got input of shape {tuple(x.shape)}")
        if math.prod(x.shape[2:]) == 1:  # checked per call: the shape is only known at run time
            raise BatchNormModeError(
                f"BatchNorm {name!r} sees one value per channel per image (input {tuple(x.shape)}): with "
                f"bn_mode='demo' it would normalise a single value, and PyTorch raises here in the demo's "
                f"batch-1 train() run; use bn_mode='eval' for this model")
        return F.instance_norm(x, None, None, bn.weight, bn.bias, use_input_stats=True, momentum=0.0, eps=bn.eps)

    return forward


@contextmanager
def bn_context(model: nn.Module, mode: BnMode) -> Iterator[nn.Module]:
    """Temporarily switch every BatchNorm of ``model`` to ``mode``; everything is restored exactly on exit.

    demo: per-sample statistics (batch-1 ``train()`` semantics), running statistics and num_batches_tracked untouched.
    eval: running statistics; a BatchNorm without running statistics uses per-sample statistics, so that batching
    never changes an answer.
    """
    if mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {mode!r}; expected one of {BN_MODES}")
    saved = []
    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        patch = mode == "demo" or module.running_mean is None
        saved.append((module, module.training, patch, module.__dict__.get("forward", _ABSENT)))
        if mode == "eval":
            module.training = False
        if patch:
            module.forward = _per_sample_forward(module, name)
    try:
        yield model
    finally:
        for module, training, patched, forward in saved:
            module.training = training
            if patched and forward is _ABSENT:
                del module.forward
            elif patched:
                module.forward = forward


@contextmanager
def inference_context(model: nn.Module, bn_mode: BnMode) -> Iterator[nn.Module]:
    """``eval()`` for every module, BatchNorm in ``bn_mode``; every module's training flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with bn_context(model, bn_mode):
            yield model
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def inference_contexts(models: list[nn.Module], bn_mode: BnMode) -> Iterator[list[nn.Module]]:
    """``inference_context`` for several models at once (localizer, mask localizer, SDecoder)."""
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(inference_context(model, bn_mode))
        yield models
