"""Training recipes: a TOML file resolved into frozen dataclasses, saved as `config.json` in the run directory.

A recipe has one table per concern. Every key is checked: an unknown key or a wrong type is an error naming the
recipe file and the `table.key`, so a typo never silently falls back to a default.

    [run]        seed, max_steps, validation and checkpoint cadence, early stopping, threads, device
    [model]      the network being trained (registry name, input size, optional checkpoint to start from)
    [teacher]    optional frozen teacher (registry name, input size, checkpoint) for distillation
    [data]       scene source (a pre-generated folder or on-the-fly synthesis), batch size, workers, tilt range
    [optim]      AdamW or SGD, learning rate, weight decay, gradient clipping, AMP (CUDA only)
    [schedule]   cosine or poly, linear warm-up
    [loss]       ground-truth mask loss weights (BCE, Dice) and the decode loss
    [validation] metric for best checkpoint and early stopping, validation set, student_use_teacher_mask
    [distiller]  MMRazor's ConfigurableDistiller dict, verbatim (student_recorders, teacher_recorders, connectors,
                 distill_losses, loss_forward_mappings)

A top-level `_base_ = "other.toml"` (or a list of paths, relative to the recipe) starts from other recipes, as
MMEngine configs do: their tables are deep-merged, later bases over earlier ones and the recipe's own keys over all.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from harness.core.constants import PHOTO_SIDE, SEARCH_ANGLES
from harness.core.toml import tomllib


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the offending key."""


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    max_steps: int = 1000
    log_every: int = 10
    val_every: int = 200  # steps between validations (0: validate only at the end)
    ckpt_every: int = 50  # steps between writes of last.pt
    early_stop_patience: int = 0  # validations without improvement before stopping (0: never stop early)
    threads: int = 1  # torch intra-op threads in the training process
    device: str = "auto"  # "auto" (CUDA when available), "cpu" or "cuda"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "hrnet_w18"
    input_size: int = 192
    init_ckpt: str = ""  # start from these weights (fine-tuning); empty: random initialisation


@dataclass(frozen=True)
class TeacherConfig:
    name: str = ""
    input_size: int = 192
    ckpt: str = ""
    calculate_student_loss: bool = True  # also supervise the student with ground-truth masks when the data has them


