"""Ship a trained run into the zoo: `students/<name>/weights.pt` (fp16 state_dict) and `card.toml`.

    python -m harness.distill export runs/teacher --name teacher_hrnet_w18 --role teacher \\
        --recipe students/recipes/teacher_hrnet_w18_160b.toml [--flip-test] [--lineage-from CARD]

The card names the architecture, input size, checkpoint and its sha256, the recipe, and what the run's log says:
steps, wall time, data seed and source, the best validation metrics; `--flip-test` writes `flip_test = true` (the
evaluation reads the photo and its mirror image; training and validation never do). Weights are stored in fp16 (the
zoo's size budget); the loader casts them back to the model's dtype.

The card's `[[lineage]]` lists the training runs that led to the weights, oldest first, this run last: the earlier
runs are those of `--lineage-from CARD`, else of the zoo card whose checkpoint the run started from (`init_ckpt`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.data.hard import read_hard_record
from harness.data.synth import read_record
from harness.distill.checkpoint import read_student
from harness.models import LineageStep, ModelCard, build_localizer, load_card, load_checkpoint, sha256_file

WEIGHTS_NAME = "weights.pt"


def export_run(run_dir: Path, name: str, role: str, recipe: Path, root: Path = Path("students"),
               flip_test: bool = False, lineage_from: Path | None = None) -> Path:
    state, config = read_student(run_dir / "student.pt")
    config = config or json.loads((run_dir / "config.json").read_text())  # a student.pt of an older run: no recipe
    arch, input_size = config["model"]["name"], config["model"]["input_size"]
    # read before anything is written: the run may have started from the weights this export replaces
    lineage = _lineage(config["model"].get("init_ckpt", ""), recipe, lineage_from)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    torch.save(half, out / WEIGHTS_NAME)
    load_checkpoint(build_localizer(arch, input_size).backbone, out / WEIGHTS_NAME)  # strict: it must load back
    card = _card(name, arch, role, input_size, flip_test, recipe, sha256_file(out / WEIGHTS_NAME), config,
                 _log(run_dir), lineage)
    (out / "card.toml").write_text(card)
    return out


def _lineage(init_ckpt: str, recipe: Path, lineage_from: Path | None) -> tuple[LineageStep, ...]:
    """The earlier runs (of `lineage_from`, else of the zoo card beside the initial checkpoint), then this run."""
    earlier: tuple[LineageStep, ...] = ()
    init = "scratch"
    if init_ckpt:
        init_path, init = Path(init_ckpt), init_ckpt
        card = _card_of(init_path)
        if card is not None:
            earlier = _history(card)
            init = f"{card.name} weights, sha256 {sha256_file(init_path)[:12]}"
        elif init_path.is_file():
            init = f"{init_ckpt} (sha256 {sha256_file(init_path)[:12]})"
    if lineage_from is not None:
        earlier = _history(load_card(lineage_from))
    return (*earlier, LineageStep(recipe=recipe.as_posix(), init=init))


def _card_of(ckpt: Path) -> ModelCard | None:
    """The model card beside a checkpoint that names that checkpoint, if any."""
    beside = ckpt.parent / "card.toml"
    if not ckpt.is_file() or not beside.is_file():
        return None
    card = load_card(beside)
    same = card.checkpoint_path is not None and card.checkpoint_path.resolve() == ckpt.resolve()
    return card if same else None


def _history(card: ModelCard) -> tuple[LineageStep, ...]:
    """A card's lineage; a card written before lineages existed stands for its own run, as far as it says."""
    if card.lineage or not card.recipe:
        return card.lineage
    init = card.training.get("init_ckpt")
    return (LineageStep(recipe=card.recipe, init="unknown" if init is None else init or "scratch"),)


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def _training(config: dict, log: list[dict]) -> dict:
    trains = [e for e in log if e["event"] == "train"]
    vals = [e for e in log if e["event"] == "val"]
    best = max(vals, key=lambda e: e.get("student_bit_acc", -1.0), default={})
    starts = [e for e in log if e["event"] == "start"]
    return {
        "steps": max((e["step"] for e in trains), default=0),
        "batch_size": config["data"]["batch_size"],
        "processes": max((e.get("world_size", 1) for e in starts), default=1),  # global batch = batch × processes
        "init_ckpt": config["model"].get("init_ckpt", ""),  # a later phase names the earlier phase's weights
        "train_time_min": round(sum(e["sec_per_step"] for e in trains) * _log_every(trains) / 60, 1),  # steps only
        "data": _data_line(config["data"]),
        "seed": config["run"]["seed"],
        "teacher": (config.get("teacher") or {}).get("name", ""),
        "teacher_sha256": next((e.get("teacher_sha256") or "" for e in starts), ""),
        "restarts": max(0, len(starts) - 1),
        "best_step": best.get("step", -1),
        "validation": {k: v for k, v in best.items() if _is_metric(k, v)},
    }


