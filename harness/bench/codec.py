"""Benchmark of the reference codec: `python -m harness.bench.codec [--n 200] [--seed 0]`.

Every target is printed with its measured value and PASS/FAIL; `--sweeps N` adds the chain per camera tilt and the
scene ROI per box error (N scenes per row). Label-alone conditions take a natural label
(`label_content`), watermark it and hand the decoder a distorted copy of the label as the ROI. Scene conditions use
the scene generator (`make_scene`, label at 45–80 % of the frame, perspective jitter, blur, noise, JPEG 75–95):

- scene ROI, residual ±2°: the photo is tilted by a residual angle in [−2°, 2°] (bicubic), the ROI is the bounding
  box of the tilted ground-truth mask (background corners included), resized to 400×400;
- chain −5..5°: decoder2 with the ground-truth mask as localizer: tilt in [−5°, 5°], rotations 0/+3/−3° (PIL
  nearest + EDT fill), ROI per angle, the angle with the lowest BCE against the secret is kept.
"""
from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from harness.codec import ReferenceSDecoder, embed
from harness.core import metrics
from harness.core.constants import SEARCH_ANGLES
from harness.core.geometry import rotate_fill, tilt_mask, tilt_photo
from harness.core.roi import box_from_mask, crop_box
from harness.data.content import background, label_content
from harness.data.synth import SynthConfig, make_scene

MARGIN = 40  # background around the label for in-place rotations and box errors


@dataclass(frozen=True)
class Target:
    name: str
    low: float  # PASS when low ≤ value ≤ high
    high: float = float("inf")


TARGETS = (
    Target("PSNR mean (dB)", 34.0), Target("PSNR min (dB)", 34.0), Target("bit acc 0°", 0.995),
    Target("bit acc ±1°", 0.97), Target("bit acc ±2°", 0.97), Target("bit acc JPEG 75", 0.95),
    Target("bit acc box error 3 %", 0.95), Target("bit acc un-watermarked", 0.45, 0.55),
    Target("bit acc scene ROI, residual ±2°", 0.97), Target("bit acc chain −5..5° (GT mask)", 0.97),
    Target("ms per ROI (1 thread, CPU)", 0.0, 40.0),
)


# ---------------------------------------------------------------------------------------------- conversions


def to_roi(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 → 1×3×H×W float in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


# ---------------------------------------------------------------------------------------------- label alone


def on_background(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """The label in the middle of a larger background, so rotations and outward box errors show background."""
    size = label.shape[0] + 2 * MARGIN
    canvas = background(rng, size).copy()
    canvas[MARGIN:-MARGIN, MARGIN:-MARGIN] = label
    return canvas


def rotated_in_place(canvas: np.ndarray, angle: float) -> np.ndarray:
    turned = np.asarray(Image.fromarray(canvas).rotate(angle, resample=Image.Resampling.BICUBIC))
    return turned[MARGIN:-MARGIN, MARGIN:-MARGIN]


def box_error_roi(rng: np.random.Generator, canvas: np.ndarray, error: float) -> torch.Tensor:
    """The label's box with every edge moved by a uniform error in ±error of the side, resized to 400×400."""
    side = canvas.shape[0] - 2 * MARGIN
    box = perturbed_box(rng, (MARGIN, MARGIN, MARGIN + side, MARGIN + side), error, canvas.shape[0])
    return crop_box(to_roi(canvas)[0], box)[None]


def perturbed_box(rng: np.random.Generator, box: tuple[int, int, int, int], error: float, size: int = 400) -> tuple:
    """Every edge of the box moved by a uniform error in ±error of the box's side, kept inside the size×size image."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    moved = np.array(box) + rng.uniform(-error, error, 4) * [width, height, width, height]
    return tuple(int(v) for v in np.clip(np.rint(moved), 0, size))


def label_conditions(rng: np.random.Generator, canvas: np.ndarray, marked: np.ndarray) -> dict[str, list]:
    """ROIs per label-alone condition (several ROIs where a condition has both signs)."""
    return {
        "bit acc 0°": [to_roi(marked)],
        "bit acc ±1°": [to_roi(rotated_in_place(canvas, a)) for a in (1.0, -1.0)],
        "bit acc ±2°": [to_roi(rotated_in_place(canvas, a)) for a in (2.0, -2.0)],
        "bit acc JPEG 75": [to_roi(jpeg(marked, 75))],
        "bit acc box error 3 %": [box_error_roi(rng, canvas, 0.03)],
    }


# ---------------------------------------------------------------------------------------------- scenes


def scene_roi(photo: Image.Image, mask: np.ndarray, angle: float) -> torch.Tensor | None:
    """decoder2's rotation of the photo (nearest + EDT fill) and the ROI from the same rotation of the true mask."""
    rotated = np.asarray(rotate_fill(photo, angle)) if angle else np.asarray(photo)
    box = box_from_mask(tilt_mask(mask, angle) if angle else mask)
    return None if box is None else crop_box(to_roi(rotated)[0], box)[None]


def tilted_scene(index: int, seed: int, tilt: float) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    scene = make_scene(SynthConfig(kind="random", n=index + 1, seed=seed, tilt_range=0.0), index)
    photo = tilt_photo(Image.fromarray(scene.photo), tilt)
    return photo, tilt_mask(scene.mask > 0, tilt), scene.secret.astype(np.int64)


# ---------------------------------------------------------------------------------------------- measuring


def bit_acc(logits: torch.Tensor, bits: np.ndarray) -> float:
    read = metrics.bits_from_probs(torch.sigmoid(logits[0]).numpy())
    return metrics.count_correct(bits, read) / len(bits)


def bce(logits: torch.Tensor, bits: np.ndarray) -> float:
    target = torch.from_numpy(bits).float()[None]
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, target))


