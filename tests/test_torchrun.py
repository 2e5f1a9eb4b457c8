"""`torchrun --nproc_per_node 2 -m harness.eval` (gloo, CPU) writes the same records as one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tiny_world import make_dataset, torchrun

TESTS = Path(__file__).resolve().parent

# The entry point of every process: registers the tiny models (in that process only), then runs the CLI.
ENTRY = """
import sys
sys.path.insert(0, {tests!r})
from harness.models.registry import register_model
import tiny_world

@register_model("localizer")
def tiny_bright(**kw):
    return tiny_world.BrightLocalizer()

@register_model("localizer")
def tiny_bright_coarse(**kw):
    return tiny_world.BrightLocalizer(bias=0.5, stride=4)

@register_model("sdecoder")
def tiny_cells(**kw):
    return tiny_world.CellSDecoder()

from harness.eval import main
sys.exit(main())
"""



def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process: the same arithmetic
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_two_processes_write_the_records_of_one(tmp_path):
    data = make_dataset(tmp_path / "data", n_marked=3, n_clean=1)
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY.format(tests=str(TESTS)))
    args = ["--localizer", "tiny_bright", "--localizer", "tiny_bright_coarse", "--sdecoder", "tiny_cells",
            "--data", str(data), "--tilts", "-1,2", "--chunk-size", "1", "--workers", "0", "--quiet"]
    single = _run([sys.executable, str(entry), *args, "--out", str(tmp_path / "one")], tmp_path)
    assert single.returncode == 0, single.stderr
    command = [*torchrun(entry)]
    double = _run([*command, *args, "--out", str(tmp_path / "two")], tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]

    one = (tmp_path / "one" / "records.csv").read_text()
    two = (tmp_path / "two" / "records.csv").read_text()
    assert two == one
    assert len(one.splitlines()) == 1 + 4 * 2 * 3  # header + photos × tilts × (two localizers, oracle)
    assert sorted(p.name for p in (tmp_path / "two" / "parts").glob("chunk-*.csv")) == \
        [f"chunk-{c:05d}.csv" for c in range(4)]
    assert "tiny_bright_coarse" in double.stdout  # rank 0 printed the summary table
