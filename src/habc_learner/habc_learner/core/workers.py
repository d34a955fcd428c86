"""Worker processes that never outlive the job that started them.

``habc-protocol --jobs N`` runs seeds in a process pool. A pool worker blocked in a long task
does not notice its parent's death, so a job stopped with SIGTERM or SIGKILL (a scheduler's
time limit, ``kill``) used to leave its workers training on, writing into the run's folders.
:func:`worker_pool` starts each worker with the kernel's parent-death signal set (Linux
``prctl(PR_SET_PDEATHSIG, SIGTERM)``); elsewhere the workers behave as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool:
    """In a child: receive SIGTERM when the parent dies; exit now if it already has. Returns
    whether the kernel took the request (Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    ok = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(1)
    return ok


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A spawn-context process pool whose workers die with this process."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
