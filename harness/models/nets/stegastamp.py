"""StegaStamp-style secret decoder (Tancik et al., CVPR 2020): spatial transformer, then a conv stack to bit logits.

Layout (as the original TensorFlow `StegaStampDecoder` and its common PyTorch port):

    stn.localization: 3 × (3×3 s2 conv + ReLU) 3→32→64→128, flatten, dense → 128 + ReLU, dense → 6
                      (the last dense starts at zero weights and identity bias, so the STN starts as identity)
    affine_grid / grid_sample (bilinear, zeros padding, align_corners=False)
    decoder:          3×3 convs + ReLU 32 s2, 32, 64 s2, 64, 64 s2, 128 s2, 128 s2; flatten;
                      dense 512 + ReLU; dense → secret_len logits

Input B×3×height×width RGB in [0, 1]. Like the original, the decoder subtracts 0.5 first, so the STN's zero
padding outside the image reads as mid-grey. Output B×secret_len logits (logit > 0 ⇔ bit 1); the PyTorch port
returns sigmoid probabilities instead, which are `torch.sigmoid` of these logits.

Parameter names follow the PyTorch port (`stn.localization.{0,1,2}.conv`, `stn.localization.4.linear`,
`stn.localization.5`, `decoder.{0..6}.conv`, `decoder.8.linear`, `decoder.9.linear`), so a port checkpoint
trained at the same height, width and secret length loads with `strict=True`. No BatchNorm: every sample is
decoded independently.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.registry import register_model

IDENTITY_AFFINE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class Conv2D(nn.Module):
    """3×3 'same' conv (+ ReLU) under the port's name `conv`."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class Dense(nn.Module):
    """Fully connected layer (+ ReLU) under the port's name `linear`."""

    def __init__(self, in_features: int, out_features: int, relu: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return F.relu(x) if self.relu else x


def _after_stride2(size: int, times: int) -> int:
    """Spatial size after `times` 3×3 stride-2 convs with padding 1 (ceil halving)."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


class SpatialTransformerNetwork(nn.Module):
    """Predicts one affine warp per image and resamples the image with it."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        flat = 128 * _after_stride2(height, 3) * _after_stride2(width, 3)
        self.localization = nn.Sequential(
            Conv2D(3, 32, stride=2),
            Conv2D(32, 64, stride=2),
            Conv2D(64, 128, stride=2),
            nn.Flatten(),
            Dense(flat, 128),
            nn.Linear(128, 6),
        )

    def reset_to_identity(self) -> None:
        """Zero weights and identity bias on the last layer: the warp starts as the identity for every input."""
        last = self.localization[-1]
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor(IDENTITY_AFFINE))

    def theta(self, image: torch.Tensor) -> torch.Tensor:
        return self.localization(image).view(-1, 2, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.theta(image), list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class StegaStampDecoder(nn.Module):
    def __init__(self, secret_len: int = 100, height: int = 400, width: int = 400) -> None:
        super().__init__()
        self.secret_len = secret_len
        self.height = height
        self.width = width
        self.stn = SpatialTransformerNetwork(height, width)
        flat = 128 * _after_stride2(height, 5) * _after_stride2(width, 5)
        self.decoder = nn.Sequential(
            Conv2D(3, 32, stride=2),
            Conv2D(32, 32),
            Conv2D(32, 64, stride=2),
            Conv2D(64, 64),
            Conv2D(64, 64, stride=2),
            Conv2D(64, 128, stride=2),
            Conv2D(128, 128, stride=2),
            nn.Flatten(),
            Dense(flat, 512),
            Dense(512, secret_len, relu=False),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # He-normal weights as in the original (he_normal) and the port; zero biases as Keras does by default.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
        self.stn.reset_to_identity()

    def _check_input(self, image: torch.Tensor) -> None:
        expected = (3, self.height, self.width)
        if image.dim() != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(
                f"StegaStampDecoder expects B×3×{self.height}×{self.width} input (its dense layers are sized for "
                f"it); got {tuple(image.shape)}"
            )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """B×3×H×W RGB in [0, 1] → B×secret_len logits."""
        self._check_input(image)
        centred = image - 0.5
        return self.decoder(self.stn(centred))


@register_model("sdecoder")
def stegastamp_decoder(secret_len: int = 100, height: int = 400, width: int = 400) -> StegaStampDecoder:
    return StegaStampDecoder(secret_len=secret_len, height=height, width=width)
