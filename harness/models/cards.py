"""Model cards: a small TOML file, `students/<name>/card.toml`, describing one shipped localizer:

    name = "hrnet_w18_student"
    arch = "hrnet_w18"            # a registered localizer
    role = "student"              # "teacher" | "student"
    input_size = 400              # square side the network sees; omit for "as given"
    flip_test = true              # optional: average the logits of the photo and its mirror image (default false)
    checkpoint = "weights.pt"     # relative to the card; omit for random weights
    sha256 = "..."                # optional; checked when the card is built
    recipe = "recipes/..."        # optional, free text
    [[lineage]]                   # optional: one table per training run that led here, oldest first
    recipe = "recipes/..."        #   the run's recipe (a path)
    init = "scratch"              #   the checkpoint it started from: "scratch", "<model> weights, git <hash>"
    [notes]                       # optional, free-form
    [training]                    # optional, free-form (filled in by the trainer)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.core.constants import ROLES
from harness.core.toml import tomllib
from harness.models.checkpoint import CheckpointError, sha256_file
from harness.models.localizer import Localizer, build_localizer

_CARD_FIELDS = {"name", "arch", "role", "input_size", "flip_test", "checkpoint", "sha256", "recipe", "lineage",
                "notes", "training"}
_LINEAGE_FIELDS = ("recipe", "init")


@dataclass(frozen=True)
class LineageStep:
    """One training run in a model's history: the recipe it ran and the checkpoint it started from."""
    recipe: str  # the recipe file (a path; it may only be in git history by now)
    init: str  # the initial checkpoint, in words: "scratch", or whose weights and where git keeps them

    def to_dict(self) -> dict[str, str]:
        return {"recipe": self.recipe, "init": self.init}


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
    lineage: tuple[LineageStep, ...] = ()  # the training runs that led to the checkpoint, oldest first
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
    lineage = tuple(LineageStep(**step) for step in data.pop("lineage", ()))
    return ModelCard(path=path, lineage=lineage, **data)


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
    _validate_lineage(data.get("lineage", []), path)


def _validate_lineage(lineage: Any, path: Path) -> None:
    if not isinstance(lineage, list):
        raise ValueError(f"model card {path}: lineage must be an array of tables ([[lineage]]), got {lineage!r}")
    for i, step in enumerate(lineage):
        if not isinstance(step, dict):
            raise ValueError(f"model card {path}: lineage[{i}] must be a table with recipe and init, got {step!r}")
        unknown = sorted(set(step) - set(_LINEAGE_FIELDS))
        if unknown:
            raise ValueError(f"model card {path}: lineage[{i}]: unknown keys {unknown}; "
                             f"allowed: {list(_LINEAGE_FIELDS)}")
        for key in _LINEAGE_FIELDS:
            if not isinstance(step.get(key), str) or not step[key]:
                raise ValueError(f"model card {path}: lineage[{i}].{key} is required (a non-empty string), "
                                 f"got {step.get(key)!r}")


def list_cards(root: str | Path = "students") -> list[ModelCard]:
    """Every `<root>/<name>/card.toml`, sorted by folder name."""
    return [load_card(p) for p in sorted(Path(root).glob("*/card.toml"))]


def trained_input_size(arch: str, ckpt: str | Path) -> tuple[int, Path] | None:
    """(input size, the file that says so) for a checkpoint whose folder records the size it was trained at.

    A student trained at 128 but run at its architecture's default size reads little better than chance. The
    trainer's `student.pt` carries its recipe (`config`, [model] name and input_size); for a bare state_dict, two
    writers leave the size beside the weights: a training run (`config.json`) and a model card (`card.toml` naming
    this checkpoint). A file that describes another architecture or another checkpoint says nothing about this one.
    """
    ckpt = Path(ckpt)
    own = _checkpoint_model(ckpt)
    if own.get("name") == arch and _positive_int(own.get("input_size")):
        return own["input_size"], ckpt
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


def _checkpoint_model(ckpt: Path) -> dict[str, Any]:
    """The [model] table of the recipe a checkpoint carries (`{"state_dict": ..., "config": ...}`); {} otherwise."""
    try:
        # mmap: only the pickled structure is read here, never the tensors (the loader reads those once, later)
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (an unreadable or pre-zip file is reported by the loader, named, later)
        return {}
    config = saved.get("config") if isinstance(saved, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else {}


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
