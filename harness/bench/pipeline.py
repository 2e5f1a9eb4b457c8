"""`python -m harness.bench.pipeline`: the reference decoder2, the batched evaluator and the forward-pass floor.

In one process and on the same photos, tilts and models (a teacher and three students, random weights):

    reference  Decoder2Reference per model, photo and tilt: decode, tilt, fit, rotate, EDT, forwards at batch 1
    batched    BatchedEvaluator over every model at once, views prepared once per photo in DataLoader workers
    floor      the same models' forward passes alone at the same batch size (localizer over every view, the
               SDecoder over as many ROIs as the batched run decoded), on ready-made inputs

and prints throughput (views per second: photo × tilt × search angle × model) with the ratios batched/reference
(target ≥ 3×) and batched wall / floor (target ≤ 1.2×). The reference is slow, so it runs on the first
`--reference-n` photos only and is compared by throughput. No oracle rows (the reference has none to compare).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tabulate import tabulate

from harness.core import geometry
from harness.core.bn import inference_context
from harness.core.constants import SEARCH_ANGLES
from harness.data import Dataset, load_dataset, load_image
from harness.models import build_localizer, build_sdecoder
from harness.pipeline.batched import BatchedEvaluator, NamedLocalizer
from harness.pipeline.reference import Decoder2Config, Decoder2Reference
from harness.pipeline.views import ViewSpec, view_loader
from harness.run.options import join_option_values, parse_tilts

TEACHER = ("hrnet_w18", 192)
STUDENTS = (("lite_hrnet_18", 192), ("pidnet_s", 192), ("hrnet_w18_small_v1", 192))


@dataclass(frozen=True)
class BenchConfig:
    n: int = 32  # photos through the batched evaluator and the floor
    tilts: tuple[float, ...] = tuple(float(t) for t in range(-5, 6))
    reference_n: int = 4  # photos through the reference (compared per view)
    batch_size: int = 8
    photos_per_step: int = 2
    workers: int = 1
    threads: int = 1  # torch threads of the main process, for all three
    device: str = "cpu"
    bn_mode: str = "eval"  # PIDNet's pyramid pooling has one value per channel: it cannot run in "demo" mode
    data: str | None = None  # a dataset folder; None: a synthetic set in a temporary folder
    seed: int = 1000


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: float
    views: int  # photo × tilt × angle × model

    @property
    def throughput(self) -> float:
        return self.views / self.seconds


def build_models(device: str) -> tuple[list[NamedLocalizer], nn.Module]:
    torch.manual_seed(0)
    localizers = [NamedLocalizer(TEACHER[0], "teacher", build_localizer(*TEACHER).to(device))]
    localizers += [NamedLocalizer(name, "student", build_localizer(name, size).to(device)) for name, size in STUDENTS]
    return localizers, build_sdecoder("reference_sdecoder").to(device)


def time_reference(cfg: BenchConfig, dataset: Dataset, localizers: list[NamedLocalizer],
                   sdecoder: nn.Module) -> Timing:
    """Every model reads every (photo, tilt) on its own, from the file on, as a plain per-image script would."""
    samples = list(dataset)[: cfg.reference_n]
    _sync(cfg.device)
    t0 = time.perf_counter()
    for loc in localizers:
        reader = Decoder2Reference(loc.module, sdecoder, Decoder2Config(bn_mode=cfg.bn_mode))
        for sample in samples:
            photo = load_image(sample.path)
            for tilt in cfg.tilts:
                reader.decode(geometry.tilt_photo(photo, tilt), sample.secret)
    _sync(cfg.device)
    views = len(samples) * len(cfg.tilts) * len(SEARCH_ANGLES) * len(localizers)
    return Timing("reference", time.perf_counter() - t0, views)


def time_batched(cfg: BenchConfig, dataset: Dataset, localizers: list[NamedLocalizer],
                 sdecoder: nn.Module) -> tuple[Timing, BatchedEvaluator]:
    evaluator = BatchedEvaluator(localizers, sdecoder, SEARCH_ANGLES, cfg.bn_mode, cfg.batch_size,
                                 oracle=False, device=cfg.device)
    samples = list(dataset)[: cfg.n]
    loader = view_loader(samples, list(range(len(samples))), ViewSpec(cfg.tilts), cfg.workers)
    t0 = time.perf_counter()
    step = []
    for photo in loader:
        step.append(photo)
        if len(step) == cfg.photos_per_step or photo.index == len(samples) - 1:
            evaluator.decode(step, [samples[p.index].secret for p in step])
            step = []
    _sync(cfg.device)
    views = len(samples) * len(cfg.tilts) * len(SEARCH_ANGLES) * len(localizers)
    return Timing("batched", time.perf_counter() - t0, views), evaluator


@torch.inference_mode()
def time_floor(cfg: BenchConfig, localizers: list[NamedLocalizer], sdecoder: nn.Module,
               rois: dict[str, int]) -> Timing:
    """Forward passes alone: each localizer over every view, the SDecoder over the ROIs the batched run had."""
    n_views = cfg.n * len(cfg.tilts) * len(SEARCH_ANGLES)
    batch = torch.rand(cfg.batch_size, 3, 400, 400, generator=torch.Generator().manual_seed(0)).to(cfg.device)
    seconds = 0.0
    for loc in localizers:
        with inference_context(loc.module, cfg.bn_mode):
            seconds += _timed_batches(loc.module, batch, n_views, cfg.device)
        with inference_context(sdecoder, cfg.bn_mode):
            seconds += _timed_batches(sdecoder, batch, rois.get(loc.name, 0), cfg.device)
    return Timing("floor", seconds, n_views * len(localizers))


def _timed_batches(module: nn.Module, batch: torch.Tensor, n_items: int, device: str) -> float:
    seconds = 0.0
    for start in range(0, n_items, batch.shape[0]):
        x = batch[: min(batch.shape[0], n_items - start)]
        _sync(device)
        t0 = time.perf_counter()
        module(x)
        _sync(device)
        seconds += time.perf_counter() - t0
    return seconds


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _dataset(cfg: BenchConfig, tmp: Path) -> Dataset:
    if cfg.data is not None:
        return load_dataset(cfg.data)
    from harness.data.synth import SynthConfig, generate

    return load_dataset(generate(SynthConfig(kind="random", n=max(cfg.n, cfg.reference_n), seed=cfg.seed,
                                             tilt_range=0.0), tmp / "bench"))


def _warm_up(localizers: list[NamedLocalizer], sdecoder: nn.Module, cfg: BenchConfig) -> None:
    x = torch.rand(1, 3, 400, 400).to(cfg.device)
    with torch.no_grad():
        for module in [loc.module for loc in localizers] + [sdecoder]:
            with inference_context(module, cfg.bn_mode):
                module(x)


def run(cfg: BenchConfig) -> list[Timing]:
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = _dataset(cfg, Path(tmp))
        localizers, sdecoder = build_models(cfg.device)
        _warm_up(localizers, sdecoder, cfg)
        reference = time_reference(cfg, dataset, localizers, sdecoder)
        batched, evaluator = time_batched(cfg, dataset, localizers, sdecoder)
    floor = time_floor(cfg, localizers, sdecoder, dict(evaluator.timings.rois))
    return [reference, batched, floor]


def report(cfg: BenchConfig, timings: list[Timing]) -> str:
    reference, batched, floor = timings
    rows = [[t.name, t.views, f"{t.seconds:.2f}", f"{t.throughput:.2f}"] for t in timings]
    table = tabulate(rows, headers=["run", "views", "seconds", "views/s"], tablefmt="github")
    speedup = batched.throughput / reference.throughput
    overhead = batched.seconds / floor.seconds
    return "\n".join([
        f"models: {TEACHER[0]}@{TEACHER[1]} (teacher), " + ", ".join(f"{n}@{s}" for n, s in STUDENTS)
        + f"; SDecoder reference_sdecoder; bn_mode {cfg.bn_mode}; device {cfg.device}; threads {cfg.threads}; "
        f"workers {cfg.workers}; batch {cfg.batch_size}",
        f"photos: {cfg.n} batched/floor, {cfg.reference_n} reference; tilts {len(cfg.tilts)}; angles 3",
        table,
        f"batched / reference throughput: {speedup:.2f}x (target >= 3x)",
        f"batched wall / floor: {overhead:.2f}x (target <= 1.2x)",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.bench.pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=BenchConfig.n)
    ap.add_argument("--tilts", default="-5:5:1")
    ap.add_argument("--reference-n", type=int, default=BenchConfig.reference_n)
    ap.add_argument("--batch-size", type=int, default=BenchConfig.batch_size)
    ap.add_argument("--photos-per-step", type=int, default=BenchConfig.photos_per_step)
    ap.add_argument("--workers", type=int, default=BenchConfig.workers)
    ap.add_argument("--threads", type=int, default=BenchConfig.threads)
    ap.add_argument("--device", default=BenchConfig.device)
    ap.add_argument("--bn-mode", choices=("demo", "eval"), default=BenchConfig.bn_mode)
    ap.add_argument("--data", default=None, help="dataset folder (default: a synthetic set made on the fly)")
    args = ap.parse_args(join_option_values(list(sys.argv[1:] if argv is None else argv)))
    cfg = BenchConfig(n=args.n, tilts=parse_tilts(args.tilts), reference_n=args.reference_n,
                      batch_size=args.batch_size, photos_per_step=args.photos_per_step, workers=args.workers,
                      threads=args.threads, device=args.device, bn_mode=args.bn_mode, data=args.data)
    print(report(cfg, run(cfg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
