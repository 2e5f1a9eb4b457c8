"""Evaluation runs: localizers × dataset × conditions → per-sample records and a summary with provenance.

`evaluate(cfg, out_dir)` reads as build → run → aggregate → write:

    build      the dataset (validated), the models (registry + checkpoints), a probe of their output shapes
    run        photos in chunks: views prepared once per photo (DataLoader workers) and decoded by every model and
               the oracle together (`BatchedEvaluator`); each finished chunk's records written atomically
    aggregate  parts merged and sorted into records.csv; per (model, roi_source) figures (`summary.aggregate`)
    write      summary.json: the figures, the resolved config and the provenance; timings kept apart

Out dir:

    run.json                 the resolved config, dataset hash and checkpoints the parts belong to (checked on resume)
    parts/chunk-00000.csv    records of chunk 0 (photos 0 .. chunk_size-1 in manifest order)
    parts/timing-00000.csv   per-row milliseconds of chunk 0 (kept out of the records)
    records.csv              every record, sorted by (model, sample_id, tilt_deg, roi_source)
    timings.csv, summary.json

A run that stops resumes where it stopped: finished chunks are skipped, and the records come out byte-identical to
an uninterrupted run. Under `torchrun` each rank takes the chunks c with c % world_size == rank; rank 0 merges.

Clean photos (no secret) are scored against the run's reference secret: `fpr_secret` when given, else the secret
of the first watermarked sample in manifest order. Their bits correct give the empirical FPR beside the binomial
threshold's TPR.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from harness import geometry, summary
from harness.bn import BN_MODES, inference_context
from harness.data import Dataset, Sample, dataset_hash, load_dataset, parse_secret
from harness.pipeline.batched import ORACLE, BatchedEvaluator, Decode, NamedLocalizer
from harness.pipeline.views import DECODER2_ANGLES, PhotoViews, ViewSpec, view_loader
from harness.records import Record, finished_chunks, merge_parts, part_path, to_csv, write_atomic
from harness.roi import resolve_roi_fn
from harness.zoo import build_localizer, build_sdecoder, list_cards, sha256_file

DEFAULT_TILTS = tuple(float(t) for t in range(-5, 6))
ROLES = ("teacher", "student")


class EvalError(ValueError):
    """The run cannot start: a model, the dataset or the out dir does not fit the configuration."""


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # a registered architecture
    ckpt: str | None = None  # None: the architecture's own (random or built-in) weights
    input_size: int | None = None  # localizers: the square side the network sees; None: as given (400)
    role: str = "student"  # "teacher" or "student" (SDecoder: ignored)
    name: str = ""  # the label in records; "" → arch
    mask_from: str | None = None  # student_use_teacher_mask: label of the localizer whose mask gives the ROI
    flip_test: bool = False  # localizers: also read the mirror image and average the logits (HRNet's flip test)

    @property
    def label(self) -> str:
        return self.name or self.arch


def zoo_specs(root: str | Path = "students") -> tuple[ModelSpec, ...]:
    """The localizers of the model cards under `root`, teachers first (then by card name)."""
    cards = sorted(list_cards(root), key=lambda c: (c.role != "teacher", c.name))
    return tuple(ModelSpec(arch=c.arch, ckpt=str(c.checkpoint_path) if c.checkpoint else None,
                           input_size=c.input_size, role=c.role, name=c.name, flip_test=c.flip_test) for c in cards)


@dataclass(frozen=True)
class EvalConfig:
    localizers: tuple[ModelSpec, ...]
    sdecoder: ModelSpec
    data: str  # dataset folder (manifest.csv)
    tilts: tuple[float, ...] = DEFAULT_TILTS  # camera tilt conditions, degrees (PIL sense: counter-clockwise)
    angles: tuple[float, ...] = DECODER2_ANGLES
    bn_mode: str = "demo"  # "demo": per-image BatchNorm statistics, as the demo's batch-1 train(); "eval"
    fill: str = "black"  # EDT border of the search rotation: "black" (the demo, by value) or "validity"
    roi_fn: str | None = None  # "module:function" of a user ROI step; None: crop_mask_and_image
    oracle: bool = True  # also decode with the ground-truth mask's box (model "oracle")
    batch_size: int = 8  # views per localizer forward, ROIs per SDecoder forward
    photos_per_step: int = 2  # photos decoded together (their tilts × angles are batched)
    chunk_size: int = 8  # photos per records part: the unit of resume and of sharding
    workers: int = 0  # DataLoader processes preparing views (0: in the main process)
    device: str = "cpu"
    fpr_secret: str | None = None  # 0/1 text scoring clean photos; None: the first watermarked sample's secret
    mode: str = "custom"  # run label written in every record ("quick" / "full" for the suites and the gate)

    def __post_init__(self) -> None:
        for key in ("tilts", "angles"):  # 1 and 1.0 are the same condition: one spelling in run.json
            object.__setattr__(self, key, tuple(float(v) + 0.0 for v in getattr(self, key)))
        object.__setattr__(self, "localizers", tuple(self.localizers))
        if not self.localizers:
            raise EvalError("no localizer to evaluate")
        if self.bn_mode not in BN_MODES:
            raise EvalError(f"bn_mode {self.bn_mode!r}: expected one of {BN_MODES}")
        if self.fill not in geometry.FILLS:
            raise EvalError(f"fill {self.fill!r}: expected one of {geometry.FILLS}")
        if not self.tilts or not self.angles:
            raise EvalError("tilts and angles must not be empty")
        if len(set(self.tilts)) != len(self.tilts) or len(set(self.angles)) != len(self.angles):
            raise EvalError(f"a tilt or search angle appears twice: tilts {self.tilts}, angles {self.angles}")
        for key in ("batch_size", "photos_per_step", "chunk_size"):
            if getattr(self, key) < 1:
                raise EvalError(f"{key} must be >= 1, got {getattr(self, key)}")
        bad_roles = [m.label for m in self.localizers if m.role not in ROLES]
        if bad_roles:
            raise EvalError(f"localizers {bad_roles}: role must be one of {ROLES}")


@dataclass(frozen=True)
class Models:
    localizers: list[NamedLocalizer]
    sdecoder: nn.Module
    checkpoints: dict[str, str | None]  # model label → sha256 of its checkpoint file (None: no file)


@dataclass(frozen=True)
class Summary:
    results: list[dict]  # per (model, roi_source), see harness.summary
    provenance: dict
    timing: dict  # per model: seconds in forward passes, ROI steps; wall time of this process

    def to_json(self) -> str:
        doc = {"results": self.results, "provenance": self.provenance, "timing": self.timing}
        return json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------------------ story


def evaluate(cfg: EvalConfig, out_dir: str | Path, models: Models | None = None, rank: int = 0,
             world_size: int = 1, device: str | None = None, progress: bool = True) -> Summary | None:
    """Run `cfg` into `out_dir` and return the summary (None on ranks other than 0 of a distributed run).

    `models` replaces the registry build (models made in code); `device` overrides `cfg.device` for this process
    (a rank's own GPU) without changing the configuration the records belong to.
    """
    out_dir = Path(out_dir)
    device = device or cfg.device
    started = time.perf_counter()
    dataset, reference = _build_dataset(cfg)
    models = models if models is not None else build_models(cfg, device)
    check_models(models, n_bits=len(reference), bn_mode=cfg.bn_mode)
    evaluator = BatchedEvaluator(models.localizers, models.sdecoder, cfg.angles, cfg.bn_mode, cfg.batch_size,
                                 resolve_roi_fn(cfg.roi_fn), cfg.oracle, device)
    run_id = _run_identity(cfg, dataset, models)
    _claim_out_dir(out_dir, run_id, rank, world_size)
    chunks = _my_chunks(len(dataset), cfg.chunk_size, out_dir, rank, world_size)
    _run_chunks(cfg, dataset, reference, evaluator, models, chunks, out_dir, progress and rank == 0)
    _barrier(world_size)
    if rank != 0:
        return None
    result = _aggregate(cfg, out_dir, len(dataset), len(reference), run_id, evaluator, device, started)
    write_atomic(out_dir / "summary.json", result.to_json())
    return result


# ------------------------------------------------------------------------------------------------------ build


def _build_dataset(cfg: EvalConfig) -> tuple[Dataset, np.ndarray]:
    dataset = load_dataset(cfg.data)
    return dataset, reference_secret(cfg, dataset)


def reference_secret(cfg: EvalConfig, dataset: Dataset) -> np.ndarray:
    """The secret clean photos are scored against: `fpr_secret`, else the first watermarked sample's."""
    if cfg.fpr_secret is not None:
        try:
            return parse_secret(cfg.fpr_secret)
        except ValueError as err:
            raise EvalError(f"fpr_secret: {err}") from err
    for sample in dataset:
        if sample.secret is not None:
            return sample.secret
    raise EvalError(f"dataset {cfg.data} holds no watermarked sample: pass fpr_secret to score its clean photos")


def build_models(cfg: EvalConfig, device: str | None = None) -> Models:
    """Every localizer and the SDecoder from the registry, checkpoints loaded strictly and hashed."""
    device = device or cfg.device
    labels = [m.label for m in cfg.localizers]
    duplicates = sorted({n for n in labels if labels.count(n) > 1})
    if duplicates:
        raise EvalError(f"localizer names {duplicates} appear twice; give each a distinct label "
                        "(--localizer LABEL:NAME=CKPT)")
    localizers = [NamedLocalizer(m.label, m.role, build_localizer(m.arch, m.input_size, m.ckpt, m.flip_test).to(device),
                                 m.mask_from) for m in cfg.localizers]
    sdecoder = build_sdecoder(cfg.sdecoder.arch, cfg.sdecoder.ckpt).to(device)
    checkpoints = {m.label: _sha256(m.ckpt) for m in cfg.localizers}
    checkpoints["sdecoder:" + cfg.sdecoder.label] = _sha256(cfg.sdecoder.ckpt)
    return Models(localizers, sdecoder, checkpoints)


def _sha256(path: str | None) -> str | None:
    return None if path is None else sha256_file(path)


@torch.no_grad()
def check_models(models: Models, n_bits: int, bn_mode: str = "demo", probe_side: int = 128) -> None:
    """One small forward per model in the run's BN mode, before the run: a localizer must give B×1×h×w logits,
    the SDecoder B×n_bits (the secrets' length); a model that cannot run at all fails here too."""
    device = _device_of(models.sdecoder)
    for loc in models.localizers:
        probe = torch.rand(1, 3, probe_side, probe_side, generator=torch.Generator().manual_seed(0))
        with inference_context(loc.module, bn_mode):
            try:
                out = loc.module(probe.to(_device_of(loc.module)))
            except Exception as err:  # e.g. a BatchNorm that cannot use per-image statistics in demo mode
                raise EvalError(f"localizer {loc.name!r} failed on a 1×3×{probe_side}×{probe_side} probe: "
                                f"{type(err).__name__}: {err}") from err
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[:2] != (1, 1):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise EvalError(f"localizer {loc.name!r} returns {shape} for one image; a localizer must return "
                            f"B×1×h×w mask logits (one channel)")
    roi = torch.rand(1, 3, 400, 400, generator=torch.Generator().manual_seed(0)).to(device)
    with inference_context(models.sdecoder, bn_mode):
        try:
            out = models.sdecoder(roi)
        except Exception as err:
            raise EvalError(f"SDecoder failed on a 1×3×400×400 probe: {type(err).__name__}: {err}") from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != n_bits:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EvalError(f"SDecoder returns {shape} for one ROI; the secrets have {n_bits} bits, so it must "
                        f"return B×{n_bits} logits")


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _run_identity(cfg: EvalConfig, dataset: Dataset, models: Models) -> dict:
    """What the records of this out dir belong to: a resumed run must match it exactly.

    The number of DataLoader workers is left out: it never changes an answer, and a resumed run may use others.
    """
    config = {k: v for k, v in asdict(cfg).items() if k != "workers"}
    return {"config": config, "dataset_hash": dataset_hash(dataset.root), "checkpoints": models.checkpoints,
            "models": [[m.name, m.role] for m in models.localizers]}


def _claim_out_dir(out_dir: Path, run_id: dict, rank: int, world_size: int) -> None:
    """Write run.json, or check that the one already there describes the same run (resume)."""
    path = out_dir / "run.json"
    text = json.dumps(run_id, indent=2) + "\n"
    if rank == 0:
        if path.is_file() and path.read_text() != text:
            raise EvalError(f"{out_dir} holds records of a different run (its run.json differs from this "
                            f"configuration, dataset or checkpoints); use another out dir or delete it")
        write_atomic(path, text)
    _barrier(world_size)
    if rank != 0 and path.read_text() != text:
        raise EvalError(f"rank {rank}: {path} differs from this rank's configuration")


# -------------------------------------------------------------------------------------------------------- run


def _my_chunks(n_photos: int, chunk_size: int, out_dir: Path, rank: int, world_size: int) -> list[int]:
    n_chunks = -(-n_photos // chunk_size)
    done = finished_chunks(out_dir)
    return [c for c in range(n_chunks) if c % world_size == rank and c not in done]


def _run_chunks(cfg: EvalConfig, dataset: Dataset, reference: np.ndarray, evaluator: BatchedEvaluator,
                models: Models, chunks: list[int], out_dir: Path, progress: bool) -> None:
    """Decode the photos of `chunks` and write each chunk's records as soon as its last photo is done."""
    spec = ViewSpec(cfg.tilts, cfg.angles, cfg.fill)
    indices = [i for c in chunks for i in range(c * cfg.chunk_size, min((c + 1) * cfg.chunk_size, len(dataset)))]
    roles = {m.name: m.role for m in models.localizers} | {ORACLE: ORACLE}
    pending: list[PhotoViews] = []
    records: list[Record] = []
    timings: list[list[str]] = []
    bar = tqdm(total=len(indices), desc="photos", unit="photo", disable=not progress)
    for photo in view_loader(list(dataset.samples), indices, spec, cfg.workers):
        pending.append(photo)
        chunk = photo.index // cfg.chunk_size
        chunk_end = photo.index == min((chunk + 1) * cfg.chunk_size, len(dataset)) - 1
        if len(pending) == cfg.photos_per_step or chunk_end:
            _decode_step(cfg, dataset, reference, evaluator, roles, pending, records, timings)
            bar.update(len(pending))
            pending = []
        if chunk_end:
            write_atomic(out_dir / "parts" / f"timing-{chunk:05d}.csv", _timing_csv(timings))
            write_atomic(part_path(out_dir, chunk), to_csv(records, cfg.angles))  # last: marks the chunk done
            records, timings = [], []
    bar.close()


def _decode_step(cfg: EvalConfig, dataset: Dataset, reference: np.ndarray, evaluator: BatchedEvaluator,
                 roles: dict[str, str], photos: list[PhotoViews], records: list[Record],
                 timings: list[list[str]]) -> None:
    samples = [dataset[p.index] for p in photos]
    secrets = [s.secret if s.secret is not None else reference for s in samples]
    before = {name: evaluator.timings.total_s(name) for name in evaluator.names}
    decodes = evaluator.decode(photos, secrets)
    rows_per_model = sum(p.n_tilts for p in photos)
    for name, per_photo in decodes.items():
        ms = 1000 * (evaluator.timings.total_s(name) - before[name]) / rows_per_model
        for sample, secret, per_tilt in zip(samples, secrets, per_photo):
            for tilt, decode in zip(cfg.tilts, per_tilt):
                record = make_record(cfg, name, roles[name], sample, tilt, decode, secret)
                records.append(record)
                timings.append([name, sample.id, f"{tilt:g}", record.roi_source, f"{ms:.3f}"])


def make_record(cfg: EvalConfig, name: str, role: str, sample: Sample, tilt: float, decode: Decode,
                secret: np.ndarray) -> Record:
    """The record of one Decode: bits scored against `secret` (the sample's, or the reference for a clean photo)."""
    base = dict(model=name, role=role, sample_id=sample.id, kind=sample.kind, watermarked=sample.secret is not None,
                tilt_deg=float(tilt), roi_source=ORACLE if name == ORACLE else "predicted", bn_mode=cfg.bn_mode,
                mode=cfg.mode, status=decode.status, reason=decode.reason, bce=decode.bce, iou=decode.iou)
    if decode.status != "ok":
        return Record(**base)
    bits = (decode.probs >= 0.5).astype(np.uint8)
    blind_bits = (decode.blind_probs >= 0.5).astype(np.uint8)
    correct = int((bits == secret).sum())
    return Record(**base, chosen_angle=float(cfg.angles[decode.chosen]), bits_correct=correct,
                  bit_acc=correct / len(secret), word_ok=correct == len(secret), bits=bits_hex(bits),
                  blind_angle=float(cfg.angles[decode.blind]),
                  blind_bit_acc=float((blind_bits == secret).mean()), box=decode.box)


def bits_hex(bits: np.ndarray) -> str:
    """Bits (first bit most significant) as hex digits: 100 bits → 25 digits."""
    text = "".join("1" if b else "0" for b in bits)
    return f"{int(text, 2):0{-(-len(text) // 4)}x}"


def _timing_csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "sample_id", "tilt_deg", "roi_source", "ms"])
    writer.writerows(rows)
    return buffer.getvalue()


