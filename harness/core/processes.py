"""Worker processes that end with the process that started them, however it ends (SIGKILL included): the
evaluation's photo workers and the trainer's scene workers."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """worker_init_fn: this worker ends when the process that started it dies, however it dies (SIGKILL included).

    torch's own worker watchdog looks at the parent only between photos, and one photo may take minutes, so a
    killed evaluation could leave its workers decoding on. On Linux the kernel sends SIGKILL to the worker when its
    parent dies (prctl PR_SET_PDEATHSIG); everywhere, a daemon thread also polls the parent's pid once a second.
    """
    parent = os.getppid()  # the evaluation (fork, spawn), or the forkserver that started this worker for it
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog below still applies
            pass
    if os.getppid() != parent or (parent != parent_pid and not _exists(parent_pid)):
        os._exit(1)  # the evaluation died before the death signal was armed
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_parent(parent: int, interval_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    os._exit(1)  # reparented: the process that started this worker is gone
