"""The model zoo: the Localizer wrapper, builders by registered name, safe checkpoint loading and model cards.

A bare network keeps the official state_dict key names; `Localizer` owns everything the field's demo does around
it (resize to the network's input size, ImageNet normalisation), so `backbone.last_layer.3` names the final conv of
a wrapped HRNet, as in the distillation configs.

A model card is a small TOML file, `students/<name>/card.toml`:

    name = "hrnet_w18_student"
    arch = "hrnet_w18"            # a registered localizer
    role = "student"              # "teacher" | "student"
    input_size = 400              # square side the network sees; omit for "as given"
    flip_test = true              # optional: average the logits of the photo and its mirror image (default false)
    checkpoint = "weights.pt"     # relative to the card; omit for random weights
    sha256 = "..."                # optional; checked when the card is built
    recipe = "recipes/..."        # optional, free text
    [notes]                       # optional, free-form
    [training]                    # optional, free-form (filled in by the trainer)
"""
from __future__ import annotations

import hashlib
import itertools
import json
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.registry import get_entry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PIDNet in training mode (augment=True) returns [p_aux, main, boundary]; the mask logits are the main output.
MAIN_OUTPUT_INDEX = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into a model: unsafe, unreadable or mismatched."""


# --------------------------------------------------------------------------------------------------- Localizer


class Localizer(nn.Module):
    """B×3×H×W float RGB in [0, 1] → B×1×h×w mask logits, around a bare network kept as `self.backbone`.

    `flip_test` is the official HRNet segmentation test's flip option: the network also reads the mirror image and
    the two logit maps (the second mirrored back) are averaged; twice the network's cost, the same state_dict.
    """

    def __init__(self, backbone: nn.Module, input_size: int | None = None, flip_test: bool = False):
        super().__init__()
        if input_size is not None and input_size <= 0:
            raise ValueError(f"input_size must be a positive int or None, got {input_size}")
        self.backbone = backbone
        self.input_size = input_size
        self.flip_test = flip_test
        # non-persistent: the state_dict holds only the network's own (official) keys under `backbone.`
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x)
        x = self._resize(x)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = self._logits(x)
        if self.flip_test:
            # the mean at the network's output size equals the mean after the (linear, mirror-symmetric) upsampling
            out = (out + self._logits(x.flip(-1)).flip(-1)) / 2
        return out

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        if isinstance(out, (list, tuple)):
            out = _main_output(out)
        if out.ndim != 4 or out.shape[1] != 1:
            raise ValueError(f"localizer backbone {type(self.backbone).__name__} returned shape {tuple(out.shape)}; "
                             "a localizer must return B×1×h×w mask logits (build it with num_classes=1)")
        return out

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x  # bilinear resize to the same size is the identity
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, flip_test={self.flip_test}"


def _check_image_batch(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"a localizer takes B×3×H×W float RGB in [0, 1]; got shape {tuple(x.shape)}, "
                         f"dtype {x.dtype}")


def _main_output(outputs: list | tuple) -> torch.Tensor:
    if len(outputs) != 3:
        raise ValueError(f"backbone returned {len(outputs)} outputs; a list output is read as PIDNet's training "
                         f"output [p_aux, main, boundary] (3 items), main at index {MAIN_OUTPUT_INDEX}")
    return outputs[MAIN_OUTPUT_INDEX]


# ---------------------------------------------------------------------------------------------------- builders


def _create(name: str, kind: str, **kw) -> nn.Module:
    entry = get_entry(name)
    if entry.kind != kind:
        raise ValueError(f"model {name!r} is registered as a {entry.kind}, not a {kind}")
    return entry.factory(**kw)


def build_localizer(name: str, input_size: int | None = None, ckpt: str | Path | None = None,
                    flip_test: bool = False, **kw) -> Localizer:
    """The registered localizer `name` wrapped in a Localizer; `ckpt` (bare or wrapped keys) loads strictly."""
    net = _create(name, "localizer", **kw)
    if ckpt is not None:
        load_checkpoint(net, ckpt)
    return Localizer(net, input_size, flip_test)


def build_sdecoder(name: str, ckpt: str | Path | None = None, **kw) -> nn.Module:
    """The registered secret decoder `name` (B×3×400×400 in [0, 1] → B×100 logits), weights loaded strictly."""
    net = _create(name, "sdecoder", **kw)
    if ckpt is not None:
        load_checkpoint(net, ckpt)
    return net


# ----------------------------------------------------------------------------------------------- checkpoints


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True,
                    strip_prefixes: tuple[str, ...] = ("module.", "model.", "backbone.")) -> nn.Module:
    """Load weights from `path` into `model` and return the model.

    Args:
        model: the module to fill.
        path: a file saved by `torch.save`: a plain state_dict, or a dict holding one under `state_dict` or `model`.
            It is read with `weights_only=True`; a file that needs code execution to unpickle is refused.
        strict: when True, missing and unexpected keys are errors. Wrongly shaped tensors are always errors.
            A missing BatchNorm `num_batches_tracked` counter is never an error (old checkpoints lack it).
        strip_prefixes: prefixes (DDP's `module.`, wrappers' `model.`/`backbone.`) removed from checkpoint keys;
            the shortest chain of them (e.g. `module.` then `backbone.`) that matches the most model keys is
            applied, and none when stripping matches no more keys than the checkpoint as saved.

    Floating tensors are cast to the dtype of the model tensor they fill (fp16 shipped weights into fp32 models).
    """
    path = Path(path)
    state = _state_dict_from(_read_weights(path), path)
    state = _strip_helpful_prefixes(state, model.state_dict().keys(), strip_prefixes)
    target = model.state_dict()
    problems = _mismatches(state, target, strict)
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}:\n{problems}")
    model.load_state_dict(_cast_like(state, target), strict=False)
    return model


def _read_weights(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if _needs_code_execution(reason):
            raise CheckpointError(
                f"refusing checkpoint {path}: it holds objects that need code execution to unpickle "
                f"(torch.load with weights_only=True failed: {reason}). "
                "Re-save it as a plain state_dict of tensors.") from err
        raise CheckpointError(f"checkpoint {path} is not a readable torch file: {reason}") from err
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} is not a readable torch file: {type(err).__name__}: {err}") from err


def _unpickler_reason(err: Exception) -> str:
    """The informative part of torch's long weights_only message (e.g. 'Unsupported global: GLOBAL ...')."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        text = text.split(". Please use", 1)[0]
    return " ".join(text.split()) or type(err).__name__