def _barrier(world_size: int) -> None:
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


# -------------------------------------------------------------------------------------------- aggregate, write


def _aggregate(cfg: EvalConfig, out_dir: Path, n_photos: int, n_bits: int, run_id: dict,
               evaluator: BatchedEvaluator, device: str, started: float) -> Summary:
    n_chunks = -(-n_photos // cfg.chunk_size)
    text = merge_parts(out_dir, n_chunks)
    write_atomic(out_dir / "records.csv", text)
    write_atomic(out_dir / "timings.csv", _merge_timings(out_dir, n_chunks))
    results = summary.aggregate(summary.read_records(text), n_bits)
    return Summary(results, _provenance(cfg, run_id, device), _timing(evaluator, started))


def _merge_timings(out_dir: Path, n_chunks: int) -> str:
    rows = []
    for chunk in range(n_chunks):
        path = out_dir / "parts" / f"timing-{chunk:05d}.csv"
        if path.is_file():
            rows.extend(list(csv.reader(io.StringIO(path.read_text())))[1:])
    return _timing_csv(sorted(rows, key=lambda r: (r[0], r[1], float(r[2]), r[3])))


def _provenance(cfg: EvalConfig, run_id: dict, device: str) -> dict:
    return {"config": asdict(cfg), "git_commit": summary.git_commit(), "versions": summary.package_versions(),
            "device": summary.device_description(device), "torch_threads": torch.get_num_threads(),
            "checkpoints": run_id["checkpoints"], "dataset_hash": run_id["dataset_hash"],
            "date": summary.now_utc()}


def _timing(evaluator: BatchedEvaluator, started: float) -> dict:
    """Seconds of this process only (chunks finished by an earlier, interrupted run are not counted)."""
    t = evaluator.timings
    per_model = {name: {"localizer_s": round(t.localizer_s[name], 4), "roi_s": round(t.roi_s[name], 4),
                        "sdecoder_s": round(t.sdecoder_s[name], 4), "views": t.items[name]}
                 for name in evaluator.names}
    return {"wall_s": round(time.perf_counter() - started, 3), "models": per_model}
