"""Deploy a localizer (or an SDecoder) as ONNX files: fp32 export checked against eager, int8 by static
quantisation calibrated on decoder2's own views of a dataset's photos; a card beside each file. A file already
there whose card names the same source, settings and versions is reused (an evaluation resumed, a second export)."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from harness.core import geometry
from harness.core.constants import SEARCH_ANGLES
from harness.data import dataset_hash, load_dataset, load_image
from harness.data.reference import ReferenceSetConfig, reference_set
from harness.deploy.onnx_export import (
    FP32,
    INT8,
    OPSET,
    QUANT_SETTINGS,
    TOLERANCE,
    DeployCard,
    DeployError,
    export_onnx,
    max_abs_diff,
    quantize_int8,
    read_card,
    sha256_bytes,
    versions,
)

# The calibration photos by default: the reference world's scenes from a seed no evaluation or training set uses
# (training < 1000; evaluation 1000/1001, acceptance 2000, selection 3000-5000)
CALIB_SEED = 6000
CALIB_ROOT = Path("data/calib")
CALIB_PHOTOS = 16
CHECK_PHOTOS = 2  # photos (× the search angles) on which an export is compared with eager


def default_calibration_set(root: str | Path = CALIB_ROOT, n_photos: int = CALIB_PHOTOS) -> Path:
    """The reference world's calibration set (watermarked and clean scenes, seed 6000), made once under `root`
    (checked once per process: the check alone reads every scene)."""
    return _calibration_set(str(root), n_photos)


@functools.lru_cache(maxsize=None)
def _calibration_set(root: str, n_photos: int) -> Path:
    return reference_set(ReferenceSetConfig(n_marked=n_photos - n_photos // 4, n_clean=n_photos // 4,
                                            seed=CALIB_SEED), root)


def decoder2_views(root: str | Path, n_photos: int, angles: tuple[float, ...] = SEARCH_ANGLES) -> torch.Tensor:
    """The first `n_photos` photos of the dataset at `root` (manifest order) as decoder2 feeds its localizer: fitted
    400×400, then for each search angle PIL-rotated with the EDT border fill → (n_photos·len(angles))×3×400×400."""
    dataset = load_dataset(root)
    if len(dataset) == 0:
        raise DeployError(f"dataset {root} holds no photo to calibrate or check on")
    views = []
    for sample in list(dataset)[:n_photos]:
        fitted = geometry.fit(load_image(sample.path))
        views += [geometry.to_tensor(geometry.rotate_fill(fitted, angle)) for angle in angles]
    return torch.stack(views)


def calibration(calib: str | Path | None, n_photos: int = CALIB_PHOTOS) -> tuple[torch.Tensor, dict]:
    """Calibration views and their description (folder, dataset hash, photos, angles) for the card."""
    root = Path(calib) if calib is not None else default_calibration_set()
    views = decoder2_views(root, n_photos)
    info = {"data": str(root), "dataset_sha256": dataset_hash(root), "requested_photos": n_photos,
            "photos": int(views.shape[0]) // len(SEARCH_ANGLES),
            "views": int(views.shape[0]), "angles": list(SEARCH_ANGLES),
            "preprocessing": "decoder2: fit 400x400 LANCZOS, PIL rotate by each search angle, EDT black-border fill",
            "default": calib is None}
    return views, info


def _reusable(path: Path, expect: dict) -> bool:
    card = read_card(path)
    if card is None or not path.is_file() or sha256_bytes(path) != card.get("onnx_sha256"):
        return False
    return all(card.get(k) == v for k, v in expect.items())


def export_checked(module: nn.Module, path: Path, *, kind: str, arch: str, source: str | None,
                   source_sha256: str | None, check_views: torch.Tensor | None, input_size: int | None = None,
                   flip_test: bool = False, threads: int | None = None, log=print) -> DeployCard:
    """fp32 export of `module` to `path` (reused when its card matches), checked against eager on `check_views`."""
    expect = {"kind": kind, "runtime": FP32, "arch": arch, "input_size": input_size, "flip_test": flip_test,
              "source_sha256": source_sha256, "opset": OPSET, "versions": versions()}
    if _reusable(path, expect):
        log(f"harness.deploy: reusing {path} (its card matches)")
        return DeployCard(**read_card(path))
    module, check_views = _value(module), _value(check_views)
    export_onnx(module, path)
    diff = None
    if check_views is not None:
        diff = max_abs_diff(module, path, check_views, threads)
        log(f"harness.deploy: {path.name}: onnx.checker passed; max |ORT fp32 − eager| = {diff:.3g} over "
            f"{check_views.shape[0]} views (tolerance {TOLERANCE:g})")
        if not diff <= TOLERANCE * max(1.0, _scale(module, check_views)):
            raise DeployError(f"{path}: ONNX Runtime differs from eager by {diff:.3g} (tolerance {TOLERANCE:g})")
    card = DeployCard(file=path.name, kind=kind, runtime=FP32, arch=arch, input_size=input_size, flip_test=flip_test,
                      source=source, source_sha256=source_sha256, onnx_sha256=sha256_bytes(path),
                      size_bytes=path.stat().st_size, max_abs_diff=diff,
                      check_views=0 if check_views is None else int(check_views.shape[0]), versions=versions())
    card.write(path)
    return card


@torch.no_grad()
def _scale(module: nn.Module, views: torch.Tensor) -> float:
    """max |eager output| (a localizer's logits are O(10); an untrained net's may be far larger or smaller)."""
    was = module.training
    module.eval()
    try:
        return float(module(views[:1]).abs().max())
    finally:
        module.train(was)


def quantized(fp32_path: Path, path: Path, *, arch: str, calib: str | Path | None, n_calib: int = CALIB_PHOTOS,
              module: nn.Module | None = None, check_views: torch.Tensor | None = None, threads: int | None = None,
              log=print) -> DeployCard:
    """int8 twin of `fp32_path` at `path` (reused when its card matches)."""
    fp32_card = read_card(fp32_path) or {}
    fp32_sha = sha256_bytes(fp32_path)
    calib_root = Path(calib) if calib is not None else default_calibration_set()
    calib_sha = dataset_hash(calib_root)
    # the checkpoint the fp32 file was exported from (a team's own .onnx without a card: that file itself)
    src, src_sha = ((fp32_card.get("source"), fp32_card.get("source_sha256")) if fp32_card
                    else (str(fp32_path), fp32_sha))
    expect = {"runtime": INT8, "source_sha256": src_sha, "versions": versions()}
    card = read_card(path)
    if _reusable(path, expect) and card["quantization"]["fp32_sha256"] == fp32_sha \
            and all(card["quantization"].get(k) == v for k, v in QUANT_SETTINGS.items()) \
            and card["quantization"]["calibration"]["dataset_sha256"] == calib_sha \
            and card["quantization"]["calibration"].get("requested_photos") == n_calib:
        log(f"harness.deploy: reusing {path} (its card matches)")
        return DeployCard(**card)
    views, info = calibration(calib_root, n_calib)
    info["default"] = calib is None
    module, check_views = _value(module), _value(check_views)
    settings = quantize_int8(fp32_path, path, views.numpy())
    diff = None
    if module is not None and check_views is not None:
        diff = max_abs_diff(module, path, check_views, threads)
        log(f"harness.deploy: {path.name}: int8 (QDQ, per channel) calibrated on {info['views']} views of "
            f"{calib_root} (sha256 {calib_sha[:12]}); max |ORT int8 − eager| = {diff:.3g} (informative)")
    card = DeployCard(file=path.name, kind=fp32_card.get("kind", "localizer"), runtime=INT8, arch=arch,
                      input_size=fp32_card.get("input_size"), flip_test=fp32_card.get("flip_test", False),
                      source=src, source_sha256=src_sha,
                      onnx_sha256=sha256_bytes(path), size_bytes=path.stat().st_size, max_abs_diff=diff,
                      check_views=0 if check_views is None else int(check_views.shape[0]),
                      quantization=dict(settings, fp32_file=str(fp32_path), fp32_sha256=fp32_sha, calibration=info),
                      versions=versions())
    card.write(path)
    return card


class _Once:
    """A value made on first use (the eager module, the check views): a reused file needs neither."""

    def __init__(self, make):
        self._make, self._value = make, None

    def __call__(self):
        if self._value is None:
            self._value = self._make()
        return self._value


def _value(x):
    return x() if isinstance(x, _Once) else x


def check_views_for(calib: str | Path | None) -> torch.Tensor:
    """A few decoder2 views to compare an export with eager: the calibration set's first photos."""
    root = Path(calib) if calib is not None else default_calibration_set()
    return decoder2_views(root, CHECK_PHOTOS)


