"""An MMRazor/MMEngine config (read safely by `mmconfig`) → the trainer's recipe tables, with every key accounted for.

Each key of the config ends in exactly one of three lists: **used** (and as what), **ignored** (and why: it changes
nothing the trainer computes, e.g. `visualizer`), **refused** (and why: the trainer cannot do what it asks, e.g. a
trainable teacher or an optimizer it does not have). Nothing is approximated silently: a setting our recipe cannot
express is refused, and a config with refusals does not run. Epoch-based settings become steps through the dataset
size; `conversions` shows each one.

    port = port_config(read_config("distill1.py"), model_map={"StudentHRNetW18": "hrnet_w18"})
    print(port.report())          # the three lists and the conversions
    recipe = port.recipe()        # PortError (a RecipeError) when something was refused
    print(port.toml())            # the same recipe as TOML: load_recipe(it) == recipe

What maps where (`model` is MMRazor's `SingleTeacherDistill`; a config whose model is a plain architecture trains it
without a teacher):

    model.architecture / model.teacher   type or cfg_path → [model] / [teacher] name (a registered model, by its
                                         name or by --model-map TYPE=NAME); init_cfg=dict(type='Pretrained',
                                         checkpoint=...) → init_ckpt; decode_loss_weight / decode_angles (the seed's
                                         decode-loss student) → [loss]
    model.teacher_ckpt, calculate_student_loss   → [teacher] ckpt, calculate_student_loss
    model.teacher_trainable / teacher_norm_eval / student_trainable   False / True / True, else refused
    model.distiller                      → [distiller], checked by building the ConfigurableDistiller
    optim_wrapper                        → [optim] (SGD, AdamW, Adam without weight decay; clip_grad; AMP)
    param_scheduler                      → [schedule] (LinearLR warm-up, then CosineAnnealingLR or PolyLR)
    train_cfg                            → [run] max_steps, val_every
    default_hooks.checkpoint / logger    → [validation] metric, [run] ckpt_every / log_every
    custom_hooks EarlyStoppingHook       → [run] early_stop_patience
    train_dataloader / val_dataloader    → [data] batch_size, num_workers, root; [validation] batch_size, root
    randomness.seed                      → [run] seed
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.core.toml import tomllib
from harness.distill.config import Recipe, RecipeError, recipe_from_dict, recipe_to_json
from harness.distill.mmconfig import MMConfig

DISTILL_TYPES = {"SingleTeacherDistill", "mmrazor.SingleTeacherDistill"}
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
INF = float("inf")

# Top-level keys that change nothing the trainer computes, and why.
IGNORED = {
    "default_scope": "registry scope; models are named by harness.models here",
    "env_cfg": "process environment (cudnn_benchmark, mp_cfg, dist_cfg): the trainer sets up its own",
    "log_processor": "log formatting: the trainer writes log.jsonl",
    "visualizer": "visualisation backends: the trainer writes log.jsonl",
    "vis_backends": "visualisation backends: the trainer writes log.jsonl",
    "log_level": "log verbosity",
    "launcher": "the launcher: run under torchrun for DDP",
    "work_dir": "the run directory is --out",
    "find_unused_parameters": "DDP wraps the student alone, whose every parameter gets a gradient",
    "val_cfg": "validation runs decoder2 through harness.distill.validate (student_bit_acc, val_iou)",
    "test_cfg": "no test loop: python -m harness.eval evaluates a run's student.pt",
    "test_dataloader": "no test loop: python -m harness.eval evaluates a run's student.pt",
    "test_evaluator": "no test loop: python -m harness.eval evaluates a run's student.pt",
    "train_pipeline": "the trainer's data pipeline is its own (ImageOps.fit to image_size, ±tilt_deg rotation)",
    "val_pipeline": "validation reads photos as decoder2 does",
    "test_pipeline": "no test loop",
}
SCHEDULER_TYPES = {"LinearLR", "CosineAnnealingLR", "PolyLR"}


@dataclass(frozen=True)
class Entry:
    key: str  # dotted path in the config (`custom_hooks[0].patience`)
    note: str  # used: what it became; ignored / refused: why


class PortError(RecipeError):
    """A config with refused keys (the message lists them), or one that gives no valid recipe."""


@dataclass
class Port:
    """The result of mapping one config: recipe tables, the three lists, the epoch → step conversions."""

    source: Path
    tables: dict[str, dict[str, Any]]
    origins: dict[tuple[str, str], str]  # (table, key) → the config key it came from
    used: list[Entry] = field(default_factory=list)
    ignored: list[Entry] = field(default_factory=list)
    refused: list[Entry] = field(default_factory=list)
    conversions: list[str] = field(default_factory=list)
    unread_bases: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # the command-line options that gave this mapping (--model-map, --dataset-size)

    def recipe(self) -> Recipe:
        """The recipe, when nothing was refused."""
        if self.refused:
            lines = "\n".join(f"  {e.key}: {e.note}" for e in self.refused)
            raise PortError(f"{self.source}: {len(self.refused)} setting(s) refused, nothing run:\n{lines}")
        return recipe_from_dict(copy.deepcopy(self.tables), str(self.source))

    def report(self) -> str:
        """The three lists, the conversions and the unread package bases, as plain text."""
        out = [f"{self.source}: {len(self.used)} used, {len(self.ignored)} ignored, {len(self.refused)} refused"]
        if self.unread_bases:
            out.append("package bases not read (their keys are not in this report): " + ", ".join(self.unread_bases))
        for title, entries in (("used", self.used), ("ignored", self.ignored), ("refused", self.refused)):
            out.append(f"{title}:")
            width = max((len(e.key) for e in entries), default=0)
            out += [f"  {e.key.ljust(width)}  {e.note}" for e in entries] or ["  (none)"]
        if self.conversions:
            out.append("conversions:")
            out += [f"  {line}" for line in self.conversions]
        return "\n".join(out)

    def toml(self) -> str:
        """The recipe as TOML, the report in comments on top; refused when it would not give the same recipe."""
        recipe = self.recipe()
        command = " ".join(("python -m harness.distill convert", self.source.name, *self.options))
        lines = [f"Converted by `{command}`.", "", *self.report().splitlines()]
        header = "\n".join(f"# {line}".rstrip() for line in lines)
        text = header + "\n\n" + dump_toml(self.tables, self.origins)
        back = recipe_from_dict(tomllib.loads(text), str(self.source))
        if recipe_to_json(back) != recipe_to_json(recipe):  # e.g. a None in the distiller, which TOML cannot hold
            raise PortError(f"{self.source}: the TOML form would not give the same recipe; train the .py directly")
        return text


def port_config(config: MMConfig, model_map: dict[str, str] | None = None, dataset_size: int | None = None,
                known_models: Iterable[str] | None = None) -> Port:
    """Map a read config onto recipe tables.

    Args:
        config: the config, read by `mmconfig.read_config`.
        model_map: model `type` or `cfg_path` → registered model name (`--model-map TYPE=NAME`).
        dataset_size: scenes per epoch, for epoch-based settings; by default the rows of the training folder's
            manifest.csv.
        known_models: the registered model names (default: `harness.models.list_models()`).
    """
    if known_models is None:
        from harness.models import list_models

        known_models = list_models()
    return _Mapper(config, dict(model_map or {}), dataset_size, tuple(known_models)).run()


def port_file(path: str | Path, model_map: Iterable[str] = (), dataset_size: int | None = None) -> Port:
    """Read and map a .py config; `model_map` as on the command line (`TYPE=NAME` strings)."""
    from harness.distill.mmconfig import read_config

    return port_config(read_config(path), parse_model_map(model_map), dataset_size)


def parse_model_map(items: Iterable[str]) -> dict[str, str]:
    out = {}
    for item in items:
        kind, sep, name = item.partition("=")
        if not sep or not kind.strip() or not name.strip():
            raise PortError(f"--model-map {item!r}: expected TYPE=NAME (a config's model type or cfg_path = a "
                            "registered model name)")
        out[kind.strip()] = name.strip()
    return out


# ---------------------------------------------------------------------------------------------- the mapper


class _Unknown(Exception):
    """A conversion that lacks what it needs (e.g. the dataset size); the message says what."""


class _Mapper:
    def __init__(self, config: MMConfig, model_map: dict[str, str], dataset_size: int | None,
                 known_models: tuple[str, ...]):
        self.cfg, self.data = config, config.data
        self.model_map, self.dataset_size, self.known = model_map, dataset_size, known_models
        options = [f"--model-map {kind}={name}" for kind, name in model_map.items()]
        options += [f"--dataset-size {dataset_size}"] if dataset_size is not None else []
        self.port = Port(config.path, {}, {}, unread_bases=config.unread_bases, options=tuple(options))
        self.epoch_based = False
        self._steps_per_epoch: int | None = None
        self.metric_key = ""  # the config key that declared validation.metric

    # --- recording

    def use(self, key: str, note: str) -> None:
        self.port.used.append(Entry(key, note))

    def ignore(self, key: str, why: str) -> None:
        self.port.ignored.append(Entry(key, why))

    def refuse(self, key: str, why: str) -> None:
        self.port.refused.append(Entry(key, why))

    def put(self, key: str, table: str, name: str, value: Any, how: str = "") -> None:
        """Set recipe `table.name` from config `key` and record it as used (refused when another key set it to a
        different value)."""
        before = self.port.origins.get((table, name))
        if before is not None and not _same(self.port.tables[table][name], value):
            self.refuse(key, f"{_show(value)} for {table}.{name} conflicts with {before} "
                             f"({_show(self.port.tables[table][name])})")
            return
        self.port.tables.setdefault(table, {})[name] = value
        self.port.origins[(table, name)] = key
        self.use(key, f"{table}.{name} = {_show(value)}{f' ({how})' if how else ''}")

    def default(self, table: str, name: str, value: Any, why: str) -> None:
        """A recipe value that the config implies without a key (MMEngine's or torch's default), unless a key set it."""
        values = self.port.tables.setdefault(table, {})
        if name in values:
            return
        values[name] = value
        self.port.origins[(table, name)] = f"(default: {why})"
        self.port.conversions.append(f"{table}.{name} = {_show(value)}: {why}")

    def rest(self, prefix: str, cfg: dict[str, Any], handled: Iterable[str], what: str) -> None:
        """Refuse every key of `cfg` not in `handled`."""
        for key in cfg:
            if key not in handled:
                self.refuse(f"{prefix}.{key}", f"not a key of {what} that this converter knows")

    # --- the whole config

    def run(self) -> Port:
        data = self.data
        handlers: dict[str, Callable[[Any], None]] = {  # in this order: the dataset before epochs, lr before eta_min
            "train_dataloader": self.train_dataloader, "model": self.model, "optim_wrapper": self.optim_wrapper,
            "train_cfg": self.train_cfg, "param_scheduler": self.param_scheduler,
            "default_hooks": self.default_hooks, "custom_hooks": self.custom_hooks,
            "val_dataloader": self.val_dataloader, "val_evaluator": self.val_evaluator,
            "randomness": self.randomness, "load_from": self.load_from, "resume": self.resume,
            "auto_scale_lr": self.auto_scale_lr,
        }
        bases = self.cfg.unread_bases
        unread = f" (the unread base(s) {', '.join(bases)} may hold it)" if bases else ""
        for key in ("model", "optim_wrapper", "train_cfg", "train_dataloader"):
            if key not in data:
                self.refuse(key, f"missing: MMEngine cannot train without it, and neither can this trainer{unread}")
        for key, handler in handlers.items():
            if key in data:
                handler(data[key])
        for key, value in data.items():
            if key in handlers:
                continue
            if key in IGNORED:
                self.ignore(key, IGNORED[key])
            elif key.lower() == "student_use_teacher_mask":
                self.bool_setting(key, value, "validation", "student_use_teacher_mask")
            elif key in self.cfg.helpers:
                self.ignore(key, "a variable of the file: its value reaches the config through the keys that use it")
            else:
                self.refuse(key, "not a setting this converter knows")
        if "param_scheduler" not in data and "optim_wrapper" in data:
            self.constant_schedule()
        leaves = leaf_keys(data)
        for leaf in leaves:  # a guard: a key no rule looked at is refused, never dropped
            if not any(covers(e.key, leaf) for e in (*self.port.used, *self.port.ignored, *self.port.refused)):
                self.refuse(leaf, "not examined by the converter")
        self.note_defaults()
        for entries in (self.port.used, self.port.ignored, self.port.refused):  # in the file's order
            entries.sort(key=lambda e: next((i for i, leaf in enumerate(leaves) if covers(e.key, leaf)), len(leaves)))
        return self.port

    def note_defaults(self) -> None:
        """Settings that shape the run but that an MMEngine config does not hold: the recipe's defaults, named."""
        wanted = [("model", "input_size"), ("data", "image_size"), ("data", "tilt_deg"), ("loss", "bce_weight"),
                  ("loss", "dice_weight")]
        if "teacher" in self.port.tables:
            wanted.insert(1, ("teacher", "input_size"))
        if not self.port.tables.get("validation", {}).get("root"):
            wanted.append(("validation", "size"))
        defaults = recipe_from_dict({"teacher": {"name": "x"}}).to_dict()
        for table, name in wanted:
            if name not in self.port.tables.get(table, {}):
                self.port.conversions.append(f"{table}.{name} = {_show(defaults[table][name])}: not in the config, "
                                             "the recipe's default (edit the converted TOML to change it)")

    # --- model

    def model(self, cfg: Any) -> None:
        if not isinstance(cfg, dict):
            self.refuse("model", f"expected a dict, got {_show(cfg)}")
            return
        if cfg.get("type") not in DISTILL_TYPES:  # a plain architecture: trained alone
            self.architecture("model", cfg, "model")
            return
        self.use("model.type", f"{cfg['type']} → a [teacher] and a [distiller]")
        handled = {"type", "_scope_", "architecture", "teacher", "teacher_ckpt", "teacher_trainable",
                   "teacher_norm_eval", "student_trainable", "calculate_student_loss", "distiller", "data_preprocessor"}
        if "_scope_" in cfg:
            self.ignore("model._scope_", "registry scope; models are named by harness.models here")
        if "data_preprocessor" in cfg:
            self.data_preprocessor("model.data_preprocessor", cfg["data_preprocessor"])
        for key in ("architecture", "teacher", "distiller"):
            if key not in cfg:
                self.refuse(f"model.{key}", "missing: SingleTeacherDistill needs it")
        if "architecture" in cfg:
            self.architecture("model.architecture", cfg["architecture"], "model")
        if "teacher_ckpt" in cfg:
            self.checkpoint_path("model.teacher_ckpt", cfg["teacher_ckpt"], "teacher", "ckpt")
        if "teacher" in cfg:
            self.architecture("model.teacher", cfg["teacher"], "teacher", has_ckpt=bool(cfg.get("teacher_ckpt")))
        self.fixed("model.teacher_trainable", cfg, False, "the teacher is frozen (a trainable teacher is refused)")
        self.fixed("model.teacher_norm_eval", cfg, True, "the whole teacher runs in eval mode (norm layers and "
                                                         "dropout alike), under no_grad")
        self.fixed("model.student_trainable", cfg, True, "the student is trained")
        if "calculate_student_loss" in cfg:
            self.bool_setting("model.calculate_student_loss", cfg["calculate_student_loss"], "teacher",
                              "calculate_student_loss", "ground-truth mask loss: BCE + Dice")
        if "distiller" in cfg:
            self.distiller("model.distiller", cfg["distiller"])
        self.rest("model", cfg, handled, "SingleTeacherDistill")

    def fixed(self, key: str, cfg: dict[str, Any], wanted: bool, meaning: str) -> None:
        name = key.split(".")[-1]
        if name not in cfg:
            return
        if cfg[name] is wanted:
            self.use(key, f"{cfg[name]}: {meaning}")
        else:
            self.refuse(key, f"{cfg[name]!r} is not supported: {meaning}")

    def bool_setting(self, key: str, value: Any, table: str, name: str, how: str = "") -> None:
        if isinstance(value, bool):
            self.put(key, table, name, value, how)
        else:
            self.refuse(key, f"expected True or False, got {_show(value)}")

    def architecture(self, prefix: str, cfg: Any, table: str, has_ckpt: bool = False) -> None:
        """A student (`table` = "model") or teacher (`table` = "teacher") architecture dict."""
        if not isinstance(cfg, dict):
            self.refuse(prefix, f"expected dict(type=...) or dict(cfg_path=...), got {_show(cfg)}")
            return
        handled = {"type", "cfg_path", "_scope_", "pretrained", "init_cfg", "data_preprocessor"}
        name, by_map = self.model_name(prefix, cfg, table)
        if "_scope_" in cfg:
            self.ignore(f"{prefix}._scope_", "registry scope; models are named by harness.models here")
        if "data_preprocessor" in cfg:
            self.data_preprocessor(f"{prefix}.data_preprocessor", cfg["data_preprocessor"])
        if "pretrained" in cfg:
            self.pretrained(f"{prefix}.pretrained", cfg["pretrained"], has_ckpt)
        if "init_cfg" in cfg:
            self.init_cfg(f"{prefix}.init_cfg", cfg["init_cfg"], table, has_ckpt)
        if table == "model":
            handled |= self.decode_options(prefix, cfg)
        options = self.model_options(name)
        for key, value in cfg.items():
            if key in handled:
                continue
            where = f"{prefix}.{key}"
            if name and key in options and _same(options[key], value):
                self.use(where, f"{_show(value)}: the value {name} has already")
            elif name and key in options:
                self.refuse(where, f"{_show(value)} differs from {name}'s {_show(options[key])}, and a recipe names "
                                   "a registered model without options")
            elif name and by_map:
                self.ignore(where, f"an option of {cfg.get('type') or cfg.get('cfg_path')}: fixed by {name}, which "
                                   "--model-map declares to be that model")
            else:
                self.refuse(where, "an architecture option this converter cannot check"
                                   + (f"; pass --model-map to declare {name} equivalent" if name else ""))

    def model_name(self, prefix: str, cfg: dict[str, Any], table: str) -> tuple[str, bool]:
        """(registered name or "", whether --model-map gave it); records the type / cfg_path key."""
        which = "type" if "type" in cfg else "cfg_path" if "cfg_path" in cfg else ""
        if not which:
            self.refuse(prefix, "no type or cfg_path: cannot tell which model it is")
            return "", False
        kind = cfg[which]
        key = f"{prefix}.{which}"
        if "type" in cfg and "cfg_path" in cfg:
            self.refuse(f"{prefix}.cfg_path", "both type and cfg_path are given; MMRazor reads one")
        if not isinstance(kind, str):
            self.refuse(key, f"expected a string, got {_show(kind)}")
            return "", False
        if kind in self.model_map:
            name, how = self.model_map[kind], f"--model-map {kind}={self.model_map[kind]}"
        else:
            name, how = _registered_by_name(kind, self.known), "the registered model of that name"
        if not name or name not in self.known:
            bad = f"--model-map names {name!r}, which is not registered; " if name else ""
            self.refuse(key, f"{bad}no registered model for {kind!r}; pass --model-map {kind}=NAME, NAME one of: "
                             f"{', '.join(self.known)}")
            return "", False
        self.put(key, table, "name", name, how)
        return name, kind in self.model_map

    def checkpoint_path(self, key: str, value: Any, table: str, name: str) -> None:
        if value is None:
            self.ignore(key, "None: no checkpoint")
        elif _plain_path(value):
            self.put(key, table, name, value, "a local file, read with weights_only=True, strict")
        else:
            self.refuse(key, f"{_show(value)}: checkpoints are read from local files only (download it, give the path)")

    def model_options(self, name: str) -> dict[str, Any]:
        if not name:
            return {}
        try:
            from harness.models import get_entry

            return get_entry(name).options()
        except (KeyError, ValueError):
            return {}

    def pretrained(self, key: str, value: Any, has_ckpt: bool) -> None:
        if value is False or value is None:
            self.ignore(key, "no pretrained weights asked")
        elif has_ckpt:
            self.ignore(key, "teacher_ckpt gives the teacher's weights")
        else:
            self.refuse(key, f"{_show(value)}: weights by name are not fetched here; give a checkpoint with "
                             "init_cfg=dict(type='Pretrained', checkpoint=...)")

    def init_cfg(self, key: str, cfg: Any, table: str, has_ckpt: bool) -> None:
        if cfg is None:
            self.ignore(key, "no initialisation asked")
            return
        if not isinstance(cfg, dict) or cfg.get("type") != "Pretrained":
            self.refuse(key, f"{_show(cfg)}: only init_cfg=dict(type='Pretrained', checkpoint=...) is honoured "
                             "(the registered model initialises itself otherwise)")
            return
        self.use(f"{key}.type", "Pretrained: start from a checkpoint")
        if "checkpoint" not in cfg:
            self.refuse(f"{key}.checkpoint", "missing")
        elif table == "teacher" and has_ckpt:
            self.ignore(f"{key}.checkpoint", "teacher_ckpt is loaded over it")
        else:
            self.checkpoint_path(f"{key}.checkpoint", cfg["checkpoint"], table,
                                 "init_ckpt" if table == "model" else "ckpt")
        if "prefix" in cfg:
            if cfg["prefix"] in ("backbone.", "module.", "model.", "backbone", "module", "model"):
                self.ignore(f"{key}.prefix", "the checkpoint loader strips backbone./module./model. itself")
            else:
                self.refuse(f"{key}.prefix", f"{cfg['prefix']!r}: the loader strips only backbone./module./model.")
        if "map_location" in cfg:
            self.ignore(f"{key}.map_location", "checkpoints are read onto the CPU, then moved")
        self.rest(key, cfg, {"type", "checkpoint", "prefix", "map_location"}, "init_cfg")

    def decode_options(self, prefix: str, cfg: dict[str, Any]) -> set[str]:
        """The seed's decode-loss student (`StudentHRNetW18WithSDecoderLoss`) takes its loss weight, angles and the
        teacher-mask switch as architecture options."""
        handled = set()
        for key in ("decode_loss_weight", "loss_decode_weight", "decode_weight"):
            if key in cfg:
                handled.add(key)
                self.number(f"{prefix}.{key}", cfg[key], "loss", "decode_weight",
                            how="the decode loss: min over angles of BCE(SDecoder(ROI), secret), batch mean × weight")
        for key in ("decode_angles", "angles", "search_angles"):
            if key in cfg:
                handled.add(key)
                value = cfg[key]
                if isinstance(value, (list, tuple)) and all(_is_number(v) for v in value):
                    self.put(f"{prefix}.{key}", "loss", "decode_angles", [float(v) for v in value])
                else:
                    self.refuse(f"{prefix}.{key}", f"expected a list of angles, got {_show(value)}")
        if "student_use_teacher_mask" in cfg:
            handled.add("student_use_teacher_mask")
            self.bool_setting(f"{prefix}.student_use_teacher_mask", cfg["student_use_teacher_mask"], "validation",
                              "student_use_teacher_mask")
        for key in ("sdecoder", "sdecoder_ckpt", "sdecoder_cfg", "sdecoder_path"):
            if key in cfg:
                handled.add(key)
                self.refuse(f"{prefix}.{key}", "the decode loss reads with the reference SDecoder of data.key; the "
                                               "trainer does not load another SDecoder")
        return handled

    def data_preprocessor(self, prefix: str, cfg: Any) -> None:
        if cfg is None:
            self.ignore(prefix, "none")
            return
        if not isinstance(cfg, dict):
            self.refuse(prefix, f"expected a dict, got {_show(cfg)}")
            return
        for key, expected in (("mean", IMAGENET_MEAN_255), ("std", IMAGENET_STD_255)):
            if key not in cfg:
                continue
            value = cfg[key]
            if _close(value, expected):
                self.use(f"{prefix}.{key}", "ImageNet's, as the Localizer normalises")
            else:
                self.refuse(f"{prefix}.{key}", f"{_show(value)}: the Localizer normalises with ImageNet's "
                                               f"{list(expected)}")
        notes = {"type": "the Localizer normalises its input itself",
                 "bgr_to_rgb": "photos are read as RGB here (PIL)", "rgb_to_bgr": "photos are read as RGB here (PIL)",
                 "size": "padding: the Localizer resizes each photo to input_size",
                 "size_divisor": "padding: the Localizer resizes each photo to input_size",
                 "pad_val": "padding: the Localizer resizes each photo to input_size",
                 "seg_pad_val": "padding: the Localizer resizes each photo to input_size"}
        for key, why in notes.items():
            if key in cfg:
                self.ignore(f"{prefix}.{key}", why)
        self.rest(prefix, cfg, {"mean", "std", *notes}, "data_preprocessor")

    def distiller(self, key: str, cfg: Any) -> None:
        from harness.distill.distiller import ConfigurableDistiller
        from harness.distill.recorders import RecorderError

        try:
            built = ConfigurableDistiller.from_config(copy.deepcopy(cfg))
        except (ValueError, TypeError, KeyError, RecorderError) as err:  # the distiller's checks, at build
            self.refuse(key, f"{err}")
            return
        losses = ", ".join(f"{n} ({type(m).__name__})" for n, m in built.distill_losses.items()) or "none"
        recorders = ", ".join(f"{n} ({r.source})" for n, r in built.student_recorders.recorders.items()) or "none"
        built.close()
        self.port.tables["distiller"] = copy.deepcopy(cfg)
        self.port.origins[("distiller", "")] = key
        self.use(key, f"[distiller] as written: student recorders {recorders}; losses {losses}")

    # --- data

    def train_dataloader(self, cfg: Any) -> None:
        prefix = "train_dataloader"
        if not isinstance(cfg, dict):
            self.refuse(prefix, f"expected a dict, got {_show(cfg)}")
            return
        self.loader_common(prefix, cfg, "data", "batch_size", "per process")
        if "num_workers" in cfg:
            self.number(f"{prefix}.num_workers", cfg["num_workers"], "data", "num_workers", integer=True)
        if "drop_last" in cfg:
            self.use(f"{prefix}.drop_last", f"{cfg['drop_last']}: counts the steps of an epoch")
        self.dataset(f"{prefix}.dataset", cfg.get("dataset"), "data")
        self.rest(prefix, cfg, {"batch_size", "num_workers", "drop_last", "dataset", *LOADER_IGNORED}, "a dataloader")

    def val_dataloader(self, cfg: Any) -> None:
        prefix = "val_dataloader"
        if not isinstance(cfg, dict):
            self.refuse(prefix, f"expected a dict, got {_show(cfg)}")
            return
        self.loader_common(prefix, cfg, "validation", "batch_size", "")
        for key in ("num_workers", "drop_last"):
            if key in cfg:
                self.ignore(f"{prefix}.{key}", "validation loads its photos in the main process, every one once")
        self.dataset(f"{prefix}.dataset", cfg.get("dataset"), "validation")
        self.rest(prefix, cfg, {"batch_size", "num_workers", "drop_last", "dataset", *LOADER_IGNORED}, "a dataloader")

    def loader_common(self, prefix: str, cfg: dict[str, Any], table: str, name: str, how: str) -> None:
        if "batch_size" in cfg:
            self.number(f"{prefix}.batch_size", cfg["batch_size"], table, name, integer=True, how=how)
        for key, why in LOADER_IGNORED.items():
            if key in cfg:
                self.ignore(f"{prefix}.{key}", why if table == "data" or "sampler" not in key
                            else "validation reads every photo once, in order")

    def dataset(self, prefix: str, cfg: Any, table: str) -> None:
        if cfg is None:
            if table == "data":
                self.refuse(prefix, "missing: no training scenes")
            return
        if not isinstance(cfg, dict):
            self.refuse(prefix, f"expected a dict, got {_show(cfg)}")
            return
        root = cfg.get("data_root")
        if _plain_path(root):
            if table == "data":  # one key, two recipe values
                self.port.tables.setdefault("data", {}).update(source="folder", root=root)
                self.port.origins.update({("data", "source"): f"{prefix}.data_root",
                                          ("data", "root"): f"{prefix}.data_root"})
                self.use(f"{prefix}.data_root", f'data.source = "folder", data.root = {_show(root)} (read as a '
                                                "harness dataset folder: manifest.csv)")
            else:
                self.put(f"{prefix}.data_root", "validation", "root", root, "read as a harness dataset folder")
        elif "data_root" in cfg:
            self.refuse(f"{prefix}.data_root", f"{_show(root)} is not a plain folder path")
        elif table == "data":
            self.refuse(prefix, "no data_root: the training folder is unknown")
        notes = {"type": "the folder is read as a harness dataset (manifest.csv: photos, masks, secrets)",
                 "ann_file": "the folder's manifest.csv lists its samples",
                 "data_prefix": "the folder's manifest.csv names each photo's and mask's file",
                 "pipeline": "the trainer's data pipeline is its own (ImageOps.fit to image_size, ±tilt_deg rotation)"
                 if table == "data" else "validation prepares photos as decoder2 does",
                 "metainfo": "one class: the watermark mask", "serialize_data": "memory layout of annotations",
                 "lazy_init": "annotations are read when the run starts", "test_mode": "set by the loop"}
        for key, why in notes.items():
            if key in cfg:
                self.ignore(f"{prefix}.{key}", why)
        self.rest(prefix, cfg, {"data_root", *notes}, "a dataset")

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: ⌈scenes / batch⌉ (⌊⌋ with drop_last), as MMEngine's DefaultSampler on one
        process; computed once, and the conversion recorded."""
        if self._steps_per_epoch is not None:
            return self._steps_per_epoch
        loader = self.data.get("train_dataloader") or {}
        batch = loader.get("batch_size") if isinstance(loader, dict) else None
        if not _is_number(batch) or batch <= 0:
            raise _Unknown("the batch size is unknown (train_dataloader.batch_size)")
        size, where = self.dataset_size, "--dataset-size"
        if size is None:
            root = self.port.tables.get("data", {}).get("root")
            size, where = _manifest_rows(root), f"rows of {root}/manifest.csv"
            if size is None:
                raise _Unknown(f"the dataset size is unknown ({root or 'no folder'} has no readable manifest.csv); "
                               "pass --dataset-size N")
        drop_last = bool(loader.get("drop_last", False))
        steps = size // batch if drop_last else math.ceil(size / batch)
        if steps <= 0:
            raise _Unknown(f"{size} scenes give no full batch of {batch}")
        rounding = "⌊⌋, drop_last" if drop_last else "⌈⌉"
        self.port.conversions.insert(0, f"1 epoch = {size} scenes ({where}) / batch {batch} ({rounding}) = {steps} "
                                        "steps (one process; under torchrun the batch is per process)")
        self._steps_per_epoch = steps
        return steps

    def to_steps(self, key: str, value: Any, by_epoch: bool) -> int | None:
        """An epoch or iteration count → steps (recorded in conversions); None and refused when it cannot be."""
        if not _is_number(value) or value < 0:
            self.refuse(key, f"expected a count, got {_show(value)}")
            return None
        if not by_epoch:
            return int(value)
        try:
            steps = int(round(value * self.steps_per_epoch()))
        except _Unknown as err:
            self.refuse(key, f"epoch-based: {err}")
            return None
        self.port.conversions.append(f"{key} = {value} epochs × {self.steps_per_epoch()} = {steps} steps")
        return steps

    # --- optimisation

    def optim_wrapper(self, cfg: Any) -> None:
        prefix = "optim_wrapper"
        if not isinstance(cfg, dict):
            self.refuse(prefix, f"expected a dict, got {_show(cfg)}")
            return
        kind = cfg.get("type", "OptimWrapper")
        if kind in ("OptimWrapper", "AmpOptimWrapper"):
            amp = kind == "AmpOptimWrapper"
            if "type" in cfg:
                self.put(f"{prefix}.type", "optim", "amp", amp, "mixed precision on CUDA; KD losses in fp32" if amp
                         else "fp32")
            else:
                self.default("optim", "amp", False, "optim_wrapper has no type: MMEngine's OptimWrapper, fp32")
        else:
            self.refuse(f"{prefix}.type", f"{kind!r}: only OptimWrapper and AmpOptimWrapper")
        if cfg.get("loss_scale", "dynamic") == "dynamic":
            if "loss_scale" in cfg:
                self.ignore(f"{prefix}.loss_scale", "'dynamic': the GradScaler is dynamic")
        else:
            self.refuse(f"{prefix}.loss_scale", f"{_show(cfg['loss_scale'])}: only a dynamic loss scale")
        if "dtype" in cfg:
            if cfg["dtype"] in (None, "float16"):
                self.ignore(f"{prefix}.dtype", "AMP runs in float16")
            else:
                self.refuse(f"{prefix}.dtype", f"{cfg['dtype']!r}: AMP runs in float16 only")
        if "optimizer" in cfg:
            self.optimizer(f"{prefix}.optimizer", cfg["optimizer"])
        else:
            self.refuse(f"{prefix}.optimizer", "missing")
        self.clip_grad(f"{prefix}.clip_grad", cfg.get("clip_grad"), "clip_grad" in cfg)
        if cfg.get("paramwise_cfg"):
            self.refuse(f"{prefix}.paramwise_cfg", "per-parameter learning rates and decays are not supported")
        elif "paramwise_cfg" in cfg:
            self.ignore(f"{prefix}.paramwise_cfg", "empty")
        if cfg.get("accumulative_counts", 1) != 1:
            self.refuse(f"{prefix}.accumulative_counts", "gradient accumulation is not supported")
        elif "accumulative_counts" in cfg:
            self.ignore(f"{prefix}.accumulative_counts", "1: no accumulation")
        self.rest(prefix, cfg, {"type", "loss_scale", "dtype", "optimizer", "clip_grad", "paramwise_cfg",
                                "accumulative_counts"}, "optim_wrapper")

    def optimizer(self, prefix: str, cfg: Any) -> None:
        if not isinstance(cfg, dict):
            self.refuse(prefix, f"expected dict(type=..., lr=...), got {_show(cfg)}")
            return
        kind = cfg.get("type")
        decay = cfg.get("weight_decay", 0.01 if kind == "AdamW" else 0.0)
        if kind == "SGD":
            self.put(f"{prefix}.type", "optim", "name", "sgd")
        elif kind == "AdamW":
            self.put(f"{prefix}.type", "optim", "name", "adamw")
        elif kind == "Adam" and decay == 0:
            self.put(f"{prefix}.type", "optim", "name", "adamw", "Adam without weight decay is AdamW without it")
        elif kind == "Adam":
            self.refuse(f"{prefix}.type", "Adam with weight decay (an L2 term in the gradient) is not AdamW's "
                                          "decoupled decay, and the trainer has only AdamW")
        else:
            self.refuse(f"{prefix}.type", f"{kind!r}: the trainer has SGD and AdamW")
        if "lr" in cfg:
            self.number(f"{prefix}.lr", cfg["lr"], "optim", "lr")
        else:
            self.refuse(f"{prefix}.lr", "missing")
        if "weight_decay" in cfg:
            self.number(f"{prefix}.weight_decay", cfg["weight_decay"], "optim", "weight_decay")
        else:
            self.default("optim", "weight_decay", float(decay), f"{kind}'s default in torch")
        if kind == "SGD":
            if "momentum" in cfg:
                self.number(f"{prefix}.momentum", cfg["momentum"], "optim", "momentum")
            else:
                self.default("optim", "momentum", 0.0, "SGD's default in torch")
        elif "momentum" in cfg:
            self.refuse(f"{prefix}.momentum", f"{kind} takes no momentum")
        checks = {"nesterov": (False,), "dampening": (0, 0.0), "betas": ((0.9, 0.999), [0.9, 0.999]),
                  "eps": (1e-8,), "amsgrad": (False,), "foreach": (None,), "maximize": (False,)}
        for key, fine in checks.items():
            if key not in cfg:
                continue
            if any(_same(cfg[key], f) for f in fine):
                self.ignore(f"{prefix}.{key}", f"{_show(cfg[key])}: torch's default, which the trainer uses")
            else:
                self.refuse(f"{prefix}.{key}", f"{_show(cfg[key])}: the trainer uses torch's default "
                                               f"{_show(fine[0])}")
        self.rest(prefix, cfg, {"type", "lr", "weight_decay", "momentum", *checks}, "the optimizer")

    def clip_grad(self, key: str, cfg: Any, given: bool) -> None:
        if cfg is None:
            if given:
                self.put(key, "optim", "grad_clip", 0.0, "no clipping")
            else:
                self.default("optim", "grad_clip", 0.0, "no clip_grad: MMEngine does not clip")
            return
        if not isinstance(cfg, dict) or not _is_number(cfg.get("max_norm")):
            self.refuse(key, f"{_show(cfg)}: only dict(max_norm=...) (clipping by the global norm)")
            return
        self.number(f"{key}.max_norm", cfg["max_norm"], "optim", "grad_clip", how="global 2-norm")
        if cfg.get("norm_type", 2) not in (2, 2.0):
            self.refuse(f"{key}.norm_type", f"{cfg['norm_type']}: the trainer clips the 2-norm")
        elif "norm_type" in cfg:
            self.use(f"{key}.norm_type", "2: the global 2-norm")
        if cfg.get("type", "norm") != "norm":
            self.refuse(f"{key}.type", f"{cfg['type']!r}: the trainer clips by norm")
        elif "type" in cfg:
            self.use(f"{key}.type", "'norm'")
        self.rest(key, cfg, {"max_norm", "norm_type", "type"}, "clip_grad")

    def number(self, key: str, value: Any, table: str, name: str, integer: bool = False, how: str = "") -> None:
        if not _is_number(value) or (integer and value != int(value)):
            self.refuse(key, f"expected {'an integer' if integer else 'a number'}, got {_show(value)}")
            return
        self.put(key, table, name, int(value) if integer else float(value), how)

    # --- schedule

    def train_cfg(self, cfg: Any) -> None:
        prefix = "train_cfg"
        if not isinstance(cfg, dict):
            self.refuse(prefix, f"expected a dict, got {_show(cfg)}")
            return
        kind = cfg.get("type")
        by_epoch = cfg.get("by_epoch", kind != "IterBasedTrainLoop" and "max_iters" not in cfg)
        if kind in ("EpochBasedTrainLoop", "IterBasedTrainLoop"):
            self.use(f"{prefix}.type", f"{kind}: {'epochs' if by_epoch else 'steps'} counted in steps")
        elif kind is not None:
            self.refuse(f"{prefix}.type", f"{kind!r}: only EpochBasedTrainLoop and IterBasedTrainLoop")
        if "by_epoch" in cfg:
            self.use(f"{prefix}.by_epoch", f"{cfg['by_epoch']}: counts in {'epochs' if by_epoch else 'steps'}")
        self.epoch_based = bool(by_epoch)
        length = "max_epochs" if by_epoch else "max_iters"
        if length in cfg:
            steps = self.to_steps(f"{prefix}.{length}", cfg[length], by_epoch)
            if steps is not None:
                self.put(f"{prefix}.{length}", "run", "max_steps", steps)
        else:
            self.refuse(f"{prefix}.{length}", "missing: the length of training")
        if "val_interval" in cfg:
            steps = self.to_steps(f"{prefix}.val_interval", cfg["val_interval"], by_epoch)
            if steps is not None:
                self.put(f"{prefix}.val_interval", "run", "val_every", steps, "validations of decoder2 bit accuracy")
        if cfg.get("val_begin", 1) not in (0, 1):
            self.refuse(f"{prefix}.val_begin", "validation starts with the first val_interval")
        elif "val_begin" in cfg:
            self.ignore(f"{prefix}.val_begin", f"{cfg['val_begin']}: validation starts with the first val_interval")
        if cfg.get("dynamic_intervals"):
            self.refuse(f"{prefix}.dynamic_intervals", "validation intervals are fixed")
        self.rest(prefix, cfg, {"type", "by_epoch", "max_epochs", "max_iters", "val_interval", "val_begin",
                                "dynamic_intervals"}, "train_cfg")

    def param_scheduler(self, cfg: Any) -> None:
        items = cfg if isinstance(cfg, list) else [cfg]
        keys = [f"param_scheduler[{i}]" if isinstance(cfg, list) else "param_scheduler" for i in range(len(items))]
        warmup: tuple[str, dict[str, Any]] | None = None
        decay: tuple[str, dict[str, Any]] | None = None
        for key, item in zip(keys, items):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in SCHEDULER_TYPES:
                self.refuse(key, f"{_show(kind or item)}: the trainer has a LinearLR warm-up followed by "
                                 "CosineAnnealingLR or PolyLR")
            elif kind == "LinearLR" and warmup is None and decay is None:
                warmup = (key, item)
            elif kind != "LinearLR" and decay is None:
                decay = (key, item)
            else:
                self.refuse(key, f"{kind} here: the trainer has one warm-up, then one decay")
        end = 0
        if warmup is not None:
            end = self.warmup(*warmup)
        else:
            self.default("schedule", "warmup_steps", 0, "no LinearLR warm-up")
        if decay is not None and end is not None:
            self.decay(*decay, begin=end)
        elif decay is not None:
            self.refuse(decay[0], "follows a warm-up that was refused")
        else:
            self.default("schedule", "name", "poly", "no decay scheduler: a constant rate (poly of power 0)")
            self.default("schedule", "power", 0.0, "no decay scheduler: a constant rate")

    def constant_schedule(self) -> None:
        self.default("schedule", "warmup_steps", 0, "no param_scheduler: MMEngine keeps the rate constant")
        self.default("schedule", "name", "poly", "no param_scheduler: a constant rate (poly of power 0)")
        self.default("schedule", "power", 0.0, "no param_scheduler: a constant rate")

    def span(self, key: str, item: dict[str, Any]) -> tuple[int, float] | None:
        """(begin, end) of a scheduler in steps (end may be inf)."""
        by_epoch = item.get("by_epoch", True)  # MMEngine's default for every parameter scheduler
        begin = self.to_steps(f"{key}.begin", item.get("begin", 0), by_epoch)
        end_value = item.get("end", INF)
        end = INF if end_value == INF else self.to_steps(f"{key}.end", end_value, by_epoch)
        if begin is None or end is None:
            return None
        for name in ("by_epoch", "convert_to_iter_based"):
            if name in item:
                self.use(f"{key}.{name}", f"{item[name]}: the rate changes every step here")
        if by_epoch and not item.get("convert_to_iter_based", False):
            self.port.conversions.append(f"{key}: epoch-based without convert_to_iter_based (MMEngine changes the "
                                         "rate once an epoch): the trainer changes it every step")
        return begin, end

    def warmup(self, key: str, item: dict[str, Any]) -> int | None:
        span = self.span(key, item)
        self.use(f"{key}.type", "LinearLR: the linear warm-up")
        self.rest(key, item, {"type", "start_factor", "end_factor", "begin", "end", "by_epoch",
                              "convert_to_iter_based", "verbose"}, "LinearLR")
        if "verbose" in item:
            self.ignore(f"{key}.verbose", "logging")
        if item.get("end_factor", 1.0) != 1.0:
            self.refuse(f"{key}.end_factor", "the warm-up ends at the full rate (1.0)")
        elif "end_factor" in item:
            self.use(f"{key}.end_factor", "1.0: the warm-up ends at the full rate")
        if "start_factor" in item:
            self.number(f"{key}.start_factor", item["start_factor"], "schedule", "warmup_ratio")
        else:
            self.default("schedule", "warmup_ratio", 1.0 / 3, "LinearLR's default start_factor")
        if span is None:
            return None
        begin, end = span
        if begin != 0 or end == INF:
            self.refuse(f"{key}.begin" if begin else f"{key}.end", "the warm-up must start at step 0 and end")
            return None
        if "begin" in item:
            self.use(f"{key}.begin", "0: the warm-up starts at step 0")
        self.put(f"{key}.end", "schedule", "warmup_steps", int(end))
        return int(end)

    def decay(self, key: str, item: dict[str, Any], begin: int) -> None:
        kind = item["type"]
        name = "cosine" if kind == "CosineAnnealingLR" else "poly"
        self.put(f"{key}.type", "schedule", "name", name, "decay from the end of the warm-up to run.max_steps")
        span = self.span(key, item)
        max_steps = self.port.tables.get("run", {}).get("max_steps")
        if span is not None and max_steps is not None:
            start, end = span
            if start != begin:
                self.refuse(f"{key}.begin", f"{start} steps: the decay starts where the warm-up ends ({begin})")
            elif "begin" in item:
                self.use(f"{key}.begin", f"{start} steps: where the warm-up ends" if begin else "0: from step 0")
            if end != INF and end != max_steps:
                self.refuse(f"{key}.end", f"{end} steps: the decay ends at run.max_steps ({max_steps})")
            elif "end" in item:
                self.use(f"{key}.end", f"run.max_steps ({max_steps})")
            if kind == "CosineAnnealingLR" and "T_max" in item:
                t_max = self.to_steps(f"{key}.T_max", item["T_max"], item.get("by_epoch", True))
                if t_max is not None and t_max != max_steps - begin:
                    self.refuse(f"{key}.T_max", f"{t_max} steps: the cosine spans max_steps - warm-up = "
                                                f"{max_steps - begin} steps")
                elif t_max is not None:
                    self.use(f"{key}.T_max", f"{t_max} steps = max_steps - warm-up")
        elif span is not None:
            self.refuse(key, "the length of training is unknown")
        self.eta_min(key, item)
        if kind == "PolyLR" and "power" in item:
            self.number(f"{key}.power", item["power"], "schedule", "power")
        elif kind == "PolyLR":
            self.default("schedule", "power", 1.0, "PolyLR's default power")
        if "verbose" in item:
            self.ignore(f"{key}.verbose", "logging")
        self.rest(key, item, {"type", "eta_min", "eta_min_ratio", "begin", "end", "by_epoch", "T_max", "power",
                              "convert_to_iter_based", "verbose"}, kind)

    def eta_min(self, key: str, item: dict[str, Any]) -> None:
        if "eta_min_ratio" in item and item["eta_min_ratio"] is not None:
            self.number(f"{key}.eta_min_ratio", item["eta_min_ratio"], "schedule", "min_lr_ratio")
            if "eta_min" in item:
                self.refuse(f"{key}.eta_min", "give eta_min or eta_min_ratio, not both")
            return
        if "eta_min_ratio" in item:
            self.ignore(f"{key}.eta_min_ratio", "None")
        eta_min = item.get("eta_min") or 0.0
        lr = self.port.tables.get("optim", {}).get("lr")
        if "eta_min" not in item:
            self.default("schedule", "min_lr_ratio", 0.0, "eta_min defaults to 0")
        elif not _is_number(eta_min) or lr is None or lr <= 0:
            self.refuse(f"{key}.eta_min", f"{_show(eta_min)}: needs a number and the optimizer's lr")
        else:
            self.put(f"{key}.eta_min", "schedule", "min_lr_ratio", eta_min / lr, f"eta_min / lr = {eta_min} / {lr}")

    # --- hooks

    def default_hooks(self, cfg: Any) -> None:
        if not isinstance(cfg, dict):
            self.refuse("default_hooks", f"expected a dict, got {_show(cfg)}")
            return
        quiet = {"timer": "timing: log.jsonl records sec_per_step", "param_scheduler": "the scheduler steps each step",
                 "sampler_seed": "the batch plan is a function of (seed, step)",
                 "visualization": "visualisation: nothing drawn", "runtime_info": "run information: log.jsonl",
                 "sync_buffers": "BatchNorm buffers: rank 0's student is validated and saved"}
        for name, hook in cfg.items():
            key = f"default_hooks.{name}"
            if name in quiet:
                self.ignore(key, quiet[name])
            elif hook is None:
                self.ignore(key, "switched off")
            elif name == "checkpoint":
                self.checkpoint_hook(key, hook)
            elif name == "logger":
                self.logger_hook(key, hook)
            else:
                self.refuse(key, "a hook this converter does not know")

    def checkpoint_hook(self, prefix: str, cfg: dict[str, Any]) -> None:
        if "type" in cfg:
            self.use(f"{prefix}.type", "CheckpointHook: last.pt every ckpt_every steps, student.pt = the best one")
        if "interval" in cfg:
            by_epoch = cfg.get("by_epoch", self.epoch_based)
            steps = self.to_steps(f"{prefix}.interval", cfg["interval"], by_epoch)
            if steps is not None and steps > 0:
                self.put(f"{prefix}.interval", "run", "ckpt_every", steps, "writes of last.pt")
            elif steps is not None:
                self.refuse(f"{prefix}.interval", f"{steps}: a positive interval")
        if "by_epoch" in cfg:
            self.use(f"{prefix}.by_epoch", f"{cfg['by_epoch']}: interval in {'epochs' if cfg['by_epoch'] else 'steps'}")
        if "save_best" in cfg:
            self.save_best(f"{prefix}.save_best", cfg["save_best"])
        if cfg.get("rule", "greater") != "greater":
            self.refuse(f"{prefix}.rule", f"{cfg['rule']!r}: the trainer's metrics are higher-is-better")
        elif "rule" in cfg:
            self.use(f"{prefix}.rule", "'greater': higher is better, as both metrics are")
        notes = {"max_keep_ckpts": "one last.pt and one student.pt are kept", "save_last": "last.pt is always kept",
                 "out_dir": "checkpoints go to --out", "filename_tmpl": "last.pt and student.pt",
                 "save_optimizer": "last.pt holds the optimizer", "save_param_scheduler": "last.pt holds the scheduler",
                 "published_keys": "python -m harness.distill export ships a run", "greater_keys": "see rule",
                 "less_keys": "see rule", "file_client_args": "local files", "backend_args": "local files"}
        for key, why in notes.items():
            if key in cfg:
                self.ignore(f"{prefix}.{key}", why)
        self.rest(prefix, cfg, {"type", "interval", "by_epoch", "save_best", "rule", *notes}, "CheckpointHook")

    def save_best(self, key: str, value: Any) -> None:
        metric = value.split("/")[-1] if isinstance(value, str) else None
        if metric in ("student_bit_acc", "val_iou"):
            self.put(key, "validation", "metric", metric, "best student.pt and early stopping")
            self.metric_key = key
        else:
            self.refuse(key, f"{_show(value)}: the trainer selects on student_bit_acc or val_iou")

    def logger_hook(self, prefix: str, cfg: dict[str, Any]) -> None:
        if "type" in cfg:
            self.ignore(f"{prefix}.type", "LoggerHook: the trainer writes log.jsonl")
        if "interval" in cfg:
            self.number(f"{prefix}.interval", cfg["interval"], "run", "log_every", integer=True, how="train events")
        for key in cfg:
            if key not in ("type", "interval"):
                self.ignore(f"{prefix}.{key}", "log formatting")

    def custom_hooks(self, cfg: Any) -> None:
        if not isinstance(cfg, list):
            self.refuse("custom_hooks", f"expected a list, got {_show(cfg)}")
            return
        for i, hook in enumerate(cfg):
            key = f"custom_hooks[{i}]"
            kind = hook.get("type") if isinstance(hook, dict) else None
            if kind == "EarlyStoppingHook":
                self.early_stopping(key, hook)
            elif kind in ("BitAccEvalHook", "mmrazor.BitAccEvalHook"):
                self.ignore(key, "the seed's debug/record hook: the trainer logs every validation to log.jsonl")
            else:
                self.refuse(key, f"{_show(kind or hook)}: a hook this converter does not know")

    def early_stopping(self, prefix: str, cfg: dict[str, Any]) -> None:
        self.use(f"{prefix}.type", "EarlyStoppingHook")
        monitor = cfg.get("monitor")
        metric = monitor.split("/")[-1] if isinstance(monitor, str) else None
        chosen = self.port.tables.get("validation", {}).get("metric")
        if metric not in ("student_bit_acc", "val_iou"):
            self.refuse(f"{prefix}.monitor", f"{_show(monitor)}: the trainer stops on student_bit_acc or val_iou")
        elif chosen is not None and chosen != metric:
            self.refuse(f"{prefix}.monitor", f"{metric} is not the save_best metric {chosen}: the trainer selects "
                                             "and stops on one metric")
        elif chosen is None:
            self.put(f"{prefix}.monitor", "validation", "metric", metric)
        else:
            self.use(f"{prefix}.monitor", f"{metric}, as {self.metric_key}")
        if "patience" in cfg:
            self.number(f"{prefix}.patience", cfg["patience"], "run", "early_stop_patience", integer=True,
                        how="validations without improvement")
        else:
            self.default("run", "early_stop_patience", 5, "EarlyStoppingHook's default patience")
        if cfg.get("rule", "greater") not in ("greater", None):
            self.refuse(f"{prefix}.rule", f"{cfg['rule']!r}: the trainer's metrics are higher-is-better")
        elif "rule" in cfg:
            self.use(f"{prefix}.rule", "'greater': higher is better")
        if "min_delta" in cfg and cfg["min_delta"] != 0:
            self.refuse(f"{prefix}.min_delta", f"{cfg['min_delta']}: any improvement resets the patience here")
        elif "min_delta" in cfg:
            self.use(f"{prefix}.min_delta", "0: any improvement resets the patience")
        else:
            self.port.conversions.append(f"{prefix}: EarlyStoppingHook's default min_delta (0.1) is not honoured: "
                                         "any improvement resets the patience here (set min_delta=0 to say so)")
        if cfg.get("stopping_threshold") is not None:
            self.refuse(f"{prefix}.stopping_threshold", "no stop on reaching a value")
        elif "stopping_threshold" in cfg:
            self.ignore(f"{prefix}.stopping_threshold", "None")
        for key, why in (("strict", "the metric always exists"), ("check_finite", "metrics are finite"),
                         ("priority", "hook order")):
            if key in cfg:
                self.ignore(f"{prefix}.{key}", why)
        self.rest(prefix, cfg, {"type", "monitor", "patience", "rule", "min_delta", "stopping_threshold", "strict",
                                "check_finite", "priority"}, "EarlyStoppingHook")

    # --- the rest

    def val_evaluator(self, cfg: Any) -> None:
        items = cfg if isinstance(cfg, list) else [cfg]
        for i, item in enumerate(items):
            key = f"val_evaluator[{i}]" if isinstance(cfg, list) else "val_evaluator"
            if not isinstance(item, dict):
                self.refuse(key, f"expected a dict, got {_show(item)}")
                continue
            if "type" in item:
                self.ignore(f"{key}.type", f"{_show(item['type'])}: validation computes student_bit_acc and val_iou "
                                           "through decoder2")
            for name, value in item.items():
                if name == "type":
                    continue
                if name == "student_use_teacher_mask":
                    self.bool_setting(f"{key}.{name}", value, "validation", "student_use_teacher_mask",
                                      "the student chain crops with the teacher's mask (diagnostic)")
                else:
                    self.ignore(f"{key}.{name}", "an option of the metric: decoder2 fixes how bits are scored")

    def randomness(self, cfg: Any) -> None:
        if not isinstance(cfg, dict):
            self.refuse("randomness", f"expected a dict, got {_show(cfg)}")
            return
        for key, value in cfg.items():
            where = f"randomness.{key}"
            if key == "seed" and value is None:
                self.ignore(where, "None: the recipe's seed (0) is used, so the run is repeatable")
            elif key == "seed":
                self.number(where, value, "run", "seed", integer=True)
            elif key in ("deterministic", "diff_rank_seed"):
                self.ignore(where, "batches are a function of (seed, step); DDP ranks share the seed")
            else:
                self.refuse(where, "not a key of randomness that this converter knows")

    def load_from(self, value: Any) -> None:
        if value is None:
            self.ignore("load_from", "None")
        else:
            self.refuse("load_from", f"{_show(value)}: loads a whole MMRazor checkpoint (student, teacher, distiller); "
                                     "start the student from its weights with model.architecture.init_cfg="
                                     "dict(type='Pretrained', checkpoint=...)")

    def resume(self, value: Any) -> None:
        if value is False or value is None:
            self.ignore("resume", f"{value}: a new run")
        else:
            self.refuse("resume", f"{_show(value)}: resume with `train ... --resume` (it continues OUT/last.pt)")

    def auto_scale_lr(self, cfg: Any) -> None:
        if isinstance(cfg, dict) and not cfg.get("enable", False):
            self.ignore("auto_scale_lr", "not enabled")
        else:
            self.refuse("auto_scale_lr", "the learning rate is the optimizer's, not scaled by the batch")


LOADER_IGNORED = {
    "sampler": "the batch plan is a function of (seed, step): shuffled, the same on resume",
    "batch_sampler": "the batch plan is a function of (seed, step)",
    "persistent_workers": "worker lifetime", "pin_memory": "host memory", "collate_fn": "batches are stacked tensors",
    "prefetch_factor": "worker prefetching",
}


# ---------------------------------------------------------------------------------------------- helpers


def leaf_keys(value: Any, prefix: str = "") -> list[str]:
    """Every leaf key of a config: dicts and lists of dicts are entered (`a.b`, `hooks[0].type`); an empty dict,
    a scalar or a list of scalars is a leaf."""
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in leaf_keys(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [leaf for i, v in enumerate(value) for leaf in leaf_keys(v, f"{prefix}[{i}]")]
    return [prefix]


def covers(entry: str, leaf: str) -> bool:
    """Whether a report entry's key is the leaf or one of its parents."""
    return leaf == entry or leaf.startswith(entry + ".") or leaf.startswith(entry + "[")



