"""PIDNet: a three-branch real-time segmentation network (Xu et al., CVPR 2023).

Branches: I (integral context, layers 1-5 + pyramid pooling), P (proportional detail at 1/8, fused with I by
pixel-attention-guided fusion `pag3`/`pag4`), D (derivative / boundary, `layer*_d` + `diff3`/`diff4`). The `dfm`
module lets the boundary branch weigh P against I before `final_layer`.

Submodule and parameter names follow the official implementation exactly, so an official state_dict loads with
`strict=True`. The main output is at 1/8 of the input resolution; H and W must be divisible by 8.

Output contract: with `augment=True` and the module in training mode, forward returns
`[p_aux, main, boundary]` (P-branch auxiliary logits, main logits, one-channel boundary logits, all at 1/8);
otherwise (eval mode, or `augment=False`) it returns the main logits only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.models.registry import register_model

BN_MOMENTUM = 0.1
ALIGN_CORNERS = False
OUTPUT_STRIDE = 8


def _upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=ALIGN_CORNERS)


def _conv_bn(c_in: int, c_out: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN: the projection used for shortcuts, compression and diff layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM),
    )


def _bn_relu_conv(c_in: int, c_out: int, kernel_size: int = 1, groups: int = 1) -> nn.Sequential:
    """Pre-activation conv used throughout the pyramid pooling modules."""
    return nn.Sequential(
        nn.BatchNorm2d(c_in, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, groups=groups, bias=False),
    )


def _pool_bn_relu_conv(pool: nn.Module, c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(pool, *_bn_relu_conv(c_in, c_out))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, no_relu: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + residual
        return out if self.no_relu else self.relu(out)


class Bottleneck(nn.Module):
    expansion = 2

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, no_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, momentum=BN_MOMENTUM)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + residual
        return out if self.no_relu else self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


def _downsample_if_needed(block: Block, inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes * block.expansion:
        return None
    return _conv_bn(inplanes, planes * block.expansion, 1, stride)


def make_layer(block: Block, inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """A stack of residual blocks; the last block of a multi-block stack has no final ReLU (official)."""
    layers: list[nn.Module] = [block(inplanes, planes, stride, _downsample_if_needed(block, inplanes, planes, stride))]
    for i in range(1, blocks):
        layers.append(block(planes * block.expansion, planes, 1, no_relu=(i == blocks - 1)))
    return nn.Sequential(*layers)


def make_single_layer(block: Block, inplanes: int, planes: int) -> nn.Module:
    """One block without final ReLU, not wrapped in a Sequential (official `_make_single_layer`)."""
    return block(inplanes, planes, 1, _downsample_if_needed(block, inplanes, planes, 1), no_relu=True)


class SegHead(nn.Module):
    """BN, ReLU, conv3×3, BN, ReLU, conv1×1 (bias): official `segmenthead`."""

    def __init__(self, inplanes: int, interplanes: int, outplanes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(inplanes, interplanes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(interplanes, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(interplanes, outplanes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu(self.bn1(x)))
        return self.conv2(self.relu(self.bn2(x)))


class _PyramidPooling(nn.Module):
    """Shared layout of DAPPM and PAPPM: four pooled scales and a full-resolution scale0, compressed + shortcut."""

    def __init__(self, inplanes: int, branch_planes: int) -> None:
        super().__init__()
        self.scale1 = _pool_bn_relu_conv(nn.AvgPool2d(5, stride=2, padding=2), inplanes, branch_planes)
        self.scale2 = _pool_bn_relu_conv(nn.AvgPool2d(9, stride=4, padding=4), inplanes, branch_planes)
        self.scale3 = _pool_bn_relu_conv(nn.AvgPool2d(17, stride=8, padding=8), inplanes, branch_planes)
        self.scale4 = _pool_bn_relu_conv(nn.AdaptiveAvgPool2d((1, 1)), inplanes, branch_planes)
        self.scale0 = _bn_relu_conv(inplanes, branch_planes)

    def _pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = (x.shape[-2], x.shape[-1])
        return [_upsample_to(s(x), size) for s in (self.scale1, self.scale2, self.scale3, self.scale4)]


class DAPPM(_PyramidPooling):
    """Deep aggregation PPM (PIDNet-L): each scale is refined after adding the previous one, sequentially."""

    def __init__(self, inplanes: int, branch_planes: int, outplanes: int) -> None:
        super().__init__(inplanes, branch_planes)
        self.process1 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process2 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process3 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process4 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.compression = _bn_relu_conv(branch_planes * 5, outplanes)
        self.shortcut = _bn_relu_conv(inplanes, outplanes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.scale0(x)]
        for pooled, process in zip(self._pooled(x), (self.process1, self.process2, self.process3, self.process4)):
            outs.append(process(pooled + outs[-1]))
        return self.compression(torch.cat(outs, 1)) + self.shortcut(x)


class PAPPM(_PyramidPooling):
    """Parallel aggregation PPM (PIDNet-S/M): all scales refined at once by one grouped conv."""

    def __init__(self, inplanes: int, branch_planes: int, outplanes: int) -> None:
        super().__init__(inplanes, branch_planes)
        self.scale_process = _bn_relu_conv(branch_planes * 4, branch_planes * 4, 3, groups=4)
        self.compression = _bn_relu_conv(branch_planes * 5, outplanes)
        self.shortcut = _bn_relu_conv(inplanes, outplanes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.scale0(x)
        scales = self.scale_process(torch.cat([p + base for p in self._pooled(x)], 1))
        return self.compression(torch.cat([base, scales], 1)) + self.shortcut(x)


class PagFM(nn.Module):
    """Pixel-attention-guided fusion: per-pixel similarity of P (x) and I (y) decides how much I to take in."""

    def __init__(self, in_channels: int, mid_channels: int) -> None:
        super().__init__()
        # The official BNs here use PyTorch's default momentum (0.1, equal to BN_MOMENTUM).
        self.f_x = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.f_y = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2], x.shape[-1])
        y_q = _upsample_to(self.f_y(y), size)
        sim_map = torch.sigmoid(torch.sum(self.f_x(x) * y_q, dim=1, keepdim=True))
        return (1 - sim_map) * x + sim_map * _upsample_to(y, size)


class LightBag(nn.Module):
    """Light boundary-attention-guided fusion (PIDNet-S/M, official `Light_Bag`)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_p = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.conv_i = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, p: torch.Tensor, i: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        edge = torch.sigmoid(d)
        return self.conv_p((1 - edge) * i + p) + self.conv_i(i + edge * p)


