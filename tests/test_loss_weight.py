"""`loss_weight` scales every distillation loss: doubling it doubles the loss (and a new loss needs a case here)."""
from __future__ import annotations

import pytest
import torch

from harness.distill.losses import LOSSES
from tests.distill_world import TinySDecoder


def _inputs(name: str) -> tuple[dict, tuple[torch.Tensor, ...]]:
    """Constructor options and forward arguments of each registered loss, student and teacher apart."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 1, 8, 8, generator=g)
    student = teacher + 0.5 * torch.randn(2, 1, 8, 8, generator=g)
    three = torch.randn(2, 3, 8, 8, generator=g)
    cases = {
        "L2Loss": ({}, (student, teacher)),
        "BinaryKLDivergence": ({"tau": 2.0}, (student, teacher)),
        "SoftBCE": ({"tau": 2.0}, (student, teacher)),
        "ChannelWiseDivergence": ({"tau": 2.0}, (student, teacher)),
        "KLDivergence": ({"tau": 2.0}, (three + 0.5 * torch.randn(2, 3, 8, 8, generator=g), three)),
        "DecodeLoss": ({"sdecoder": TinySDecoder(), "size": 64},
                       (torch.randn(2, 1, 16, 16, generator=g), torch.rand(2, 3, 64, 64, generator=g),
                        torch.randint(0, 2, (2, 100), generator=g).float())),
    }
    return cases[name]


def test_every_loss_has_a_case():
    assert set(LOSSES) == {"L2Loss", "BinaryKLDivergence", "SoftBCE", "ChannelWiseDivergence", "KLDivergence",
                           "DecodeLoss"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_doubling_loss_weight_doubles_the_loss(name):
    options, args = _inputs(name)
    one = LOSSES[name](loss_weight=1.0, **options)(*args)
    two = LOSSES[name](loss_weight=2.0, **options)(*args)
    zero = LOSSES[name](loss_weight=0.0, **options)(*args)
    assert float(one) > 1e-6  # a loss that is zero anyway would hide a weight that is ignored
    torch.testing.assert_close(two, 2 * one, rtol=1e-6, atol=0)
    assert float(zero) == 0.0
