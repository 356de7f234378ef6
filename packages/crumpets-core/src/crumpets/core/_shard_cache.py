"""A local cache of whole shards, shared by the processes of one machine.

Layout: ``CACHE_DIR/<dataset>/`` per dataset (a hash of its URL), holding for each shard
its data, offsets and keys files named ``<shard>-<checksum>`` (so a rewritten dataset
never meets an old copy), a lock file ``.<entry>.lock`` and, once the copy is complete and
checked, a stamp ``.<entry>.ok``.

- Fetching: a process takes the shard's lock exclusively, downloads to temporaries in
  chunks, checks each file's SHA-256 against the dataset's index, renames them into place
  and writes the stamp last. Another process wanting the shard waits for the lock and
  then finds it complete: a shard is downloaded once, and a partial one is never read.
  Nobody waits for the exclusive lock behind a shared holder (who may hold it until the
  waiter's own batch is done: a deadlock); it is tried, and tried again, without blocking.
- Using: a reader holds the lock shared while it reads the shard (a worker, for the shards
  it has open; the loader's prefetcher, for the shards scheduled next). The lock file's
  modification time is its last use.
- Eviction: when a fetch would take the cache over ``limit`` bytes, the least recently
  used shards whose lock can be taken exclusively at once (in use by nobody, scheduled by
  nobody) are removed, stamp first. What is in use is never removed; if everything is in
  use the cache goes over its limit for a while rather than wait (a wait here could
  deadlock, streaming #417) and says so once.
- A copy changed after it was checked (its stamp records the files' inode, size and
  change time) is checked again, under the shared lock; if its checksum is wrong it is
  removed and the read fails naming the shard.

The cache only ever removes files it named: its stamps, locks' temporaries and shard
files inside ``CACHE_DIR/<dataset>/`` folders.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import random
import re
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from ._remote import Store

__all__ = ["CHUNK", "Prefetcher", "ShardCache"]

CHUNK = 16 << 20  # bytes per ranged GET of a download; a stop is seen between chunks
_TEMP = re.compile(r"^\.(?P<entry>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


def _stat_key(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_ctime_ns]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ShardCache:
    """Whole shards of one dataset in ``cache_dir``, fetched from ``store`` once.

    Args:
        store: where the shards are.
        cache_dir: the cache's folder (shared by datasets and processes).
        limit: bytes the cache may hold (all datasets in ``cache_dir``); None for no limit.
        files: the suffixes of a shard's files to fetch (data, offsets, keys).
    """

    def __init__(
        self, store: Store, cache_dir: str, limit: int | None, files: tuple[str, ...]
    ) -> None:
        self.store = store
        self.root = os.path.abspath(os.fspath(cache_dir))
        key = hashlib.sha256(store.url.encode()).hexdigest()[:16]
        self.dir = os.path.join(self.root, key)
        self.limit = limit
        self.files = files
        self._warned = False
        os.makedirs(self.dir, exist_ok=True)

    # ---------------------------------------------------------------- names
    def entry(self, shard: dict[str, Any]) -> str:
        """The local name of a shard: its name and checksum."""
        return f"{shard['name']}-{shard['files'][self.files[0]]['sha256'][:16]}"

    def path(self, shard: dict[str, Any]) -> str:
        """The local path of a shard's data file's name without its suffix."""
        return os.path.join(self.dir, self.entry(shard))

    def _hidden(self, entry: str, what: str) -> str:
        return os.path.join(self.dir, f".{entry}.{what}")

    # ---------------------------------------------------------------- using
    def acquire(self, shard: dict[str, Any], stop: threading.Event | None = None) -> int:
        """Make sure the shard is in the cache, complete and checked; return a file
        descriptor holding its lock shared (close it to let the shard go).

        Args:
            shard: the shard's entry in index.json.
            stop: set it to abandon a download between chunks (InterruptedError).

        Raises:
            OSError: the download failed (naming the shard's URL and the cause).
            ValueError: a file's checksum is wrong (naming the shard; the copy is removed).
        """
        entry = self.entry(shard)
        fd = os.open(self._hidden(entry, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for _ in range(8):  # evicted between checks: fetch again, a few times at most
                # Shared: waits while someone fetches the shard (exclusive), never longer.
                fcntl.flock(fd, fcntl.LOCK_SH)
                state = self._state(entry)
                if state == "changed":  # a read-only check: others may go on reading it
                    self._check_again(shard, entry)  # raises if the copy is bad (removed)
                    state = "ok"
                if state == "ok":
                    os.utime(fd)  # last use, for eviction
                    return fd
                fcntl.flock(fd, fcntl.LOCK_UN)
                if self._lock_to_fetch(fd, entry, stop) and self._state(entry) == "missing":
                    self._fetch(shard, entry, stop)
                # then LOCK_SH above turns the exclusive lock into a shared one, leaving
                # (next to) no gap in which another's eviction could take it
            raise OSError(
                errno.EAGAIN,
                f"{self.store.path(shard['name'])}: evicted from the cache "
                "again and again while being opened; raise cache_limit",
            )
        except BaseException:
            os.close(fd)
            raise

    def _lock_to_fetch(self, fd: int, entry: str, stop: threading.Event | None) -> bool:
        """Take the shard's lock exclusively, to fetch it: True once held; False when a
        complete copy turned up meanwhile (the lock is then not held).

        Never a blocking wait for the exclusive lock: whoever holds the lock shared holds
        it until the batch that reads the shard is done (a worker, or the loader's
        prefetcher for a scheduled shard), and that batch may be the one waiting here:
        a deadlock. So: try it, and else wait (shared) for a fetch under way, look
        whether the copy is complete now, and try again a little later.
        """
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits for a fetch under way
            state = self._state(entry)
            fcntl.flock(fd, fcntl.LOCK_UN)
            if state != "missing":
                return False
            if stop is not None and stop.is_set():
                raise InterruptedError(f"waiting to fetch {entry} into {self.dir} stopped")
            # held shared, yet not complete: others are looking at it too, or hold a copy
            # whose files were removed under them; jittered, so that one of them goes first
            time.sleep(random.uniform(0, delay))
            delay = min(2 * delay, 0.05)

    def _state(self, entry: str) -> str:
        """ "ok", "missing" or "changed" (complete, but altered since it was checked)."""
        try:
            with open(self._hidden(entry, "ok")) as f:
                stamp = json.load(f)
            now = {suffix: _stat_key(os.path.join(self.dir, entry + suffix)) for suffix in stamp}
        except (OSError, ValueError):
            return "missing"
        return "ok" if now == stamp else "changed"

    # ---------------------------------------------------------------- fetching
    def _fetch(self, shard: dict[str, Any], entry: str, stop: threading.Event | None) -> None:
        # under the shard's exclusive lock: nobody else writes or reads its files
        self._remove_temps(entry)
        self._remove(entry)
        self.make_room(sum(shard["files"][s]["bytes"] for s in self.files))
        temps = []
        try:
            for suffix in self.files:
                temp = self._hidden(entry + suffix, f"tmp-{os.getpid()}-{secrets.token_hex(4)}")
                temps.append(temp)
                self._download(shard, suffix, temp, stop)
            stamp = {}
            for suffix, temp in zip(self.files, temps):
                final = os.path.join(self.dir, entry + suffix)
                os.replace(temp, final)
                stamp[suffix] = _stat_key(final)
            self._write_stamp(entry, stamp)
        except BaseException:
            for temp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            raise

    def _download(
        self, shard: dict[str, Any], suffix: str, temp: str, stop: threading.Event | None
    ) -> None:
        name = shard["name"] + suffix
        size = shard["files"][suffix]["bytes"]
        digest = hashlib.sha256()
        with open(temp, "xb") as out:
            for start in range(0, size, CHUNK):
                if stop is not None and stop.is_set():
                    raise InterruptedError(f"download of {self.store.path(name)} stopped")
                end = min(size, start + CHUNK)
                data = self.store.cat(name, start, end)
                if len(data) != end - start:
                    raise OSError(
                        f"{self.store.path(name)}: got {len(data)} bytes for bytes "
                        f"{start}..{end}: the object is not the size the index records"
                    )
                digest.update(data)
                out.write(data)
            os.fsync(out.fileno())
        expected = shard["files"][suffix]["sha256"]
        if digest.hexdigest() != expected:
            raise ValueError(
                f"{self.store.path(name)}: SHA-256 {digest.hexdigest()} differs from "
                f"{expected} in the dataset's index.json: the shard is corrupt (or the index "
                "is not this shard's)"
            )

    def _check_again(self, shard: dict[str, Any], entry: str) -> None:
        stamp = {}
        for suffix in self.files:
            path = os.path.join(self.dir, entry + suffix)
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    digest.update(block)
            if digest.hexdigest() != shard["files"][suffix]["sha256"]:
                self._remove(entry)
                raise ValueError(
                    f"{path}: the cached copy of {self.store.path(shard['name'] + suffix)} "
                    "changed after it was downloaded and its SHA-256 no longer matches "
                    "index.json; it was removed and is downloaded again on the next read"
                )
            stamp[suffix] = _stat_key(path)
        self._write_stamp(entry, stamp)

    def _write_stamp(self, entry: str, stamp: dict[str, list[int]]) -> None:
        temp = self._hidden(entry + ".ok", f"tmp-{os.getpid()}-{secrets.token_hex(4)}")
        with open(temp, "x") as f:
            json.dump(stamp, f)
        os.replace(temp, self._hidden(entry, "ok"))

    def _remove(self, entry: str) -> None:
        # the stamp first: a copy without its stamp is not complete for anyone
        files = [os.path.join(self.dir, entry + suffix) for suffix in self.files]
        for path in (self._hidden(entry, "ok"), *files):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _remove_temps(self, entry: str) -> None:
        # a killed process's temporaries of this shard (we hold its lock: no live writer)
        for name in os.listdir(self.dir):
            match = _TEMP.match(name)
            if match and match["entry"].startswith(entry):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, name))

    # ---------------------------------------------------------------- eviction
    def _entries(self) -> Iterator[tuple[str, str, float, int]]:
        """(folder, entry, last use, bytes) of every complete shard in the cache."""
        for folder in os.scandir(self.root):
            if not folder.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(folder.path):
                name = item.name
                if not (name.startswith(".") and name.endswith(".ok")):
                    continue
                entry = name[1:-3]
                try:
                    used = os.stat(os.path.join(folder.path, f".{entry}.lock")).st_mtime
                    with open(item.path) as f:
                        suffixes = list(json.load(f))
                    size = sum(
                        os.stat(os.path.join(folder.path, entry + s)).st_size for s in suffixes
                    )
                except (OSError, ValueError):
                    continue  # removed meanwhile
                yield folder.path, entry, used, size

    def make_room(self, nbytes: int) -> None:
        """Evict least recently used shards nobody uses until ``nbytes`` more fit."""
        if self.limit is None:
            return
        entries = sorted(self._entries(), key=lambda e: e[2])
        total = sum(e[3] for e in entries)
        for folder, entry, _, size in entries:
            if total + nbytes <= self.limit:
                return
            if self._evict(folder, entry):
                total -= size
        if total + nbytes > self.limit and not self._warned:
            self._warned = True
            warnings.warn(
                f"the shard cache {self.root} holds {total} bytes in shards that are in use "
                f"or scheduled; fetching {nbytes} more goes over cache_limit={self.limit}",
                ResourceWarning,
                stacklevel=2,
            )

    @staticmethod
    def _evict(folder: str, entry: str) -> bool:
        lock = os.path.join(folder, f".{entry}.lock")
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # in use or scheduled by someone
            stamp = os.path.join(folder, f".{entry}.ok")
            try:
                with open(stamp) as f:
                    suffixes = list(json.load(f))
            except (OSError, ValueError):
                return False
            os.unlink(stamp)
            for suffix in suffixes:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, entry + suffix))
            return True
        finally:
            os.close(fd)

    def cached(self, shard: dict[str, Any]) -> bool:
        """Whether the shard is in the cache, complete (for tests and ``info``)."""
        return self._state(self.entry(shard)) != "missing"

    def sweep(self) -> None:
        """Remove temporaries that processes no longer alive left in this dataset's folder."""
        for name in os.listdir(self.dir):
            match = _TEMP.match(name)
            if match and not _pid_alive(int(match["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, name))


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

    def close(self, timeout: float = 5.0) -> None:
        """Stop fetching and let every held shard go."""
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
