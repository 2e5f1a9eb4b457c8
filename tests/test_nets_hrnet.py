"""HRNetV2: output stride 4 at any input size, official module names, official checkpoint layout loads strictly.

fixtures/hrnet_w18_official_keys.json.gz is `{key: shape}` in state_dict order, dumped from the official
HRNet-Semantic-Segmentation `lib/models/seg_hrnet.py` (commit 605d941) built with the HRNetV2-W18 configuration
(stage 1: BOTTLENECK×4, 64 ch; stages 2-4: 1/4/3 modules of BASIC×4, widths 18·2^i), NUM_CLASSES=1,
FINAL_CONV_KERNEL=1. It is independent of our code: the official model was run outside this package.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness.models import load_checkpoint
from harness.models.nets.hrnet import HighResolutionNet
from harness.models.registry import create_model, get_entry

HRNETS = ["hrnet_w18_small_v1", "hrnet_w18_small_v2", "hrnet_w18", "hrnet_w32", "hrnet_w48"]
FIXTURE = Path(__file__).parent / "fixtures" / "hrnet_w18_official_keys.json.gz"


@pytest.mark.parametrize("name", HRNETS)
def test_registered_as_localizer(name):
    assert get_entry(name).kind == "localizer"


@pytest.mark.parametrize("name, mode", [("hrnet_w18_small_v1", "train"), ("hrnet_w18_small_v1", "eval"),
                                        ("hrnet_w18", "eval")])
def test_forward_odd_size_gives_quarter_resolution(name, mode):
    net = create_model(name).train(mode == "train")
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 1, math.ceil(65 / 4), math.ceil(97 / 4))
    assert torch.isfinite(out).all()


def test_num_classes_sets_the_final_conv():
    net = create_model("hrnet_w18_small_v1", num_classes=3)
    assert net.last_layer[3].out_channels == 3
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 40)).shape == (1, 3, 8, 10)


def test_official_module_names_present():
    net = create_model("hrnet_w18")
    modules = dict(net.named_modules())
    for name in ["conv1", "bn1", "conv2", "bn2", "layer1.0.downsample.0", "transition1.0", "transition1.1.0.0",
                 "stage2.0.branches.1.3.conv2", "transition2.2.0.0", "stage3.3.fuse_layers.2.0.1.0",
                 "transition3.3.0.0", "stage4.2.fuse_layers.0.3.1", "last_layer.0", "last_layer.1"]:
        assert name in modules, name
    final = modules["last_layer.3"]
    assert isinstance(final, nn.Conv2d) and final.out_channels == 1 and final.in_channels == 18 * 15
    # the official fuse layout keeps None (identity) at fuse_layers[i][i] and no transition for unchanged branches
    assert net.stage4[0].fuse_layers[2][2] is None and net.transition2[0] is None


def _official_layout() -> dict[str, list[int]]:
    with gzip.open(FIXTURE, "rt") as f:
        return json.load(f)


def test_official_w18_checkpoint_layout_loads_strictly(tmp_path):
    """The fixture is {key: shape} dumped from the official seg_hrnet.py (W18 config, 1 class), not from our net."""
    layout = _official_layout()
    assert len(layout) == 1839
    state = {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(shape))
             for k, shape in layout.items()}
    path = tmp_path / "official_w18.pth"
    torch.save(state, path)
    net = load_checkpoint(create_model("hrnet_w18"), path, strict=True)
    assert list(net.state_dict()) == list(layout)  # same names in the same order
    torch.testing.assert_close(net.last_layer[3].weight, state["last_layer.3.weight"])
    torch.testing.assert_close(net.stage4[2].fuse_layers[3][0][2][1].running_var,
                               state["stage4.2.fuse_layers.3.0.2.1.running_var"])


def test_bilinear_fuse_follows_target_size_exactly():
    """65 → 33 → 17 → 9 → 5: every upsampled branch must land on the exact size of branch 0."""
    net = create_model("hrnet_w18_small_v1").eval()
    sizes = []
    hook = net.stage4.register_forward_hook(lambda m, i, out: sizes.extend(tuple(y.shape[-2:]) for y in out))
    with torch.no_grad():
        net(torch.randn(1, 3, 259, 131))
    hook.remove()
    assert sizes == [(65, 33), (33, 17), (17, 9), (9, 5)]


def test_branch_count_mismatch_is_a_clear_error():
    from harness.models.nets.hrnet import BasicBlock, HighResolutionModule
    with pytest.raises(ValueError, match="branch counts disagree"):
        HighResolutionModule(BasicBlock, (2, 2), (16, 32, 64), (16, 32))


def test_config_is_kept_on_the_network():
    net = create_model("hrnet_w18_small_v1")
    assert isinstance(net, HighResolutionNet)
    assert net.config.stage4.num_channels == (16, 32, 64, 128)
