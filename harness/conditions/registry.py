"""Name → camera condition registry, combinations `a+b`, severities as text, and per-sample seeds.

A condition is a deterministic function `(photo: PIL RGB, mask: bool H×W | None, severity: float, seed: int) →
(photo, mask)` applied to the photo before decoder2's fit; a geometric one takes the ground-truth mask through the
same geometry (so the oracle ROI and the IoU stay exact) and also moves points (`points`, for quads); a photometric
one leaves the mask as it is. Each declares its identity severity (the plain chain, pixel for pixel), its default
grid and a mild → strong ladder (three severities) that combinations pair up.

A combination `a+b` applies `a` then `b`; its severity is a pair written `3:70`. Every severity is a tuple of
floats inside the library (one per part), text (`severity_text`) in records.

Seeds: a condition that draws random numbers (noise) gets `condition_seed(run_seed, sample_index, name, severity)`,
an integer from a numpy `SeedSequence` over those four, so a photo reads the same noise whichever process, chunk or
resumed run prepares it.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

Severity = tuple[float, ...]
ConditionFn = Callable[[Image.Image, "np.ndarray | None", float, int], "tuple[Image.Image, np.ndarray | None]"]
PointsFn = Callable[[np.ndarray, float, "tuple[int, int]"], np.ndarray]


@dataclass(frozen=True)
class Condition:
    """One registered camera condition."""

    name: str
    fn: ConditionFn
    identity: float  # the severity that leaves the photo and the mask exactly as they are
    grid: tuple[float, ...]  # default sweep, identity included, in plotting order
    ladder: tuple[float, float, float]  # mild, medium, strong: what combinations pair
    unit: str  # what the severity measures ("degrees", "sigma px", "quality", ...)
    source: str  # where the grid comes from (docs/conditions.md says more)
    geometric: bool = False  # moves pixels (the mask follows); False: changes values only
    points: PointsFn | None = None  # geometric: continuous (x, y) points moved as the pixels move

    def apply(self, photo: Image.Image, mask: np.ndarray | None, severity: float,
              seed: int = 0) -> tuple[Image.Image, np.ndarray | None]:
        return self.fn(photo, mask, float(severity), int(seed))


_REGISTRY: dict[str, Condition] = {}


def register_condition(name: str, *, identity: float, grid: tuple[float, ...], ladder: tuple[float, float, float],
                       unit: str, source: str, geometric: bool = False, points: PointsFn | None = None):
    """Decorator: `@register_condition("blur", identity=0, grid=(0, 1, 2, 3), ...)` over the condition's function."""
    if "+" in name or "=" in name or "," in name or ":" in name or not name:
        raise ValueError(f"condition name {name!r}: no '+', '=', ',' or ':' (they spell combinations and grids)")
    if identity not in grid:
        raise ValueError(f"condition {name!r}: the grid {grid} must hold the identity severity {identity}")

    def wrap(fn: ConditionFn) -> ConditionFn:
        if name in _REGISTRY:
            raise ValueError(f"condition {name!r} is already registered")
        _REGISTRY[name] = Condition(name, fn, float(identity), tuple(float(g) for g in grid),
                                    tuple(float(v) for v in ladder), unit, source, geometric, points)
        return fn

    return wrap


def list_conditions() -> list[str]:
    return sorted(_REGISTRY)


def get_condition(name: str) -> Condition:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown camera condition {name!r}; known: {', '.join(list_conditions())} "
                       "(combine with '+', e.g. tilt+jpeg)") from None


