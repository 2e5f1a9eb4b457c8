"""The reference SDecoder: orientation-energy maps, a pilot-driven alignment search, a differentiable read-out.

1. Luminance at half resolution (200×200), reflect-padded, one FFT; two Gaussian band-pass filters centred on the
   wave vectors of orientations a and b give complex responses whose squared modulus, smoothed over about a cell,
   is the local energy of each orientation. r = log E_a − log E_b is the orientation map (r > 0 ⇔ code 1).
2. The ROI holds the label up to a rotation of a few degrees, a scale per axis and a shift (decoder2's residual
   angle, the bounding box taking in background corners, a localizer's box error). Candidate affine maps are scored
   by sampling r at the mapped pilot-cell centres and correlating with the known pilot codes; a coarse grid over
   (angle, scale, shift) is refined twice around the best candidates. Scoring by pilots, not by overall confidence,
   matters: the host's texture cannot fake the pilots' known pattern.
3. The data cells are read by sampling r at their centres under the chosen map (bilinear grid_sample): the search is
   a selection, the read-out is differentiable w.r.t. the input, and every sample in a batch is handled on its own.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.codec.layout import LABEL_SIZE, CodecConfig, make_layout, wave_vectors

LUMA = (0.299, 0.587, 0.114)
WORK = 200  # the luminance is analysed at half the ROI resolution
PAD = 28  # reflect padding before the FFT (200 + 2·28 = 256), so border cells do not wrap onto the opposite side
FFT_SIZE = WORK + 2 * PAD
CROP = 128  # spectrum kept around each wave vector: the responses come out at half the working resolution
MAP = WORK * CROP // FFT_SIZE  # 100: side of the orientation map, 4 ROI pixels per sample
BAND_SIGMA = 0.045  # band-pass width in cycles per working pixel (tolerates ±10 % scale and a few degrees)
EPS = 1e-9  # energy floor (luminance in [0, 1]); keeps flat regions at r ≈ 0
LOGIT_GAIN = 1.5  # logit = gain · r, r being the log energy ratio


def _coarse_grid() -> torch.Tensor:
    """Candidate poses of the coarse search: angle°, scale (both axes), shift x, y in ROI pixels; no corner offsets."""
    angles = np.arange(-2.5, 2.51, 0.5)
    scales = np.arange(0.88, 1.101, 0.02)
    shifts = np.arange(-24, 24.1, 6.0)
    rows = [(a, s, s, tx, ty) for a, s, tx, ty in itertools.product(angles, scales, shifts, shifts)]
    poses = torch.zeros(len(rows), POSE_SIZE, dtype=torch.float64)
    poses[:, :5] = torch.tensor(rows, dtype=torch.float64)
    return poses.float()


def _affine_steps(step: tuple[float, float, float]) -> torch.Tensor:
    """Pose offsets around a candidate: −1, 0, +1 step on each affine parameter, all 3⁵ combinations."""
    d_angle, d_scale, d_shift = step
    axes = [(-d, 0.0, d) for d in (d_angle, d_scale, d_scale, d_shift, d_shift)]
    steps = torch.zeros(3**5, POSE_SIZE, dtype=torch.float64)
    steps[:, :5] = torch.tensor(list(itertools.product(*axes)), dtype=torch.float64)
    return steps.float()


def _corner_steps(step: float) -> torch.Tensor:
    """Pose offsets moving one label corner by −1, 0, +1 step in x and y: 4 corners × 9, one corner at a time."""
    steps = torch.zeros(4, 9, POSE_SIZE, dtype=torch.float64)
    moves = torch.tensor(list(itertools.product((-step, 0.0, step), repeat=2)), dtype=torch.float64)
    for corner in range(4):
        steps[corner, :, 5 + 2 * corner : 7 + 2 * corner] = moves
    return steps.float()


POSE_SIZE = 13  # angle°, scale x, scale y, shift x, shift y, then (dx, dy) of the corners TL, TR, BR, BL
AFFINE_STEPS = ((0.25, 0.01, 3.0), (0.125, 0.005, 1.5), (0.0625, 0.0025, 0.75))
CORNER_STEPS = (3.0, 1.5, 0.75)  # ROI pixels; the corners absorb perspective that an affine map cannot
TOP_K = 4  # coarse candidates refined


class ReferenceSDecoder(nn.Module):
    """B×3×400×400 ROI in [0, 1] → B×100 logits (logit > 0 ⇔ bit 1). No trainable weights: buffers from the key."""

    def __init__(self, key: int = 0, config: CodecConfig = CodecConfig()):
        super().__init__()
        self.key, self.config = int(key), config
        layout = make_layout(self.key, config)
        offsets = torch.tensor(layout.centres - LABEL_SIZE / 2, dtype=torch.float32)  # about the label centre
        self.register_buffer("pilot_offsets", offsets[layout.pilot_index], persistent=False)
        self.register_buffer("data_offsets", offsets[layout.data_index], persistent=False)
        self.register_buffer("pilot_sign", torch.tensor(2.0 * layout.pilot_code - 1, dtype=torch.float32), persistent=False)
        self.register_buffer("data_sign", torch.tensor(1.0 - 2.0 * layout.whitening, dtype=torch.float32), persistent=False)
        bins, band = _band_filters(config)
        self.register_buffer("band", band, persistent=False)
        self.register_buffer("crop_rows", torch.stack([_crop_index(row) for row, _ in bins]), persistent=False)
        self.register_buffer("crop_cols", torch.stack([_crop_index(col) for _, col in bins]), persistent=False)
        self.register_buffer("coarse", _coarse_grid(), persistent=False)
        self.register_buffer("coarse_index", _nearest_index(_map_points(self.coarse, self.pilot_offsets)), persistent=False)
        self.register_buffer("affine_steps", torch.stack([_affine_steps(s) for s in AFFINE_STEPS]), persistent=False)
        self.register_buffer("corner_steps", torch.stack([_corner_steps(s) for s in CORNER_STEPS]), persistent=False)

    def forward(self, roi: torch.Tensor) -> torch.Tensor:
        _check_roi(roi)
        # one sample at a time: the same operations on the same shapes, so batching never changes an answer
        return torch.cat([self._decode(one[None]) for one in roi])

    def _decode(self, roi: torch.Tensor) -> torch.Tensor:
        ratio = self.orientation_map(roi)  # 1×1×200×200
        pose = self.align(ratio.detach())  # a selection: the gradient flows through the read-out at this pose
        values = _sample(ratio, _map_points(pose[None], self.data_offsets.to(pose)))  # 1×100
        return LOGIT_GAIN * values * self.data_sign.to(values)

    def orientation_map(self, roi: torch.Tensor) -> torch.Tensor:
        """r = log E_a − log E_b, B×1×100×100 (one sample per 4 ROI pixels)."""
        luma = sum(w * roi[:, c : c + 1] for c, w in enumerate(LUMA))
        padded = F.pad(F.avg_pool2d(luma, 2), (PAD,) * 4, mode="reflect")  # B×1×256×256
        spectrum = torch.fft.fft2(padded)
        energies = []
        for rows, cols, band in zip(self.crop_rows, self.crop_cols, self.band):
            # demodulate: the band's centre bin moves to zero frequency and only CROP×CROP bins around it are kept,
            # so the complex response comes out directly at the (coarser) map resolution
            response = torch.fft.ifft2(spectrum[..., rows[:, None], cols[None, :]] * band)
            energy = response.real**2 + response.imag**2
            energies.append(energy[..., PAD // 2 : -(PAD // 2), PAD // 2 : -(PAD // 2)])
        return torch.log(energies[0] + EPS) - torch.log(energies[1] + EPS)

    @torch.no_grad()
    def align(self, ratio: torch.Tensor) -> torch.Tensor:
        """The pose (13 values) whose mapped pilot cells agree best with the known pilot codes."""
        agreement = torch.tanh(ratio / 2)  # bounded, so one strongly textured spot cannot dominate
        scores = agreement.reshape(-1)[self.coarse_index] @ self.pilot_sign  # nearest samples, precomputed places
        best = self.coarse[scores.topk(TOP_K).indices]
        for stage, steps in enumerate(self.affine_steps):
            candidates = (best[:, None, :] + steps[None]).reshape(-1, POSE_SIZE)
            best = candidates[self._scores(agreement, candidates).topk(TOP_K if stage == 0 else 1).indices]
        pose = best[:1]
        for steps in self.corner_steps:
            for _ in range(2):
                pose = self._move_corners(agreement, pose, steps)
        return pose[0]

    def _move_corners(self, agreement: torch.Tensor, pose: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Every corner takes its own best move among 9 (the others held), then all moves are applied together."""
        scores = self._scores(agreement, (pose + steps.reshape(-1, POSE_SIZE))).reshape(4, 9)
        return pose + steps[torch.arange(4), scores.argmax(dim=1)].sum(dim=0, keepdim=True)

    def _scores(self, agreement: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        points = _map_points(candidates, self.pilot_offsets)  # K×P×2
        values = _sample(agreement, points.reshape(1, -1, 2)).reshape(points.shape[:2])
        return values @ self.pilot_sign


def _map_points(poses: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """ROI pixel coordinates K×N×2 of label offsets (N×2, about the label centre) under K poses.

    centre + diag(sx, sy)·R(angle)·offset + shift, plus the corner offsets interpolated bilinearly over the label.
    """
    angle = poses[:, 0] * (math.pi / 180)
    cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    ox, oy = offsets[:, 0][None], offsets[:, 1][None]
    x = LABEL_SIZE / 2 + poses[:, 1:2] * (cos * ox - sin * oy) + poses[:, 3:4]
    y = LABEL_SIZE / 2 + poses[:, 2:3] * (sin * ox + cos * oy) + poses[:, 4:5]
    u, v = offsets[:, 0] / LABEL_SIZE + 0.5, offsets[:, 1] / LABEL_SIZE + 0.5
    weights = torch.stack([(1 - u) * (1 - v), u * (1 - v), u * v, (1 - u) * v], dim=1)  # N×4: TL, TR, BR, BL
    corners = poses[:, 5:].reshape(-1, 4, 2)  # K×4×2
    return torch.stack([x, y], dim=-1) + weights[None] @ corners


def _nearest_index(points: torch.Tensor) -> torch.Tensor:
    """Flat indices into a MAP×MAP map of the samples nearest to K×N×2 ROI points (clamped at the border)."""
    cols = (points[..., 0] * (MAP / LABEL_SIZE)).floor().long().clamp(0, MAP - 1)
    rows = (points[..., 1] * (MAP / LABEL_SIZE)).floor().long().clamp(0, MAP - 1)
    return rows * MAP + cols


def _sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of B×1×H×W maps at B×N×2 ROI pixel coordinates (x, y) → B×N."""
    grid = (points.to(maps.dtype) * (2 / LABEL_SIZE) - 1)[:, :, None, :]  # align_corners=False convention
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, :, 0]


def _band_filters(config: CodecConfig) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Centre bins (row, column) of the two wave vectors in the FFT_SIZE spectrum, and 2×CROP×CROP Gaussian
    band-pass transfer functions in the demodulated (cropped) spectrum."""
    offsets = torch.fft.fftfreq(CROP, dtype=torch.float64) * CROP  # bin offsets after the crop: 0, 1, …, −1
    gy, gx = torch.meshgrid(offsets, offsets, indexing="ij")
    bins, bands = [], []
    for kx, ky in wave_vectors(config):
        cx, cy = (k * 2 / (2 * math.pi) * FFT_SIZE for k in (kx, ky))  # label rad/px → working bins
        row, col = round(cy), round(cx)
        distance2 = ((gx + col - cx) ** 2 + (gy + row - cy) ** 2) / FFT_SIZE**2  # (cycles per working pixel)²
        bins.append((row, col))
        bands.append(torch.exp(-distance2 / (2 * BAND_SIGMA**2)))
    return bins, torch.stack(bands).float()


def _crop_index(centre: int) -> torch.Tensor:
    """Indices of the CROP bins centred on `centre` along one axis of the FFT_SIZE spectrum, in FFT order."""
    return (torch.fft.fftfreq(CROP, dtype=torch.float64) * CROP).long().add(centre).remainder(FFT_SIZE)


def _check_roi(roi: torch.Tensor) -> None:
    if not torch.is_tensor(roi) or roi.dim() != 4 or tuple(roi.shape[1:]) != (3, LABEL_SIZE, LABEL_SIZE):
        got = tuple(roi.shape) if torch.is_tensor(roi) else type(roi).__name__
        raise ValueError(f"ReferenceSDecoder expects a B×3×{LABEL_SIZE}×{LABEL_SIZE} ROI tensor; got {got}")