def deploy_module(module: nn.Module | Callable[[], nn.Module], runtime: str, out_dir: str | Path, name: str, *,
                  kind: str = "localizer", arch: str = "", source: str | None = None, source_sha256: str | None = None,
                  input_size: int | None = None, flip_test: bool = False, calib: str | Path | None = None,
                  n_calib: int = CALIB_PHOTOS, threads: int | None = None, log=None) -> tuple[Path, DeployCard]:
    """`module` (or a function making it, called only when a file must be made) as an ONNX file for `runtime`
    (FP32 or INT8) under `out_dir`: `<name>.onnx` (fp32, checked against eager) and, for INT8, `<name>.int8.onnx`
    quantised from it. Returns the file for the runtime and its card."""
    log = log or (lambda text: print(text, file=sys.stderr))
    if runtime not in (FP32, INT8):
        raise DeployError(f"runtime {runtime!r}: expected {FP32} or {INT8}")
    out_dir = Path(out_dir)
    module = _Once(module) if callable(module) and not isinstance(module, nn.Module) else module
    views = _Once(lambda: check_views_for(calib))  # made only when a file is (re)made, not when one is reused
    fp32 = out_dir / f"{name}.onnx"
    card = export_checked(module, fp32, kind=kind, arch=arch, source=source, source_sha256=source_sha256,
                          check_views=views, input_size=input_size, flip_test=flip_test, threads=threads, log=log)
    if runtime == FP32:
        return fp32, card
    int8 = out_dir / f"{name}.int8.onnx"
    return int8, quantized(fp32, int8, arch=arch, calib=calib, n_calib=n_calib, module=module, check_views=views,
                           threads=threads, log=log)


def quantize_file(onnx_path: str | Path, out_dir: str | Path, name: str, calib: str | Path | None = None,
                  n_calib: int = CALIB_PHOTOS, log=None) -> tuple[Path, DeployCard]:
    """A team's own fp32 .onnx file quantised to int8 under `out_dir` (`<name>.int8.onnx`)."""
    log = log or (lambda text: print(text, file=sys.stderr))
    path = Path(out_dir) / f"{name}.int8.onnx"
    return path, quantized(Path(onnx_path), path, arch="onnx", calib=calib, n_calib=n_calib, log=log)