def _needs_code_execution(reason: str) -> bool:
    # globals (classes, functions) and reduce calls are what a weights-only load refuses to run;
    # an unknown opcode ("Unsupported operand") means the bytes are not a pickle at all
    return re.search(r"global|reduce|class|build", reason, re.IGNORECASE) is not None


def _state_dict_from(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict, or one nested under `state_dict` / `model` (training checkpoints)."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"checkpoint {path}: entries that are not tensors: {_names(not_tensors)}")
    return dict(obj)


def _strip_helpful_prefixes(state: dict[str, torch.Tensor], model_keys, prefixes: tuple[str, ...]
                            ) -> dict[str, torch.Tensor]:
    """Strip the shortest chain of prefixes (e.g. `module.` then `backbone.`) that makes the most keys match.

    No chain is applied unless it matches more keys than the checkpoint as saved.
    """
    model_keys = set(model_keys)
    best, best_matches = state, len(model_keys.intersection(state))
    chains = (c for n in range(1, len(prefixes) + 2) for c in itertools.product(prefixes, repeat=n))
    for chain in chains:
        stripped = state
        for prefix in chain:
            stripped = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in stripped.items()}
        matches = len(model_keys.intersection(stripped))
        if len(stripped) == len(state) and matches > best_matches:  # strictly more: shorter chains win ties
            best, best_matches = stripped, matches
    return best


def _mismatches(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], strict: bool) -> str:
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
              for k in target if k in state and state[k].shape != target[k].shape]
    lines = []
    if strict and missing:
        lines.append(f"  missing keys ({len(missing)}): {_names(missing)}")
    if strict and unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_names(unexpected)}")
    if shapes:
        lines.append(f"  wrongly shaped ({len(shapes)}): {_names(shapes)}")
    return "\n".join(lines)


def _names(items: list[str], first: int = 10) -> str:
    more = f", ... and {len(items) - first} more" if len(items) > first else ""
    return ", ".join(items[:first]) + more


