"""`python -m harness.eval`: evaluate localizers through decoder2 over a dataset and a tilt sweep.

    python -m harness.eval --localizer hrnet_w48=teacher.pt --localizer hrnet_w18=student.pt \\
        --sdecoder reference_sdecoder --data data/eval --tilts -5:5:1 --out runs/w18

The first --localizer is the teacher, the others are students (`--localizer p3:hrnet_w18=old.pt` labels a model, so
two checkpoints of one architecture can run side by side); `--zoo students` takes the localizers of the model
cards under a folder instead (teachers first). Writes records.csv, summary.json and timings.csv
under --out; an interrupted run resumes when started again with the same arguments. Under
`torchrun --nproc_per_node N -m harness.eval ...` every rank decodes its share of the photos (gloo on CPU, nccl on
CUDA) and rank 0 merges the parts into the same records a single process writes.

Exit codes: 0 done, 2 the run could not start (a bad argument, dataset, checkpoint or model; the message says which).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from tabulate import tabulate

from harness.data import DatasetError
from harness.evaluate import DEFAULT_TILTS, EvalConfig, EvalError, ModelSpec, Summary, evaluate, zoo_specs
from harness.zoo import CheckpointError, load_card, trained_input_size

_VALUE_OPTIONS = ("--tilts", "--angles", "--fpr-secret")  # values that may start with "-"


def parse_tilts(text: str) -> tuple[float, ...]:
    """"-5:5:1" (start:stop:step, stop included) or "-5,-2.5,0,3" or "1.5" → tilts in degrees."""
    text = text.strip()
    try:
        if ":" in text:
            values = _parse_range(text)
        else:
            values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"tilts {text!r}: expected start:stop:step (e.g. -5:5:1) or a comma list (e.g. -5,0,2.5)") \
            from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"tilts {text!r}: no finite tilt")
    if len(set(values)) != len(values):
        raise ValueError(f"tilts {text!r}: a tilt appears twice")
    return values


def _parse_range(text: str) -> tuple[float, ...]:
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(text)
    start, stop, step = (float(p) for p in parts)
    if step <= 0 or stop < start:
        raise ValueError(text)
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return tuple(round(start + i * step, 9) + 0.0 for i in range(count))  # + 0.0: no "-0"


def _model(text: str, role: str, sizes: dict[str, int], option: str, flips: frozenset[str] = frozenset()) -> ModelSpec:
    """[LABEL:]NAME[=CKPT]. The label (default NAME) names the model in records, so two checkpoints of one
    architecture can be compared in one run; it sits before "=" because a checkpoint path may hold any character."""
    head, _, ckpt = text.partition("=")
    label, _, arch = head.rpartition(":")
    label, arch, ckpt = label.strip(), arch.strip(), ckpt.strip() or None
    if not arch or (head.count(":") and not label):
        raise ValueError(f"{option} {text!r}: expected NAME, NAME=CHECKPOINT or LABEL:NAME=CHECKPOINT")
    spec = ModelSpec(arch=arch, ckpt=ckpt, role=role, name=label)
    if role == "sdecoder":
        return spec
    spec = replace(spec, flip_test=_named(spec, flips))
    return replace(spec, input_size=_input_size(spec, sizes))


def _named(spec: ModelSpec, names: frozenset[str]) -> bool:
    """Whether an option's NAME list names this localizer, by its label or its architecture."""
    return bool({spec.label, spec.arch} & names)


def _input_size(spec: ModelSpec, sizes: dict[str, int]) -> int | None:
    """--input-size for the label, else for the architecture, else the size the checkpoint's run or card records, else
    None: the fitted photo's own 400×400, with a note, since a size the user never chose is easy to miss."""
    size = sizes.get(spec.label, sizes.get(spec.arch))
    if size is not None or spec.ckpt is None:
        return size
    found = trained_input_size(spec.arch, spec.ckpt)
    if found is None:
        # A student trained at 128 and run at 400 reads little better than chance, silently: say which size it got.
        print(f"harness.eval: {spec.label} runs at the photo's own size (400): no run config.json or model card beside "
              f"{spec.ckpt} records the size it was trained at (--input-size {spec.label}=N sets one)", file=sys.stderr)
        return None
    size, source = found
    print(f"harness.eval: {spec.label} runs at input {size}, as {source} records (--input-size {spec.label}=N "
          "overrides)", file=sys.stderr)
    if source.name == "card.toml" and load_card(source).flip_test and not spec.flip_test:
        # the card's figures were measured with the flip test; a plain run reads the same weights differently
        print(f"harness.eval: {spec.label} runs without the flip test its card asks for (--flip-test {spec.label} "
              "adds it)", file=sys.stderr)
    return size