class Bag(nn.Module):
    """Boundary-attention-guided fusion (PIDNet-L): boundary pixels trust P, the rest trust I."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _bn_relu_conv(in_channels, out_channels, 3)

    def forward(self, p: torch.Tensor, i: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        edge = torch.sigmoid(d)
        return self.conv(edge * p + (1 - edge) * i)


@dataclass(frozen=True)
class PIDNetConfig:
    m: int  # blocks in layers 1-2 and in the P branch; m == 2 → PAPPM + LightBag, else DAPPM + Bag
    n: int  # blocks in layers 3-4
    planes: int
    ppm_planes: int
    head_planes: int


PIDNET_S = PIDNetConfig(m=2, n=3, planes=32, ppm_planes=96, head_planes=128)
PIDNET_M = PIDNetConfig(m=2, n=3, planes=64, ppm_planes=96, head_planes=128)
PIDNET_L = PIDNetConfig(m=3, n=4, planes=64, ppm_planes=112, head_planes=256)


class PIDNet(nn.Module):
    # augment=True's training heads: a checkpoint holding them loads into augment=False with a note, never run
    auxiliary_prefixes = ("seghead_p.", "seghead_d.")

    def __init__(self, cfg: PIDNetConfig, num_classes: int = 1, augment: bool = False) -> None:
        super().__init__()
        self.augment = augment
        m, n, p = cfg.m, cfg.n, cfg.planes
        self._build_i_branch(m, n, p)
        self._build_p_branch(m, p)
        self._build_d_branch(m, p, cfg.ppm_planes)
        if augment:
            self.seghead_p = SegHead(p * 2, cfg.head_planes, num_classes)
            self.seghead_d = SegHead(p * 2, p, 1)
        self.final_layer = SegHead(p * 4, cfg.head_planes, num_classes)
        self._init_weights()

    def _build_i_branch(self, m: int, n: int, p: int) -> None:
        # The stem convs have bias=True in the official code, unlike every other conv before a BN.
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, p, 3, stride=2, padding=1),
            nn.BatchNorm2d(p, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(p, p, 3, stride=2, padding=1),
            nn.BatchNorm2d(p, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(BasicBlock, p, p, m)
        self.layer2 = make_layer(BasicBlock, p, p * 2, m, stride=2)
        self.layer3 = make_layer(BasicBlock, p * 2, p * 4, n, stride=2)
        self.layer4 = make_layer(BasicBlock, p * 4, p * 8, n, stride=2)
        self.layer5 = make_layer(Bottleneck, p * 8, p * 8, 2, stride=2)

    def _build_p_branch(self, m: int, p: int) -> None:
        self.compression3 = _conv_bn(p * 4, p * 2)
        self.compression4 = _conv_bn(p * 8, p * 2)
        self.pag3 = PagFM(p * 2, p)
        self.pag4 = PagFM(p * 2, p)
        self.layer3_ = make_layer(BasicBlock, p * 2, p * 2, m)
        self.layer4_ = make_layer(BasicBlock, p * 2, p * 2, m)
        self.layer5_ = make_layer(Bottleneck, p * 2, p * 2, 1)

    def _build_d_branch(self, m: int, p: int, ppm_planes: int) -> None:
        if m == 2:
            self.layer3_d = make_single_layer(BasicBlock, p * 2, p)
            self.layer4_d = make_layer(Bottleneck, p, p, 1)
            self.diff3 = _conv_bn(p * 4, p, 3)
            self.diff4 = _conv_bn(p * 8, p * 2, 3)
            self.spp = PAPPM(p * 16, ppm_planes, p * 4)
            self.dfm = LightBag(p * 4, p * 4)
        else:
            self.layer3_d = make_single_layer(BasicBlock, p * 2, p * 2)
            self.layer4_d = make_single_layer(BasicBlock, p * 2, p * 2)
            self.diff3 = _conv_bn(p * 4, p * 2, 3)
            self.diff4 = _conv_bn(p * 8, p * 2, 3)
            self.spp = DAPPM(p * 16, ppm_planes, p * 4)
            self.dfm = Bag(p * 4, p * 4)
        self.layer5_d = make_layer(Bottleneck, p * 2, p * 2, 1)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out_size = _output_size(x)
        x = self.layer1(self.conv1(x))
        x = self.relu(self.layer2(self.relu(x)))
        x_p = self.layer3_(x)
        x_d = self.layer3_d(x)

        x = self.relu(self.layer3(x))
        x_p = self.pag3(x_p, self.compression3(x))
        x_d = x_d + _upsample_to(self.diff3(x), out_size)
        p_aux_features = x_p

        x = self.relu(self.layer4(x))
        x_p = self.layer4_(self.relu(x_p))
        x_d = self.layer4_d(self.relu(x_d))
        x_p = self.pag4(x_p, self.compression4(x))
        x_d = x_d + _upsample_to(self.diff4(x), out_size)
        boundary_features = x_d

        x_p = self.layer5_(self.relu(x_p))
        x_d = self.layer5_d(self.relu(x_d))
        x = _upsample_to(self.spp(self.layer5(x)), out_size)
        main = self.final_layer(self.dfm(x_p, x, x_d))

        if self.augment and self.training:
            return [self.seghead_p(p_aux_features), main, self.seghead_d(boundary_features)]
        return main


def _output_size(x: torch.Tensor) -> tuple[int, int]:
    height, width = x.shape[-2], x.shape[-1]
    if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
        raise ValueError(
            f"PIDNet input size {height}×{width} (H×W) is not divisible by {OUTPUT_STRIDE}; "
            f"resize or pad the input to a multiple of {OUTPUT_STRIDE}"
        )
    return height // OUTPUT_STRIDE, width // OUTPUT_STRIDE


@register_model("localizer")
def pidnet_s(num_classes: int = 1, augment: bool = False) -> PIDNet:
    return PIDNet(PIDNET_S, num_classes=num_classes, augment=augment)


@register_model("localizer")
def pidnet_m(num_classes: int = 1, augment: bool = False) -> PIDNet:
    return PIDNet(PIDNET_M, num_classes=num_classes, augment=augment)


@register_model("localizer")
def pidnet_l(num_classes: int = 1, augment: bool = False) -> PIDNet:
    return PIDNet(PIDNET_L, num_classes=num_classes, augment=augment)
