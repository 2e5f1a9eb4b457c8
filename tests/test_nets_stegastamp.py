"""StegaStamp-style SDecoder: shapes, identity STN at start, gradients to the input, the port's parameter layout."""
from __future__ import annotations

import pytest
import torch

from harness.models.nets.stegastamp import StegaStampDecoder, stegastamp_decoder
from harness.models.registry import create_model, get_entry


def _small(secret_len: int = 16) -> StegaStampDecoder:
    return stegastamp_decoder(secret_len=secret_len, height=64, width=48).eval()


def test_logits_shape_and_finite():
    with torch.no_grad():
        out = _small()(torch.rand(3, 3, 64, 48))
    assert out.shape == (3, 16)
    assert torch.isfinite(out).all()


def test_default_size_is_400_by_400_with_100_logits():
    model = create_model("stegastamp_decoder").eval()
    assert get_entry("stegastamp_decoder").kind == "sdecoder"
    with torch.no_grad():
        out = model(torch.rand(1, 3, 400, 400))
    assert out.shape == (1, 100)
    assert torch.isfinite(out).all()


def test_stn_is_identity_at_start():
    model = _small()
    image = torch.rand(2, 3, 64, 48) - 0.5
    with torch.no_grad():
        theta = model.stn.theta(image)
        warped = model.stn(image)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))
    torch.testing.assert_close(warped, image, atol=1e-5, rtol=0)


def test_decoding_treats_samples_independently():
    model = _small()
    batch = torch.rand(4, 3, 64, 48)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(batch[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_differentiable_with_respect_to_the_input():
    model = _small()
    image = torch.rand(2, 3, 64, 48, requires_grad=True)
    model(image).sum().backward()
    assert image.grad is not None
    assert torch.isfinite(image.grad).all()
    assert image.grad.abs().sum() > 0


def test_stn_parameters_receive_gradients():
    model = _small()
    model(torch.rand(2, 3, 64, 48)).sum().backward()
    grad = model.stn.localization[5].bias.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 1, 64, 48), (3, 64, 48)])
def test_wrong_input_size_is_rejected_with_the_shape(shape):
    with pytest.raises(ValueError, match="64×48"):
        _small()(torch.rand(*shape))


# Parameter layout of the PyTorch port of StegaStamp at 400×400 with a 100-bit secret (from the port's source).
PORT_LAYOUT_400 = {
    "stn.localization.0.conv.weight": (32, 3, 3, 3), "stn.localization.0.conv.bias": (32,),
    "stn.localization.1.conv.weight": (64, 32, 3, 3), "stn.localization.1.conv.bias": (64,),
    "stn.localization.2.conv.weight": (128, 64, 3, 3), "stn.localization.2.conv.bias": (128,),
    "stn.localization.4.linear.weight": (128, 320000), "stn.localization.4.linear.bias": (128,),
    "stn.localization.5.weight": (6, 128), "stn.localization.5.bias": (6,),
    "decoder.0.conv.weight": (32, 3, 3, 3), "decoder.0.conv.bias": (32,),
    "decoder.1.conv.weight": (32, 32, 3, 3), "decoder.1.conv.bias": (32,),
    "decoder.2.conv.weight": (64, 32, 3, 3), "decoder.2.conv.bias": (64,),
    "decoder.3.conv.weight": (64, 64, 3, 3), "decoder.3.conv.bias": (64,),
    "decoder.4.conv.weight": (64, 64, 3, 3), "decoder.4.conv.bias": (64,),
    "decoder.5.conv.weight": (128, 64, 3, 3), "decoder.5.conv.bias": (128,),
    "decoder.6.conv.weight": (128, 128, 3, 3), "decoder.6.conv.bias": (128,),
    "decoder.8.linear.weight": (512, 21632), "decoder.8.linear.bias": (512,),
    "decoder.9.linear.weight": (100, 512), "decoder.9.linear.bias": (100,),
}


def test_parameter_layout_matches_the_pytorch_port():
    with torch.device("meta"):  # shapes only: the 400×400 model holds 52 M parameters
        model = stegastamp_decoder()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == PORT_LAYOUT_400
