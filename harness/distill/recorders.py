"""Recorders: what named submodules of a model produced (or received) during one training step.

A recorder hooks one submodule, named by its dotted path (`backbone.last_layer.3`), with a PyTorch forward hook;
no class is patched, so other instances of the same class are untouched. Hooks store data only while a step is
being recorded (`with manager.recording(): model(x)`), so validation forwards leave nothing behind. The stored data
is popped once per step (`manager.pop_all()`), which also checks that every recorded module fired exactly once
(several times only where the recorder declares `allow_multiple=True`): a module that silently stopped firing —
renamed, bypassed, compiled away — is an error, not a zero loss.

`RecorderManager` is a context manager for its hooks' lifetime: leaving the `with` block (or `close()`) removes
every hook. Register recorders on the eager model: hooks added to a `torch.compile`d model are ignored, so a
compiled model is refused.

Config, as in MMRazor: `{name: dict(type='ModuleOutputs' | 'ModuleInputs', source='dotted.module.path')}`.
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Any, Iterator

import torch.nn as nn
from torch.utils.hooks import RemovableHandle


class RecorderError(RuntimeError):
    """A recorder that cannot be built or whose module fired the wrong number of times."""


class ModuleRecorder:
    """Records one submodule's outputs (or inputs) during recorded steps."""

    what = "outputs"

    def __init__(self, source: str, allow_multiple: bool = False, name: str = "", role: str = ""):
        self.source, self.allow_multiple = source, allow_multiple
        self.name, self.role = name or source, role
        self.data_buffer: list[Any] = []
        self.recording = False
        self._handle: RemovableHandle | None = None

    def initialize(self, model: nn.Module) -> None:
        if self._handle is not None:
            raise RecorderError(f"{self._label()}: already initialised")
        if type(model).__name__ == "OptimizedModule":
            raise RecorderError(f"{self._label()}: the model is torch.compile'd, and hooks on a compiled model are "
                                "ignored; record on the eager model")
        self._handle = _submodule(model, self.source, self._label()).register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if self.recording:
            self.data_buffer.append(self._pick(inputs, output))

    def _pick(self, inputs: tuple, output: Any) -> Any:
        return output

    def pop(self) -> list[Any]:
        """The data of this step, emptied from the buffer; an error unless the module fired the allowed times."""
        data, self.data_buffer = self.data_buffer, []
        if not data:
            raise RecorderError(f"{self._label()}: module '{self.source}' did not fire during the step")
        if len(data) > 1 and not self.allow_multiple:
            raise RecorderError(f"{self._label()}: module '{self.source}' fired {len(data)} times in one step; "
                                "declare allow_multiple=True if that is intended")
        return data

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.data_buffer = []

    @property
    def active(self) -> bool:
        return self._handle is not None

    def _label(self) -> str:
        return f"{self.role + ' ' if self.role else ''}recorder '{self.name}'"


class ModuleOutputsRecorder(ModuleRecorder):
    what = "outputs"


class ModuleInputsRecorder(ModuleRecorder):
    """Records the positional inputs of the module as a tuple (pick one with `data_idx` in a mapping)."""

    what = "inputs"

    def _pick(self, inputs: tuple, output: Any) -> Any:
        return inputs


RECORDERS: dict[str, type[ModuleRecorder]] = {
    "ModuleOutputs": ModuleOutputsRecorder, "ModuleOutputsRecorder": ModuleOutputsRecorder,
    "ModuleInputs": ModuleInputsRecorder, "ModuleInputsRecorder": ModuleInputsRecorder,
}
UNSUPPORTED = {"MethodOutputs", "MethodInputs", "FunctionOutputs", "FunctionInputs", "Parameter"}


def _submodule(model: nn.Module, source: str, label: str) -> nn.Module:
    names = [name for name, _ in model.named_modules() if name]
    try:
        return model.get_submodule(source)
    except AttributeError:
        close = difflib.get_close_matches(source, names, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RecorderError(f"{label}: no submodule '{source}' in {type(model).__name__}{hint}") from None


def build_recorder(name: str, cfg: dict[str, Any], role: str = "", where: str = "") -> ModuleRecorder:
    where = where or f"{role}_recorders.{name}"
    if not isinstance(cfg, dict):
        raise RecorderError(f"{where}: expected dict(type=..., source=...), got {cfg!r}")
    kind = cfg.get("type")
    if kind in UNSUPPORTED:
        raise RecorderError(f"{where}.type: {kind!r} recorders patch classes or functions globally and are not "
                            f"supported; record a module instead ({', '.join(sorted(RECORDERS))})")
    if kind not in RECORDERS:
        raise RecorderError(f"{where}.type: unknown recorder type {kind!r}; known: {', '.join(sorted(RECORDERS))}")
    unknown = sorted(set(cfg) - {"type", "source", "allow_multiple"})
    if unknown:
        raise RecorderError(f"{where}.{unknown[0]}: unknown key; known: type, source, allow_multiple")
    if not isinstance(cfg.get("source"), str) or not cfg["source"]:
        raise RecorderError(f"{where}.source: a dotted module path is required")
    return RECORDERS[kind](cfg["source"], bool(cfg.get("allow_multiple", False)), name, role)


class RecorderManager:
    """Named recorders on one model: build from config, initialise, record steps, pop data, close."""

    def __init__(self, configs: dict[str, dict[str, Any]] | None = None, role: str = ""):
        self.role = role
        self.recorders = {name: build_recorder(name, cfg, role) for name, cfg in (configs or {}).items()}

    def initialize(self, model: nn.Module) -> "RecorderManager":
        try:
            for recorder in self.recorders.values():
                recorder.initialize(model)
        except Exception:
            self.close()
            raise
        return self

    def get_recorder(self, name: str) -> ModuleRecorder:
        if name not in self.recorders:
            raise KeyError(f"no {self.role + ' ' if self.role else ''}recorder {name!r}; "
                           f"known: {', '.join(sorted(self.recorders)) or '(none)'}")
        return self.recorders[name]

    @contextmanager
    def recording(self) -> Iterator["RecorderManager"]:
        """Record during the block; whatever a previous step left unpopped is dropped first."""
        for recorder in self.recorders.values():
            recorder.data_buffer = []
            recorder.recording = True
        try:
            yield self
        finally:
            for recorder in self.recorders.values():
                recorder.recording = False

    def pop_all(self) -> dict[str, list[Any]]:
        return {name: recorder.pop() for name, recorder in self.recorders.items()}

    def clear(self) -> None:
        for recorder in self.recorders.values():
            recorder.data_buffer = []

    def close(self) -> None:
        for recorder in self.recorders.values():
            recorder.close()

    def __enter__(self) -> "RecorderManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, name: str) -> bool:
        return name in self.recorders

    def __len__(self) -> int:
        return len(self.recorders)