def _sizes(items: list[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        name, _, size = item.partition("=")
        if not size.strip().isdigit() or int(size) <= 0:
            raise ValueError(f"--input-size {item!r}: expected NAME=SIZE with a positive integer size")
        sizes[name.strip()] = int(size)
    return sizes


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.eval", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    models = ap.add_mutually_exclusive_group(required=True)
    models.add_argument("--localizer", action="append", metavar="[LABEL:]NAME[=CKPT]",
                        help="a registered localizer and its checkpoint; repeat; the first is the teacher. "
                             "LABEL names it in the records (default NAME): two checkpoints of one architecture "
                             "need two labels")
    models.add_argument("--zoo", metavar="DIR", help="the localizers of the model cards under DIR (e.g. students)")
    ap.add_argument("--sdecoder", required=True, metavar="NAME[=CKPT]", help="a registered secret decoder")
    ap.add_argument("--data", required=True, help="dataset folder holding manifest.csv")
    ap.add_argument("--out", required=True, type=Path, help="run folder (records.csv, summary.json)")
    ap.add_argument("--tilts", default="-5:5:1", help="tilt sweep: start:stop:step or a comma list (default -5:5:1)")
    ap.add_argument("--angles", default="0,3,-3", help="decoder2's search angles, in order (default 0,3,-3)")
    ap.add_argument("--bn-mode", choices=("demo", "eval"), default="demo",
                    help="demo: per-image BatchNorm statistics, as the demo (default); eval: running statistics")
    ap.add_argument("--fill", choices=("black", "validity"), default="black",
                    help="EDT border fill of the search rotation: by black value as the demo (default), or exact")
    ap.add_argument("--input-size", action="append", default=[], metavar="NAME=SIZE",
                    help="square input side of a localizer, NAME being its label or architecture (resized inside "
                         "the wrapper); repeat. Default: the size recorded beside its checkpoint (a training run's "
                         "config.json or a model card), else the fitted photo's 400")
    ap.add_argument("--flip-test", action="append", default=[], metavar="NAME",
                    help="the localizer NAME (label or architecture) also reads the mirror image and averages the "
                         "two logit maps (HRNet's flip test, twice the cost); repeat. --zoo: a card's flip_test")
    ap.add_argument("--roi-fn", default=None, metavar="MODULE:FUNCTION", help="a user ROI function")
    ap.add_argument("--student-use-teacher-mask", action="store_true",
                    help="students take the ROI from the teacher's mask (a diagnostic of the chain)")
    ap.add_argument("--no-oracle", action="store_true", help="skip the ground-truth-mask ROI rows")
    ap.add_argument("--fpr-secret", default=None, help="100 characters of 0/1 scoring clean photos "
                    "(default: the first watermarked sample's secret)")
    ap.add_argument("--batch-size", type=int, default=8, help="views per forward pass (default 8)")
    ap.add_argument("--photos-per-step", type=int, default=2, help="photos decoded together (default 2)")
    ap.add_argument("--chunk-size", type=int, default=8, help="photos per records part (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader processes preparing views (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    ap.add_argument("--mode", default="custom", help="run label written in every record (quick/full for the gate)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    sizes, flips = _sizes(args.input_size), frozenset(n.strip() for n in args.flip_test)
    if args.zoo:
        localizers = [replace(m, flip_test=m.flip_test or _named(m, flips)) for m in zoo_specs(args.zoo)]
        if not localizers:
            raise ValueError(f"--zoo {args.zoo}: no model cards (card.toml) under that folder")
    else:
        localizers = [_model(t, "teacher" if i == 0 else "student", sizes, "--localizer", flips)
                      for i, t in enumerate(args.localizer)]
    unknown = sorted(flips - {m.label for m in localizers} - {m.arch for m in localizers})
    if unknown:
        raise ValueError(f"--flip-test {unknown}: no localizer has that label or architecture")
    if args.student_use_teacher_mask:
        teacher = localizers[0].label
        localizers = [localizers[0]] + [replace(m, mask_from=teacher) for m in localizers[1:]]
    return EvalConfig(
        localizers=tuple(localizers), sdecoder=_model(args.sdecoder, "sdecoder", {}, "--sdecoder"), data=args.data,
        tilts=parse_tilts(args.tilts) if args.tilts else DEFAULT_TILTS, angles=parse_tilts(args.angles),
        bn_mode=args.bn_mode, fill=args.fill, roi_fn=args.roi_fn, oracle=not args.no_oracle,
        batch_size=args.batch_size, photos_per_step=args.photos_per_step, chunk_size=args.chunk_size,
        workers=args.workers, device=args.device, fpr_secret=args.fpr_secret, mode=args.mode)


def join_option_values(argv: list[str]) -> list[str]:
    """`--tilts -5:5:1` → `--tilts=-5:5:1`: argparse would read "-5:5:1" as an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _VALUE_OPTIONS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world_size, device) under torchrun; (0, 1, device) otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), world_size, device


def print_summary(result: Summary, out: Path) -> None:
    rows = []
    for r in result.results:
        tpr = next((d["tpr"] for d in r["detection"] if d["fpr"] == 1e-3), None)
        rows.append([r["model"], r["roi_source"], _pct(r["bit_acc"]["mean"]), _pct(r["bit_acc"]["ci95"]),
                     f"{_pct(r['tilt_min'])}–{_pct(r['tilt_max'])}", _pct(r["word_acc"]), _pct(tpr),
                     _pct(r["mask_iou"]), _pct(r["roi_empty_rate"]), r["failed"]])
    headers = ["model", "ROI", "bit acc % ↑", "± 95 %", "min–max over tilts", "word acc % ↑", "TPR@1e-3 % ↑",
               "IoU % ↑", "ROI empty % ↓", "failed ↓"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    print(f"records: {out / 'records.csv'}  summary: {out / 'summary.json'}")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(join_option_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        cfg = config_from_args(args)
        rank, world_size, device = _distributed(cfg.device)
        result = evaluate(cfg, args.out, rank=rank, world_size=world_size, device=device, progress=not args.quiet)
    except (EvalError, DatasetError, CheckpointError, ValueError, KeyError, FileNotFoundError, ImportError) as err:
        print(f"harness.eval: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if result is not None:
        print_summary(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
