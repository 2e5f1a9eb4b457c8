"""Training under DDP: two gloo processes on CPU train one model (rank 0 writes the run directory)."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_world import free_port

from tests.distill_world import ddp_worker, save_teacher


@pytest.mark.slow
def test_ddp_two_processes_train_the_same_weights(tmp_path):
    ckpt = save_teacher(str(tmp_path / "teacher.pt"))
    out = tmp_path / "run"
    torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), str(out), ckpt), nprocs=2, join=True)
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["step"] == rank1["step"] == 3
    for key, value in rank0["student"].items():
        if "running" not in key and "num_batches" not in key:  # BN statistics are per rank; weights are shared
            torch.testing.assert_close(value, rank1["student"][key])
    last = torch.load(out / "last.pt", weights_only=True)
    for key, value in last["student"].items():
        torch.testing.assert_close(value, rank0["student"][key])
    starts = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"start"' in line]
    assert starts[0]["world_size"] == 2