@dataclass(frozen=True)
class Combined:
    """A condition or a combination of conditions (`a+b`): the parts applied in order, one severity each."""

    name: str
    parts: tuple[Condition, ...]

    @property
    def identity(self) -> Severity:
        return tuple(p.identity for p in self.parts)

    @property
    def geometric(self) -> bool:
        return any(p.geometric for p in self.parts)

    def default_grid(self) -> tuple[Severity, ...]:
        """A single condition: its grid. A combination: the identity, then the parts' ladders paired step by step."""
        if len(self.parts) == 1:
            return tuple((g,) for g in self.parts[0].grid)
        return (self.identity, *zip(*(p.ladder for p in self.parts)))

    def check(self, severity: Severity) -> Severity:
        severity = tuple(float(s) + 0.0 for s in severity)  # + 0.0: no "-0"
        if len(severity) != len(self.parts):
            raise ValueError(f"condition {self.name!r} takes {len(self.parts)} severities (e.g. "
                             f"{severity_text(self.parts_ladder_example())}), got {severity_text(severity)!r}")
        if not all(math.isfinite(s) for s in severity):
            raise ValueError(f"condition {self.name!r}: severity {severity} is not finite")
        return severity

    def parts_ladder_example(self) -> Severity:
        return tuple(p.ladder[1] for p in self.parts)

    def is_identity(self, severity: Severity) -> bool:
        return tuple(severity) == self.identity

    def tilt_deg(self, severity: Severity) -> float:
        """The camera tilt this severity applies (0 when no part is the tilt): the records' tilt_deg."""
        return next((float(s) + 0.0 for p, s in zip(self.parts, severity) if p.name == "tilt"), 0.0)

    def apply(self, photo: Image.Image, mask: np.ndarray | None, severity: Severity, seed: int = 0,
              index: int = 0) -> tuple[Image.Image, np.ndarray | None]:
        """Every part in order, each with its own seed from (seed, sample index, part name, severity)."""
        severity = self.check(severity)
        for part, s in zip(self.parts, severity):
            photo, mask = part.apply(photo, mask, s, condition_seed(seed, index, part.name, s))
        return photo, mask

    def points(self, pts: np.ndarray, severity: Severity, size: tuple[int, int]) -> np.ndarray:
        """Points moved as the pixels move (photometric parts leave them; a size-changing part is not supported)."""
        for part, s in zip(self.parts, self.check(severity)):
            if part.points is not None:
                pts = part.points(pts, s, size)
        return pts


def resolve(name: str) -> Combined:
    """"blur" or "tilt+jpeg" → the parts; an unknown part raises naming the known conditions."""
    names = [n.strip() for n in name.split("+")]
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"condition {name!r}: expected NAME or NAME+NAME with distinct names")
    return Combined("+".join(names), tuple(get_condition(n) for n in names))


# ------------------------------------------------------------------------------------------------------- text


def severity_text(severity: Severity) -> str:
    """(3.0, 70.0) → "3:70"; (0.5,) → "0.5". The severity column of the records."""
    return ":".join(f"{float(s) + 0.0:g}" for s in severity)


def parse_severity(text: str) -> Severity:
    """"3:70" → (3.0, 70.0)."""
    try:
        return tuple(float(v) + 0.0 for v in text.split(":"))
    except ValueError:
        raise ValueError(f"severity {text!r}: expected a number or numbers joined by ':' (e.g. 3:70)") from None


def parse_condition(text: str) -> tuple[str, tuple[Severity, ...]]:
    """`NAME` (default grid), `NAME=S1,S2,...`, `a+b=S1:T1,S2:T2`; a single condition also takes `start..stop..step`
    as `A:B:C` only when it has one part and three numbers (e.g. `tilt=-5:5:1`). Duplicates are an error."""
    name, _, grid_text = text.partition("=")
    combined = resolve(name.strip())
    if not grid_text.strip():
        grid = combined.default_grid()
    else:
        items = [g.strip() for g in grid_text.split(",") if g.strip()]
        if len(combined.parts) == 1 and len(items) == 1 and items[0].count(":") == 2:
            grid = tuple((v,) for v in _range(items[0], text))
        else:
            grid = tuple(combined.check(parse_severity(g)) for g in items)
    grid = tuple(combined.check(s) for s in grid)
    if not grid:
        raise ValueError(f"--condition {text!r}: no severity")
    if len(set(grid)) != len(grid):
        raise ValueError(f"--condition {text!r}: a severity appears twice")
    return combined.name, grid


def _range(text: str, option: str) -> tuple[float, ...]:
    start, stop, step = (float(v) for v in text.split(":"))
    if step <= 0 or stop < start:
        raise ValueError(f"--condition {option!r}: expected start:stop:step with step > 0 and stop ≥ start")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return tuple(round(start + i * step, 9) + 0.0 for i in range(count))


# ------------------------------------------------------------------------------------------------------ seeds


def condition_seed(seed: int, index: int, name: str, severity: float) -> int:
    """A 32-bit seed from SeedSequence(seed, sample index, crc32(name), the severity's float64 bits)."""
    bits = struct.unpack("<Q", struct.pack("<d", float(severity) + 0.0))[0]
    entropy = [int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, zlib.crc32(name.encode()), bits]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
