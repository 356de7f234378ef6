"""Every signal crumpets handles, in one place. In the main process: SIGTERM that unwinds
like Ctrl-C while loaders run, and stretches of work that a signal must not cut in two. In
a worker process: :func:`set_worker_signals`, and :data:`STACK_DUMP`, the signal the stall
watchdog sends a worker to have its Python stack written to stderr.

Python runs a signal's handler in the main thread, between two bytecodes of whatever it
is doing. A KeyboardInterrupt that lands between ``fork()`` and the line that records the
new process loses the process: nothing stops it. :func:`deferred_signals` holds such
handlers back while a few lines run and runs them right after, whichever thread received
the signal (blocking the signal in this thread would not do: another thread can receive
it, and the handler still runs here).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["STACK_DUMP", "SIGTERM_GUARD", "SigtermGuard", "deferred_signals", "set_worker_signals"]

STACK_DUMP = signal.SIGUSR1

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Run the block without Python's SIGINT and SIGTERM handlers cutting into it; a signal
    that arrives meanwhile runs its handler (KeyboardInterrupt, SystemExit) once the block
    has ended, so that what the block started is recorded and can be stopped.

    Only Python-level handlers are held back (a default or ignored signal is left to the
    kernel), and only in the main thread, the only one where they run. Keep the block
    short: Ctrl-C waits for it.
    """
    if not _in_main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []
    pid = os.getpid()

    def hold(signum: int, frame: Any) -> None:
        if os.getpid() != pid:
            # a process forked inside the block (a worker that has yet to set its own
            # handlers): the signal is for it, now
            run = held[signal.Signals(signum)]
            signal.signal(signum, run)
            if callable(run):
                run(signum, frame)
            return
        pending.append((signum, frame))

    held: dict[signal.Signals, Any] = {}
    for signum in _DEFERRED:
        handler = signal.getsignal(signum)
        if callable(handler):
            held[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in held.items():
            if signal.getsignal(signum) is hold:  # not replaced inside the block
                signal.signal(signum, handler)
        for number, frame in pending:
            run = held[signal.Signals(number)]
            if callable(run):
                run(number, frame)


class SigtermGuard:
    """While any loader runs, SIGTERM unwinds like Ctrl-C (SystemExit), so each ``with
    loader:`` stops its workers and frees its memory. Installed when the first loader
    starts, the previous handler restored when the last one stops, whatever the order;
    only from the main thread, and only over the default handler (never a user's).

    Loaders enter and leave with a token of their own: leaving twice, or leaving after a
    start that was cut short before it entered, changes nothing.
    """

    def __init__(self) -> None:
        self.running: set[object] = set()  # the tokens of running loaders
        self.previous: Any = None  # the handler to restore; None: not installed

    def enter(self, token: object) -> None:
        self.running.add(token)
        if (
            len(self.running) == 1
            and self.previous is None
            and _in_main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ):
            self.previous = signal.signal(signal.SIGTERM, _raise_exit)

    def leave(self, token: object) -> None:
        self.running.discard(token)
        if not self.running and self.previous is not None and _in_main_thread():
            if signal.getsignal(signal.SIGTERM) is _raise_exit:  # not replaced since
                signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


def _raise_exit(signum: int, frame: Any) -> None:
    # Once only: should something swallow the SystemExit, a second SIGTERM terminates.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


SIGTERM_GUARD = SigtermGuard()


def set_worker_signals() -> None:
    """A worker process's handlers: Ctrl-C is left to the main process (it reaches the
    whole process group, and the main process stops the workers in order), SIGTERM ends
    the worker, and :data:`STACK_DUMP` writes its Python stack to stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        # File descriptor 2, as sys.stderr may have none (pytest, Jupyter).
        faulthandler.register(STACK_DUMP, file=2, all_threads=True)
    except (OSError, ValueError, RuntimeError):
        pass  # no stderr to dump to: stalls are still reported, without a stack
