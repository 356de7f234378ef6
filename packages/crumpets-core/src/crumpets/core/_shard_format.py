"""The sharded dataset format: ``index.json``, its checks, and :class:`ShardWriter`.

See :mod:`crumpets.core.shards` for the format; this module writes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import numpy as np

from ._index_files import INDEX_SUFFIXES, KEYS_SUFFIX, OFFSETS_SUFFIX, SUFFIX
from .dataset import Writer

__all__ = ["FILES", "INDEX", "READ_FILES", "ShardWriter", "parse_size", "read_index"]

INDEX = "index.json"
FORMAT = "crumpets.shards"
VERSION = 1
# The files of a shard, relative to its name: the data file and the index files.
FILES = (SUFFIX, *(SUFFIX + s for s in INDEX_SUFFIXES))
# What a reader needs of a shard (a cache downloads these): data, offsets, keys.
READ_FILES = (SUFFIX, SUFFIX + OFFSETS_SUFFIX, SUFFIX + KEYS_SUFFIX)

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(size: int | str, name: str = "size") -> int:
    """Bytes from an int or a string like ``"512MB"``, ``"1.5GB"`` or ``"64MiB"``
    (KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB of 1024).

    Raises:
        ValueError: naming ``name``, for anything else or a size below 1.
    """
    if isinstance(size, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", size)
        unit = match[2].upper() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name} must be bytes or a size like '512MB', '1GB', '64MiB', got {size!r}"
            )
        value = int(Decimal(match[1]) * _UNITS[unit])  # exact: 2.01KB is 2010
    elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        value = int(size)
    else:
        raise TypeError(f"{name} must be an int or a str like '512MB', got {size!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1 byte, got {size!r}")
    return value


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def read_index(data: bytes, where: str) -> dict[str, Any]:
    """Parse and check an ``index.json``.

    Args:
        data: its bytes.
        where: its location, for errors.

    Raises:
        ValueError: naming ``where``, for a file that is not a sharded dataset's index.
    """
    try:
        index = json.loads(data)
        if index.get("format") != FORMAT:
            raise ValueError(f"format is {index.get('format')!r}, not {FORMAT!r}")
        if index.get("version") != VERSION:
            raise ValueError(
                f"version {index.get('version')!r}: this crumpets-core reads version "
                f"{VERSION}; a newer crumpets-core may read it"
            )
        shards = index["shards"]
        for shard in shards:
            counts = [shard["samples"], shard["bytes"]]
            counts += [shard["files"][suffix]["bytes"] for suffix in READ_FILES]
            names = [shard["name"], *(shard["files"][suffix]["sha256"] for suffix in READ_FILES)]
            if (
                not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)
                or not all(isinstance(name, str) for name in names)
                or not re.fullmatch(r"[^/\\]+", shard["name"])
            ):
                raise ValueError(f"bad shard entry {shard!r}")
        if sum(int(s["samples"]) for s in shards) != index["samples"]:
            raise ValueError("its shards' samples do not add up to its 'samples'")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{where} is not a sharded dataset's index: {exc}") from None
    return index


# ---------------------------------------------------------------- writer


class ShardWriter:
    """Write samples into a sharded dataset: shards of about ``shard_size`` bytes.

    A shard is closed once its data file holds ``shard_size`` bytes or more (so shards
    are at most one sample larger). Shard names carry a token of this writer
    (``shard-<token>-00000``), and :meth:`close` writes ``index.json`` last, by an atomic
    rename: readers see the previous dataset until then, and the new one after. The
    previous dataset's shards are removed after that. Leaving a ``with`` block by an
    exception, or :meth:`abort`, removes what this writer wrote.

    Args:
        folder: the dataset's folder (made if missing).
        shard_size: bytes per shard, an int or a string like ``"512MB"``.
        overwrite: replace a sharded dataset in ``folder``; otherwise that is an error.
        prefix: the shards' names begin with it.

    Raises:
        FileExistsError: ``folder`` holds an ``index.json`` and ``overwrite`` is False.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        shard_size: int | str,
        overwrite: bool = False,
        prefix: str = "shard",
    ) -> None:
        self.folder = os.fspath(folder)
        self.shard_size = parse_size(shard_size, "shard_size")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
            raise ValueError(f"prefix must be letters, digits, '_', '.' or '-', got {prefix!r}")
        self._index_path = os.path.join(self.folder, INDEX)
        if os.path.exists(self._index_path) and not overwrite:
            raise FileExistsError(f"{self._index_path} exists; pass overwrite=True to replace it")
        os.makedirs(self.folder, exist_ok=True)
        self._prefix = f"{prefix}-{secrets.token_hex(3)}"
        self._writer: Writer | None = None
        self._shards: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._keys)

    def write(self, sample: Mapping[str, Any]) -> int:
        """Append one sample (see :meth:`crumpets.core.dataset.Writer.write`).

        Returns:
            The sample's index in the dataset.

        Raises:
            ValueError: its key was written before (in any shard), or the writer is closed.
        """
        if self._closed:
            raise ValueError(f"write to closed ShardWriter for {self.folder}")
        key = sample.get("key") if isinstance(sample, Mapping) else None
        if isinstance(key, str) and key in self._keys:
            raise ValueError(f"duplicate key {key!r} in {self.folder}")
        if self._writer is None:
            name = f"{self._prefix}-{len(self._shards):05d}"
            self._writer = Writer(os.path.join(self.folder, name))
        self._writer.write(sample)
        self._keys.add(key)  # type: ignore[arg-type]  # Writer.write checked it
        if self._writer.size >= self.shard_size:
            self._finish_shard()
        return len(self._keys) - 1

    def _finish_shard(self) -> None:
        writer, self._writer = self._writer, None
        assert writer is not None
        samples = len(writer)
        if not samples:  # its first sample was refused
            writer.abort()
            return
        writer.close()
        base = writer.path[: -len(SUFFIX)]
        files = {}
        for suffix in FILES:
            path = base + suffix
            files[suffix] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
        self._shards.append(
            {
                "name": os.path.basename(base),
                "samples": samples,
                "bytes": files[SUFFIX]["bytes"],
                "files": files,
            }
        )

    def close(self) -> None:
        """Finish the last shard, publish ``index.json`` and remove the previous dataset's
        shards."""
        if self._closed:
            return
        try:
            if self._writer is not None:
                self._finish_shard()
            index = {
                "format": FORMAT,
                "version": VERSION,
                "samples": len(self._keys),
                "shards": self._shards,
            }
            try:
                with open(self._index_path, "rb") as f:
                    old = json.load(f).get("shards", [])
            except (OSError, ValueError, AttributeError):  # none, or not an index
                old = []
            old = old if isinstance(old, list) else []
            temp = os.path.join(self.folder, f".{INDEX}.{self._prefix}.tmp")
            with open(temp, "w") as f:
                json.dump(index, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self._index_path)
            self._closed = True
        except BaseException:
            self.abort()
            raise
        # after the commit: the previous version's shards (none of them is this writer's)
        kept = {s["name"] for s in self._shards}
        for shard in old:
            name = shard.get("name") if isinstance(shard, dict) else None
            if isinstance(name, str) and "/" not in name and name not in kept:
                self._remove_shard(name)

    def _remove_shard(self, name: str) -> None:
        for suffix in FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.folder, name + suffix))

    def abort(self) -> None:
        """Stop and remove every file this writer wrote; ``index.json`` is not touched."""
        self._closed = True
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for shard in self._shards:
            self._remove_shard(shard["name"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.folder, f".{INDEX}.{self._prefix}.tmp"))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"ShardWriter({self.folder!r}, shards={len(self._shards)}, written={len(self)})"
