"""Where every bit lives on the label: the cell grid, the pilot ring, the key-derived signs.

The 400×400 label is cut into GRID×GRID square cells. The outer ring of cells (44 of them for a 12×12 grid) carries
pilots, cells whose orientation the decoder knows in advance; the inner 10×10 cells carry the 100 data bits. Each
cell holds one diagonal grating: orientation "a" (wave vector along (1, 1)) codes 1, orientation "b" (along (1, −1))
codes 0. The key draws the pilot codes and a whitening mask XOR-ed onto the data bits, so an all-zero secret still
gives a balanced mix of orientations and a decoder built with another key reads noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from harness.core.constants import NUM_BITS

LABEL_SIZE = 400


@dataclass(frozen=True)
class CodecConfig:
    grid: int = 12  # cells per side; the outer ring carries pilots, the inner (grid−2)² = 100 cells carry bits
    period: float = 10.0  # grating period in label pixels: 4.5 px when the label is shrunk to 45 % in a photo
    psnr_db: float = 34.4  # every watermarked label is scaled to this PSNR (luminance change on R, G and B alike)


@dataclass(frozen=True)
class Layout:
    cell: float  # cell side in label pixels
    centres: np.ndarray  # (grid², 2) cell centres (x, y) in label pixels, row-major
    pilot_index: np.ndarray  # (num_pilots,) indices into centres
    pilot_code: np.ndarray  # (num_pilots,) 0/1 orientation code of each pilot
    data_index: np.ndarray  # (100,) indices into centres, bit k lives in cell data_index[k]
    whitening: np.ndarray  # (100,) 0/1 mask XOR-ed onto the bits before they become orientations


@lru_cache(maxsize=8)
def make_layout(key: int = 0, config: CodecConfig = CodecConfig()) -> Layout:
    """The deterministic cell layout for `key`."""
    grid = config.grid
    if (grid - 2) ** 2 != NUM_BITS:
        raise ValueError(f"grid {grid} leaves {(grid - 2) ** 2} inner cells; {NUM_BITS} are needed")
    cell = LABEL_SIZE / grid
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    centres = np.stack([(cols.ravel() + 0.5) * cell, (rows.ravel() + 0.5) * cell], axis=1)
    on_ring = (rows == 0) | (cols == 0) | (rows == grid - 1) | (cols == grid - 1)
    rng = np.random.default_rng([0x5EED, int(key)])
    pilot_index = np.flatnonzero(on_ring.ravel())
    pilot_code = _balanced_code(rng, len(pilot_index))
    data_index = np.flatnonzero(~on_ring.ravel())
    whitening = _balanced_code(rng, NUM_BITS)
    return Layout(cell, centres, pilot_index, pilot_code, data_index, whitening)


def _balanced_code(rng: np.random.Generator, n: int) -> np.ndarray:
    """n bits, half ones, in random order (a balanced code keeps both orientations equally present)."""
    code = np.zeros(n, dtype=np.int64)
    code[: n // 2] = 1
    return rng.permutation(code)


def cell_codes(bits: np.ndarray, layout: Layout) -> np.ndarray:
    """Orientation code (1 = "a", 0 = "b") of every cell, row-major, for the given secret."""
    codes = np.zeros(len(layout.centres), dtype=np.int64)
    codes[layout.pilot_index] = layout.pilot_code
    codes[layout.data_index] = np.asarray(bits, dtype=np.int64) ^ layout.whitening
    return codes


def wave_vectors(config: CodecConfig) -> np.ndarray:
    """(2, 2) wave vectors (radians per label pixel) of orientation a (row 0) and b (row 1), as (kx, ky)."""
    k = 2 * np.pi / config.period / np.sqrt(2)
    return np.array([[k, k], [k, -k]])