def _registered_by_name(kind: str, known: tuple[str, ...]) -> str:
    """`HRNetW18`, `hrnet_w18`, `mmseg.hrnet-w18` → 'hrnet_w18' when registered; '' otherwise (no guessing)."""
    bare = kind.split(".")[-1] if "::" not in kind else ""
    squash = re.sub(r"[^a-z0-9]", "", bare.lower())
    matches = [name for name in known if re.sub(r"[^a-z0-9]", "", name.lower()) == squash]
    return matches[0] if len(matches) == 1 else ""


def _manifest_rows(root: str | None) -> int | None:
    if not root:
        return None
    try:
        from harness.data.manifest import manifest_rows

        return len(manifest_rows(root))
    except Exception:  # noqa: BLE001  (any unreadable folder means: size unknown, said in the refusal)
        return None


def _plain_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "::" not in value and "://" not in value and "{" not in value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _close(value: Any, expected: tuple[float, ...]) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == len(expected)
            and all(_is_number(v) and abs(v - e) < 1e-3 for v, e in zip(value, expected)))


def _same(a: Any, b: Any) -> bool:
    """Equal values, a tuple equal to a list, 2 equal to 2.0; True is not 1."""
    if _is_number(a) and _is_number(b):
        return a == b
    a, b = (list(a) if isinstance(a, tuple) else a), (list(b) if isinstance(b, tuple) else b)
    return type(a) is type(b) and a == b


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if isinstance(value, (str, bool, type(None))) or _is_number(value) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- TOML


