"""What a team's own models must be, written as `typing.Protocol`s: a plug-in's factories return modules that fit.

    import torch.nn as nn
    from harness.models.registry import register_model

    @register_model("localizer")          # the function's name is the registered NAME (--localizer NAME=CKPT)
    def team_unet(num_classes: int = 1) -> nn.Module: ...      # options: keyword arguments with defaults

A factory's keyword options are what `--model-option LABEL:KEY=VALUE` may set (an unknown KEY is refused). The
harness wraps a localizer's bare network in `harness.models.Localizer` (resize to `--input-size`, ImageNet
normalisation), so the network itself sees normalised pixels and needs no pre-processing of its own.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LocalizerNet(Protocol):
    """A bare localizer network, as a factory registered with `register_model("localizer")` returns it.

    forward: B×3×S×S float, ImageNet-normalised (S: the run's input size for this model, 400 by default) →
    B×1×h×w mask logits (logit > 0: the watermarked label), at any h×w (the pipeline resizes them to the view,
    bilinear). A list or tuple output is read as PIDNet's training output [aux, main, boundary]: main is used.
    With more than one output channel, `--model-option LABEL:mask_channel=K` picks the channel to read.
    The module must be an `nn.Module` (its state_dict is what checkpoints load into, strictly by name).
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self, *args, **kwargs) -> dict: ...


@runtime_checkable
class SDecoderNet(Protocol):
    """A secret decoder, as a factory registered with `register_model("sdecoder")` returns it.

    forward: B×3×400×400 float RGB in [0, 1] (the ROI crop, not normalised) → B×n_bits logits (logit > 0 ⇔ bit 1;
    n_bits is the secrets' length, 100). Each sample must be read independently of the others in its batch (in
    `--bn-mode demo` BatchNorm layers use each image's own statistics).
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self, *args, **kwargs) -> dict: ...
