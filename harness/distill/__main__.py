"""`python -m harness.distill train RECIPE --out DIR [--resume]`: train a localizer or distil a student.

Under torchrun (`torchrun --nproc_per_node N -m harness.distill train ...`) every process trains a slice of each
global batch; rank 0 validates and writes the run directory.

RECIPE may also be an MMRazor/MMEngine Python config (`distill1.py`), read without executing it: the keys it used,
ignored and refused are printed first, and a config with refused keys does not run. `convert CONFIG.py` prints the
same recipe as TOML (the three lists in its comments), so a team can keep either form.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m harness.distill", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train from a TOML recipe or an MMEngine .py config into a run directory")
    train.add_argument("recipe", type=Path, help="a TOML recipe, or an MMRazor/MMEngine .py config")
    _config_options(train)
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
    export.add_argument("--lineage-from", type=Path, default=None, metavar="CARD",
                        help="the card whose [[lineage]] the new card continues (default: the card beside the run's "
                             "init_ckpt, when it started from a zoo checkpoint)")
    comp = commands.add_parser("compare", help="distilled students against no-KD baselines over seeds")
    comp.add_argument("runs", type=Path, nargs="+", help="run directories (config.json, student.pt)")
    comp.add_argument("--data", required=True, help="held-out dataset folder")
    comp.add_argument("--tilts", default="0", help="tilt sweep: start:stop:step or a comma list (default 0)")
    comp.add_argument("--out", type=Path, required=True, help="evaluation folder (records.csv, summary.json)")
    convert = commands.add_parser("convert", help="an MMRazor/MMEngine .py config as a TOML recipe, with the keys "
                                                  "it used, ignored and refused")
    convert.add_argument("config", type=Path, help="the .py config (read with ast, never executed)")
    _config_options(convert)
    return root


def _config_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                         help="import MODULE first: it registers its own architectures (repeatable)")
    command.add_argument("--model-map", action="append", default=[], metavar="TYPE=NAME",
                         help="a .py config's model type (or cfg_path) → a registered model name (repeatable)")
    command.add_argument("--dataset-size", type=int, default=None, metavar="N",
                         help="scenes per epoch for a .py config's epoch-based settings (default: the rows of the "
                              "training folder's manifest.csv)")


def _load(args: argparse.Namespace):
    """The recipe of a TOML file, or of a .py config (its report printed first, on rank 0)."""
    from harness.distill.config import RecipeError, load_recipe

    if args.recipe.suffix != ".py":
        if args.model_map or args.dataset_size is not None:
            raise RecipeError(f"{args.recipe}: --model-map and --dataset-size apply to a .py config only")
        return load_recipe(args.recipe)
    from harness.distill.mmport import port_file

    port = port_file(args.recipe, args.model_map, args.dataset_size)
    if os.environ.get("RANK", "0") == "0":
        print(port.report(), flush=True)
    return port.recipe()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "plugin", None):
        from harness.models.registry import load_plugins

        try:
            load_plugins(args.plugin)
        except ImportError as err:
            print(f"harness.distill: --plugin: {err}", file=sys.stderr)
            return 2
    if args.command == "compare":
        from harness.distill.compare import compare
        from harness.run.options import parse_tilts

        try:
            tilts = parse_tilts(args.tilts, "--tilts")
        except ValueError as err:  # e.g. --tilts '': refused by name, never a default sweep
            print(f"harness.distill compare: {err}", file=sys.stderr)
            return 2
        print(compare(args.runs, args.data, tilts, args.out))
        return 0
    if args.command == "export":
        from harness.distill.export import export_run

        print(export_run(args.run, args.name, args.role, args.recipe, args.root, args.flip_test, args.lineage_from))
        return 0
    from harness.distill.config import RecipeError, with_seed

    if args.command == "convert":
        from harness.distill.mmport import port_file

        try:
            port = port_file(args.config, args.model_map, args.dataset_size)
        except RecipeError as err:
            print(err, file=sys.stderr)
            return 2
        try:
            print(port.toml(), end="")
        except RecipeError as err:  # refused keys: the lists say which and why
            print(port.report())
            print(err, file=sys.stderr)
            return 2
        return 0
    from harness.distill.trainer import train

    try:
        recipe = _load(args)
        if args.seed is not None:
            recipe = with_seed(recipe, args.seed)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return 2
    from harness.distill.checkpoint import LastCheckpointError

    try:
        state = train(recipe, args.out, resume=args.resume, until_step=args.until_step, progress=not args.no_progress)
    except (RecipeError, LastCheckpointError) as err:  # e.g. a last.pt that is truncated or would run code
        print(f"harness.distill: {err}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 reports for the run
    print(f"{args.out}: step {state.step}, best {recipe.validation.metric} {state.best_metric:.4f} "
          f"at step {state.best_step}{' (stopped early)' if state.stopped_early else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
