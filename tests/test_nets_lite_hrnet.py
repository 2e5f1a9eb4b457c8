"""Lite-HRNet: output at 1/4, parameter budget, official backbone layout, the official fuse quirk."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.models.nets.lite_hrnet import LiteHRModule, lite_hrnet_18, lite_hrnet_30
from harness.models.registry import get_entry

FIXTURES = Path(__file__).parent / "fixtures"




def test_output_at_one_quarter_and_finite():
    model = lite_hrnet_18().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 1, 16, 24)
    assert torch.isfinite(out).all()


def test_runs_at_400_which_is_not_a_multiple_of_32():
    # The official fuse (fixed scale_factor upsampling) fails at 400×400; ours resizes to the branch size.
    model = lite_hrnet_18(num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 400, 400))
    assert out.shape == (1, 3, 100, 100)
    assert torch.isfinite(out).all()


def test_params_in_budget():
    model = lite_hrnet_18()
    params = sum(p.numel() for p in model.parameters())
    assert 1_130_000 <= params <= 1_200_000
    assert params == 1_131_833
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("last_layer."))
    assert backbone == 1_130_072  # official Lite-HRNet-18 backbone with IterativeHead
    assert sum(p.numel() for p in lite_hrnet_30().parameters()) == 1_764_781


def test_registered_as_localizers():
    assert get_entry("lite_hrnet_18").kind == "localizer"
    assert get_entry("lite_hrnet_30").kind == "localizer"


def test_segmentation_head_is_last_layer_with_logit_conv_at_index_3():
    head = lite_hrnet_18(num_classes=2).last_layer
    assert [type(m) for m in head] == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.Conv2d]
    assert head[3].in_channels == 40 and head[3].out_channels == 2


def _official_backbone_state_dict() -> dict[str, torch.Tensor]:
    with gzip.open(FIXTURES / "lite_hrnet_18_official_keys.json.gz", "rt") as f:
        shapes = json.load(f)
    return {key: torch.full(shape, 0.5) for key, shape in shapes.items()}


def test_official_backbone_layout_loads_strictly():
    # Layout of the official LiteHRNet backbone (litehrnet_18 config, with_head=True), dumped from the official code.
    official = _official_backbone_state_dict()
    assert len(official) == 1416
    model = lite_hrnet_18()
    head = {k: v for k, v in model.state_dict().items() if k.startswith("last_layer.")}
    model.load_state_dict({**official, **head}, strict=True)
    torch.testing.assert_close(model.state_dict()["stage2.1.fuse_layers.3.0.0.2.weight"],
                               official["stage2.1.fuse_layers.3.0.0.2.weight"])

    missing, unexpected = lite_hrnet_18().load_state_dict(official, strict=False)
    # BatchNorm fills in a missing num_batches_tracked itself, so it is never reported as missing
    assert unexpected == []
    assert sorted(missing) == sorted(k for k in head if not k.endswith("num_batches_tracked"))


def test_fuse_keeps_the_official_double_count_of_branch_0():
    torch.manual_seed(0)
    module = LiteHRModule([16, 32], num_blocks=1, reduce_ratio=2).eval()  # wide enough for ratio-4 spatial weighting
    a, b = torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        fused = module._fuse([a, b])
        y0 = a + a + F.interpolate(module.fuse_layers[0][1](b), size=(8, 8), mode="nearest")
        y1 = 2 * module.fuse_layers[1][0](y0) + b  # branch 1 reads the pre-ReLU fused branch 0, twice
    torch.testing.assert_close(fused[0], F.relu(y0))
    torch.testing.assert_close(fused[1], F.relu(y1))
