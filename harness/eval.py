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
import sys
from pathlib import Path

from tabulate import tabulate

from harness.core.constants import SEARCH_ANGLES
from harness.core.distributed import resolve_device, setup_distributed, shutdown
from harness.core.metrics import heading
from harness.data import DatasetError
from harness.models import CheckpointError
from harness.run.evaluate import evaluate
from harness.run.options import add_shared_options, eval_config, join_option_values
from harness.run.profile import read_conditions
from harness.run.results import Summary
from harness.run.spec import EvalConfig, EvalError

_ANGLES = ",".join(f"{a:g}" for a in SEARCH_ANGLES)


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
    ap.add_argument("--out", required=True, help="run folder (records.csv, summary.json)")
    ap.add_argument("--tilts", default="-5:5:1", help="tilt sweep: start:stop:step or a comma list (default -5:5:1)")
    ap.add_argument("--angles", default=_ANGLES, help=f"decoder2's search angles, in order (default {_ANGLES})")
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
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads while evaluating (default 1: the same records on every machine and "
                         "under torchrun; it is part of the run's identity). Speed comes from --workers, "
                         "--photos-per-step and torchrun")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    ap.add_argument("--mode", default="custom", help="run label written in every record (quick/full for the gate)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    add_shared_options(ap.add_argument)
    return ap


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The run's EvalConfig, built by the function the suites use too (`harness.run.options.eval_config`)."""
    _refuse_blank(args)
    return eval_config(vars(args))


def _refuse_blank(args: argparse.Namespace) -> None:
    """An option given an empty or blank value is an error, never "use the default": `--tilts ''` from an unset shell
    variable would otherwise run a sweep nobody asked for."""
    options = ("localizer", "zoo", "sdecoder", "data", "out", "tilts", "angles", "input_size", "flip_test", "roi_fn",
               "fpr_secret", "device", "mode", "plugin", "model_option", "backbone_only")
    for dest in options:
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not str(item).strip():
                raise ValueError(f"--{dest.replace('_', '-')} is empty: give it a value or leave the option out")


def print_summary(result: Summary, out: Path) -> None:
    rows = []
    for r in result.results:
        det = r.detection_at(1e-3)
        rows.append([r.model, r.roi_source, _pct(r.bit_acc.mean), _pct(r.bit_acc.ci95),
                     f"{_pct(r.tilt_min)}–{_pct(r.tilt_max)}", _pct(r.word_acc), _pct(det and det.tpr),
                     "n/a" if r.mask_iou is None else f"{r.mask_iou:.3f}", _pct(r.roi_empty_rate), r.failed])
    headers = ["model", "ROI", heading("bit_acc"), "± 95 %", "min–max over tilts", heading("word_acc"),
               heading("tpr"), heading("mask_iou"), heading("roi_empty_rate"), heading("failed")]
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    print(f"records: {out / 'records.csv'}  summary: {out / 'summary.json'}")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(join_option_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        cfg = config_from_args(args)
        device = resolve_device(cfg.device)
        ranks = setup_distributed(device)
        result = evaluate(cfg, args.out, rank=ranks.rank, world_size=ranks.world_size, device=str(device),
                          progress=not args.quiet)
    except (EvalError, DatasetError, CheckpointError, ValueError, KeyError, FileNotFoundError, ImportError) as err:
        print(f"harness.eval: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if result is not None:
        print_summary(result, Path(args.out))
        print_conditions(Path(args.out))
    return 0


def print_conditions(out: Path) -> None:
    """A run with camera conditions: per model (predicted ROI) and condition, the worst severity's bit accuracy."""
    path = out / "conditions.json"
    if not path.is_file():
        return
    worst = [w for w in read_conditions(path).worst if w.roi_source == "predicted"]
    conditions = list(dict.fromkeys(w.condition for w in worst))
    table = {}
    for w in worst:
        table.setdefault(w.model, {})[w.condition] = f"{_pct(w.worst_bit_acc)} @ {w.worst_severity}"
    rows = [[model, *(cells.get(c, "—") for c in conditions)] for model, cells in table.items()]
    print("bit accuracy % at each condition's worst severity:")
    print(tabulate(rows, headers=["model", *conditions], tablefmt="github", disable_numparse=True))
    print(f"per condition and severity: {path}")


if __name__ == "__main__":
    sys.exit(main())
