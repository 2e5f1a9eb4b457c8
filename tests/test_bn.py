"""BatchNorm modes: demo = per-image batch-1 train() statistics without side effects; eval = running statistics."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from harness.core.bn import BatchNormModeError, bn_context, inference_context


def _net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False), nn.Dropout(0.5),
                        nn.Conv2d(4, 1, 1))
    with torch.no_grad():  # non-trivial affine weights and running statistics
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _batch1_train_runs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The demo: a copy in train() under no_grad(), one image at a time (dropout disabled to compare)."""
    demo = copy.deepcopy(net).train()
    demo[5].p = 0.0
    with torch.no_grad():
        return torch.cat([demo(x[i : i + 1]) for i in range(len(x))])


def test_demo_mode_equals_batch1_train_runs_and_leaves_stats():
    net, x = _net(), torch.rand(3, 3, 12, 10) * 2
    before = _state(net)
    with torch.no_grad(), inference_context(net, "demo"):
        got = net(x)
    torch.testing.assert_close(got, _batch1_train_runs(net, x), rtol=1e-5, atol=1e-5)
    after = net.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # running_mean/var and num_batches_tracked untouched


def test_demo_mode_statistics_are_per_sample():
    net, x = _net(), torch.rand(3, 3, 12, 10)
    with torch.no_grad(), inference_context(net, "demo"):
        alone = net(x[1:2])
        batched = net(x)
    torch.testing.assert_close(batched[1:2], alone, rtol=1e-5, atol=1e-6)


def test_eval_mode_is_ordinary_inference():
    net, x = _net(), torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = copy.deepcopy(net).eval()(x)
        with inference_context(net, "eval"):
            got = net(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_flags_and_forward_restored_exactly_even_after_an_error():
    net = _net().train()
    net[4].eval()
    flags = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with inference_context(net, "demo"):
            assert all(not m.training for m in net.modules() if not isinstance(m, nn.BatchNorm2d))
            raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == flags
    assert all("forward" not in m.__dict__ for m in net.modules())


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="bn_mode"):
        with bn_context(_net(), "train"):
            pass


class _PooledHead(nn.Module):
    """A BatchNorm after global pooling: one value per channel per image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv(x)))


def test_one_value_per_channel_raises_naming_the_module_in_demo_mode():
    net, x = _PooledHead(), torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError):  # what PyTorch itself does in the demo's batch-1 train() run
        copy.deepcopy(net).train()(x[:1])
    with pytest.raises(BatchNormModeError, match=r"'head\.1'"):
        with torch.no_grad(), inference_context(net, "demo"):
            net(x)
    with torch.no_grad(), inference_context(net, "eval"):
        assert net(x).shape == (2, 2)


def test_sync_batchnorm_and_1d_sequences():
    plain = _net()
    net = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    assert isinstance(net[1], nn.SyncBatchNorm)
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad(), inference_context(net, "demo"):
        got = net(x)
    with torch.no_grad(), inference_context(plain, "demo"):
        torch.testing.assert_close(got, plain(x), rtol=1e-5, atol=1e-6)
    seq = nn.BatchNorm1d(4)
    y = torch.rand(3, 4, 7)
    with torch.no_grad(), bn_context(seq, "demo"):
        got = seq(y)
    expected = torch.cat([nn.BatchNorm1d(4).train()(y[i : i + 1]) for i in range(3)]).detach()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_eval_mode_without_running_stats_stays_per_sample():
    bn, x = nn.BatchNorm2d(3, track_running_stats=False), torch.rand(4, 3, 5, 5)
    with torch.no_grad(), bn_context(bn, "eval"):
        torch.testing.assert_close(bn(x)[2:3], bn(x[2:3]), rtol=1e-5, atol=1e-6)
