"""The loader's prefetcher: fetches the shards of the coming batches into the shard cache.

The plan is known ahead, so this is exact prefetch, not guessing: as the loader submits
batch ``b``, the shards of ``b`` and of the batches after it, up to ``depth`` shards beyond
``b``'s own, are scheduled; a thread of the loader's process fetches them in that order and
holds each (its lock shared, so no eviction takes it) until the plan has passed it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ._remote import DEADLINE, MIN_ATTEMPT
from ._shard_cache import ShardCache

__all__ = ["Prefetcher"]


class Prefetcher:
    """Fetches the shards the coming batches need, in a thread of the loader's process,
    and holds them (their locks shared) while they are scheduled.

    Args:
        cache: the cache to fetch into.
        shards: the dataset's shards (index.json's entries).
        shard_of: sample indices -> shard numbers.
        depth: shards to fetch beyond those of the batch being submitted.
    """

    def __init__(
        self,
        cache: ShardCache,
        shards: list[dict[str, Any]],
        shard_of: Callable[[Any], Any],
        depth: int,
    ) -> None:
        self.cache = cache
        self.shards = shards
        self.shard_of = shard_of
        self.depth = depth
        self._walked: list[tuple[int, list[int]]] = []  # (batch, its shards), from the last
        self._plan: Any = None
        self._held: dict[int, int] = {}  # shard -> lock fd
        self._wanted: list[int] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.errors: dict[int, BaseException] = {}

    def advance(self, plan: Any, b: int) -> None:
        """Batch ``b`` of ``plan`` is submitted: schedule the shards of it and of the next
        batches, up to ``depth`` shards beyond its own.

        Raises:
            OSError, ValueError: what fetching a shard raised (after its retries), so that
                the loader's process raises it, naming the shard.
        """
        if self.errors:
            raise next(iter(self.errors.values()))
        if plan is not self._plan:
            self._plan, self._walked = plan, []
        walked = [w for w in self._walked if w[0] >= b]
        if not walked or walked[0][0] != b:
            walked = [(b, self._batch_shards(plan, b))]
        own = set(walked[0][1])
        wanted = list(dict.fromkeys(s for _, shards in walked for s in shards))
        k = walked[-1][0]
        # at most a pass ahead, and never for shards there are not
        while (
            len(wanted) - len(own) < self.depth
            and len(wanted) < len(self.shards)
            and k - b < plan.batches_per_pass
        ):
            k += 1
            shards = self._batch_shards(plan, k)
            walked.append((k, shards))
            wanted.extend(s for s in shards if s not in wanted)
        self._walked = walked
        with self._lock:
            self._wanted = wanted
            for shard in [s for s in self._held if s not in wanted]:
                os.close(self._held.pop(shard))  # passed: evictable again
            self._lock.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="crumpets-prefetch", daemon=True)
            self._thread.start()

    def _batch_shards(self, plan: Any, b: int) -> list[int]:
        return list(dict.fromkeys(self.shard_of(plan.batch(b)[1]).tolist()))

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                todo = [s for s in self._wanted if s not in self._held and s not in self.errors]
                if not todo:
                    self._lock.wait(0.5)
                    continue
                shard = todo[0]
            try:
                fd = self.cache.acquire(self.shards[shard], self._stop)
            except BaseException as exc:  # a worker reading it raises it, with its sample
                self.errors[shard] = exc
                continue
            with self._lock:
                if shard in self._wanted and not self._stop.is_set():
                    self._held[shard] = fd
                else:
                    os.close(fd)

    def close(self, timeout: float = DEADLINE + MIN_ATTEMPT + 5) -> None:
        """Stop fetching and let every held shard go.

        A download stops at its next chunk, or when its call times out (a store that hangs):
        ``timeout`` waits for that, so that it removes its temporaries itself.
        """
        self._stop.set()
        with self._lock:
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for fd in self._held.values():
                os.close(fd)
            self._held.clear()
            self._wanted = []