def chain_acc(decoder: Callable, photo: Image.Image, mask: np.ndarray, bits: np.ndarray) -> float:
    """decoder2 over the search angles with the true mask; the angle with the lowest BCE is kept."""
    outcomes = []
    for angle in SEARCH_ANGLES:
        roi = scene_roi(photo, mask, angle)
        if roi is not None:
            logits = decoder(roi)
            outcomes.append((bce(logits, bits), bit_acc(logits, bits)))
    return min(outcomes)[1] if outcomes else 0.5


def run(n: int, seed: int, key: int) -> dict[str, float]:
    torch.set_num_threads(1)
    decoder = ReferenceSDecoder(key).eval()
    decode = torch.no_grad()(decoder)
    rng = np.random.default_rng([seed, 0xBE4C])
    values: dict[str, list[float]] = {}
    cpu_times: list[float] = []
    wall_times: list[float] = []

    def record(name: str, value: float) -> None:
        values.setdefault(name, []).append(value)

    for index in range(n):
        label, bits = label_content(rng), rng.integers(0, 2, 100)
        marked = embed(label, bits, key)
        record("PSNR", psnr(marked, label))
        canvas = on_background(rng, marked)
        for name, rois in label_conditions(rng, canvas, marked).items():
            for roi in rois:
                cpu, wall = time.process_time(), time.perf_counter()
                record(name, bit_acc(decode(roi), bits))
                cpu_times.append(time.process_time() - cpu)
                wall_times.append(time.perf_counter() - wall)
        record("bit acc un-watermarked", bit_acc(decode(to_roi(label)), bits))
        photo, mask, secret = tilted_scene(index, seed, float(rng.uniform(-2, 2)))
        record("bit acc scene ROI, residual ±2°", bit_acc(decode(scene_roi(photo, mask, 0.0)), secret))
        photo, mask, secret = tilted_scene(index, seed, float(rng.uniform(-5, 5)))
        record("bit acc chain −5..5° (GT mask)", chain_acc(decode, photo, mask, secret))
    summary = {name: float(np.mean(v)) for name, v in values.items() if name != "PSNR"}
    summary["PSNR mean (dB)"] = float(np.mean(values["PSNR"]))
    summary["PSNR min (dB)"] = float(np.min(values["PSNR"]))
    # CPU time of this process: on a shared machine the wall clock also counts other processes' turns
    summary["ms per ROI (1 thread, CPU)"] = 1000 * float(np.median(cpu_times))
    summary["ms per ROI (wall clock)"] = 1000 * float(np.median(wall_times))
    return summary


def sweeps(n: int, seed: int, key: int) -> str:
    """Chain accuracy per camera tilt and scene-ROI accuracy per box error (n scenes per row)."""
    torch.set_num_threads(1)
    decode = torch.no_grad()(ReferenceSDecoder(key).eval())
    rng = np.random.default_rng([seed, 0x5EE9])
    lines = ["decoder2 chain with the ground-truth mask, per camera tilt:"]
    for tilt in range(-5, 6):
        accs = [chain_acc(decode, *tilted_scene(i, seed + 1, float(tilt))) for i in range(n)]
        lines.append(f"  tilt {tilt:+d}°  bit acc {np.mean(accs):.4f}  (min {np.min(accs):.2f})")
    lines.append("scene ROI (residual ±2°) with every box edge off by a uniform error:")
    scenes = [tilted_scene(i, seed + 2, float(rng.uniform(-2, 2))) for i in range(n)]
    for error in (0.0, 0.03, 0.05, 0.08):
        accs = []
        for photo, mask, secret in scenes:
            box = perturbed_box(rng, box_from_mask(mask), error)
            accs.append(bit_acc(decode(crop_box(to_roi(np.asarray(photo))[0], box)[None]), secret))
        lines.append(f"  ±{100 * error:.0f} %  bit acc {np.mean(accs):.4f}  (min {np.min(accs):.2f})")
    return "\n".join(lines)


def report(summary: dict[str, float], n: int) -> str:
    lines = [f"reference codec benchmark, {n} labels/scenes", f"{'target':<34} {'value':>9}  {'bound':<14} result"]
    for target in TARGETS:
        value = summary[target.name]
        bound = f"≥ {target.low:g}" if target.high == float("inf") else f"{target.low:g}..{target.high:g}"
        verdict = "PASS" if target.low <= value <= target.high else "FAIL"
        lines.append(f"{target.name:<34} {value:>9.4f}  {bound:<14} {verdict}")
    lines.append(f"{'ms per ROI (wall clock)':<34} {summary['ms per ROI (wall clock)']:>9.4f}  (information)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="labels (and scenes) to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key", type=int, default=0)
    parser.add_argument("--sweeps", type=int, default=0, metavar="N",
                        help="also print the chain per tilt and the scene ROI per box error, N scenes per row")
    args = parser.parse_args(argv)
    print(report(run(args.n, args.seed, args.key), args.n))
    if args.sweeps:
        print(sweeps(args.sweeps, args.seed, args.key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
