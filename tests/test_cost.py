"""Cost accounting: fvcore counts in eval mode, hook-counted conv MACs, latency probe, the CLI table."""
from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn as nn

from harness.cost import main
from harness.models.cost import Cost, Latency, count_conv_macs, measure_latency, model_cost
from harness.models.registry import create_model


def test_hrnet_w18_cost_at_400_matches_the_official_counts(caplog):
    """Reference: the official seg_hrnet.py W18 through fvcore, eval mode, batch 1 (11.26 conv, 11.38 total GMACs)."""
    net = create_model("hrnet_w18").train()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        cost = model_cost(net, (400, 400))
    assert isinstance(cost, Cost)
    assert (cost.params, cost.tensors, cost.input_hw) == (9_636_241, 1839, (400, 400))
    assert cost.conv_gmacs == pytest.approx(11.26, rel=1e-3)
    assert cost.total_gmacs == pytest.approx(11.38, rel=1e-3)  # train-mode BatchNorm would count 5, not 2
    assert cost.gflops == 2 * cost.total_gmacs
    assert cost.fp32_mib == cost.params * 4 / 2**20
    assert net.training  # the caller's mode is restored
    assert caught == [] and caplog.records == []  # fvcore's skipped-op notices are silenced


def test_hook_count_equals_fvcore_conv_count():
    net = create_model("hrnet_w18_small_v1")
    fvcore_macs = model_cost(net, (96, 72)).conv_gmacs * 1e9
    assert count_conv_macs(net, (96, 72)) == pytest.approx(fvcore_macs, rel=1e-9)
    with torch.device("meta"):
        on_meta = create_model("hrnet_w18_small_v1")
    assert count_conv_macs(on_meta, (96, 72)) == count_conv_macs(net, (96, 72))


def test_conv_macs_follow_the_conv_rule():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4))
    # 8×8 outputs: 64 × 8 × (3·3·3) + 64 × 8 × (2·3·3)
    assert count_conv_macs(net, (16, 16)) == 64 * 8 * 27 + 64 * 8 * 18


def test_measure_latency_counts_calls_and_orders_percentiles():
    calls = []
    lat = measure_latency(lambda x: calls.append(x.sum()), torch.ones(4), warmup=2, repeats=5)
    assert isinstance(lat, Latency)
    assert len(calls) == 7
    assert 0 <= lat.p50_ms <= lat.p95_ms
    assert (lat.device, lat.threads, lat.repeats) == ("cpu", torch.get_num_threads(), 5)


def test_measure_latency_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(lambda x: x, torch.ones(1), repeats=0)


def test_cli_prints_a_markdown_table(capsys):
    main(["--models", "hrnet_w18_small_v1", "--hw", "64", "--latency", "--warmup", "0", "--repeats", "2"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model"))
    for column in ["params", "tensors", "conv GMACs", "total GMACs", "GFLOPs (2×MACs)", "fp32 MiB", "CPU p50 ms"]:
        assert column in header
    row = next(line for line in out.splitlines() if line.startswith("| hrnet_w18_small_v1"))
    assert "1,536,481" in row and "| 435 " in row and "—" not in row


def test_matmul_with_a_vector_is_counted():
    class Projection(nn.Module):
        def forward(self, x):  # B×3×H×W → B×3: (B·3)×(H·W) matrix @ (H·W) vector
            return x.flatten(2) @ torch.ones(x.shape[-2] * x.shape[-1])

    assert model_cost(Projection(), (4, 5)).total_gmacs * 1e9 == pytest.approx(3 * 20)