@dataclass(frozen=True)
class ConditionAug:
    """A camera condition of `harness.conditions` as a training augmentation: applied to a sample with probability
    `p`, at a severity drawn uniformly from `severity` = [low, high] (a combination `a+b`: one [low, high] per part).

        [data]
        conditions = [{name = "blur", severity = [0, 2]}, {name = "jpeg", severity = [50, 100], p = 0.5}]
    """

    name: str
    severity: tuple[tuple[float, float], ...]  # per part of the condition
    p: float = 1.0

    @classmethod
    def from_table(cls, table: Any, where: str) -> ConditionAug:
        from harness.conditions import resolve

        if not isinstance(table, dict) or set(table) - {"name", "severity", "p"} or not {"name", "severity"} <= set(
                table):
            raise RecipeError(f"{where}: expected {{name = \"blur\", severity = [low, high], p = 1.0}}, got {table!r}")
        try:
            combined = resolve(str(table["name"]))
        except (KeyError, ValueError) as err:
            raise RecipeError(f"{where}.name: {err.args[0]}") from None
        ranges = table["severity"]
        if len(combined.parts) == 1 and isinstance(ranges, list) and not any(isinstance(r, list) for r in ranges):
            ranges = [ranges]
        ok = isinstance(ranges, list) and len(ranges) == len(combined.parts) and all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                        for v in r) and r[0] <= r[1] for r in ranges)
        if not ok:
            raise RecipeError(f"{where}.severity: expected [low, high] with low <= high"
                              f"{' per part, e.g. [[0, 5], [50, 100]]' if len(combined.parts) > 1 else ''}, "
                              f"got {table['severity']!r}")
        p = table.get("p", 1.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise RecipeError(f"{where}.p: expected a probability in [0, 1], got {p!r}")
        return cls(combined.name, tuple((float(lo), float(hi)) for lo, hi in ranges), float(p))


@dataclass(frozen=True)
class DataConfig:
    source: str = "folder"  # "folder": a pre-generated dataset folder; "synth": scenes made on the fly
    root: str = "data/train"  # folder source: the dataset folder
    synth_size: int = 3000  # synth source: number of distinct scenes (index range)
    synth_seed: int = 0  # synth source: seed of the scene generator
    synth_kind: str = "random"  # synth source: "random" (a secret per scene), "fixed" or "clean"
    synth_background: bool = True
    synth_same_source: float = 0.0  # synth source: share of scenes whose background is the label's own source image
    synth_in_place: float = 0.0  # synth source: share of scenes watermarked in place (no seam: the watermark alone)
    key: int = 0  # codec key of the scenes; the decode loss and validation use the SDecoder of this key
    image_size: int = PHOTO_SIDE  # photos are fitted to image_size² as decoder2 does (ImageOps.fit, LANCZOS)
    batch_size: int = 8  # per process
    num_workers: int = 1
    tilt_deg: float = 5.0  # augmentation: uniform rotation in [-tilt_deg, tilt_deg], borders filled from the edge
    hflip: bool = False
    # camera conditions (harness.conditions) applied per training sample before the fit, each with a severity drawn
    # uniformly from its range: train for the conditions the evaluation measures (docs/conditions.md)
    conditions: tuple[ConditionAug, ...] = ()


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # "adamw" or "sgd"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    grad_clip: float = 5.0  # max global gradient norm (0: no clipping)
    amp: bool = True  # mixed precision on CUDA only; ignored on CPU; KD losses always in fp32


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"  # "cosine" or "poly"
    warmup_steps: int = 100
    warmup_ratio: float = 0.01  # learning rate factor at step 0 of the warm-up
    power: float = 0.9  # poly only
    min_lr_ratio: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    decode_weight: float = 0.0  # the seed's decode loss (0: off)
    decode_angles: tuple[float, ...] = SEARCH_ANGLES


@dataclass(frozen=True)
class ValidationConfig:
    metric: str = "student_bit_acc"  # "student_bit_acc" (higher is better) or "val_iou" (higher is better)
    root: str = ""  # validation dataset folder; empty: synthesise `size` scenes from the validation seed
    size: int = 64
    synth_seed: int = 1
    batch_size: int = 16
    student_use_teacher_mask: bool = False  # diagnostic: the student chain crops with the teacher's mask
    bn_mode: str = "eval"


@dataclass(frozen=True)
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    distiller: dict[str, Any] | None = None  # MMRazor distiller dict, validated when the distiller is built

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    ("data", "source"): ("folder", "synth"),
    ("data", "synth_kind"): ("random", "fixed", "clean"),
    ("optim", "name"): ("adamw", "sgd"),
    ("schedule", "name"): ("cosine", "poly"),
    ("validation", "metric"): ("student_bit_acc", "val_iou"),
    ("validation", "bn_mode"): ("eval", "demo"),
    ("run", "device"): ("auto", "cpu", "cuda"),
}
SHARES = {("data", "synth_same_source"), ("data", "synth_in_place")}  # values that are a share of something, in [0, 1]


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check one TOML value against a dataclass field type (ints are accepted where floats are expected)."""
    if hint is ConditionAug:
        return ConditionAug.from_table(value, where)
    origin = get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        item = get_args(hint)[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise RecipeError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build_section(cls: type, table: Any, source: str, section: str) -> Any:
    where = f"{source}: {section}"
    if not isinstance(table, dict):
        raise RecipeError(f"{where}: expected a table, got {table!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise RecipeError(f"{where}.{unknown[0]}: unknown key; known keys: {', '.join(sorted(names))}")
    values = {}
    for key, value in table.items():
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
        choices = CHOICES.get((section, key))
        if choices and values[key] not in choices:
            raise RecipeError(f"{where}.{key}: {values[key]!r} is not one of {choices}")
        if (section, key) in SHARES and not 0.0 <= values[key] <= 1.0:
            raise RecipeError(f"{where}.{key}: {values[key]!r} is not a share in [0, 1]")
    return cls(**values)


SECTIONS = {
    "run": RunConfig, "model": ModelConfig, "teacher": TeacherConfig, "data": DataConfig, "optim": OptimConfig,
    "schedule": ScheduleConfig, "loss": LossConfig, "validation": ValidationConfig,
}


def recipe_from_dict(raw: dict[str, Any], source: str = "<recipe>") -> Recipe:
    unknown = sorted(set(raw) - set(SECTIONS) - {"distiller"})
    if unknown:
        raise RecipeError(f"{source}: unknown table [{unknown[0]}]; known: {', '.join(sorted(SECTIONS))}, distiller")
    sections = {name: _build_section(cls, raw[name], source, name)
                for name, cls in SECTIONS.items() if name in raw and raw[name] is not None}
    distiller = raw.get("distiller")
    if distiller is not None and not isinstance(distiller, dict):
        raise RecipeError(f"{source}: distiller: expected a table")
    recipe = Recipe(**sections, distiller=distiller)
    if recipe.distiller and recipe.teacher is None:
        raise RecipeError(f"{source}: [distiller] needs a [teacher] table")
    if recipe.teacher is not None and not recipe.teacher.name:
        raise RecipeError(f"{source}: teacher.name is required")
    if recipe.data.hflip and recipe.loss.decode_weight > 0:
        # a mirrored photo carries a mirrored watermark: the decode loss would score it against the unmirrored secret
        raise RecipeError(f"{source}: data.hflip mirrors the watermark, which the decode loss then reads against the "
                          "secret; set loss.decode_weight = 0 or data.hflip = false")
    return recipe


BASE_KEY = "_base_"


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    return recipe_from_dict(load_recipe_tables(path), str(path))


def load_recipe_tables(path: str | Path) -> dict[str, Any]:
    """A recipe file's tables with its `_base_` recipes merged in (as MMEngine configs do).

    `_base_ = "other.toml"` or `_base_ = ["a.toml", "b.toml"]`, paths relative to the recipe's folder: the bases are
    read (with their own bases) and deep-merged in order, a later base overriding an earlier one, then the recipe's
    own keys override them all. Tables merge key by key; any other value (a list included) is replaced whole.
    """
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    via = ""  # a base's errors name the file that asked for it, or the whole chain when it is longer than one step
    if len(chain) == 1:
        via = f" (base of {chain[0]})"
    elif chain:
        via = f" (base chain: {' -> '.join(str(p) for p in (*chain, path))})"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if chain:
            raise RecipeError(f"{chain[-1]}: base recipe {path} not found{via}") from None
        raise RecipeError(f"{path}: recipe not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: not a readable TOML file{via}: {err}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(f"{path}: not valid TOML{via}: {err}") from None
    bases = raw.pop(BASE_KEY, None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise RecipeError(f"{path}: {BASE_KEY} must be a path or a list of paths, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = path.parent / base
        if base_path.suffix != ".toml":
            raise RecipeError(f"{path}: base recipe {base_path} is not a .toml file")
        seen = (*chain, path)
        if any(base_path.resolve() == p.resolve() for p in seen):
            cycle = " -> ".join(str(p) for p in (*seen, base_path))
            raise RecipeError(f"{path}: {BASE_KEY} cycle: {cycle}")
        merged = _deep_merge(merged, _read_with_bases(base_path, seen))
    return _deep_merge(merged, raw)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `override`, table by table (new dicts; neither argument is changed)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def with_seed(recipe: Recipe, seed: int) -> Recipe:
    """The same recipe under another run seed (weight init of new layers, batch order, augmentation draws); the
    resolved config saved in the run directory records it."""
    return dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, seed=seed))


def recipe_to_json(recipe: Recipe) -> str:
    return json.dumps(recipe.to_dict(), indent=2, sort_keys=True)