def _data_line(data: dict) -> str:
    """Where the training scenes came from: the generator's seed for made-on-the-fly scenes, the folder's own
    generator record (`synth.json`) when the folder was made by `python -m harness.data synth`, or the source set's
    record and the mining when it was made by `python -m harness.data hard`."""
    tilt = f"tilt augmentation ±{data['tilt_deg']}°"
    if data["source"] == "synth":
        same = data.get("synth_same_source", 0.0)
        in_place = data.get("synth_in_place", 0.0)
        hard = f", {same:.0%} of backgrounds cut from the label's own source image" if same else ""
        hard += f", {in_place:.0%} watermarked in place" if in_place else ""
        return f"synth: {data['synth_size']} scenes made on the fly (generator seed {data['synth_seed']}{hard}, {tilt})"
    mined = read_hard_record(data["root"])
    if mined is not None and mined["source_synth"] is not None:
        made, cfg = mined["source_synth"]["config"], mined["config"]
        same = f", {made['same_source']:.0%} same-source" if made.get("same_source") else ""
        return (f"folder:{data['root']} ({made['n']} scenes, generator seed {made['seed']}{same}; the "
                f"{len(mined['hard_ids'])} whose mean mask IoU under {cfg['model']} was below {cfg['iou_below']} "
                f"repeated {cfg['repeat']} more times; {tilt})")
    record = read_record(data["root"])
    if record is not None:
        made = record["config"]
        return f"folder:{data['root']} ({made['n']} scenes, generator seed {made['seed']}, {tilt})"
    return f"folder:{data['root']} ({tilt})"


def _is_metric(key: str, value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("time", "step") \
        and not key.startswith("best")


def _log_every(trains: list[dict]) -> int:
    steps = [e["step"] for e in trains]
    return steps[1] - steps[0] if len(steps) > 1 else 1


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _card(name: str, arch: str, role: str, input_size: int, flip_test: bool, recipe: Path, sha: str, config: dict,
          log: list[dict], lineage: tuple[LineageStep, ...] = ()) -> str:
    training = _training(config, log)
    lines = [f"name = {_toml_value(name)}", f"arch = {_toml_value(arch)}", f"role = {_toml_value(role)}",
             f"input_size = {input_size}"] + (["flip_test = true"] if flip_test else []) + [
             f"checkpoint = {_toml_value(WEIGHTS_NAME)}", f"sha256 = {_toml_value(sha)}",
             f"recipe = {_toml_value(recipe.as_posix())}"]
    for step in lineage:
        lines += ["", "[[lineage]]", f"recipe = {_toml_value(step.recipe)}", f"init = {_toml_value(step.init)}"]
    lines += ["", "[training]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in training.items() if k != "validation"]
    lines += ["", "[training.validation]"]
    lines += [f"{k} = {_toml_value(round(v, 6) if isinstance(v, float) else v)}"
              for k, v in sorted(training["validation"].items())]
    return "\n".join(lines) + "\n"
