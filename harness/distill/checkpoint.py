"""Run-directory files: atomic writes, the resumable `last.pt`, the best `student.pt`, RNG state capture.

`student.pt` is `{"state_dict": the bare student's fp32 state_dict, "config": the resolved recipe}`, the layout
official training scripts write, so it loads into the bare network with `strict=True` and carries what it was
trained as (architecture, input size) with it. `last.pt` holds everything a resumed run needs to continue exactly
where it stopped, and never the teacher's weights (only the sha256 of its checkpoint). Both load with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch


def student_checkpoint(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """The content of `student.pt`: the weights and the recipe that trained them."""
    return {"state_dict": state_dict, "config": config}


def read_student(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, recipe) of a `student.pt`; a bare state_dict (older runs) gives an empty recipe."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        return saved["state_dict"], saved.get("config") or {}
    return saved, {}


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fp32_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the state_dict, floating tensors in fp32."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
            for k, v in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class LastCheckpointError(ValueError):
    """`last.pt` cannot be resumed from; the message names the file and what to do."""


_LAST_KEYS = frozenset({"student", "optimizer", "scheduler", "scaler", "rng", "step", "run_state", "config",
                        "teacher_sha256"})
_WHAT_TO_DO = "delete it to train this run again from step 0, or train into a new --out"


def load_last(path: str | Path) -> dict[str, Any]:
    """The state a resumed run continues from. A truncated or corrupt file, or one that would run code when
    unpickled (it is only ever read with weights_only=True), raises LastCheckpointError naming the file."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL (\S+)", str(err))
        if blocked:  # torch's own message advises weights_only=False: never for a file that imports code
            raise LastCheckpointError(f"{path}: refused, it would import {blocked.group(1)} when loaded (code or "
                                      f"objects no last.pt this trainer writes holds); {_WHAT_TO_DO}") from None
        raise LastCheckpointError(f"{path}: cannot be read, the file is corrupt (not a checkpoint this trainer "
                                  f"wrote); {_WHAT_TO_DO}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        why = str(err).split(". ")[0] or type(err).__name__  # torch's first sentence; EOFError says nothing
        raise LastCheckpointError(f"{path}: cannot be read, the file is truncated or corrupt ({why}); "
                                  f"{_WHAT_TO_DO}") from None
    if not isinstance(saved, dict) or not _LAST_KEYS <= set(saved):
        what = (f"no {', '.join(sorted(_LAST_KEYS - set(saved)))}" if isinstance(saved, dict)
                else f"a {type(saved).__name__}, not the trainer's state")
        raise LastCheckpointError(f"{path}: not a last.pt this trainer wrote ({what}); {_WHAT_TO_DO}")
    return saved


def write_json(obj: Any, path: str | Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)
