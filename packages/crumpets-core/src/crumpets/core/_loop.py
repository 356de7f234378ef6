"""The iterator of one ``for`` loop over a loader. One thread at a time takes batches from
it (it may be handed to another thread); a second thread that asks while one is taking a
batch gets an error, and so does a loop that a newer loop over the loader, or the end of
the ``with`` block, has ended: never a share of the batches or a silently shortened epoch.
"""

from __future__ import annotations

import threading
from collections.abc import Generator

__all__ = ["Loop"]

BUSY = (
    "another thread is taking a batch from this loader right now: a loader serves one loop "
    "at a time; give each thread a loader of its own"
)


class Loop:
    """The batches of one ``for`` loop over a loader, while it runs."""

    def __init__(self, batches: Generator[tuple[int, list], None, None]):
        self.batches = batches
        self._taking = threading.Lock()
        self.ended: str | None = None  # why the loop gives no more batches, once it is ended

    def __iter__(self) -> Loop:
        return self

    def __next__(self) -> tuple[int, list]:
        if not self._taking.acquire(blocking=False):
            raise RuntimeError(BUSY)
        try:
            if self.ended is not None:
                raise RuntimeError(self.ended)
            return next(self.batches)
        finally:
            self._taking.release()

    def end(self, why: str, force: bool = False) -> None:
        """End the loop: its next ``next()`` raises RuntimeError(``why``).

        Raises:
            RuntimeError: if another thread is taking a batch from it right now, unless
                ``force`` (the loader stops): then that thread's next call raises.
        """
        if not self._taking.acquire(blocking=False):
            if not force:
                raise RuntimeError(BUSY)
            self.ended = why
            return
        try:
            self.ended = why
            self.batches.close()
        finally:
            self._taking.release()
