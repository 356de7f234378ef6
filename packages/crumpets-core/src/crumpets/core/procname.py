"""Give worker processes readable names in ps, top and htop.

On Linux this sets the kernel's 15-byte thread name (``comm``, shown by
``ps -o comm``, ``top`` and ``/proc/<pid>/comm``) with ``prctl(PR_SET_NAME)``.
The command line (``ps -o args``) is left as it is. Elsewhere both functions do
nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

__all__ = ["getprocname", "setprocname"]

# From <linux/prctl.h>.
_PR_SET_NAME = 15
_PR_GET_NAME = 16
# The kernel keeps 16 bytes including the terminating NUL.
_COMM_LEN = 15


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The running program's symbol table includes libc's (glibc and musl).
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl


def _truncate(name: str) -> bytes:
    # Cut at a character boundary so the name never ends in half a UTF-8 sequence.
    data = name.replace("\0", "").encode("utf-8", "replace")[:_COMM_LEN]
    return data.decode("utf-8", "ignore").encode("utf-8")


def setprocname(name: str) -> bool:
    """Set the name of the calling thread, which names the process when called in its main thread.

    Names longer than 15 bytes are cut. Never raises: naming a process is a
    convenience, so a failure only returns False.

    Args:
        name: the new name, e.g. ``"crumpets-work-3"``.

    Returns:
        True if the name was set, False where that is not supported or failed.
    """
    try:
        prctl = _prctl()
        if prctl is None:
            return False
        buf = ctypes.create_string_buffer(_truncate(str(name)))
        return prctl(_PR_SET_NAME, buf, 0, 0, 0) == 0
    except Exception:
        return False


def getprocname() -> str | None:
    """Return the name of the calling thread as the kernel keeps it.

    Returns:
        The name (at most 15 bytes), or None where that is not supported.
    """
    try:
        prctl = _prctl()
        if prctl is None:
            return None
        buf = ctypes.create_string_buffer(_COMM_LEN + 1)
        if prctl(_PR_GET_NAME, buf, 0, 0, 0) != 0:
            return None
        return buf.value.decode("utf-8", "replace")
    except Exception:
        return None