def _cast_like(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        ref = target.get(k)
        if ref is not None and v.is_floating_point() and ref.is_floating_point() and v.dtype != ref.dtype:
            v = v.to(ref.dtype)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------- model cards

ROLES = ("teacher", "student")
_CARD_FIELDS = {"name", "arch", "role", "input_size", "flip_test", "checkpoint", "sha256", "recipe", "notes",
                "training"}


@dataclass(frozen=True)
class ModelCard:
    name: str
    arch: str  # a registered localizer name
    role: str  # "teacher" | "student"
    path: Path  # the card file; `checkpoint` is relative to its folder
    input_size: int | None = None
    flip_test: bool = False  # the Localizer's flip test (an inference choice; the weights are the same)
    checkpoint: str | None = None
    sha256: str | None = None  # of the checkpoint file, checked on build when given
    recipe: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # free-form, written by the trainer

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint is None else self.path.parent / self.checkpoint

    def build(self) -> Localizer:
        """The Localizer this card describes, with its weights loaded (and their sha256 checked)."""
        ckpt = self.checkpoint_path
        if ckpt is not None and self.sha256 is not None:
            actual = sha256_file(ckpt) if ckpt.is_file() else None
            if actual is not None and actual != self.sha256:
                raise CheckpointError(f"card {self.path}: checkpoint {ckpt} has sha256 {actual}, "
                                      f"the card says {self.sha256}")
        return build_localizer(self.arch, input_size=self.input_size, ckpt=ckpt, flip_test=self.flip_test)


def load_card(path: str | Path) -> ModelCard:
    """Read and validate one `card.toml`; every fault names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model card not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"model card {path}: invalid TOML: {err}") from err
    _validate_card(data, path)
    return ModelCard(path=path, **data)


def _validate_card(data: dict[str, Any], path: Path) -> None:
    unknown = sorted(set(data) - _CARD_FIELDS)
    if unknown:
        raise ValueError(f"model card {path}: unknown keys {unknown}; allowed: {sorted(_CARD_FIELDS)}")
    for key in ("name", "arch", "role"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"model card {path}: key {key!r} is required (a non-empty string)")
    if data["role"] not in ROLES:
        raise ValueError(f"model card {path}: role {data['role']!r} is not one of {ROLES}")
    size = data.get("input_size")
    if size is not None and not _positive_int(size):
        raise ValueError(f"model card {path}: input_size must be a positive integer, got {size!r}")
    if not isinstance(data.get("flip_test", False), bool):
        raise ValueError(f"model card {path}: flip_test must be true or false, got {data['flip_test']!r}")
    for key in ("checkpoint", "sha256", "recipe"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"model card {path}: key {key!r} must be a string, got {data[key]!r}")
    for key in ("notes", "training"):
        if key in data and not isinstance(data[key], dict):
            raise ValueError(f"model card {path}: [{key}] must be a table")


def list_cards(root: str | Path = "students") -> list[ModelCard]:
    """Every `<root>/<name>/card.toml`, sorted by folder name."""
    return [load_card(p) for p in sorted(Path(root).glob("*/card.toml"))]


def trained_input_size(arch: str, ckpt: str | Path) -> tuple[int, Path] | None:
    """(input size, the file that says so) for a checkpoint whose folder records the size it was trained at.

    A bare state_dict carries no input size, and a student trained at 128 but run at its architecture's default
    size reads little better than chance. Two writers leave the size beside the weights: a training run
    (`config.json`, [model] name and input_size) and a model card (`card.toml` naming this checkpoint). A file that
    describes another architecture or another checkpoint says nothing about this one.
    """
    ckpt = Path(ckpt)
    run_config = ckpt.parent / "config.json"
    if run_config.is_file():
        model = _run_model(run_config)
        if model.get("name") == arch and _positive_int(model.get("input_size")):
            return model["input_size"], run_config
    card_path = ckpt.parent / "card.toml"
    if card_path.is_file():
        card = load_card(card_path)
        same_file = card.checkpoint_path is not None and card.checkpoint_path.resolve() == ckpt.resolve()
        if card.arch == arch and same_file and card.input_size is not None:
            return card.input_size, card_path
    return None


def _run_model(run_config: Path) -> dict[str, Any]:
    """The [model] table of a training run's config.json; {} for a config.json some other tool wrote."""
    try:
        config = json.loads(run_config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
