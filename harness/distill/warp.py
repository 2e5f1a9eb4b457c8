"""A differentiable box crop: `grid_sample` over an affine grid, so gradients reach the image AND the box.

(Rotation is `harness.geometry.rotate_tensor`: grid_sample with border padding, the differentiable twin of PIL's
rotate with its black corners filled from the nearest valid pixel.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop B boxes (x0, y0, x1, y1 in normalised [-1, 1] coordinates, B×4) and resize each to size×size.

    Bilinear sampling of the box's interior: the output is differentiable in the image and in the box.
    """
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    zeros = torch.zeros_like(x0)
    # Output coordinate u in [-1, 1] maps to x = centre + u * half-width (align_corners=False pixel centres).
    matrix = torch.stack([
        torch.stack([(x1 - x0) / 2, zeros, (x1 + x0) / 2], dim=-1),
        torch.stack([zeros, (y1 - y0) / 2, (y1 + y0) / 2], dim=-1),
    ], dim=1)
    grid = F.affine_grid(matrix.to(images.dtype), [images.shape[0], images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
