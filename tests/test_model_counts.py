"""Every registered localizer against the reference counts of its official implementation.

Counts are taken on the "meta" device (shapes only, no arithmetic), so even HRNet-W48 costs no forward pass;
conv MACs come from forward hooks (`count_conv_macs`), which agree exactly with fvcore's conv count
(tests/test_cost.py).

Sources: params, state_dict tensors and conv GMACs (fvcore, 1e9 MACs, 400×400, batch 1, eval) of the official
HRNet-Semantic-Segmentation `seg_hrnet.py` and PIDNet `pidnet.py` at one class; HRNet small variants and W32 at one
class from the official `seg_hrnet.py` with the official experiment configurations; the published 19-class figures
(params and conv GMACs at 1024×2048 in 2^30 units: HRNet README 31.1 / 71.6 / 696.2 for small-v1 / small-v2 / W48).
Lite-HRNet has no official segmentation head: its 1-class count must fall in the range of a small head on the
40-channel IterativeHead output (1.13–1.2 M for 18; for 30, the 1.7637 M pose model gives 1.76–1.84 M).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from harness.models.cost import count_conv_macs
from harness.models.registry import create_model, list_models

PARAMS_REL = 1e-3  # 0.1 %
MACS_REL = 1e-2  # 1 %


@dataclass(frozen=True)
class Expected:
    params: int | None = None  # within 0.1 %
    params_range_m: tuple[float, float] | None = None  # millions, inclusive (no official reference)
    tensors: int | None = None  # exact
    conv_gmacs_400: float | None = None  # within 1 %
    kwargs: dict = field(default_factory=dict)


EXPECTED: dict[str, Expected] = {
    "hrnet_w18_small_v1": Expected(params=1_536_481, tensors=435),
    "hrnet_w18_small_v2": Expected(params=3_934_701, tensors=873),
    "hrnet_w18": Expected(params=9_636_241, tensors=1839, conv_gmacs_400=11.26),
    "hrnet_w32": Expected(params=29_537_857, tensors=1839),
    "hrnet_w48": Expected(params=65_846_401, tensors=1839, conv_gmacs_400=57.37),
    "pidnet_s": Expected(params=7_623_393, tensors=453, conv_gmacs_400=3.66, kwargs={"augment": False}),
    "pidnet_m": Expected(params=28_536_193, tensors=453, conv_gmacs_400=13.78, kwargs={"augment": False}),
    "pidnet_l": Expected(params=36_934_945, tensors=519, conv_gmacs_400=21.28, kwargs={"augment": False}),
    "lite_hrnet_18": Expected(params_range_m=(1.13, 1.2)),
    "lite_hrnet_30": Expected(params_range_m=(1.76, 1.84)),
}

# 19 classes (Cityscapes), official seg_hrnet.py: params, and conv MACs at 1024×2048 in 2^30 units where the HRNet
# README publishes them for a model cheap to count (W18/W32/W48 conv MACs are already checked at 400×400 above).
CITYSCAPES_HRNET = {
    "hrnet_w18_small_v1": (1_540_819, 31.10),
    "hrnet_w18_small_v2": (3_939_579, 71.58),
    "hrnet_w18": (9_641_119, None),
    "hrnet_w32": (29_546_515, None),
    "hrnet_w48": (65_859_379, None),
}




def _on_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", list_models("localizer"))
def test_counts_match_the_official_implementation(name):
    assert name in EXPECTED, f"{name} is registered but has no expected counts in {__name__}.EXPECTED"
    want = EXPECTED[name]
    net = _on_meta(name, **want.kwargs)
    params = _params(net)
    if want.params is not None:
        assert params == pytest.approx(want.params, rel=PARAMS_REL), f"{name}: {params:,} params"
    if want.params_range_m is not None:
        low, high = want.params_range_m
        assert low <= params / 1e6 <= high, f"{name}: {params:,} params outside {low}–{high} M"
    if want.tensors is not None:
        assert len(net.state_dict()) == want.tensors
    if want.conv_gmacs_400 is not None:
        gmacs = count_conv_macs(net, (400, 400)) / 1e9
        assert gmacs == pytest.approx(want.conv_gmacs_400, rel=MACS_REL), f"{name}: {gmacs:.3f} conv GMACs"


def test_every_expected_entry_has_a_source():
    # a registered name must have an entry; an entry for an unregistered name is allowed (not built yet)
    for name, want in EXPECTED.items():
        assert want.params is not None or want.params_range_m is not None, name


@pytest.mark.parametrize("name", sorted(set(CITYSCAPES_HRNET) & set(list_models("localizer"))))
def test_hrnet_at_19_classes_matches_published_figures(name):
    params, conv_gmacs_2_30 = CITYSCAPES_HRNET[name]
    net = _on_meta(name, num_classes=19)
    assert _params(net) == pytest.approx(params, rel=PARAMS_REL)
    if conv_gmacs_2_30 is not None:
        assert count_conv_macs(net, (1024, 2048)) / 2**30 == pytest.approx(conv_gmacs_2_30, rel=MACS_REL)
