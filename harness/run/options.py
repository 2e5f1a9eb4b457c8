"""Run settings from text, as the command line and the suites give them: tilt lists, `[LABEL:]NAME[=CKPT]` model
specs, `NAME=SIZE` input sizes, `LABEL:KEY=VALUE` model options, plug-in modules; and `eval_config`, the one function
`harness.eval` and the suites both build their EvalConfig with, so the two entry points cannot drift."""
from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from harness.conditions import parse_condition, resolve
from harness.core.constants import DEFAULT_TILTS, SEARCH_ANGLES
from harness.models import get_entry, load_card, trained_input_size
from harness.models.registry import importable, is_registered, list_models, load_plugins
from harness.run.runtime import apply_runtimes
from harness.run.spec import ONNX_ARCH, EvalConfig, ModelSpec, zoo_specs

# options of the Localizer wrapper and the loader, not of a factory: `--model-option LABEL:mask_channel=3`
WRAPPER_OPTIONS = ("mask_channel", "backbone_only")

_VALUE_OPTIONS = ("--tilts", "--angles", "--fpr-secret")  # values that may start with "-"


def parse_tilts(text: str, option: str = "--tilts") -> tuple[float, ...]:
    """"-5:5:1" (start:stop:step, stop included) or "-5,-2.5,0,3" or "1.5" → tilts in degrees.

    An empty or blank value, or an empty item of a list ("1,,2"), is refused with the option's name: a blank
    `--tilts ''` must not quietly run some default sweep.
    """
    text = text.strip()
    if not text:
        raise ValueError(f"{option} is empty: give start:stop:step (e.g. -5:5:1) or a comma list (e.g. -5,0,2.5)")
    try:
        if ":" in text:
            values = _parse_range(text)
        else:
            values = tuple(float(v) for v in text.split(","))  # float("") fails: an empty item is refused
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected start:stop:step (e.g. -5:5:1) or a comma list "
                         "(e.g. -5,0,2.5)") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{option} {text!r}: every value must be a finite number")
    if len(set(values)) != len(values):
        raise ValueError(f"{option} {text!r}: a value appears twice")
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


def model_spec(text: str, role: str, sizes: dict[str, int], option: str,
               flips: frozenset[str] = frozenset()) -> ModelSpec:
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
    if arch == "onnx":  # a team's own exported localizer: its resize and flip are inside the file
        return replace(spec, runtime="onnxruntime")
    spec = replace(spec, flip_test=names_model(spec, flips))
    return replace(spec, input_size=_input_size(spec, sizes))


def names_model(spec: ModelSpec, names: frozenset[str]) -> bool:
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


def input_sizes(items: list[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        name, _, size = item.partition("=")
        if not size.strip().isdigit() or int(size) <= 0:
            raise ValueError(f"--input-size {item!r}: expected NAME=SIZE with a positive integer size")
        sizes[name.strip()] = int(size)
    return sizes


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


# ------------------------------------------------------------------------------------------------ the run config

# Options harness.eval and the suites share, with one help text: `add_shared_options(parser.add_argument)` or
# `add_shared_options(pytest_group.addoption)`.
SHARED_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--plugin", dict(action="append", default=[], metavar="MODULE",
                      help="import MODULE first (repeatable): its @register_model factories register, so its models "
                           "can be named; recorded in the run's provenance with the file's sha256")),
    ("--model-option", dict(action="append", default=[], metavar="LABEL:KEY=VALUE",
                            help="a factory option of the model with that label or architecture (repeatable), e.g. "
                                 "teacher:align_corners=true, student:augment=true, seg:num_classes=19 with "
                                 "seg:mask_channel=3; checked against the factory's signature, recorded in the run")),
    ("--backbone-only", dict(action="append", default=[], metavar="LABEL",
                             help="load only the tensors the model's checkpoint shares with the network (e.g. an "
                                  "mmpose Lite-HRNet file with a keypoint head), print what was loaded and what was "
                                  "left at initialisation; repeatable")),
    ("--runtime", dict(action="append", default=[], metavar="LABEL=RUNTIME | RUNTIME",
                       help="run the localizer LABEL under onnxruntime (fp32) or onnxruntime-int8 (static int8), "
                            "exported into the run folder (BatchNorm eval mode only); a bare RUNTIME adds every "
                            "localizer once more under it, labelled NAME@ort / NAME@int8; repeatable")),
    ("--exif-transpose", dict(action="store_true", default=False,
                              help="turn photos upright by their EXIF orientation tag before anything else (phones "
                                   "that store it; default off, as decoder2's plain Image.open); recorded in the run")),
    ("--condition", dict(action="append", default=[], metavar="NAME[=S1,S2,...]",
                         help="a camera condition of harness.conditions and its severities (repeatable; a bare NAME "
                              "takes its default grid; a combination a+b takes pairs, e.g. tilt+jpeg=3:70,5:50). "
                              "Given, the run covers exactly these conditions (name tilt to keep the tilt sweep); "
                              "only tilt given, it is --tilts. See docs/conditions.md")),
)