def dump_toml(tables: dict[str, dict[str, Any]], origins: dict[tuple[str, str], str] | None = None) -> str:
    """Recipe tables as TOML, in the recipe's table order, each value commented with the config key it came from."""
    origins = origins or {}
    order = [f.name for f in dataclasses.fields(Recipe)]
    out: list[str] = []
    for table in sorted(tables, key=lambda t: order.index(t) if t in order else len(order)):
        values = tables[table]
        if table == "distiller":
            source = origins.get(("distiller", ""))
            out += [f"# {source}, as written"] if source else []
            out += _dump_nested(["distiller"], values)
            continue
        out.append(f"[{table}]")
        for key, value in values.items():
            origin = origins.get((table, key))
            out.append(f"{_key(key)} = {_value(value)}" + (f"  # {origin}" if origin else ""))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _dump_nested(path: list[str], table: dict[str, Any]) -> list[str]:
    """A table and its sub-tables; a header only where the table holds values of its own or nothing at all."""
    out, children = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            children.append((key, value))
        elif value is None:
            raise PortError(f"{'.'.join(path)}.{key}: None cannot be written in TOML")
        else:
            out.append(f"{_key(key)} = {_value(value)}")
    if out or not children:
        out = ["[" + ".".join(_key(p) for p in path) + "]", *out, ""]
    for key, value in children:
        out += _dump_nested([*path, key], value)
    return out


def _key(key: Any) -> str:
    key = str(key)
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise PortError(f"{value!r} cannot be written in TOML")
