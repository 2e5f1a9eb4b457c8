"""The records do not depend on the machine's thread count: an evaluation runs at its own `threads` (default 1).

The thread count changes the order of floating-point sums inside the convolutions, so a shipped student run at 2
threads writes a different BCE in the 6th decimal than at 1: the run must not inherit the caller's setting.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_world import BrightLocalizer, CellSDecoder, make_dataset, torchrun

from harness.data.reference import ReferenceSetConfig, reference_set
from harness.pipeline.batched import NamedLocalizer
from harness.run import EvalConfig, EvalError, Models, ModelSpec, evaluate

ROOT = Path(__file__).resolve().parent.parent
STUDENT = ROOT / "students" / "student_pidnet_s" / "weights.pt"

# The process sets its ambient thread count first (as a big machine's default would), then runs the CLI.
ENTRY = """
import sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from harness.eval import main
sys.exit(main(sys.argv[2:]))
"""



def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_records_do_not_depend_on_the_ambient_thread_count_or_torchrun(tmp_path):
    data = reference_set(ReferenceSetConfig(n_marked=2, n_clean=1), tmp_path / "data")
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    args = ["--localizer", f"student_pidnet_s:pidnet_s={STUDENT}", "--sdecoder", "reference_sdecoder",
            "--data", str(data), "--tilts", "-2,3", "--bn-mode", "eval", "--chunk-size", "1", "--workers", "0",
            "--quiet"]
    records = {}
    for ambient in (1, 2):
        done = _run([sys.executable, str(entry), str(ambient), *args, "--out", str(tmp_path / f"a{ambient}")], ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        records[ambient] = (tmp_path / f"a{ambient}" / "records.csv").read_bytes()
    command = [*torchrun(entry), "2"]
    done = _run([*command, *args, "--out", str(tmp_path / "torchrun")], ROOT)
    assert done.returncode == 0, done.stderr[-3000:]

    assert records[2] == records[1]
    assert (tmp_path / "torchrun" / "records.csv").read_bytes() == records[1]
    assert len(records[1].decode().splitlines()) == 1 + 3 * 2 * 2  # header + photos × tilts × (student, oracle)
    doc = json.loads((tmp_path / "a2" / "summary.json").read_text())
    assert doc["provenance"]["torch_threads"] == 1 and doc["provenance"]["config"]["threads"] == 1
    assert json.loads((tmp_path / "a2" / "run.json").read_text())["config"]["threads"] == 1


def _models() -> Models:
    return Models([NamedLocalizer("bright", "teacher", BrightLocalizer())], CellSDecoder(), {"bright": None})


def test_threads_apply_during_the_run_are_restored_and_belong_to_its_identity(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", n_marked=1, n_clean=0)
    cfg = EvalConfig(localizers=(ModelSpec("bright", role="teacher"),), sdecoder=ModelSpec("cells"), data=str(data),
                     tilts=(0.0,), threads=2)
    seen = []
    forward = BrightLocalizer.forward
    monkeypatch.setattr(BrightLocalizer, "forward", lambda self, x: (seen.append(torch.get_num_threads()),
                                                                     forward(self, x))[1])
    torch.set_num_threads(1)
    evaluate(cfg, tmp_path / "run", models=_models(), progress=False)
    assert set(seen) == {2} and torch.get_num_threads() == 1  # the run's count inside, the caller's after
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["provenance"]["torch_threads"] == 2
    with pytest.raises(EvalError, match="different run"):  # another thread count may change an answer
        evaluate(replace(cfg, threads=1), tmp_path / "run", models=_models(), progress=False)
    assert torch.get_num_threads() == 1  # restored after a failure too
    with pytest.raises(EvalError, match="threads"):
        replace(cfg, threads=0)
