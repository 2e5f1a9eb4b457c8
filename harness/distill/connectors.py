"""Connectors: small trainable (or fixed) transforms applied to a recorded feature before a loss sees it.

Typical use: the student's feature has fewer channels than the teacher's, so a 1×1 conv + BN maps it across.
Built from the `connectors` dict of an MMRazor distiller config (`name → dict(type=..., ...)`). Connector
parameters are trained with the student and saved in `last.pt`, never in `student.pt`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConnectorError(ValueError):
    pass


class ConvBNConnector(nn.Module):
    """Conv (1×1 by default, no bias) + BatchNorm, optionally followed by ReLU."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int = 1, stride: int = 1,
                 norm: bool = True, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channel, out_channel, kernel_size, stride, kernel_size // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channel) if norm else nn.Identity()
        self.relu = nn.ReLU(inplace=False) if relu else nn.Identity()

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(feature)))


class ConvModuleConnector(ConvBNConnector):
    """MMRazor's ConvModuleConnector config: norm_cfg None or dict(type='BN'), act_cfg None or dict(type='ReLU')."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int = 1, stride: int = 1,
                 norm_cfg: dict | None = None, act_cfg: dict | None = None):
        if norm_cfg is not None and norm_cfg.get("type") not in ("BN", "BN2d", "SyncBN"):
            raise ConnectorError(f"ConvModuleConnector: norm_cfg type {norm_cfg.get('type')!r} not supported (BN)")
        if act_cfg is not None and act_cfg.get("type") != "ReLU":
            raise ConnectorError(f"ConvModuleConnector: act_cfg type {act_cfg.get('type')!r} not supported (ReLU)")
        super().__init__(in_channel, out_channel, kernel_size, stride, norm=norm_cfg is not None,
                         relu=act_cfg is not None)


class TorchFunctionalConnector(nn.Module):
    """A torch.nn.functional call on the feature, e.g. dict(function_name='interpolate', func_args=dict(size=48))."""

    ALLOWED = ("interpolate", "avg_pool2d", "max_pool2d", "adaptive_avg_pool2d", "normalize", "sigmoid", "relu")

    def __init__(self, function_name: str, func_args: dict[str, Any] | None = None):
        super().__init__()
        if function_name not in self.ALLOWED:
            raise ConnectorError(f"TorchFunctionalConnector: function_name {function_name!r} not in {self.ALLOWED}")
        self.function_name, self.func_args = function_name, dict(func_args or {})

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        function = torch.sigmoid if self.function_name == "sigmoid" else getattr(F, self.function_name)
        return function(feature, **self.func_args)


class IdentityConnector(nn.Module):
    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return feature


CONNECTORS: dict[str, type[nn.Module]] = {
    "ConvBNConnector": ConvBNConnector,
    "ConvModuleConnector": ConvModuleConnector,
    "ConvModuleConncetor": ConvModuleConnector,  # the misspelling of MMRazor's own OFD config, kept so it ports
    "TorchFunctionalConnector": TorchFunctionalConnector,
    "IdentityConnector": IdentityConnector,
}


def resolve_type(cfg: Any, table: dict[str, type], where: str, what: str, error: type[Exception],
                 shape: str = "dict(type=..., ...)") -> tuple[str, dict[str, Any]]:
    """MMRazor's `dict(type=NAME, **options)` → (NAME, options), NAME checked against `table`; faults name `where`."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise error(f"{where}: expected {shape}, got {cfg!r}")
    kind = cfg["type"]
    if kind not in table:
        raise error(f"{where}.type: unknown {what} {kind!r}; known: {', '.join(sorted(table))}")
    return kind, {k: v for k, v in cfg.items() if k != "type"}


def build_connector(name: str, cfg: dict[str, Any], where: str = "") -> nn.Module:
    where = where or f"connectors.{name}"
    kind, options = resolve_type(cfg, CONNECTORS, where, "connector", ConnectorError)
    try:
        return CONNECTORS[kind](**options)
    except TypeError as err:
        raise ConnectorError(f"{where}: {err}") from None
