"""Lite-HRNet (Yu et al., CVPR 2021) backbone with a small segmentation head.

The backbone follows the official `litehrnet.py` (mmpose style): module names (`stem`, `transition0..2`,
`stage0..2`, `head_layer`) and, inside them, mmcv ConvModule names (`conv`, `bn`), so an official backbone
state_dict loads unchanged. The official IterativeHead (`head_layer`) turns the four branches into one 40-channel
map at 1/4 resolution; no official segmentation head exists, so we add `last_layer`:

    last_layer = Sequential(Conv1×1(40→40, bias), BN(40), ReLU, Conv1×1(40→num_classes, bias))

mirroring the HRNetV2 head, so `last_layer.3` is the logit conv (the Localizer exposes it as
`backbone.last_layer.3`). Lite-HRNet-18 with this head has 1,131,833 parameters at num_classes=1 (backbone with
IterativeHead 1,130,072). The output is num_classes logits at 1/4 of the input resolution.

Two behaviours differ from a straightforward reading of the architecture; both are kept on purpose:

* The official fuse loop counts branch 0 twice (see `LiteHRModule._fuse`). We keep it so that official weights
  give official outputs.
* The official fuse upsamples with a fixed `scale_factor`, which only lines up when H and W are multiples of 32
  (400×400 fails with a shape mismatch there). We upsample to the exact size of the target branch instead: the
  same result whenever the official code runs, and also defined for sizes such as 400×400.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.registry import register_model

BN_MOMENTUM = 0.1


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channel groups (ShuffleNet): [a0 a1 .. b0 b1 ..] → [a0 b0 a1 b1 ..]."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ConvModule(nn.Module):
    """Conv → optional BN → optional activation, under mmcv's ConvModule names (`conv`, `bn`, `activate`).

    As in mmcv, the conv has a bias only when there is no norm layer.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 norm: bool = True, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=not norm)
        self.bn = nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM) if norm else None
        self.activate = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x if self.activate is None else self.activate(x)


def _relu() -> nn.Module:
    return nn.ReLU(inplace=True)


