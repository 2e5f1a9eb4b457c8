"""PIDNet: official names and counts, output stride 8, the augment contract, input checks, conv MACs."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from harness.models.cost import model_cost
from harness.models.nets.pidnet import pidnet_l, pidnet_m, pidnet_s
from harness.models.registry import create_model, get_entry

FIXTURES = Path(__file__).parent / "fixtures"

# num_classes=1, augment=False, 400×400: params, state_dict tensors, fvcore conv GMACs of the official code.
TARGETS = {
    "pidnet_s": (pidnet_s, 7_623_393, 453, 3.66),
    "pidnet_m": (pidnet_m, 28_536_193, 453, 13.78),
    "pidnet_l": (pidnet_l, 36_934_945, 519, 21.28),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_params_and_tensors_match_official(name):
    factory, params, tensors, _ = TARGETS[name]
    model = factory(num_classes=1)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == tensors


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_conv_macs_match_official(name):
    factory, _, _, conv_gmacs = TARGETS[name]
    measured = model_cost(factory(), (400, 400)).conv_gmacs  # fvcore's "conv" operator, eval mode
    assert measured == pytest.approx(conv_gmacs, rel=0.01)


def test_registered_as_localizers():
    for name in TARGETS:
        assert get_entry(name).kind == "localizer"
    assert isinstance(create_model("pidnet_s", num_classes=1), torch.nn.Module)


def test_main_output_at_one_eighth():
    model = pidnet_s().eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 1, 8, 12)
    assert torch.isfinite(out).all()


def test_augment_returns_three_outputs_in_train_and_main_in_eval():
    model = pidnet_s(num_classes=2, augment=True).train()
    x = torch.rand(2, 3, 64, 96)
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == 3
    p_aux, main, boundary = outs
    assert p_aux.shape == (2, 2, 8, 12) and main.shape == (2, 2, 8, 12) and boundary.shape == (2, 1, 8, 12)

    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))


def test_without_augment_train_mode_returns_main_only():
    out = pidnet_s(augment=False).train()(torch.rand(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 4, 4)


@pytest.mark.parametrize("height, width", [(401, 400), (400, 404), (36, 36)])
def test_size_not_divisible_by_8_is_rejected_with_the_size(height, width):
    with pytest.raises(ValueError, match=f"{height}×{width}"):
        pidnet_s().eval()(torch.rand(1, 3, height, width))


def _official_state_dict(name: str) -> dict[str, torch.Tensor]:
    with gzip.open(FIXTURES / f"{name}_official_keys.json.gz", "rt") as f:
        shapes = json.load(f)
    return {key: torch.zeros(shape) for key, shape in shapes.items()}


def test_official_pidnet_s_layout_loads_strictly():
    # Layout of the official PIDNet-S training model (num_classes=19, augment=True), dumped from the official code.
    official = _official_state_dict("pidnet_s")
    assert len(official) == 479
    pidnet_s(num_classes=19, augment=True).load_state_dict(official, strict=True)

    inference = {k: v for k, v in official.items() if not k.startswith(("seghead_p.", "seghead_d."))}
    assert len(inference) == 453
    pidnet_s(num_classes=19, augment=False).load_state_dict(inference, strict=True)


def test_official_layout_rejects_wrong_head_width():
    with pytest.raises(RuntimeError, match="final_layer.conv2.weight"):
        pidnet_s(num_classes=1, augment=True).load_state_dict(_official_state_dict("pidnet_s"), strict=True)
