"""Process tuning, in one place: what crumpets changes in the operating system's defaults
for its worker processes.

How they start (fork where it is safe, spawn elsewhere: :data:`START_METHOD`), their
names in ``ps``/``top``, glibc's malloc told to keep freed memory, and their signal
handlers (:mod:`crumpets.core._signals`) (:func:`tune_worker_process`; ``CRUMPETS_TUNE=0``
in the environment turns the malloc and naming tweaks off). The memory the buffer pool lives in is
:mod:`crumpets.core._memory`'s job.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import sys

from ._signals import set_worker_signals
from .procname import setprocname

__all__ = [
    "START_METHOD",
    "keep_freed_memory",
    "tune_worker_process",
    "workers_are_forked",
]


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit: int = 32 << 20) -> None:
    """Let this process's malloc keep up to ``limit`` bytes of freed memory (glibc; a no-op
    elsewhere). Worker processes call it when they start.

    glibc gives blocks above a (self-adjusting) threshold back to the kernel when they are
    freed, and trims the heap's free top above twice that threshold. A worker that makes
    a few MB of temporaries per sample (decoded pixels and their copies) then page-faults
    all of them in again for every sample: measured on an image worker in a fresh process,
    about 550 page faults and 2.0 instead of 1.05 ms per image. Kept memory is reused by
    the next sample; the idle part stays below ``limit``, and larger blocks still go back.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, limit)
    mallopt(_M_TRIM_THRESHOLD, limit)


# Fork starts workers in milliseconds with the template already in memory; workers are
# forked before the parent creates its zmq context, so no zmq thread is forked. Where
# fork is unavailable or unsafe, spawn pickles the template instead.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"


def workers_are_forked() -> bool:
    """True if worker processes are forked, so they inherit the parent's memory mappings
    (an anonymous shared buffer pool among them); False if they are spawned and attach to
    a named pool. Reads :data:`START_METHOD` when called (tests change it)."""
    return START_METHOD == "fork"


def tune_worker_process(worker_id: int) -> None:
    """What a worker process does to itself when it starts: its signal handlers
    (:func:`crumpets.core._signals.set_worker_signals`: Ctrl-C is left to the main process,
    SIGTERM ends it, SIGUSR1 dumps its stack), ``ps`` shows it as ``crumpets-wN``, malloc
    keeps freed memory (:func:`keep_freed_memory`), and what it
    inherited is never garbage collected here (``gc.freeze``): a storage client's finalizer
    would wait for its parent's event loop, which has no thread in this process (s3fs:
    a second each), and collecting what the worker never uses only copies memory.

    ``CRUMPETS_TUNE=0`` in the environment skips the name and the malloc setting.
    """
    gc.freeze()
    set_worker_signals()
    if os.environ.get("CRUMPETS_TUNE", "1") != "0":
        setprocname(f"crumpets-w{worker_id}")
        keep_freed_memory()
