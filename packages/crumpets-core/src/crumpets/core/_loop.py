"""The iterator of one ``for`` loop over a loader, which only the thread that began the
loop may advance, and only while the loader runs: a second thread gets an error instead
of a share of the batches (or a loop cut short), and an iterator kept past the ``with``
block an error instead of a silent end.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Generator

__all__ = ["Loop"]


class Loop:
    """The iterator of one ``for`` loop over a loader: its batches, for the thread that
    began the loop, while the loader runs."""

    def __init__(self, batches: Generator[tuple[int, list], None, None]):
        self.batches = batches
        self.thread = threading.current_thread()
        self.stopped = False

    def __iter__(self) -> Loop:
        return self

    def __next__(self) -> tuple[int, list]:
        if self.stopped:
            raise RuntimeError(
                "the loader was stopped (its `with` block ended): iterate inside `with loader:`"
            )
        if self.thread is not threading.current_thread():
            raise RuntimeError(
                f"this loop over the loader belongs to thread {self.thread.name}; a loader "
                "serves one loop at a time: give each thread a loader of its own"
            )
        return next(self.batches)

    def running(self) -> bool:
        """True while the loop has batches left and its thread lives."""
        alive = inspect.getgeneratorstate(self.batches) != inspect.GEN_CLOSED
        return alive and self.thread.is_alive()

    def close(self, stopped: bool = False) -> None:
        self.stopped = self.stopped or stopped
        self.batches.close()
