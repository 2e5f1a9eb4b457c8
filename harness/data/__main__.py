"""`python -m harness.data check DIR`, `python -m harness.data synth ...` and `python -m harness.data reference ...`.

check: validates a dataset, decoding every photo, and prints a summary, or every fault (exit code 2).
synth: writes a synthetic set of the reference world (reused when the folder already holds the same set).
reference: writes a reference evaluation set: watermarked scenes with random secrets plus clean scenes, no tilt of
their own (the suites' sets are made the same way; the zoo's acceptance set is `--n-marked 200 --n-clean 50`).
sources: prints, as CSV, the source images each scene of a generated set cut its label and background from, and
whether the background continues the label's own scene (join it with an evaluation's records.csv on sample_id).
hard: writes a training set that repeats the scenes of a generated set a localizer got wrong (harness.data.hard).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from pathlib import Path

from harness.data.manifest import Dataset, DatasetError, dataset_hash, load_dataset, manifest_warnings

EXIT_FAULTS = 2


def _counts(counter: Counter) -> str:
    return ", ".join(f"{name or '(none)'} {count}" for name, count in sorted(counter.items()))


def summary_lines(dataset: Dataset, digest: str) -> list[str]:
    watermarked = sum(sample.watermarked for sample in dataset)
    widths = [sample.size[0] for sample in dataset]
    heights = [sample.size[1] for sample in dataset]
    conversions = Counter(dataset.conversions.values())
    lines = [
        f"dataset      {dataset.root}",
        f"samples      {len(dataset)}",
        f"kinds        {_counts(dataset.kinds())}",
        f"watermarked  {watermarked}   clean {len(dataset) - watermarked}",
        f"sizes        {len(set(s.size for s in dataset))} distinct; width {min(widths)}..{max(widths)}, "
        f"height {min(heights)}..{max(heights)}",
        f"masks        {sum(s.mask_path is not None for s in dataset)}   "
        f"quads {sum(s.quad is not None for s in dataset)}"
        f"   tilts {sum(s.tilt_deg is not None for s in dataset)}",
        f"conversions  {_counts(conversions) if conversions else 'none'}",
    ]
    lines += [f"  {sample_id}: {note}" for sample_id, note in list(dataset.conversions.items())[:20]]
    if len(dataset.conversions) > 20:
        lines.append(f"  ... and {len(dataset.conversions) - 20} more")
    lines.append(f"sha256       {digest}")
    return lines


def check(root: Path) -> int:
    try:
        dataset = load_dataset(root, decode=True)
    except DatasetError as error:
        print(error, file=sys.stderr)
        return EXIT_FAULTS
    print("\n".join(summary_lines(dataset, dataset_hash(root))))
    for note in manifest_warnings(dataset):  # valid, but worth knowing before an evaluation
        print(f"warning: {note}")
    return 0


def synth(args: argparse.Namespace) -> int:
    from harness.data.synth import SynthConfig, generate, is_cached

    cfg = SynthConfig(kind=args.kind, background=args.background == "yes", n=args.n, seed=args.seed,
                      tilt_range=args.tilt_range, key=args.key, same_source=args.same_source,
                      in_place=args.in_place)
    if is_cached(cfg, args.out) and not args.force:
        print(f"{args.out}: already holds this set ({cfg.n} scenes), kept")
        return 0
    start = time.perf_counter()
    try:
        generate(cfg, args.out, overwrite=args.force)
    except FileExistsError as error:
        print(error, file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"{args.out}: {cfg.n} {cfg.set_kind} scenes in {seconds:.1f} s ({cfg.n / max(seconds, 1e-9):.1f} scenes/s)")
    return 0


def reference(args: argparse.Namespace) -> int:
    from harness.data.reference import ReferenceSetConfig, reference_set

    cfg = ReferenceSetConfig(n_marked=args.n_marked, n_clean=args.n_clean, seed=args.seed, key=args.key)
    start = time.perf_counter()
    try:
        reference_set(cfg, args.out)
    except ValueError as error:
        print(f"harness.data reference: {error}", file=sys.stderr)
        return EXIT_FAULTS
    print(f"{args.out}: reference set, {cfg.n_marked} watermarked + {cfg.n_clean} clean scenes "
          f"(seeds {cfg.seed}/{cfg.seed + 1}) in {time.perf_counter() - start:.1f} s")
    return 0


def sources(root: Path) -> int:
    from harness.data.synth import set_sources

    try:
        rows = set_sources(root)
    except (DatasetError, ValueError) as error:
        print(error, file=sys.stderr)
        return EXIT_FAULTS
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["sample_id", "label_source", "background_sources", "same_scene"])
    for sample_id, found in rows:
        writer.writerow([sample_id, found.label, " ".join(found.background), int(found.same_scene)])
    return 0


def hard(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness.data.hard import HardSetConfig, hard_set

    try:
        cfg = HardSetConfig(model=args.model, iou_below=args.iou_below, repeat=args.repeat)
        ids = hard_set(args.root, pd.read_csv(args.records), cfg, args.out)
    except (DatasetError, ValueError, OSError) as error:
        print(f"harness.data hard: {error}", file=sys.stderr)
        return EXIT_FAULTS
    print(f"{args.out}: {len(ids)} hard scenes of {args.root} (mean IoU of {cfg.model} below {cfg.iou_below}) "
          f"written {cfg.repeat + 1} times each, the other scenes once")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m harness.data", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    check_cmd = commands.add_parser("check", help="validate a dataset and print a summary")
    check_cmd.add_argument("root", type=Path, metavar="DIR")
    synth_cmd = commands.add_parser("synth", help="generate a synthetic set of the reference world")
    synth_cmd.add_argument("--kind", choices=("clean", "fixed", "random"), required=True)
    synth_cmd.add_argument("--background", choices=("yes", "no"), default="yes")
    synth_cmd.add_argument("--n", type=int, required=True)
    synth_cmd.add_argument("--seed", type=int, required=True)
    synth_cmd.add_argument("--out", type=Path, required=True)
    synth_cmd.add_argument("--tilt-range", type=float, default=5.0, help="tilt uniform in ±this many degrees")
    synth_cmd.add_argument("--key", type=int, default=0, help="codec key")
    synth_cmd.add_argument("--same-source", type=float, default=0.0, metavar="SHARE",
                           help="share of scenes whose background is cut from the label's own source image, the "
                                "hard case for a localizer (default 0: the world as it comes)")
    synth_cmd.add_argument("--in-place", type=float, default=0.0, metavar="SHARE",
                           help="share of watermarked scenes whose label is the background's own pixels, "
                                "watermarked where they lie: no seam, the watermark the only cue (default 0)")
    synth_cmd.add_argument("--force", action="store_true", help="regenerate over an existing set")
    ref_cmd = commands.add_parser("reference", help="generate a reference evaluation set (watermarked + clean)")
    ref_cmd.add_argument("--n-marked", type=int, default=200)
    ref_cmd.add_argument("--n-clean", type=int, default=50)
    ref_cmd.add_argument("--seed", type=int, default=1000, help="watermarked half; the clean half uses seed + 1 "
                         "(training sets use seeds below 1000)")
    ref_cmd.add_argument("--key", type=int, default=0, help="codec key")
    ref_cmd.add_argument("--out", type=Path, required=True)
    sources_cmd = commands.add_parser("sources", help="print the source images of every scene of a generated set")
    sources_cmd.add_argument("root", type=Path, metavar="DIR")
    hard_cmd = commands.add_parser("hard", help="write a training set that repeats the scenes a localizer got wrong")
    hard_cmd.add_argument("root", type=Path, metavar="DIR", help="a generated set")
    hard_cmd.add_argument("--records", type=Path, required=True, help="records.csv of an evaluation of DIR")
    hard_cmd.add_argument("--model", required=True, help="the localizer's label in the records")
    hard_cmd.add_argument("--iou-below", type=float, default=0.85, help="hard: mean mask IoU over tilts below this")
    hard_cmd.add_argument("--repeat", type=int, default=4, help="extra copies of each hard scene")
    hard_cmd.add_argument("--out", type=Path, required=True)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return check(args.root)
    if args.command == "reference":
        return reference(args)
    if args.command == "sources":
        return sources(args.root)
    if args.command == "hard":
        return hard(args)
    return synth(args)


if __name__ == "__main__":
    sys.exit(main())
