"""Sharded datasets: a folder or object-store prefix of dataset files and an ``index.json``.

A sharded dataset is

- ``index.json``: ``{"format": "crumpets.shards", "version": 1, "samples": N, "shards":
  [...]}``, each shard an object with its ``name``, ``samples`` (records), ``bytes`` (of
  its data file) and ``files``: for each of its files' suffixes (``.msgpack``,
  ``.msgpack.offsets``, ``.msgpack.keys``, ...) the file's ``bytes`` and ``sha256``;
- for each shard, a complete datadings-layout file set ``NAME.msgpack``,
  ``NAME.msgpack.offsets`` ... (see :mod:`crumpets.core.dataset`), so that every shard
  also opens in :class:`~crumpets.core.dataset.Reader` and in datadings.

Samples are numbered across shards, in the index's order. :class:`ShardWriter` writes
one, :class:`ShardedReader` reads one from a local folder or any fsspec URL; ``crumpets
pack SRC OUT --shard-size 512MB`` packs a folder tree or a dataset file into one.

Example:
    >>> with ShardWriter("train-shards", shard_size="256MB") as writer:
    ...     for sample in samples:
    ...         writer.write(sample)
    >>> loader = TurboDataLoader(ShardedReader("s3://bucket/train-shards",
    ...     cache_dir="/scratch/cache", cache_limit="50GB"), 256, worker, nworkers=8,
    ...     shuffle=True, seed=0)
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._index_files import OFFSETS_SUFFIX, SUFFIX
from ._prefetch import Prefetcher
from ._remote import Store, is_url
from ._shard_cache import ShardCache
from ._shard_format import INDEX, READ_FILES, ShardWriter, parse_size, read_index
from .dataset import Reader
from .shm import unpack

__all__ = ["INDEX", "ShardWriter", "ShardedReader", "parse_size", "read_index"]

# ---------------------------------------------------------------- reader


class ShardedReader:
    """Random access to a sharded dataset in a local folder or at an fsspec URL.

    Give it to :class:`~crumpets.core.dataloader.TurboDataLoader` as its iterable: the
    loader's epoch plan then orders samples shard by shard (shards shuffled, samples
    shuffled within a window of ``window`` shards, each rank a contiguous part; see
    :meth:`crumpets.core.plan.EpochPlan.order`), its workers read the samples themselves
    (only indices cross the socket), and with ``cache_dir`` the loader fetches the shards
    of the coming batches ahead of them.

    - A local folder (a path, not a URL) is read in place, each shard memory-mapped.
    - A URL (``s3://``, ``gs://``, ``https://``, ``file://``, any fsspec protocol) with
      ``cache_dir``: shards are downloaded whole into the cache (once, by whichever process
      comes first; checked against index.json's SHA-256; evicted least recently used beyond
      ``cache_limit``, never while in use or scheduled) and read from there.
    - A URL without ``cache_dir``: each batch's samples are read by byte ranges (adjacent
      records in one request), the shard's offsets once per process.

    Storage clients are made in the process that uses them, never inherited across fork.
    Remote calls are retried with backoff (at most 5 tries in 15 s, each cancelled when the
    time is up); then an ``OSError`` names the file's URL and the cause, and the loader
    raises it in the main process. Give each loader a ShardedReader of its own: the reader
    fetches ahead for one loader at a time.

    Args:
        url: the dataset's folder or URL (the location of its ``index.json``).
        cache_dir: a local folder for whole shards; None reads byte ranges.
        cache_limit: bytes the cache may hold (int or ``"50GB"``); None for no limit. It
            must hold the ``window`` largest shards.
        storage_options: keyword arguments for the fsspec file system (s3fs: ``key``,
            ``secret``, ``endpoint_url``, ``client_kwargs``, ``config_kwargs``).
        window: shards a shuffled pass mixes samples from (see the loader's plan).
        prefetch: shards fetched ahead of the batch being submitted (with ``cache_dir``).

    Raises:
        FileNotFoundError: there is no index.json at ``url``.
        ValueError: the index is malformed, or ``cache_limit`` is smaller than the window.
        ImportError: the URL's protocol needs an extra (``crumpets-core[s3]``, ``[gcs]``).
    """

    read_in_workers = True

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        storage_options: dict[str, Any] | None = None,
        window: int = 4,
        prefetch: int = 2,
    ) -> None:
        self.url = os.fspath(url)
        self.remote = is_url(self.url)
        for name, value, low in (("window", window, 1), ("prefetch", prefetch, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.window = window
        self.prefetch = prefetch
        if not self.remote and (cache_dir is not None or storage_options):
            raise ValueError(
                f"{self.url} is a local folder, read in place: cache_dir and storage_options "
                "are for URLs (s3://, gs://, https://, file://)"
            )
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.cache_limit = None if cache_limit is None else parse_size(cache_limit, "cache_limit")
        self.storage_options = dict(storage_options or {})
        self._store = Store(self.url, self.storage_options) if self.remote else None
        where = f"{self.url.rstrip('/')}/{INDEX}"
        if self._store is not None:
            data = self._store.cat(INDEX)
        else:
            with open(os.path.join(self.url, INDEX), "rb") as f:
                data = f.read()
        self._set_index(read_index(data, where))
        if self.cache_dir is not None and self.cache_limit is not None:
            need = sum(sorted((self._cached_bytes(s) for s in self.shards), reverse=True)[:window])
            if self.cache_limit < need:
                raise ValueError(
                    f"cache_limit={self.cache_limit} bytes is smaller than the window: its "
                    f"{window} largest shards take {need} bytes; raise cache_limit or lower "
                    "window"
                )

    def _set_index(self, index: dict[str, Any]) -> None:
        self.index = index
        self.shards: list[dict[str, Any]] = index["shards"]
        self.shard_sizes = tuple(int(s["samples"]) for s in self.shards)
        self._ends = np.cumsum(self.shard_sizes, dtype=np.int64)
        self._open: OrderedDict[int, Any] = OrderedDict()  # shard -> Reader (and lock)
        self._offsets: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache: ShardCache | None = None
        self._prefetcher: Prefetcher | None = None
        _READERS.add(self)

    def _forget(self) -> None:
        # in a forked child: the parent's open shards hold their locks through descriptors
        # the child shares (keeping them from eviction while it lives); its prefetcher's
        # thread does not exist here
        for reader, fd in self._open.values():
            reader.close()
            if fd is not None:
                os.close(fd)
        self._open.clear()
        self._prefetcher = None

    @staticmethod
    def _cached_bytes(shard: dict[str, Any]) -> int:
        return sum(shard["files"][s]["bytes"] for s in READ_FILES)

    @property
    def nbytes(self) -> int:
        """Bytes of the shards' data files."""
        return sum(int(s["bytes"]) for s in self.shards)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def shard_of(self, indices: Any) -> np.ndarray:
        """The shard number of each sample index."""
        return np.searchsorted(self._ends, np.asarray(indices, dtype=np.int64), side="right")

    def shard_url(self, shard: int) -> str:
        """Where shard ``shard``'s data file is."""
        name = self.shards[shard]["name"] + SUFFIX
        return f"{self.url.rstrip('/')}/{name}" if self.remote else os.path.join(self.url, name)

    # ---------------------------------------------------------------- reading
    def __getitem__(self, index: int) -> bytes:
        """Record ``index`` as msgpack bytes.

        Raises:
            IndexError: ``index`` is negative or not below ``len(self)``.
        """
        i = operator.index(index)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {self.url} of length {len(self)}")
        return self.read_batch([i])[0]

    def get(self, index: int) -> dict[str, Any]:
        """Record ``index`` unpacked into a dict."""
        return unpack(self[index])

    def read_batch(self, indices: Sequence[int]) -> list[bytes]:
        """The records of ``indices`` as msgpack bytes, each shard's read together (what a
        loader's worker calls for a batch)."""
        indices = [operator.index(i) for i in indices]
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"index {i} out of range for {self.url} of length {len(self)}")
        shards = self.shard_of(indices)
        starts = self._ends - np.asarray(self.shard_sizes)
        out: list[bytes] = [b""] * len(indices)
        for shard in dict.fromkeys(shards.tolist()):
            where = np.flatnonzero(shards == shard)
            local = (np.asarray(indices)[where] - starts[shard]).tolist()
            if self.remote and self.cache_dir is None:
                records = self._read_ranges(shard, local)
            else:
                reader = self._reader(shard)
                records = [reader[j] for j in local]
            for k, record in zip(where.tolist(), records):
                out[k] = record
        return out

    def _reader(self, shard: int) -> Reader:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard][0]
        # a batch reads from two windows at most: keep those open (and held, in a cache)
        while len(self._open) >= 2 * self.window:
            _, (old, fd) = self._open.popitem(last=False)
            old.close()
            if fd is not None:
                os.close(fd)
        fd = None
        if self.remote:
            cache = self._shard_cache()
            fd = cache.acquire(self.shards[shard])
            path = cache.path(self.shards[shard]) + SUFFIX
        else:
            path = os.path.join(self.url, self.shards[shard]["name"] + SUFFIX)
        try:
            reader = Reader(path)
            if len(reader) != self.shard_sizes[shard]:
                raise ValueError(
                    f"{path} holds {len(reader)} records, index.json says "
                    f"{self.shard_sizes[shard]}: the shard is not the index's"
                )
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        self._open[shard] = (reader, fd)
        return reader

    def _shard_cache(self) -> ShardCache:
        if self._cache is None:
            assert self._store is not None and self.cache_dir is not None
            self._cache = ShardCache(self._store, self.cache_dir, self.cache_limit, READ_FILES)
            self._cache.sweep()
        return self._cache

    def _read_ranges(self, shard: int, local: list[int]) -> list[bytes]:
        assert self._store is not None
        offsets = self._shard_offsets(shard)
        wanted = sorted(set(local))
        # adjacent records in one range
        runs: list[list[int]] = []
        for j in wanted:
            if runs and runs[-1][1] == j:
                runs[-1][1] = j + 1
            else:
                runs.append([j, j + 1])
        starts = [int(offsets[a]) for a, _ in runs]
        ends = [int(offsets[b]) for _, b in runs]
        name = self.shards[shard]["name"] + SUFFIX
        parts = self._store.cat_ranges(name, starts, ends)
        records = {}
        for (a, b), start, part in zip(runs, starts, parts):
            if len(part) != int(offsets[b]) - start:
                raise OSError(
                    f"{self._store.path(name)}: got {len(part)} bytes for records {a}..{b - 1}, "
                    f"expected {int(offsets[b]) - start}: the object is not the index's"
                )
            for j in range(a, b):
                records[j] = part[int(offsets[j]) - start : int(offsets[j + 1]) - start]
        return [records[j] for j in local]

    def _shard_offsets(self, shard: int) -> np.ndarray:
        if shard in self._offsets:
            self._offsets.move_to_end(shard)
            return self._offsets[shard]
        assert self._store is not None
        name = self.shards[shard]["name"] + SUFFIX + OFFSETS_SUFFIX
        data = self._store.cat(name)
        expected = self.shards[shard]["files"][SUFFIX + OFFSETS_SUFFIX]["sha256"]
        if hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(
                f"{self._store.path(name)}: SHA-256 differs from index.json's: the shard is "
                "corrupt (or the index is not this shard's)"
            )
        offsets = np.frombuffer(data, dtype=">u8")
        if len(offsets) != self.shard_sizes[shard] + 1:
            raise ValueError(f"{self._store.path(name)}: not {self.shard_sizes[shard] + 1} offsets")
        if len(self._offsets) >= 256:
            self._offsets.popitem(last=False)
        self._offsets[shard] = offsets
        return offsets

    # ---------------------------------------------------------------- the loader's hooks
    def schedule(self, plan: Any, b: int) -> None:
        """The loader submits batch ``b`` of ``plan``: fetch the shards of the coming
        batches into the cache, ``prefetch`` shards ahead, and hold them there until the
        plan passes them. Does nothing without ``cache_dir``."""
        if self.cache_dir is None or not self.remote:
            return
        if self._prefetcher is None:
            self._prefetcher = Prefetcher(
                self._shard_cache(), self.shards, self.shard_of, self.prefetch
            )
        self._prefetcher.advance(plan, b)

    def unschedule(self) -> None:
        """The loader stopped: stop fetching ahead, let the held shards go, and remove
        the temporaries of downloads its stopped workers left."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        if self._cache is not None:
            self._cache.sweep()

    def close(self) -> None:
        """Close open shards, stop fetching; the reader opens shards again when read."""
        self.unschedule()
        while self._open:
            _, (reader, fd) = self._open.popitem()
            reader.close()
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> ShardedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # the index travels, so every process reads the same version; no open file,
        # client or thread does
        keep = ("url", "remote", "window", "prefetch", "cache_dir", "cache_limit")
        state = {name: getattr(self, name) for name in keep}
        state.update(storage_options=self.storage_options, store=self._store, index=self.index)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        index = state.pop("index")
        self._store = state.pop("store")
        self.__dict__.update(state)
        self._set_index(index)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"ShardedReader({self.url!r}, shards={len(self.shards)}, len={len(self)})"


_READERS: weakref.WeakSet[ShardedReader] = weakref.WeakSet()


def _forget_after_fork() -> None:
    for reader in list(_READERS):
        reader._forget()


os.register_at_fork(after_in_child=_forget_after_fork)
