"""Shared pytest configuration: the --benchmark switch for the suites, and CPU determinism."""
from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness")
    group.addoption("--benchmark", action="store_true", default=False,
                    help="run the suites in full mode (reference evaluation set, tilts -5..+5) instead of quick mode")
    group.addoption("--localizer", action="append", default=None, metavar="[LABEL:]NAME[=CKPT]",
                    help="suites: evaluate this localizer (repeatable) instead of the shipped zoo")
    group.addoption("--sdecoder", default=None, metavar="NAME[=CKPT]",
                    help="suites: secret decoder to use (default: the reference SDecoder)")


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread: on a small shared CPU, OpenMP threads that wait on each other make many-small-op networks
    # (Lite-HRNet) tens of times slower; one thread is also the easiest setting to reproduce. Latencies say so.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
