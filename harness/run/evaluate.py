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
    conditions.json          a run with camera conditions beyond the tilt: per (model, ROI source, condition,
                             severity) figures and each condition's worst severity (harness.run.profile)

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
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from harness.conditions import resolve, severity_text
from harness.core import metrics
from harness.core.bn import inference_context
from harness.core.constants import ORACLE
from harness.core.distributed import barrier
from harness.core.roi import resolve_roi_fn
from harness.data import Dataset, Sample, dataset_hash, load_dataset, parse_secret
from harness.models import get_entry, sha256_file
from harness.models.registry import is_registered, load_plugins, plugin_provenance
from harness.pipeline.batched import BatchedEvaluator, Decode, NamedLocalizer
from harness.pipeline.views import PhotoViews, ViewSpec, view_loader
from harness.run import profile, summary
from harness.run.records import Record, finished_chunks, merge_parts, part_path, to_csv, write_atomic
from harness.run.results import Provenance, Summary
from harness.run.runtime import build_deployed, onnxruntime_version, uses_onnxruntime
from harness.run.spec import EvalConfig, EvalError


@dataclass(frozen=True)
class Models:
    localizers: list[NamedLocalizer]
    sdecoder: nn.Module
    checkpoints: dict[str, str | None]  # model label → sha256 of its checkpoint file (None: no file)


# ------------------------------------------------------------------------------------------------------ story


def evaluate(cfg: EvalConfig, out_dir: str | Path, models: Models | None = None, rank: int = 0,
             world_size: int = 1, device: str | None = None, progress: bool = True) -> Summary | None:
    """Run `cfg` into `out_dir` and return the summary (None on ranks other than 0 of a distributed run).

    `models` replaces the registry build (models made in code); `device` overrides `cfg.device` for this process
    (a rank's own GPU) without changing the configuration the records belong to.
    """
    ambient = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # the run's own thread count, whatever the machine or the caller set
    try:
        return _evaluate(cfg, Path(out_dir), models, rank, world_size, device or cfg.device, progress)
    finally:
        torch.set_num_threads(ambient)


def _evaluate(cfg: EvalConfig, out_dir: Path, models: Models | None, rank: int, world_size: int, device: str,
              progress: bool) -> Summary | None:
    started = time.perf_counter()
    load_plugins(cfg.plugins)  # before anything is looked up: the plug-ins register their models
    dataset, reference = _build_dataset(cfg)
    models = models if models is not None else build_models(cfg, device, out_dir)
    check_models(models, n_bits=len(reference), bn_mode=cfg.bn_mode)
    evaluator = BatchedEvaluator(models.localizers, models.sdecoder, cfg.angles, cfg.bn_mode, cfg.batch_size,
                                 resolve_roi_fn(cfg.roi_fn), cfg.oracle, device)
    run_id = _run_identity(cfg, dataset, models)
    _claim_out_dir(out_dir, run_id, rank, world_size)
    chunks = _my_chunks(len(dataset), cfg.chunk_size, out_dir, rank, world_size)
    _run_chunks(cfg, dataset, reference, evaluator, models, chunks, out_dir, progress and rank == 0)
    barrier(world_size)
    if rank != 0:
        return None
    result = _aggregate(cfg, out_dir, len(dataset), len(reference), run_id, evaluator, device, started)
    write_atomic(out_dir / "summary.json", result.to_json())
    return result


# ------------------------------------------------------------------------------------------------------ build


def _build_dataset(cfg: EvalConfig) -> tuple[Dataset, np.ndarray]:
    dataset = load_dataset(cfg.data)
    if cfg.max_photos is not None:  # the first N in manifest order: a deterministic subset
        dataset = replace(dataset, samples=dataset.samples[:cfg.max_photos])
    return dataset, reference_secret(cfg, dataset)


