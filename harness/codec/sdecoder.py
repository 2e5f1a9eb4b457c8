"""The reference SDecoder: orientation-energy maps, a pilot-driven pose search, a differentiable read-out.

Why this design. decoder2 hands the SDecoder a label that is rotated by up to ±2° (the residual between the camera
tilt and the nearest of its 0/±3° rotations), framed by an axis-aligned box that takes in background corners or
misses a few per cent of the label (a localizer's box error), slightly in perspective, shrunk to 45–80 % of a
photo, blurred, noisy and JPEG-compressed, then resized back to 400×400. A fixed cell grid read in place breaks
under that (a 2 % box error already moves the outer cells by a quarter of a cell). So the decoder registers
itself on the watermark's own structure: 44 pilot cells of known orientation on the outer ring give a score for
any candidate pose that the host's texture cannot fake, and the pose with the best pilot agreement is read.
Orientation energy (not phase) carries each bit, so the read-out needs the pose only to a fraction of a cell.

1. Orientation map. Luminance at half resolution, reflect-padded to 256×256, one FFT. For each of the two wave
   vectors the spectrum is demodulated (its 128×128 bins around the wave vector, times a Gaussian band-pass) and
   inverse-transformed: the squared modulus is the local energy of that orientation, directly on a 100×100 grid
   (4 ROI pixels per sample). r = log E_a − log E_b (r > 0 ⇔ orientation a).
2. Pose search on tanh(r/2), sampled at the mapped pilot centres (never warping the image): a coarse grid of
   angle ±2.5°, common scale 0.86–1.14 and shift ±40 px read at precomputed nearest samples; the best candidates
   are stretched per axis (each box edge errs on its own), refined three times on the affine parameters, then
   each label corner is moved on its own to absorb perspective (bilinear corner offsets).
3. Read-out: r sampled bilinearly at the 100 data-cell centres under the chosen pose, unwhitened, mapped to a
   logit by cap · tanh(gain · r / cap). The search is a selection without gradient; the read-out is
   differentiable w.r.t. the input. Every sample of a batch is decoded on its own, so batching changes nothing.
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
LOGIT_GAIN = 2.0  # logit = cap · tanh(gain · r / cap), r being the log energy ratio: fitted on scene ROIs
LOGIT_CAP = 10.0  # (lowest BCE near gain 2.5; 2.0 keeps the median |logit| of a clean read near 7), capped so one
# confidently wrong bit cannot dominate the BCE that decoder2 uses to pick an angle


def _coarse_grid() -> torch.Tensor:
    """Candidate poses of the coarse search: angle°, one scale for both axes, shift x, y in ROI pixels."""
    rows = list(itertools.product(COARSE_ANGLES, COARSE_SCALES, COARSE_SHIFTS, COARSE_SHIFTS))
    poses = torch.zeros(len(rows), POSE_SIZE, dtype=torch.float64)
    poses[:, [0, 1, 3, 4]] = torch.tensor(rows, dtype=torch.float64)
    poses[:, 2] = poses[:, 1]
    return poses.float()


def _stretch_steps() -> torch.Tensor:
    """Pose offsets that stretch the axes apart (a box error moves each edge on its own) and nudge the shift."""
    rows = list(itertools.product(STRETCHES, STRETCHES, (-4.0, 0.0, 4.0), (-4.0, 0.0, 4.0)))
    steps = torch.zeros(len(rows), POSE_SIZE, dtype=torch.float64)
    steps[:, 1:5] = torch.tensor(rows, dtype=torch.float64)
    return steps.float()


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
COARSE_ANGLES = np.arange(-2.5, 2.51, 0.5)
COARSE_SCALES = np.arange(0.86, 1.141, 0.02)
COARSE_SHIFTS = np.arange(-40.0, 40.1, 8.0)  # a box edge off by 8 % of its side moves the label by 32 ROI pixels
STRETCHES = (-0.06, -0.03, 0.0, 0.03, 0.06)  # per-axis scale offsets tried around the best coarse candidates
COARSE_K = 8  # coarse candidates stretched
AFFINE_STEPS = ((0.25, 0.01, 3.0), (0.125, 0.005, 1.5), (0.0625, 0.0025, 0.75))
CORNER_STEPS = (3.0, 1.5, 0.75)  # ROI pixels; the corners absorb perspective that an affine map cannot
TOP_K = 4  # coarse candidates refined


class ReferenceSDecoder(nn.Module):
    """B×3×400×400 ROI in [0, 1] → B×100 logits (logit > 0 ⇔ bit 1); its tables all derive from the key."""

    def __init__(self, key: int = 0, config: CodecConfig = CodecConfig()):
        super().__init__()
        self.key, self.config = int(key), config
        layout = make_layout(self.key, config)
        offsets = torch.tensor(layout.centres - LABEL_SIZE / 2, dtype=torch.float32)  # about the label centre
        bins, band = _band_filters(config)
        coarse = _coarse_grid()
        tables = dict(
            pilot_offsets=offsets[layout.pilot_index],
            data_offsets=offsets[layout.data_index],
            pilot_sign=torch.tensor(2.0 * layout.pilot_code - 1, dtype=torch.float32),
            data_sign=torch.tensor(1.0 - 2.0 * layout.whitening, dtype=torch.float32),
            band=band,
            crop_rows=torch.stack([_crop_index(row) for row, _ in bins]),
            crop_cols=torch.stack([_crop_index(col) for _, col in bins]),
            coarse=coarse,
            coarse_index=_nearest_index(_map_points(coarse, offsets[layout.pilot_index])),
            stretch_steps=_stretch_steps(),
            affine_steps=torch.stack([_affine_steps(step) for step in AFFINE_STEPS]),
            corner_steps=torch.stack([_corner_steps(step) for step in CORNER_STEPS]),
        )
        for name, table in tables.items():
            self.register_buffer(name, table, persistent=False)  # rebuilt from the key: nothing to save or load

    def forward(self, roi: torch.Tensor) -> torch.Tensor:
        _check_roi(roi)
        # one sample at a time: the same operations on the same shapes, so batching never changes an answer
        return torch.cat([self._decode(one[None]) for one in roi])

    def _decode(self, roi: torch.Tensor) -> torch.Tensor:
        ratio = self.orientation_map(roi.float())  # 1×1×100×100; the tables are float32, so is the map
        pose = self.align(ratio.detach())  # a selection: the gradient flows through the read-out at this pose
        values = _sample(ratio, _map_points(pose[None], self.data_offsets.to(pose)))  # 1×100
        return LOGIT_CAP * torch.tanh(values * self.data_sign * (LOGIT_GAIN / LOGIT_CAP))

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
        best = self.coarse[scores.topk(COARSE_K).indices]
        candidates = (best[:, None, :] + self.stretch_steps[None]).reshape(-1, POSE_SIZE)
        best = candidates[self._scores(agreement, candidates).topk(TOP_K).indices]
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
        return pose + steps[torch.arange(4, device=pose.device), scores.argmax(dim=1)].sum(dim=0, keepdim=True)

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

