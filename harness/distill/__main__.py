"""`python -m harness.distill train RECIPE --out DIR [--resume]`: train a localizer or distil a student.

Under torchrun (`torchrun --nproc_per_node N -m harness.distill train ...`) every process trains a slice of each
global batch; rank 0 validates and writes the run directory.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m harness.distill", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train from a TOML recipe into a run directory")
    train.add_argument("recipe", type=Path)
    train.add_argument("--out", type=Path, required=True, help="run directory (config.json, log.jsonl, *.pt)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (a new run if absent)")
    train.add_argument("--until-step", type=int, default=None, help="stop at this step (resume later)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--seed", type=int, default=None, help="override [run] seed (repeat a recipe over seeds)")
    export = commands.add_parser("export", help="ship a run as fp16 weights + model card under students/")
    export.add_argument("run", type=Path, help="run directory (config.json, log.jsonl, student.pt)")
    export.add_argument("--name", required=True, help="zoo name (folder under --root)")
    export.add_argument("--role", choices=("teacher", "student"), required=True)
    export.add_argument("--recipe", type=Path, required=True, help="the recipe file the run was trained from")
    export.add_argument("--root", type=Path, default=Path("students"))
    export.add_argument("--flip-test", action="store_true",
                        help="the card evaluates with HRNet's flip test (the photo and its mirror image averaged)")
    comp = commands.add_parser("compare", help="distilled students against no-KD baselines over seeds")
    comp.add_argument("runs", type=Path, nargs="+", help="run directories (config.json, student.pt)")
    comp.add_argument("--data", required=True, help="held-out dataset folder")
    comp.add_argument("--tilts", default="0", help="tilt sweep: start:stop:step or a comma list (default 0)")
    comp.add_argument("--out", type=Path, required=True, help="evaluation folder (records.csv, summary.json)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "compare":
        from harness.distill.compare import compare
        from harness.eval import parse_tilts

        print(compare(args.runs, args.data, parse_tilts(args.tilts), args.out))
        return 0
    if args.command == "export":
        from harness.distill.export import export_run

        print(export_run(args.run, args.name, args.role, args.recipe, args.root, args.flip_test))
        return 0
    from harness.distill.config import RecipeError, load_recipe, with_seed
    from harness.distill.trainer import train

    try:
        recipe = load_recipe(args.recipe)
        if args.seed is not None:
            recipe = with_seed(recipe, args.seed)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return 2
    state = train(recipe, args.out, resume=args.resume, until_step=args.until_step, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 reports for the run
    print(f"{args.out}: step {state.step}, best {recipe.validation.metric} {state.best_metric:.4f} "
          f"at step {state.best_step}{' (stopped early)' if state.stopped_early else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