def reference_secret(cfg: EvalConfig, dataset: Dataset) -> np.ndarray:
    """The secret clean photos are scored against: `fpr_secret`, else the first watermarked sample's."""
    if cfg.fpr_secret is not None:
        try:
            secret = parse_secret(cfg.fpr_secret)
        except ValueError as err:
            raise EvalError(f"fpr_secret: {err}") from err
        if secret is None:  # parse_secret reads "" as "no secret": here it would leave clean photos unscored
            raise EvalError("fpr_secret is empty: give 100 characters of 0/1, or None for the first watermarked "
                            "sample's secret")
        return secret
    for sample in dataset:
        if sample.secret is not None:
            return sample.secret
    raise EvalError(f"dataset {cfg.data} holds no watermarked sample: pass fpr_secret to score its clean photos")


def build_models(cfg: EvalConfig, device: str | None = None, out_dir: str | Path | None = None) -> Models:
    """Every localizer and the SDecoder from the registry, checkpoints loaded strictly and hashed. A localizer
    under ONNX Runtime (`runtime`) is exported into `out_dir/deploy/` (harness.run.runtime) and runs on the CPU."""
    device = device or cfg.device
    labels = [m.label for m in cfg.localizers]
    duplicates = sorted({n for n in labels if labels.count(n) > 1})
    if duplicates:
        raise EvalError(f"localizer names {duplicates} appear twice; give each a distinct label "
                        "(--localizer LABEL:NAME=CKPT)")
    if uses_onnxruntime(cfg.localizers) and out_dir is None:
        raise EvalError("a localizer under ONNX Runtime needs the run folder to export into (out_dir)")
    localizers, checkpoints = [], {}
    for m in cfg.localizers:
        if m.runtime == "torch":
            module, checkpoints[m.label] = m.build().to(device), _sha256(m.ckpt)
        else:
            module, checkpoints[m.label] = build_deployed(m, out_dir, cfg.threads)
        localizers.append(NamedLocalizer(m.label, m.role, module, m.mask_from))
    sdecoder = cfg.sdecoder.build_sdecoder().to(device)
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
    The torch thread count (`threads`) stays in: it changes the order of sums, hence the last digits of the BCE.
    """
    config = {k: v for k, v in _config_dict(cfg).items() if k != "workers"}
    run_id = {"config": config, "dataset_hash": dataset_hash(dataset.root), "checkpoints": models.checkpoints,
              "models": [[m.name, m.role] for m in models.localizers]}
    # every factory option each model was built with, defaults included (e.g. an HRNet's align_corners), and the
    # plug-in modules by content: a changed option or plug-in file is a different run
    run_id["model_options"] = {m.label: _jsonable(get_entry(m.arch).resolved_options(**dict(m.options)))
                               if is_registered(m.arch) else dict(m.options)  # models made in code: as given
                               for m in (*cfg.localizers, cfg.sdecoder)}
    run_id["plugins"] = plugin_provenance()
    if uses_onnxruntime(cfg.localizers):  # a runtime's version changes its answers as torch's does
        run_id["onnxruntime"] = onnxruntime_version()
    return run_id


def _config_dict(cfg: EvalConfig) -> dict:
    """The config as run.json and summary.json write it; `conditions` only when a run has some (a tilt-only run's
    files stay as they were before conditions existed)."""
    config = asdict(cfg)
    if not config["conditions"]:
        del config["conditions"]
    for model in config["localizers"]:  # eager models are written as they were before runtimes existed
        if model.get("runtime") == "torch":
            del model["runtime"]
    return config


def _jsonable(options: dict) -> dict:
    return {k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v) for k, v in options.items()}


def _claim_out_dir(out_dir: Path, run_id: dict, rank: int, world_size: int) -> None:
    """Write run.json, or check that the one already there describes the same run (resume)."""
    path = out_dir / "run.json"
    text = json.dumps(run_id, indent=2) + "\n"
    if rank == 0:
        if path.is_file() and path.read_text() != text:
            raise EvalError(f"{out_dir} holds records of a different run (its run.json differs from this run in: "
                            f"{_differences(path.read_text(), run_id)}); use another out dir or delete it")
        write_atomic(path, text)
    barrier(world_size)
    if rank != 0 and path.read_text() != text:
        raise EvalError(f"rank {rank}: {path} differs from this rank's configuration")


def _differences(old_text: str, new: dict, limit: int = 8) -> str:
    """The settings two run identities disagree on, as `key: old → new` (nested keys dotted)."""
    try:
        old = json.loads(old_text)
    except json.JSONDecodeError:
        return "run.json (unreadable)"
    new = json.loads(json.dumps(new))  # tuples as lists, as the file holds them
    found: list[str] = []

    def walk(a, b, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in [*a, *(k for k in b if k not in a)]:
                walk(a.get(k, "(absent)"), b.get(k, "(absent)"), f"{key}.{k}" if key else k)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b \
                and any(isinstance(x, (dict, list)) for x in a):  # e.g. the localizers, one by one
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{key}[{i}]")
        elif a != b:
            found.append(f"{key}: {_short(a)} → {_short(b)}")

    walk(old, new, "")
    more = f"; and {len(found) - limit} more" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more if found else "formatting only"


def _short(value, width: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[:width - 1] + "…"


# -------------------------------------------------------------------------------------------------------- run


def _my_chunks(n_photos: int, chunk_size: int, out_dir: Path, rank: int, world_size: int) -> list[int]:
    n_chunks = -(-n_photos // chunk_size)
    done = finished_chunks(out_dir)
    return [c for c in range(n_chunks) if c % world_size == rank and c not in done]


def _run_chunks(cfg: EvalConfig, dataset: Dataset, reference: np.ndarray, evaluator: BatchedEvaluator,
                models: Models, chunks: list[int], out_dir: Path, progress: bool) -> None:
    """Decode the photos of `chunks` and write each chunk's records as soon as its last photo is done."""
    spec = ViewSpec(cfg.tilts, cfg.angles, cfg.fill, points=cfg.condition_points() if cfg.has_conditions else (),
                    exif_transpose=cfg.exif_transpose)
    indices = [i for c in chunks for i in range(c * cfg.chunk_size, min((c + 1) * cfg.chunk_size, len(dataset)))]
    roles = {m.name: m.role for m in models.localizers} | {ORACLE: ORACLE}
    pending: list[PhotoViews] = []
    records: list[Record] = []
    timings: list[list[str]] = []
    # the bar counts views (photo × tilt × search angle) through each localizer and moves per batch, with an ETA
    per_photo = len(cfg.condition_points()) * len(cfg.angles) * max(1, len(models.localizers))
    bar = tqdm(total=len(indices) * per_photo, desc=f"views ({len(indices)} photos)", unit="view",
               disable=not progress, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    evaluator.on_views = bar.update
    done = 0
    for photo in view_loader(list(dataset.samples), indices, spec, cfg.workers):
        pending.append(photo)
        chunk = photo.index // cfg.chunk_size
        chunk_end = photo.index == min((chunk + 1) * cfg.chunk_size, len(dataset)) - 1
        if len(pending) == cfg.photos_per_step or chunk_end:
            _decode_step(cfg, dataset, reference, evaluator, roles, pending, records, timings)
            done += len(pending) * per_photo
            bar.update(done - bar.n)  # photos that failed to load had no views to count
            pending = []
        if chunk_end:
            write_atomic(out_dir / "parts" / f"timing-{chunk:05d}.csv", _timing_csv(timings))
            # last: the part marks the chunk done
            write_atomic(part_path(out_dir, chunk), to_csv(records, cfg.angles, cfg.has_conditions))
            records, timings = [], []
    evaluator.on_views = None
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
            if name == ORACLE and not has_ground_truth(sample):
                continue  # no ground-truth mask, no oracle ROI: n/a, not a failed 0 %
            for (condition, severity), decode in zip(cfg.condition_points(), per_tilt):
                tilt = resolve(condition).tilt_deg(severity)
                record = make_record(cfg, name, roles[name], sample, tilt, decode, secret, condition, severity)
                records.append(record)
                timings.append([name, sample.id, f"{tilt:g}", record.roi_source, f"{ms:.3f}"])


def has_ground_truth(sample: Sample) -> bool:
    """The sample has a ground-truth mask (a mask file or a quad): the oracle ROI and the mask IoU exist for it."""
    return sample.mask_path is not None or sample.quad is not None


def make_record(cfg: EvalConfig, name: str, role: str, sample: Sample, tilt: float, decode: Decode,
                secret: np.ndarray, condition: str = "tilt", severity: tuple[float, ...] = ()) -> Record:
    """The record of one Decode: bits scored against `secret` (the sample's, or the reference for a clean photo)."""
    base = dict(condition=condition, severity=severity_text(severity) if severity else f"{float(tilt) + 0.0:g}",
                model=name, role=role, sample_id=sample.id, kind=sample.kind, watermarked=sample.secret is not None,
                tilt_deg=float(tilt), roi_source=ORACLE if name == ORACLE else "predicted", bn_mode=cfg.bn_mode,
                mode=cfg.mode, status=decode.status, reason=decode.reason, bce=decode.bce, iou=decode.iou)
    if decode.status != "ok":
        return Record(**base)
    bits = metrics.bits_from_probs(decode.probs)
    correct = metrics.count_correct(secret, bits)
    blind_correct = metrics.count_correct(secret, metrics.bits_from_probs(decode.blind_probs))
    return Record(**base, chosen_angle=float(cfg.angles[decode.chosen]), bits_correct=correct,
                  bit_acc=correct / len(secret), word_ok=metrics.word_read(correct, len(secret)), bits=bits_hex(bits),
                  blind_angle=float(cfg.angles[decode.blind]), blind_bit_acc=blind_correct / len(secret),
                  box=decode.box)


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


# -------------------------------------------------------------------------------------------- aggregate, write


def _aggregate(cfg: EvalConfig, out_dir: Path, n_photos: int, n_bits: int, run_id: dict,
               evaluator: BatchedEvaluator, device: str, started: float) -> Summary:
    n_chunks = -(-n_photos // cfg.chunk_size)
    text = merge_parts(out_dir, n_chunks)
    write_atomic(out_dir / "records.csv", text)
    write_atomic(out_dir / "timings.csv", _merge_timings(out_dir, n_chunks))
    results = summary.aggregate(summary.read_records(text), n_bits)
    if cfg.has_conditions:  # per (model, ROI source, condition, severity), beside summary.json
        write_atomic(out_dir / "conditions.json", profile.conditions_json(text, n_bits))
    return Summary(results, _provenance(cfg, run_id, device), _timing(evaluator, started))


def _merge_timings(out_dir: Path, n_chunks: int) -> str:
    rows = []
    for chunk in range(n_chunks):
        path = out_dir / "parts" / f"timing-{chunk:05d}.csv"
        if path.is_file():
            rows.extend(list(csv.reader(io.StringIO(path.read_text())))[1:])
    return _timing_csv(sorted(rows, key=lambda r: (r[0], r[1], float(r[2]), r[3])))


def _provenance(cfg: EvalConfig, run_id: dict, device: str) -> Provenance:
    versions = summary.package_versions()
    if uses_onnxruntime(cfg.localizers):
        versions["onnxruntime"] = onnxruntime_version()
    return Provenance(config=_config_dict(cfg), git_commit=summary.git_commit(), versions=versions,
                      device=summary.device_description(device), torch_threads=cfg.threads,
                      checkpoints=run_id["checkpoints"], dataset_hash=run_id["dataset_hash"], date=summary.now_utc(),
                      model_options=run_id["model_options"], plugins=run_id["plugins"])


def _timing(evaluator: BatchedEvaluator, started: float) -> dict:
    """Seconds of this process only (chunks finished by an earlier, interrupted run are not counted)."""
    t = evaluator.timings
    per_model = {name: {"localizer_s": round(t.localizer_s[name], 4), "roi_s": round(t.roi_s[name], 4),
                        "sdecoder_s": round(t.sdecoder_s[name], 4), "views": t.items[name]}
                 for name in evaluator.names}
    return {"wall_s": round(time.perf_counter() - started, 3), "models": per_model}
