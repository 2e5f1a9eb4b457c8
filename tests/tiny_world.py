"""A tiny decoder2 world for evaluation tests: 400×400-ish photos of a bright cell label, and models that read it.

The label is 10×10 cells (bright cell ⇔ bit 1) on a dark, noisy background. `BrightLocalizer` marks pixels brighter
than the image's own mean (BatchNorm, so "demo" and "eval" BN modes differ); `CellSDecoder` reads each cell's mean
brightness against the ROI's mean (BatchNorm again). Both are cheap enough for many views per test.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from harness.data.manifest import secret_to_str, write_manifest

LABEL_SIDE = 200


class BrightLocalizer(nn.Module):
    """Grey level → BatchNorm → 1×1 head, logits at 1/`stride` resolution; `bias` moves the mask's threshold."""

    def __init__(self, bias: float = -1.0, stride: int = 2, gain: float = 6.0):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.head = nn.Conv2d(1, 1, 1)
        self.stride = stride
        with torch.no_grad():
            self.conv.weight.fill_(1 / 27)
            self.head.weight.fill_(gain)
            self.head.bias.fill_(bias)
            self.bn.running_mean.fill_(0.3)
            self.bn.running_var.fill_(0.04)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.head(self.bn(self.conv(x))), self.stride)


class TwoChannelLocalizer(BrightLocalizer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return torch.cat([out, out], dim=1)


class NanLocalizer(BrightLocalizer):
    """NaN logits for photos whose mean brightness is below `below`: a model that breaks on some inputs."""

    def __init__(self, below: float):
        super().__init__()
        self.below = below

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        dark = x.mean(dim=(1, 2, 3)) < self.below
        return torch.where(dark[:, None, None, None], torch.full_like(out, float("nan")), out)


class CellSDecoder(nn.Module):
    """Cell means of the ROI (10×10) → BatchNorm → logits: a cell brighter than the ROI's cells on average ⇔ 1."""

    def __init__(self, n_bits: int = 100, gain: float = 4.0):
        super().__init__()
        self.side = int(round(n_bits ** 0.5))
        self.bn = nn.BatchNorm2d(1)
        self.gain = gain
        with torch.no_grad():
            self.bn.running_mean.fill_(0.6)
            self.bn.running_var.fill_(0.05)

    def forward(self, roi: torch.Tensor) -> torch.Tensor:
        cells = F.adaptive_avg_pool2d(roi.mean(dim=1, keepdim=True), self.side)  # B×1×10×10
        return self.gain * self.bn(cells).flatten(1)


def secret(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, 100).astype(np.uint8)


def scene(bits: np.ndarray, seed: int, size: tuple[int, int] = (440, 400)) -> tuple[Image.Image, np.ndarray]:
    """A photo (W×H) with the label of `bits` at a seeded place, and the label's mask."""
    rng = np.random.default_rng(seed)
    width, height = size
    low = rng.uniform(0.0, 0.15)  # photos differ in brightness (NanLocalizer picks dark ones)
    photo = rng.uniform(low, low + 0.25, (height, width, 3))
    cells = np.where(bits.reshape(10, 10) == 1, 0.95, 0.55)
    label = np.kron(cells, np.ones((LABEL_SIDE // 10, LABEL_SIDE // 10)))[..., None]
    x0, y0 = int(rng.integers(60, width - LABEL_SIDE - 60)), int(rng.integers(40, height - LABEL_SIDE - 40))
    photo[y0:y0 + LABEL_SIDE, x0:x0 + LABEL_SIDE] = label + rng.normal(0, 0.02, (LABEL_SIDE, LABEL_SIDE, 1))
    mask = np.zeros((height, width), bool)
    mask[y0:y0 + LABEL_SIDE, x0:x0 + LABEL_SIDE] = True
    return Image.fromarray((np.clip(photo, 0, 1) * 255).round().astype(np.uint8)), mask


def make_dataset(root: Path, n_marked: int = 4, n_clean: int = 1, seed: int = 0) -> Path:
    """A dataset folder: `n_marked` watermarked photos (random secrets) and `n_clean` clean ones, all with masks."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_marked + n_clean):
        bits = secret(seed * 1000 + i)
        photo, mask = scene(bits, seed * 1000 + i)
        photo.save(root / f"p{i:03d}.png")
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(root / f"p{i:03d}_mask.png")
        marked = i < n_marked
        rows.append({"id": f"s{i:03d}", "file": f"p{i:03d}.png", "secret": secret_to_str(bits) if marked else "",
                     "mask_file": f"p{i:03d}_mask.png", "kind": "random" if marked else "clean"})
    write_manifest(root, rows)
    return root


def free_port() -> int:
    """A free TCP port on the loopback for a torchrun or DDP rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: Path, processes: int = 2) -> list[str]:
    """The command that runs `script` in `processes` gloo processes on this machine (its arguments follow)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script)]