def add_shared_options(add) -> None:
    for flag, kwargs in SHARED_OPTIONS:
        add(flag, **kwargs)



def eval_config(opts: Mapping[str, Any], **fixed: Any) -> EvalConfig:
    """The EvalConfig of command-line options given by their argparse names (`vars(args)` of `harness.eval`, or the
    suites' pytest options): localizer | zoo, sdecoder, data, tilts, angles (text), input_size, flip_test,
    model_option, backbone_only, plugin (lists of text), no_oracle, student_use_teacher_mask (flags), and the
    EvalConfig fields by name (bn_mode, fill, roi_fn, exif_transpose, batch_size, ..., mode). An option that is
    absent or None takes EvalConfig's default; `fixed` gives values that options cannot change.

    Plug-ins are imported first, so their models can be named; then every model name is checked against the
    registry and every model option against its factory's signature, before anything is built or hashed.
    """
    opts = {**{k: v for k, v in opts.items() if v is not None}, **fixed}
    plugins = tuple(m.strip() for m in opts.get("plugin") or ())
    load_plugins(plugins)
    sizes = input_sizes(list(opts.get("input_size") or []))
    flips = frozenset(n.strip() for n in opts.get("flip_test") or ())
    if opts.get("zoo"):
        localizers = [replace(m, flip_test=m.flip_test or names_model(m, flips)) for m in zoo_specs(opts["zoo"])]
        if not localizers:
            raise ValueError(f"--zoo {opts['zoo']}: no model cards (card.toml) under that folder")
    else:
        texts = list(opts.get("localizer") or [])
        if not texts:
            raise ValueError("no localizer: give --localizer [LABEL:]NAME[=CKPT] (repeatable) or --zoo DIR")
        for text in texts:
            check_registered(text, "--localizer", "localizer")
        localizers = [model_spec(t, "teacher" if i == 0 else "student", sizes, "--localizer", flips)
                      for i, t in enumerate(texts)]
    unknown = sorted(flips - {m.label for m in localizers} - {m.arch for m in localizers})
    if unknown:
        raise ValueError(f"--flip-test {unknown}: no localizer has that label or architecture")
    sdecoder_text = opts.get("sdecoder") or "reference_sdecoder"
    check_registered(sdecoder_text, "--sdecoder", "sdecoder")
    sdecoder = model_spec(sdecoder_text, "sdecoder", {}, "--sdecoder")
    localizers, sdecoder = apply_model_options(localizers, sdecoder, list(opts.get("model_option") or []),
                                               list(opts.get("backbone_only") or []))
    localizers = apply_runtimes(localizers, list(opts.get("runtime") or []))
    if opts.get("student_use_teacher_mask"):
        teacher = localizers[0].label
        localizers = [localizers[0]] + [replace(m, mask_from=teacher) for m in localizers[1:]]
    tilts = opts.get("tilts")
    angles = opts.get("angles")
    if opts.get("condition"):  # --condition: the tilts it names, or the run's conditions (tilts: those it applies)
        tilts, opts["conditions"] = parse_conditions(list(opts["condition"]))
    settings = {f.name: opts[f.name] for f in fields(EvalConfig)
                if f.name in opts and f.name not in ("localizers", "sdecoder", "tilts", "angles", "plugins", "oracle")}
    return EvalConfig(
        localizers=tuple(localizers), sdecoder=sdecoder,
        tilts=tilts if isinstance(tilts, tuple) else parse_tilts(tilts, "--tilts") if tilts is not None
        else DEFAULT_TILTS,
        angles=angles if isinstance(angles, tuple) else parse_tilts(angles, "--angles") if angles is not None
        else SEARCH_ANGLES,
        oracle=not opts.get("no_oracle", False), plugins=plugins, **settings)


def parse_conditions(texts: list[str]) -> tuple[tuple[float, ...], tuple]:
    """`--condition` values → (tilts, conditions). Only the tilt named: its severities are the tilts and there are no
    other conditions (records exactly as `--tilts` gives them). Otherwise every named condition in order, and the
    tilts the run applies (0 for the conditions without one) for its provenance."""
    parsed = [parse_condition(t.strip()) for t in texts]
    names = [name for name, _ in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"--condition: a condition is named twice: {names}")
    if set(names) == {"tilt"}:
        return tuple(s[0] for s in parsed[0][1]), ()
    tilts = sorted({resolve(name).tilt_deg(s) for name, grid in parsed for s in grid})
    return tuple(tilts), tuple(parsed)