def _depthwise_bn_pointwise_bn(c_in: int, c_out: int, stride: int, relu: bool) -> nn.Sequential:
    """Bare-module separable conv used by transitions and fuse paths (indices 0..3, ReLU at 4 when asked)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in, momentum=BN_MOMENTUM),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Stem(nn.Module):
    """3×3 s2 conv, then a ShuffleNet-style split: one half through a strided depthwise branch (`branch1`), the
    other through expand → strided depthwise → linear; concatenated and shuffled. Output at 1/4."""

    def __init__(self, in_channels: int, stem_channels: int, out_channels: int, expand_ratio: float) -> None:
        super().__init__()
        self.out_channels = out_channels
        mid = int(round(stem_channels * expand_ratio))
        half = stem_channels // 2
        same_width = stem_channels == out_channels
        inc = out_channels - half if same_width else out_channels - stem_channels
        self.conv1 = ConvModule(in_channels, stem_channels, 3, stride=2, act=_relu())
        self.branch1 = nn.Sequential(
            ConvModule(half, half, 3, stride=2, groups=half),
            ConvModule(half, inc, 1, act=_relu()),
        )
        self.expand_conv = ConvModule(half, mid, 1, act=_relu())
        self.depthwise_conv = ConvModule(mid, mid, 3, stride=2, groups=mid)
        self.linear_conv = ConvModule(mid, half if same_width else stem_channels, 1, act=_relu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.conv1(x).chunk(2, dim=1)
        x2 = self.linear_conv(self.depthwise_conv(self.expand_conv(x2)))
        return channel_shuffle(torch.cat((self.branch1(x1), x2), dim=1), 2)


class SpatialWeighting(nn.Module):
    """Squeeze-and-excitation on one branch (convs with bias, no norm)."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = ConvModule(channels, int(channels / ratio), 1, norm=False, act=_relu())
        self.conv2 = ConvModule(int(channels / ratio), channels, 1, norm=False, act=nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv2(self.conv1(self.global_avgpool(x)))


def _pool_to(x: torch.Tensor, size) -> torch.Tensor:
    """adaptive_avg_pool2d(x, size); during an ONNX export (`harness.deploy`) the same pooling as a plain
    average pool of a fixed window, which the TorchScript exporter can write: the Localizer fixes the spatial size,
    so the window is a constant. Eager runs keep adaptive pooling, digit for digit."""
    if not torch.onnx.is_in_onnx_export():  # eager, and fvcore's tracing for FLOP counts
        return F.adaptive_avg_pool2d(x, size)
    (h, w), (oh, ow) = (int(v) for v in x.shape[-2:]), (int(v) for v in size)
    if h % oh or w % ow:
        raise ValueError(f"ONNX export: Lite-HRNet pools a {h}×{w} branch to {oh}×{ow}, not a whole window; "
                         "export at an input size divisible by 32 (e.g. 128)")
    return F.avg_pool2d(x, (h // oh, w // ow))


class CrossResolutionWeighting(nn.Module):
    """Channel weights computed jointly from all branches pooled to the smallest one, then applied per branch."""

    def __init__(self, channels: list[int], ratio: int) -> None:
        super().__init__()
        self.channels = channels
        total = sum(channels)
        self.conv1 = ConvModule(total, int(total / ratio), 1, act=_relu())
        self.conv2 = ConvModule(int(total / ratio), total, 1, act=nn.Sigmoid())

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        smallest = xs[-1].shape[-2:]
        pooled = [_pool_to(s, smallest) for s in xs[:-1]] + [xs[-1]]
        weights = torch.split(self.conv2(self.conv1(torch.cat(pooled, dim=1))), self.channels, dim=1)
        return [s * F.interpolate(w, size=s.shape[-2:], mode="nearest") for s, w in zip(xs, weights)]


class ConditionalChannelWeighting(nn.Module):
    """Lite-HRNet block: half of each branch passes through, the other half is cross-resolution weighted,
    depthwise-convolved and spatially weighted; then halves are concatenated and shuffled."""

    def __init__(self, in_channels: list[int], reduce_ratio: int) -> None:
        super().__init__()
        halves = [c // 2 for c in in_channels]
        self.cross_resolution_weighting = CrossResolutionWeighting(halves, ratio=reduce_ratio)
        self.depthwise_convs = nn.ModuleList([ConvModule(c, c, 3, groups=c) for c in halves])
        self.spatial_weighting = nn.ModuleList([SpatialWeighting(c, ratio=4) for c in halves])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        split = [s.chunk(2, dim=1) for s in xs]
        kept = [s[0] for s in split]
        weighted = self.cross_resolution_weighting([s[1] for s in split])
        weighted = [sw(dw(s)) for s, dw, sw in zip(weighted, self.depthwise_convs, self.spatial_weighting)]
        return [channel_shuffle(torch.cat([a, b], dim=1), 2) for a, b in zip(kept, weighted)]


class LiteHRModule(nn.Module):
    """Conditional channel weighting blocks on every branch, then a multi-resolution fuse to every branch."""

    def __init__(self, in_channels: list[int], num_blocks: int, reduce_ratio: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_branches = len(in_channels)
        self.layers = nn.Sequential(*[ConditionalChannelWeighting(in_channels, reduce_ratio)
                                      for _ in range(num_blocks)])
        self.fuse_layers = self._make_fuse_layers()
        self.relu = nn.ReLU()

    def _make_fuse_layers(self) -> nn.ModuleList:
        """fuse_layers[i][j] maps branch j to branch i: j > i 1×1 conv + BN (upsampled in forward);
        j < i a chain of (i - j) stride-2 separable convs; None on the diagonal."""
        chans = self.in_channels
        rows = []
        for i in range(self.num_branches):
            row: list[nn.Module | None] = []
            for j in range(self.num_branches):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(chans[j], chans[i], 1, bias=False),
                                             nn.BatchNorm2d(chans[i], momentum=BN_MOMENTUM)))
                elif j == i:
                    row.append(None)
                else:
                    steps = [_depthwise_bn_pointwise_bn(chans[j], chans[i] if k == i - j - 1 else chans[j],
                                                        stride=2, relu=k != i - j - 1)
                             for k in range(i - j)]
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        return nn.ModuleList(rows)

    def _from_branch(self, i: int, j: int, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        y = self.fuse_layers[i][j](x)
        if j > i:  # the official code uses nn.Upsample(scale_factor=2**(j-i)); see the module docstring
            y = F.interpolate(y, size=size, mode="nearest")
        return y

    def _fuse(self, out: list[torch.Tensor]) -> list[torch.Tensor]:
        # Official quirk, kept so that official weights give official outputs: the official loop starts the sum for
        # output 0 at `y = out[0]` and then adds `out[0]` again (j == i), in place, so branch 0 is counted twice and
        # out[0] itself becomes that pre-ReLU sum. Every later output therefore reads the fused sum through
        # fuse_layers[i][0], and, starting from `fuse_layers[i][0](out[0])` and adding it again at j == 0, evaluates
        # that conv twice (twice the contribution; in training, BN running stats are updated twice).
        sizes = [o.shape[-2:] for o in out]
        fused0 = out[0] + out[0]
        for j in range(1, self.num_branches):
            fused0 = fused0 + self._from_branch(0, j, out[j], sizes[0])
        results = [self.relu(fused0)]
        for i in range(1, self.num_branches):
            y = self._from_branch(i, 0, fused0, sizes[i])
            y = y + self._from_branch(i, 0, fused0, sizes[i])
            for j in range(1, self.num_branches):
                y = y + (out[j] if j == i else self._from_branch(i, j, out[j], sizes[i]))
            results.append(self.relu(y))
        return results

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._fuse(self.layers(xs))


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv's DepthwiseSeparableConvModule as used by IterativeHead: depthwise 3×3 + BN, pointwise 1×1 + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(c_in, c_in, 3, groups=c_in)
        self.pointwise_conv = ConvModule(c_in, c_out, 1, act=_relu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class IterativeHead(nn.Module):
    """From the lowest resolution up: add the upsampled previous result, project to the next branch's width."""

    def __init__(self, in_channels: list[int]) -> None:
        super().__init__()
        widths = in_channels[::-1]
        outs = widths[1:] + widths[-1:]
        self.projects = nn.ModuleList([DepthwiseSeparableConvModule(c, o) for c, o in zip(widths, outs)])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        ys: list[torch.Tensor] = []
        for s, project in zip(xs[::-1], self.projects):
            if ys:
                s = s + F.interpolate(ys[-1], size=s.shape[-2:], mode="bilinear", align_corners=True)
            ys.append(project(s))
        return ys[::-1]


@dataclass(frozen=True)
class LiteHRNetConfig:
    num_modules: tuple[int, ...]
    num_channels: tuple[tuple[int, ...], ...] = ((40, 80), (40, 80, 160), (40, 80, 160, 320))
    num_blocks: tuple[int, ...] = (2, 2, 2)
    reduce_ratios: tuple[int, ...] = (8, 8, 8)
    stem_channels: int = 32
    stem_out_channels: int = 32
    stem_expand_ratio: float = 1.0


LITE_HRNET_18 = LiteHRNetConfig(num_modules=(2, 4, 2))
LITE_HRNET_30 = LiteHRNetConfig(num_modules=(3, 8, 3))


def _make_transition(pre: list[int], cur: list[int]) -> nn.ModuleList:
    """Existing branches change width with a separable conv (or pass through: None); each new branch is made
    from the last existing one by stride-2 separable convs."""
    layers: list[nn.Module | None] = []
    for i, width in enumerate(cur):
        if i < len(pre):
            layers.append(None if width == pre[i] else
                          _depthwise_bn_pointwise_bn(pre[i], width, stride=1, relu=True))
        else:
            steps = i + 1 - len(pre)
            layers.append(nn.Sequential(*[
                _depthwise_bn_pointwise_bn(pre[-1], width if k == steps - 1 else pre[-1], stride=2, relu=True)
                for k in range(steps)
            ]))
    return nn.ModuleList(layers)


class LiteHRNetSeg(nn.Module):
    """Official Lite-HRNet backbone names at the top level, plus `last_layer` for num_classes logits at 1/4."""

    def __init__(self, cfg: LiteHRNetConfig, num_classes: int = 1) -> None:
        super().__init__()
        self.stem = Stem(3, cfg.stem_channels, cfg.stem_out_channels, cfg.stem_expand_ratio)
        self.num_stages = len(cfg.num_modules)
        widths = [cfg.stem_out_channels]
        for i in range(self.num_stages):
            cur = list(cfg.num_channels[i])
            setattr(self, f"transition{i}", _make_transition(widths, cur))
            setattr(self, f"stage{i}", nn.Sequential(*[LiteHRModule(cur, cfg.num_blocks[i], cfg.reduce_ratios[i])
                                                      for _ in range(cfg.num_modules[i])]))
            widths = cur
        self.head_layer = IterativeHead(widths)
        self.last_layer = nn.Sequential(
            nn.Conv2d(widths[0], widths[0], 1, bias=True),
            nn.BatchNorm2d(widths[0], momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(widths[0], num_classes, 1, bias=True),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # Official Lite-HRNet / HRNet initialisation: conv weights N(0, 0.001), biases 0, BN weight 1, bias 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The official backbone output: 40 channels at 1/4 (IterativeHead, highest-resolution map)."""
        branches = [self.stem(x)]
        for i in range(self.num_stages):
            transition = getattr(self, f"transition{i}")
            inputs = []
            for j, layer in enumerate(transition):
                source = branches[min(j, len(branches) - 1)]
                inputs.append(source if layer is None else layer(source))
            branches = getattr(self, f"stage{i}")(inputs)
        return self.head_layer(branches)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.features(x))


@register_model("localizer")
def lite_hrnet_18(num_classes: int = 1) -> LiteHRNetSeg:
    return LiteHRNetSeg(LITE_HRNET_18, num_classes=num_classes)


@register_model("localizer")
def lite_hrnet_30(num_classes: int = 1) -> LiteHRNetSeg:
    return LiteHRNetSeg(LITE_HRNET_30, num_classes=num_classes)
