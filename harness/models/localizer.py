"""The Localizer wrapper and the builders by registered name.

A bare network keeps the official state_dict key names; `Localizer` owns everything the field's demo does around
it (resize to the network's input size, ImageNet normalisation), so `backbone.last_layer.3` names the final conv of
a wrapped HRNet, as in the distillation configs.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.checkpoint import load_checkpoint
from harness.models.registry import get_entry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIDNet in training mode (augment=True) returns [p_aux, main, boundary]; the mask logits are the main output.
MAIN_OUTPUT_INDEX = 1


# --------------------------------------------------------------------------------------------------- Localizer


class Localizer(nn.Module):
    """B×3×H×W float RGB in [0, 1] → B×1×h×w mask logits, around a bare network kept as `self.backbone`.

    `flip_test` is the official HRNet segmentation test's flip option: the network also reads the mirror image and
    the two logit maps (the second mirrored back) are averaged; twice the network's cost, the same state_dict.
    """

    def __init__(self, backbone: nn.Module, input_size: int | None = None, flip_test: bool = False,
                 mask_channel: int | None = None):
        super().__init__()
        if input_size is not None and input_size <= 0:
            raise ValueError(f"input_size must be a positive int or None, got {input_size}")
        if mask_channel is not None and mask_channel < 0:
            raise ValueError(f"mask_channel must be a channel index >= 0 or None, got {mask_channel}")
        self.backbone = backbone
        self.input_size = input_size
        self.flip_test = flip_test
        self.mask_channel = mask_channel  # a multi-class head: the channel read as the mask logits
        # non-persistent: the state_dict holds only the network's own (official) keys under `backbone.`
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x)
        x = self._resize(x)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = self._logits(x)
        if self.flip_test:
            # the mean at the network's output size equals the mean after the (linear, mirror-symmetric) upsampling
            out = (out + self._logits(x.flip(-1)).flip(-1)) / 2
        return out

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        if isinstance(out, (list, tuple)):
            out = _main_output(out)
        if self.mask_channel is not None and out.ndim == 4:
            if self.mask_channel >= out.shape[1]:
                raise ValueError(f"mask_channel {self.mask_channel}: the head has {out.shape[1]} channels")
            out = out[:, self.mask_channel:self.mask_channel + 1]
        if out.ndim != 4 or out.shape[1] != 1:
            raise ValueError(f"localizer backbone {type(self.backbone).__name__} returned shape {tuple(out.shape)}; "
                             "a localizer must return B×1×h×w mask logits (build it with num_classes=1, or pick "
                             "a channel of a multi-class head with --model-option LABEL:mask_channel=K)")
        return out

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x  # bilinear resize to the same size is the identity
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)

    def extra_repr(self) -> str:
        extra = "" if self.mask_channel is None else f", mask_channel={self.mask_channel}"
        return f"input_size={self.input_size}, flip_test={self.flip_test}{extra}"


def _check_image_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"a localizer takes B×3×H×W float RGB in [0, 1]; got shape {tuple(x.shape)}, "
                         f"dtype {x.dtype}")


def _main_output(outputs: list | tuple) -> torch.Tensor:
    if len(outputs) != 3:
        raise ValueError(f"backbone returned {len(outputs)} outputs; a list output is read as PIDNet's training "
                         f"output [p_aux, main, boundary] (3 items), main at index {MAIN_OUTPUT_INDEX}")
    return outputs[MAIN_OUTPUT_INDEX]


# ---------------------------------------------------------------------------------------------------- builders


def _create(name: str, kind: str, **kw) -> nn.Module:
    entry = get_entry(name)
    if entry.kind != kind:
        raise ValueError(f"model {name!r} is registered as a {entry.kind}, not a {kind}")
    return entry.create(**kw)


def build_localizer(name: str, input_size: int | None = None, ckpt: str | Path | None = None,
                    flip_test: bool = False, *, mask_channel: int | None = None, backbone_only: bool = False,
                    **kw) -> Localizer:
    """The registered localizer `name` (factory options `kw`) wrapped in a Localizer; `ckpt` (bare or wrapped keys)
    loads strictly, or with `backbone_only` only the tensors it shares with the network (the rest left at init)."""
    net = _create(name, "localizer", **kw)
    if ckpt is not None:
        load_checkpoint(net, ckpt, backbone_only=backbone_only)
    return Localizer(net, input_size, flip_test, mask_channel)


def build_sdecoder(name: str, ckpt: str | Path | None = None, *, backbone_only: bool = False, **kw) -> nn.Module:
    """The registered secret decoder `name` (B×3×400×400 in [0, 1] → B×100 logits), weights loaded strictly."""
    net = _create(name, "sdecoder", **kw)
    if ckpt is not None:
        load_checkpoint(net, ckpt, backbone_only=backbone_only)
    return net
