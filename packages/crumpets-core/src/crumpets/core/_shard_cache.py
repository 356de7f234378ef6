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
from collections.abc import Iterator
from typing import Any

from ._remote import DEADLINE, MIN_ATTEMPT, Store

__all__ = ["CHUNK", "FAILED_FOR", "ShardCache"]

# A failed fetch is remembered this long (seconds) in a marker beside the shard: processes
# that waited for it raise its error at once instead of each trying again for DEADLINE
# seconds in turn (with 8 workers, minutes).
FAILED_FOR = DEADLINE + MIN_ATTEMPT
# How long a fetch waits for the exclusive lock of a shard that is missing yet held shared
# (its files removed under its readers) before it gives up, naming the shard.
_WAIT_TO_FETCH = 30.0
# The errors a failure marker keeps the type of (the first that fits).
_REMEMBERED = (FileNotFoundError, PermissionError, ValueError, OSError)
CHUNK = 16 << 20  # bytes per ranged GET of a download; a stop is seen between chunks
_TEMP = re.compile(r"^\.(?P<entry>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


def _stat_key(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_ctime_ns]


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
                self._raise_recent_failure(shard, entry)
                fcntl.flock(fd, fcntl.LOCK_UN)
                if self._lock_to_fetch(fd, entry, stop) and self._state(entry) == "missing":
                    self._raise_recent_failure(shard, entry)
                    try:
                        self._fetch(shard, entry, stop)
                    except (OSError, ValueError) as exc:
                        if not isinstance(exc, InterruptedError):  # stopped, not failed
                            self._remember_failure(entry, exc)
                        raise
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._hidden(entry, "failed"))
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

    def _remember_failure(self, entry: str, exc: BaseException) -> None:
        # under the exclusive lock; written whole, by a rename
        temp = self._hidden(entry + ".failed", f"tmp-{os.getpid()}-{secrets.token_hex(4)}")
        kind = next(k.__name__ for k in _REMEMBERED if isinstance(exc, k))
        with open(temp, "x") as f:
            json.dump({"type": kind, "message": str(exc), "pid": os.getpid()}, f)
        os.replace(temp, self._hidden(entry, "failed"))

    def _raise_recent_failure(self, shard: dict[str, Any], entry: str) -> None:
        """Raise the error of a fetch of this shard that failed less than FAILED_FOR s ago."""
        marker = self._hidden(entry, "failed")
        try:
            age = time.time() - os.stat(marker).st_mtime
            with open(marker) as f:
                failure = json.load(f)
        except (OSError, ValueError):
            return
        if age < FAILED_FOR:
            kinds = {kind.__name__: kind for kind in _REMEMBERED}
            raise kinds.get(failure.get("type"), OSError)(
                f"{failure.get('message')} (process {failure.get('pid')} fetching "
                f"{self.store.path(shard['name'])} {age:.0f} s ago)"
            )

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
        give_up = time.monotonic() + _WAIT_TO_FETCH
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
            if time.monotonic() > give_up:
                raise OSError(
                    errno.EBUSY,
                    f"{os.path.join(self.dir, entry)}: missing from the cache for "
                    f"{_WAIT_TO_FETCH:.0f} s while other processes hold it (its files were "
                    "removed under them?); cannot fetch it again",
                )
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
        """Remove the temporaries of downloads nobody runs (a download holds its shard's
        lock exclusively; liveness by pid would not see other containers' processes)."""
        for name in os.listdir(self.dir):
            match = _TEMP.match(name)
            if not match:
                continue
            entry = match["entry"]
            for suffix in (*self.files, ".ok", ".failed"):
                entry = entry.removesuffix(suffix) if entry.endswith(suffix) else entry
            try:
                fd = os.open(self._hidden(entry, "lock"), os.O_RDWR)
            except FileNotFoundError:
                fd = None  # no lock, no download
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, name))
            except BlockingIOError:
                pass  # a download (or a reader) holds it
            finally:
                if fd is not None:
                    os.close(fd)
