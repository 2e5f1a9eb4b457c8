"""DataLoader workers end when the evaluation's process dies, however it dies: SIGKILL leaves no worker behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_world import make_dataset

from harness.core import processes

TESTS = Path(__file__).resolve().parent

# The evaluation's process: registers the tiny models, makes every photo take minutes (each worker writes its pid
# first), then runs the CLI with two workers.
ENTRY = """
import os, sys, time
sys.path.insert(0, {tests!r})
from harness.models.registry import register_model
from harness.pipeline import views
import tiny_world

@register_model("localizer")
def tiny_bright(**kw):
    return tiny_world.BrightLocalizer()

@register_model("sdecoder")
def tiny_cells(**kw):
    return tiny_world.CellSDecoder()

def slow_prepare(sample, index, spec):
    open(os.path.join({marks!r}, f"worker-{{os.getpid()}}"), "w").close()
    time.sleep(300)

views.prepare = slow_prepare
from harness.eval import main
sys.exit(main())
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_main_process_is_killed(tmp_path):
    data = make_dataset(tmp_path / "data", n_marked=2, n_clean=0)
    marks = tmp_path / "marks"
    marks.mkdir()
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY.format(tests=str(TESTS), marks=str(marks)))
    main = subprocess.Popen([sys.executable, str(entry), "--localizer", "tiny_bright", "--sdecoder", "tiny_cells",
                             "--data", str(data), "--tilts", "0", "--workers", "2", "--out", str(tmp_path / "out"),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline and main.poll() is None:
            time.sleep(0.1)
        workers = [int(p.name.split("-")[1]) for p in marks.iterdir()]
        assert len(workers) == 2, main.stderr.read().decode()[-3000:] if main.poll() is not None else "no workers"
        assert all(_alive(pid) for pid in workers)
        os.kill(main.pid, signal.SIGKILL)
        main.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [pid for pid in workers if _alive(pid)]
    finally:
        main.kill()
        for pid in [int(p.name.split("-")[1]) for p in marks.iterdir()]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)  # do not leave a sleeping worker behind a failed test
    assert not survivors, f"workers {survivors} outlived the killed evaluation"


def test_a_worker_whose_parent_is_already_gone_exits(monkeypatch):
    armed = []

    def exit_(code):
        raise SystemExit(code)

    monkeypatch.setattr(processes.os, "_exit", exit_)
    libc = type("Libc", (), {"prctl": staticmethod(lambda *args: armed.append(args))})  # not in the test process
    monkeypatch.setattr(processes.ctypes, "CDLL", lambda *a, **kw: libc)
    monkeypatch.setattr(processes.threading, "Thread", lambda **kw: pytest.fail("no watchdog for a dead parent"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with pytest.raises(SystemExit) as exited:
        processes.die_with_parent(int(dead.stdout))  # the evaluation that started this "worker" has ended
    assert exited.value.code == 1
    assert armed == [(1, signal.SIGKILL, 0, 0, 0)] or not sys.platform.startswith("linux")


def test_the_trainers_scene_workers_die_with_the_training_too(monkeypatch):
    from harness.distill import data

    called = []
    monkeypatch.setattr(data, "die_with_parent", lambda parent, worker: called.append((parent, worker)))
    loader = data.make_loader(data.TrainSamples(data.FixedScenes([]), 64), sampler=[], num_workers=1)
    loader.worker_init_fn(3)  # what each worker runs first
    assert called == [(os.getpid(), 3)]