def check_registered(text: str, option: str, kind: str) -> None:
    """A model spec's NAME must be registered. `pkg:factory=ckpt` reads as LABEL `pkg`, NAME `factory`: when NAME is
    unknown and LABEL is an importable module, the user probably meant a plug-in; the error shows both readings."""
    head = text.partition("=")[0]
    label, _, arch = head.rpartition(":")
    label, arch = label.strip(), arch.strip()
    if arch == ONNX_ARCH and kind == "localizer":  # LABEL:onnx=FILE.onnx, run by ONNX Runtime
        return
    if not arch or is_registered(arch):
        if arch and get_entry(arch).kind != kind:
            raise ValueError(f"{option} {text!r}: {arch!r} is registered as a {get_entry(arch).kind}, not a {kind}")
        return
    known = ", ".join(list_models(kind))
    if label and importable(label):
        raise ValueError(
            f"{option} {text!r} reads as LABEL {label!r} : NAME {arch!r}, and no model {arch!r} is registered. "
            f"If you meant the factory {arch!r} of the module {label!r} (module:factory), that is not how models are "
            f"named: load the module with --plugin {label} (its @register_model factories register) and name the "
            f"model: {option} {arch}{text[len(head):]} (or {option} LABEL:{arch}{text[len(head):]}). "
            f"Registered {kind}s: {known}")
    raise ValueError(f"{option} {text!r}: no {kind} {arch!r} is registered (a plug-in's models need --plugin MODULE). "
                     f"Registered {kind}s: {known}")


def parse_option_value(text: str) -> Any:
    """`true`/`false` → bool, `none` → None, an integer → int, a number → float, anything else → the text."""
    value = text.strip()
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def model_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """`LABEL:KEY=VALUE` items → {LABEL: {KEY: value}} (LABEL: a model's label or architecture)."""
    found: dict[str, dict[str, Any]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        label, colon, key = head.partition(":")
        label, key = label.strip(), key.strip()
        if not (eq and colon and label and key and key.isidentifier()):
            raise ValueError(f"--model-option {item!r}: expected LABEL:KEY=VALUE (e.g. teacher:align_corners=true)")
        found.setdefault(label, {})[key] = parse_option_value(value)
    return found


def apply_model_options(localizers: list[ModelSpec], sdecoder: ModelSpec, items: list[str],
                        backbone_only: list[str]) -> tuple[list[ModelSpec], ModelSpec]:
    """The specs with their `--model-option` and `--backbone-only` settings, each validated against the factory."""
    given = model_options(items)
    names = frozenset(n.strip() for n in backbone_only)
    specs = [*localizers, sdecoder]
    for label in sorted(set(given) | names):
        if not any(label in (m.label, m.arch) for m in specs):
            option = "--model-option" if label in given else "--backbone-only"
            raise ValueError(f"{option} {label!r}: no model has that label or architecture "
                             f"(models: {', '.join(m.label for m in specs)})")
    out = []
    for spec in specs:
        options: dict[str, Any] = {}
        for key in (spec.arch, spec.label):  # the label's options over the architecture's
            options.update(given.get(key, {}))
        out.append(_with_options(spec, options, names_model(spec, names)))
    return out[:-1], out[-1]


def _with_options(spec: ModelSpec, options: dict[str, Any], backbone_only: bool) -> ModelSpec:
    wrapper = {k: options.pop(k) for k in WRAPPER_OPTIONS if k in options}
    if "mask_channel" in wrapper and spec.role == "sdecoder":
        raise ValueError(f"--model-option {spec.label}:mask_channel: a secret decoder has no mask channel")
    mask_channel = wrapper.get("mask_channel")
    if mask_channel is not None and (isinstance(mask_channel, bool) or not isinstance(mask_channel, int)
                                     or mask_channel < 0):
        raise ValueError(f"--model-option {spec.label}:mask_channel={mask_channel!r}: expected a channel index >= 0")
    if not isinstance(wrapper.get("backbone_only", False), bool):
        raise ValueError(f"--model-option {spec.label}:backbone_only: expected true or false")
    backbone_only = backbone_only or wrapper.get("backbone_only", False)
    if backbone_only and spec.ckpt is None:
        raise ValueError(f"--backbone-only {spec.label}: the model has no checkpoint to load (NAME=CKPT)")
    if not is_registered(spec.arch):  # an exported ONNX file: nothing to build, nothing to set
        if options or wrapper or backbone_only:
            raise ValueError(f"{spec.label}: {spec.arch!r} is not a registered factory; model options do not apply")
        return spec
    accepted = get_entry(spec.arch).options()
    for key, value in options.items():
        if key not in accepted:
            known = ", ".join([*accepted, *WRAPPER_OPTIONS]) or "none"
            raise ValueError(f"--model-option {spec.label}:{key}: model {spec.arch!r} has no option {key!r}; "
                             f"its options: {known}")
        _check_type(spec, key, value, accepted[key])
    return replace(spec, options=tuple(sorted(options.items())), mask_channel=mask_channel,
                   backbone_only=backbone_only)


def _check_type(spec: ModelSpec, key: str, value: Any, default: Any) -> None:
    """A value of the default's type (bool, int, float, str), so `augment=yes` is not silently truthy."""
    if default is inspect.Parameter.empty or default is None:
        return
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
    expected = kinds.get(type(default))
    if expected is None:
        return
    if not isinstance(value, expected) or (isinstance(value, bool) and type(default) is not bool):
        raise ValueError(f"--model-option {spec.label}:{key}={value!r}: expected a {type(default).__name__} "
                         f"(like its default {default!r})")
