"""Name → factory registry for every architecture in the zoo (localizers and secret decoders).

Factories are small functions registered by name, looked up by name, in the manner of timm:

    @register_model("localizer")
    def hrnet_w18(**kw) -> HighResolutionNet: ...

    create_model("hrnet_w18", num_classes=1)

A duplicate name is an error; an unknown name raises and lists the known names.

Plug-ins: a team's own factories live in its own module; `load_plugin("team_models")` (the `--plugin MODULE` option
of every entry point) imports it, and its `@register_model` decorators register them. An installed package
registers its models with no flag through the entry-point group `wm_harness.models` (loaded once, on the first
look-up); `plugin_provenance()` says which modules were loaded, with each file's sha256 and its package's version.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

KINDS = ("localizer", "sdecoder")
ENTRY_POINT_GROUP = "wm_harness.models"


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "localizer" (B×3×H×W → B×1×h×w logits) or "sdecoder" (B×3×400×400 → B×100 logits)
    factory: Callable[..., nn.Module]

    def create(self, **kwargs) -> nn.Module:
        """The factory called with `kwargs`; an option it does not take is an error naming the option and the model
        (a misspelt option never silently does nothing)."""
        options = _options(self.factory)
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            known = ", ".join(options) or "none"
            raise TypeError(f"model {self.name!r} has no option {', '.join(map(repr, unknown))}; its options: {known}")
        return self.factory(**kwargs)


    def options(self) -> dict[str, Any]:
        """The factory's options and their defaults (`inspect.Parameter.empty` for one without a default)."""
        params = inspect.signature(self.factory).parameters.values()
        return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def resolved_options(self, **kwargs) -> dict[str, Any]:
        """Every option the factory gets with `kwargs`: the given values over the defaults (what a run records)."""
        merged = {k: v for k, v in self.options().items() if v is not inspect.Parameter.empty}
        return {**merged, **kwargs}


def _options(factory: Callable[..., nn.Module]) -> list[str]:
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


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


def get_entry(name: str) -> Entry:
    load_entry_points()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the bare network registered under `name` (official state_dict key names)."""
    return get_entry(name).create(**kwargs)


def list_models(kind: str | None = None) -> list[str]:
    load_entry_points()
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def is_registered(name: str) -> bool:
    load_entry_points()
    return name in _REGISTRY


# ------------------------------------------------------------------------------------------------------ plug-ins

_PLUGINS: dict[str, dict[str, Any]] = {}  # module name → provenance, in load order
_ENTRY_POINTS_LOADED = False


def load_plugin(module: str, source: str = "--plugin") -> dict[str, Any]:
    """Import `module` (its `@register_model` factories register themselves) and return its provenance.

    A module already loaded is not imported again. An unimportable module raises ImportError naming it.
    """
    module = module.strip()
    if module in _PLUGINS:
        return _PLUGINS[module]
    if not module:
        raise ImportError(f"{source}: empty module name")
    try:
        loaded = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{source} {module!r}: cannot import it ({type(err).__name__}: {err}); "
                          "is its folder on PYTHONPATH, or its package installed?") from err
    _PLUGINS[module] = _provenance(module, loaded, source)
    return _PLUGINS[module]


def load_plugins(modules: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    return [load_plugin(m) for m in modules]


def plugin_provenance() -> list[dict[str, Any]]:
    """Every plug-in module loaded in this process (flag or entry point): name, file, sha256, package version."""
    return [dict(p) for p in _PLUGINS.values()]


def load_entry_points() -> None:
    """Load, once per process, every module an installed package lists under the `wm_harness.models` group.

    An entry point names a module (imported: its factories register) or a callable (called with no argument).
    One that fails to load is reported on stderr and skipped, so a broken package does not stop other work.
    """
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        module = ep.value.split(":", 1)[0].strip()
        try:
            target = ep.load()
            if callable(target) and not inspect.ismodule(target):
                target()
            if module not in _PLUGINS:
                _PLUGINS[module] = _provenance(module, sys.modules[module], f"entry point {ep.name}")
        except Exception as err:  # a third-party package: any failure is its own, report and go on
            print(f"harness: entry point {ENTRY_POINT_GROUP}:{ep.name} ({ep.value}) failed to load: "
                  f"{type(err).__name__}: {err}", file=sys.stderr)


def _provenance(name: str, module: Any, source: str) -> dict[str, Any]:
    path = getattr(module, "__file__", None)
    digest = None
    if path:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    return {"module": name, "file": path, "sha256": digest, "version": _package_version(name), "source": source}


def _package_version(module: str) -> str | None:
    top = module.split(".", 1)[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def importable(module: str) -> bool:
    """Whether `module` names an importable module (found on the path; not imported)."""
    try:
        return bool(module) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
