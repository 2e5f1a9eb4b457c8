"""Name → factory registry for every architecture in the zoo (localizers and secret decoders).

Factories are small functions registered by name, looked up by name, in the manner of timm:

    @register_model("localizer")
    def hrnet_w18(**kw) -> HighResolutionNet: ...

    create_model("hrnet_w18", num_classes=1)

A duplicate name is an error; an unknown name raises and lists the known names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

KINDS = ("localizer", "sdecoder")


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "localizer" (B×3×H×W → B×1×h×w logits) or "sdecoder" (B×3×400×400 → B×100 logits)
    factory: Callable[..., nn.Module]


_REGISTRY: dict[str, Entry] = {}


def register_model(kind: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = factory.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = Entry(name, kind, factory)
        return factory

    return decorate


def _populate() -> None:
    import harness.nets  # noqa: F401  (importing the package registers every architecture)


def get_entry(name: str) -> Entry:
    _populate()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the bare network registered under `name` (official state_dict key names)."""
    return get_entry(name).factory(**kwargs)


def list_models(kind: str | None = None) -> list[str]:
    _populate()
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)
