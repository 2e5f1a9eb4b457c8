"""HRNetV2 segmentation network (Sun et al. 2019) with the official HRNet-Semantic-Segmentation module names.

Every parameter and buffer carries the name and shape it has in the official `seg_hrnet.py`, so an official
checkpoint loads with `strict=True`:

    conv1 bn1 conv2 bn2                      stem, two 3×3 stride-2 convs → 1/4 resolution, 64 channels
    layer1                                   stage 1: bottleneck blocks
    transition1 stage2 transition2 stage3    multi-resolution stages; a transition adds one branch at half the
    transition3 stage4                       resolution of the last one
    last_layer                               head: Conv1×1 (C→C) · BN · ReLU · Conv1×1 (C→num_classes); index 3
                                             is the final conv (`last_layer.3`)

The output is the logit map at 1/4 of the input (ceil(H/4) × ceil(W/4)); like the official net, it is not
upsampled to the input size here. Any input size works: every resize goes to the exact size of the target branch
(bilinear, align_corners=False, as the official HRNet-Semantic-Segmentation master branch; its HRNet-OCR branch's
configs set ALIGN_CORNERS: True, which a checkpoint trained there needs: the factories' `align_corners` option, set
with `--model-option LABEL:align_corners=true` and recorded in every run).

One deliberate difference: ReLUs and residual additions are out of place. Official code uses inplace ops, which
would overwrite a BatchNorm output that a forward hook recorded for distillation; the numbers are identical.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.registry import register_model

BN_MOMENTUM = 0.01  # official seg_hrnet.py value


@dataclass(frozen=True)
class StageConfig:
    num_modules: int
    block: str  # "BASIC" (expansion 1) or "BOTTLENECK" (expansion 4)
    num_blocks: tuple[int, ...]  # blocks per branch
    num_channels: tuple[int, ...]  # width per branch, before block expansion


@dataclass(frozen=True)
class HRNetConfig:
    stage1: StageConfig  # one branch: `layer1`
    stage2: StageConfig
    stage3: StageConfig
    stage4: StageConfig
    final_conv_kernel: int = 1  # every official segmentation config uses 1


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), _bn(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def _make_blocks(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, count: int) -> nn.Sequential:
    """`count` blocks; the first gets a 1×1 conv + BN shortcut when its width changes."""
    out = planes * block.expansion
    downsample = _conv_bn(inplanes, out, 1, 1, relu=False) if inplanes != out else None
    layers = [block(inplanes, planes, downsample)]
    layers += [block(out, planes) for _ in range(1, count)]
    return nn.Sequential(*layers)


def _resize_to(x: torch.Tensor, like: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=align_corners)


class HighResolutionModule(nn.Module):
    """Parallel branches, then every output branch i sums all inputs brought to its resolution and width."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], num_blocks: tuple[int, ...],
                 in_channels: tuple[int, ...], num_channels: tuple[int, ...]):
        super().__init__()
        if not len(num_blocks) == len(in_channels) == len(num_channels) >= 2:
            raise ValueError(f"branch counts disagree: num_blocks={num_blocks}, in_channels={in_channels}, "
                             f"num_channels={num_channels} (need the same length, at least 2)")
        self.branches = nn.ModuleList(
            _make_blocks(block, cin, c, n) for cin, c, n in zip(in_channels, num_channels, num_blocks))
        self.out_channels = tuple(c * block.expansion for c in num_channels)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse_layer(i, j) for j in range(len(self.out_channels)))
            for i in range(len(self.out_channels)))
        self.relu = nn.ReLU()
        self.align_corners = False  # set by HighResolutionNet (the model's `align_corners` option)

    def _fuse_layer(self, i: int, j: int) -> nn.Module | None:
        """Input branch j → output branch i. None (identity) keeps the official index layout."""
        c = self.out_channels
        if j == i:
            return None
        if j > i:  # lower resolution: 1×1 conv to the width of i; resized in forward
            return _conv_bn(c[j], c[i], 1, 1, relu=False)
        # higher resolution: (i − j) 3×3 stride-2 convs, ReLU between them but not after the last
        steps = i - j
        return nn.Sequential(*(
            _conv_bn(c[j], c[i] if k == steps - 1 else c[j], 3, 2, relu=k < steps - 1) for k in range(steps)))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for i, row in enumerate(self.fuse_layers):
            # summed in input-branch order j = 0, 1, ..., as official (float addition is not associative)
            parts = [self._bring(layer, xs[j], xs[i]) for j, layer in enumerate(row)]
            y = parts[0]
            for part in parts[1:]:
                y = y + part
            fused.append(self.relu(y))
        return fused

    def _bring(self, layer: nn.Module | None, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Input branch x at the resolution and width of the target branch."""
        if layer is None:
            return x
        y = layer(x)
        return y if y.shape[-2:] == target.shape[-2:] else _resize_to(y, target, self.align_corners)


def _make_transition(pre: tuple[int, ...], cur: tuple[int, ...]) -> nn.ModuleList:
    """Adapt existing branches whose width changes (3×3 s1) and grow new ones from the last branch (3×3 s2)."""
    layers: list[nn.Module | None] = []
    for i, c in enumerate(cur):
        if i < len(pre):
            layers.append(_conv_bn(pre[i], c, 3, 1, relu=True) if pre[i] != c else None)
        else:
            steps = i + 1 - len(pre)
            layers.append(nn.Sequential(*(
                _conv_bn(pre[-1], c if k == steps - 1 else pre[-1], 3, 2, relu=True) for k in range(steps))))
    return nn.ModuleList(layers)


def _make_stage(cfg: StageConfig, in_channels: tuple[int, ...]) -> tuple[nn.Sequential, tuple[int, ...]]:
    modules = []
    for _ in range(cfg.num_modules):
        modules.append(HighResolutionModule(BLOCKS[cfg.block], cfg.num_blocks, in_channels, cfg.num_channels))
        in_channels = modules[-1].out_channels
    return nn.Sequential(*modules), in_channels


def _expanded(cfg: StageConfig) -> tuple[int, ...]:
    return tuple(c * BLOCKS[cfg.block].expansion for c in cfg.num_channels)


class HighResolutionNet(nn.Module):
    """HRNetV2 for segmentation: B×3×H×W (normalised) → B×num_classes×ceil(H/4)×ceil(W/4) logits."""

    def __init__(self, config: HRNetConfig, num_classes: int = 1, align_corners: bool = False):
        super().__init__()
        self.config = config
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = _bn(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = _bn(64)
        self.relu = nn.ReLU()

        s1 = config.stage1
        self.layer1 = _make_blocks(BLOCKS[s1.block], 64, s1.num_channels[0], s1.num_blocks[0])
        channels = _expanded(s1)
        self.transition1 = _make_transition(channels, _expanded(config.stage2))
        self.stage2, channels = _make_stage(config.stage2, _expanded(config.stage2))
        self.transition2 = _make_transition(channels, _expanded(config.stage3))
        self.stage3, channels = _make_stage(config.stage3, _expanded(config.stage3))
        self.transition3 = _make_transition(channels, _expanded(config.stage4))
        self.stage4, channels = _make_stage(config.stage4, _expanded(config.stage4))

        total = sum(channels)
        k = config.final_conv_kernel
        self.last_layer = nn.Sequential(
            nn.Conv2d(total, total, 1),
            _bn(total),
            nn.ReLU(),
            nn.Conv2d(total, num_classes, k, 1, k // 2),
        )
        self._init_weights()
        for module in self.modules():
            if isinstance(module, HighResolutionModule):
                module.align_corners = align_corners

    def _init_weights(self) -> None:
        """Official initialisation: conv weights N(0, 0.001), BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _transit(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        # a new branch grows from the last (lowest-resolution) output of the previous stage
        return [xs[min(i, len(xs) - 1)] if t is None else t(xs[min(i, len(xs) - 1)])
                for i, t in enumerate(transition)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))  # 1/4
        xs = self.stage2(self._transit(self.transition1, [self.layer1(x)]))
        xs = self.stage3(self._transit(self.transition2, xs))
        xs = self.stage4(self._transit(self.transition3, xs))
        x = torch.cat([xs[0]] + [_resize_to(y, xs[0], self.align_corners) for y in xs[1:]], dim=1)
        return self.last_layer(x)


def _stage(num_modules: int, block: str, num_blocks: tuple[int, ...], widths: tuple[int, ...]) -> StageConfig:
    return StageConfig(num_modules, block, num_blocks, widths)


def hrnet_config(width: int) -> HRNetConfig:
    """HRNetV2-W{width}: the configuration of the official W18, W32 and W48 models."""
    w = width
    return HRNetConfig(
        stage1=_stage(1, "BOTTLENECK", (4,), (64,)),
        stage2=_stage(1, "BASIC", (4, 4), (w, 2 * w)),
        stage3=_stage(4, "BASIC", (4, 4, 4), (w, 2 * w, 4 * w)),
        stage4=_stage(3, "BASIC", (4, 4, 4, 4), (w, 2 * w, 4 * w, 8 * w)),
    )


SMALL_V1 = HRNetConfig(
    stage1=_stage(1, "BOTTLENECK", (1,), (32,)),
    stage2=_stage(1, "BASIC", (2, 2), (16, 32)),
    stage3=_stage(1, "BASIC", (2, 2, 2), (16, 32, 64)),
    stage4=_stage(1, "BASIC", (2, 2, 2, 2), (16, 32, 64, 128)),
)

SMALL_V2 = HRNetConfig(
    stage1=_stage(1, "BOTTLENECK", (2,), (64,)),
    stage2=_stage(1, "BASIC", (2, 2), (18, 36)),
    stage3=_stage(3, "BASIC", (2, 2, 2), (18, 36, 72)),
    stage4=_stage(2, "BASIC", (2, 2, 2, 2), (18, 36, 72, 144)),
)


@register_model("localizer")
def hrnet_w18_small_v1(num_classes: int = 1, align_corners: bool = False) -> HighResolutionNet:
    return HighResolutionNet(SMALL_V1, num_classes=num_classes, align_corners=align_corners)


@register_model("localizer")
def hrnet_w18_small_v2(num_classes: int = 1, align_corners: bool = False) -> HighResolutionNet:
    return HighResolutionNet(SMALL_V2, num_classes=num_classes, align_corners=align_corners)


@register_model("localizer")
def hrnet_w18(num_classes: int = 1, align_corners: bool = False) -> HighResolutionNet:
    return HighResolutionNet(hrnet_config(18), num_classes=num_classes, align_corners=align_corners)


@register_model("localizer")
def hrnet_w32(num_classes: int = 1, align_corners: bool = False) -> HighResolutionNet:
    return HighResolutionNet(hrnet_config(32), num_classes=num_classes, align_corners=align_corners)


@register_model("localizer")
def hrnet_w48(num_classes: int = 1, align_corners: bool = False) -> HighResolutionNet:
    return HighResolutionNet(hrnet_config(48), num_classes=num_classes, align_corners=align_corners)
