"""KD against no-KD over seeds: runs grouped by (architecture, distiller or not), mean ± std over seeds."""
from __future__ import annotations

import json

import torch
from tiny_world import make_dataset

from harness.distill.compare import compare
from harness.models.registry import create_model


def _run(root, name, seed, kd):
    run = root / name
    run.mkdir()
    config = {"model": {"name": "hrnet_w18_small_v1", "input_size": 64}, "run": {"seed": seed},
              "distiller": {"type": "ConfigurableDistiller"} if kd else None}
    (run / "config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    torch.save(create_model("hrnet_w18_small_v1").state_dict(), run / "student.pt")
    return run


def test_compare_groups_runs_by_architecture_and_distillation(tmp_path):
    data = make_dataset(tmp_path / "data", n_marked=2, n_clean=0)
    runs = [_run(tmp_path, "w18s_kd_s0", 0, True), _run(tmp_path, "w18s_kd_s1", 1, True),
            _run(tmp_path, "w18s_nokd_s0", 0, False)]
    table = compare(runs, str(data), (0.0,), tmp_path / "eval")
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, KD, no KD
    assert "| hrnet_w18_small_v1 | KD " in lines[2] and "| 2 " in lines[2] and "s0: " in lines[2] and "s1: " in lines[2]
    assert "| no KD " in lines[3] and "± 0.00" in lines[3]
