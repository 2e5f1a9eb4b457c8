"""Safe checkpoint loading: `torch.load(weights_only=True)` only, official layouts (DDP `module.`, wrapper
`model.`/`backbone.` prefixes, `state_dict`/`model` entries), and a mismatch that names every missing, unexpected and
wrongly shaped key."""
from __future__ import annotations

import hashlib
import itertools
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into a model: unsafe, unreadable or mismatched."""


# Entries of an official training wrapper (HRNet's and PIDNet's FullModel: `model.` + the loss modules' buffers,
# e.g. the class weights `loss.criterion.weight`) that are not part of the network: dropped with a note.
TRAINING_EXTRAS = ("loss.", "sem_loss.", "bd_loss.", "criterion.")
BAR_BYTES = 64 << 20  # files at least this large are hashed under a progress bar


def sha256_file(path: str | Path, progress: bool = True) -> str:
    """sha256 of a file; a progress bar on stderr for files of BAR_BYTES or more (a teacher of hundreds of MiB)."""
    from tqdm import tqdm

    size = Path(path).stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}",
                                     disable=not progress or size < BAR_BYTES, leave=False) as bar:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _note(text: str) -> None:
    print(f"harness: {text}", file=sys.stderr)


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True,
                    strip_prefixes: tuple[str, ...] = ("module.", "model.", "backbone."),
                    backbone_only: bool = False) -> nn.Module:
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

        backbone_only: load every tensor whose name and shape the model shares (e.g. an mmpose Lite-HRNet file's
            `backbone.*` without our 1×1 head), drop the rest, and print what was loaded and what was left at
            initialisation; at least one tensor must load. An explicit opt-in: a strict load is the default.

    Official training files load as their scripts write them: the wrapper's loss entries (`loss.*`, `sem_loss.*`,
    e.g. `loss.criterion.weight`) are dropped with a note naming them, and a network's auxiliary training heads
    (a module's `auxiliary_prefixes`, e.g. PIDNet's `seghead_p.`/`seghead_d.` of `augment=True`) are recognised,
    dropped with a note when the model is built without them, and never run.
    Floating tensors are cast to the dtype of the model tensor they fill (fp16 shipped weights into fp32 models).
    """
    path = Path(path)
    state = _state_dict_from(_read_weights(path), path)
    state = _strip_helpful_prefixes(state, model.state_dict().keys(), strip_prefixes)
    target = model.state_dict()
    state = _drop_known_extras(state, target, model, path)
    if backbone_only:
        return _load_backbone_only(model, state, target, path)
    problems = _mismatches(state, target, strict)
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}:\n{problems}")
    model.load_state_dict(_cast_like(state, target), strict=False)
    return model


def _drop_known_extras(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], model: nn.Module,
                       path: Path) -> dict[str, torch.Tensor]:
    """Without the training wrapper's loss buffers and the auxiliary heads the model was built without."""
    extras = [k for k in state if k not in target and k.startswith(TRAINING_EXTRAS)]
    if extras:
        _note(f"{path.name}: dropped training-wrapper entries that are not part of the network: {_names(extras)}")
    aux_prefixes = tuple(getattr(model, "auxiliary_prefixes", ()))
    aux = [k for k in state if k not in target and aux_prefixes and k.startswith(aux_prefixes)]
    if aux:
        heads = sorted({p.rstrip(".") for p in aux_prefixes if any(k.startswith(p) for k in aux)})
        _note(f"{path.name}: auxiliary training heads {', '.join(heads)} ({len(aux)} tensors) recognised and not "
              f"loaded: {type(model).__name__} runs its main head only")
    dropped = set(extras) | set(aux)
    return {k: v for k, v in state.items() if k not in dropped}


def _load_backbone_only(model: nn.Module, state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                        path: Path) -> nn.Module:
    fits = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    if not fits:
        raise CheckpointError(f"checkpoint {path}: backbone-only load found no tensor of {type(model).__name__} "
                              f"(same name and shape) among its {len(state)} entries: {_names(sorted(state))}")
    left = [k for k in target if k not in fits and not k.endswith("num_batches_tracked")]
    ignored = [k for k in state if k not in fits]
    model.load_state_dict(_cast_like(fits, target), strict=False)
    _note(f"{path.name}: backbone-only load into {type(model).__name__}: {len(fits)} of {len(target)} tensors "
          f"loaded; left at initialisation ({len(left)} tensors): {_names(_modules_of(left))}; "
          f"ignored from the file ({len(ignored)} tensors): {_names(_modules_of(ignored))}")
    return model


def _modules_of(keys: list[str]) -> list[str]:
    """Keys grouped by their module (`last_layer.3.weight` → `last_layer.3.*`), in first-seen order."""
    seen: dict[str, None] = {}
    for k in keys:
        seen.setdefault(k.rsplit(".", 1)[0] + ".*" if "." in k else k, None)
    return list(seen)


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


