"""Read and write dataset files in the datadings layout.

A dataset ``NAME`` is three files:

- ``NAME.msgpack``: the records, concatenated. Each is a msgpack map with a
  ``"key"`` string and the sample's fields (e.g. ``"image"`` bytes, ``"label"``).
- ``NAME.msgpack.offsets``: len+1 big-endian uint64 byte offsets into
  ``NAME.msgpack``; record ``i`` is ``data[offsets[i]:offsets[i + 1]]``, the first
  offset is 0 and the last is the data file's size.
- ``NAME.msgpack.keys``: a msgpack list of the records' keys, in order.

Datasets written by datadings load directly, and the files written here load in
datadings.
"""

from __future__ import annotations

import mmap
import operator
import os
import secrets
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import msgpack
import numpy as np

from .shm import pack, unpack

__all__ = ["Reader", "Writer"]

SUFFIX = ".msgpack"
OFFSETS_SUFFIX = ".offsets"
KEYS_SUFFIX = ".keys"
_OFFSET_DTYPE = np.dtype(">u8")


def data_path(path: str | os.PathLike[str]) -> str:
    """Return the data file's path: ``path`` itself if it ends in .msgpack, else path + .msgpack."""
    path = os.fspath(path)
    return path if path.endswith(SUFFIX) else path + SUFFIX


def _discard(files: list[BinaryIO], paths: list[str]) -> None:
    """Close ``files`` and remove ``paths``, emptying both lists."""
    for file in files:
        file.close()
    files.clear()
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    paths.clear()


class Writer:
    """Write samples to a dataset file in the datadings layout.

    Records go to temporary files next to ``path``, renamed into place by
    :meth:`close` (the data file last), so a crash never leaves a half-written file
    under the final names. Leaving a ``with`` block by an exception, or calling
    :meth:`abort`, removes the temporary files and keeps any existing dataset.

    Args:
        path: ``NAME.msgpack``, or ``NAME`` to which ``.msgpack`` is added.
        overwrite: replace an existing dataset; otherwise that is an error.

    Raises:
        FileExistsError: a file of the dataset exists and ``overwrite`` is False.

    Example:
        >>> with Writer("train") as writer:
        ...     writer.write({"key": "cat/1.jpg", "image": jpeg_bytes, "label": 3})
    """

    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.path = data_path(path)
        self._finals = [self.path + KEYS_SUFFIX, self.path + OFFSETS_SUFFIX, self.path]
        if not overwrite:
            for final in self._finals:
                if os.path.exists(final):
                    raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
        self._temps: list[str] = []
        self._open: list[BinaryIO] = []
        # Temporaries left behind by a Writer that was never closed are removed
        # when it is garbage collected or at interpreter exit.
        weakref.finalize(self, _discard, self._open, self._temps)
        self._file: BinaryIO | None = self._create_temp(self.path)
        self._offsets = [0]
        self._keys: dict[str, None] = {}

    def _create_temp(self, final: str) -> BinaryIO:
        directory, name = os.path.split(os.path.abspath(final))
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        # "xb" creates the file with the umask's permissions, unlike tempfile.mkstemp's 0600.
        file = open(temp, "xb")
        self._temps.append(temp)
        self._open.append(file)
        return file

    def __len__(self) -> int:
        return len(self._keys)

    def write(self, sample: Mapping[str, Any]) -> int:
        """Append one sample.

        Args:
            sample: a mapping with a unique ``"key"`` string and the sample's fields;
                values must be msgpack-able; numpy arrays and scalars are supported.

        Returns:
            The index of the new record.

        Raises:
            ValueError: the sample has no key, its key was written before, or the
                writer is closed.
            TypeError: the sample is not a mapping, its key is not a str, or a value
                cannot be packed.
        """
        if self._file is None:
            raise ValueError(f"write to closed Writer for {self.path}")
        if not isinstance(sample, Mapping):
            raise TypeError(f"sample must be a dict, got {type(sample).__name__}")
        if "key" not in sample:
            raise ValueError(f"sample has no 'key' (fields: {sorted(sample)})")
        key = sample["key"]
        if not isinstance(key, str):
            raise TypeError(f"sample key must be a str, got {type(key).__name__}: {key!r}")
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in {self.path}")
        data = pack(dict(sample))
        self._file.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self._keys[key] = None
        return len(self._keys) - 1

    def close(self) -> None:
        """Finish the dataset: write offsets and keys, and rename all files into place."""
        if self._file is None:
            return
        try:
            _sync_close(self._file)
            self._file = None
            with self._create_temp(self.path + OFFSETS_SUFFIX) as f:
                f.write(np.asarray(self._offsets, dtype=_OFFSET_DTYPE).tobytes())
                _sync(f)
            with self._create_temp(self.path + KEYS_SUFFIX) as f:
                f.write(msgpack.packb(list(self._keys), use_bin_type=True))
                _sync(f)
            # Data file last: once NAME.msgpack exists under its final name (and no
            # older dataset was overwritten), its offsets and keys are complete.
            data_temp, offsets_temp, keys_temp = self._temps
            for temp, final in zip((keys_temp, offsets_temp, data_temp), self._finals):
                os.replace(temp, final)
            self._temps.clear()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop writing and remove the temporary files; the final files are not touched."""
        self._file = None
        _discard(self._open, self._temps)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"Writer({self.path!r}, written={len(self)})"


def _sync(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())


def _sync_close(file: Any) -> None:
    try:
        _sync(file)
    finally:
        file.close()


def _read_offsets(offsets_path: str, data_path: str, data_size: int) -> np.ndarray:
    try:
        with open(offsets_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ValueError(
            f"{offsets_path} is missing: a dataset needs its offsets file next to {data_path}"
        ) from None
    if not raw or len(raw) % 8:
        raise ValueError(
            f"{offsets_path}: size {len(raw)} bytes is not a positive multiple of 8 "
            "(expected big-endian uint64 offsets; the file is truncated or not an offsets file)"
        )
    offsets = np.frombuffer(raw, dtype=_OFFSET_DTYPE).astype(np.uint64)
    if offsets[0] != 0:
        raise ValueError(f"{offsets_path}: first offset is {offsets[0]}, expected 0")
    decreasing = np.flatnonzero(offsets[1:] < offsets[:-1])
    if decreasing.size:
        i = int(decreasing[0])
        raise ValueError(
            f"{offsets_path}: offsets must not decrease, but offset {i + 1} is "
            f"{offsets[i + 1]} after {offsets[i]}"
        )
    if offsets[-1] != data_size:
        raise ValueError(
            f"{offsets_path}: last offset is {offsets[-1]}, expected the size of {data_path}, "
            f"which is {data_size} bytes (truncated data file, or offsets of another file)"
        )
    return offsets


def _read_keys(keys_path: str, length: int) -> list[str] | None:
    try:
        with open(keys_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        keys = msgpack.unpackb(raw, raw=False)
    except Exception as e:
        raise ValueError(f"{keys_path}: not a msgpack list of keys ({e})") from e
    if not isinstance(keys, list):
        raise ValueError(
            f"{keys_path}: expected a msgpack list of keys, found {type(keys).__name__}"
        )
    if len(keys) != length:
        raise ValueError(f"{keys_path}: holds {len(keys)} keys, expected {length} (one per record)")
    return keys


class Reader:
    """Random access to the records of a dataset file in the datadings layout.

    The data file is memory-mapped; ``reader[i]`` returns record ``i`` as msgpack
    bytes, which is what TurboDataLoader and its workers consume, so a Reader can
    be given to the loader directly (it shuffles the indices per epoch itself).
    A Reader survives pickling (the path is stored and the files re-opened) and fork.

    The files are checked when opened; a missing ``.keys`` file is allowed, the
    keys are then read from the records on first use of :attr:`keys`.

    Args:
        path: ``NAME.msgpack``, or ``NAME`` to which ``.msgpack`` is added.

    Raises:
        FileNotFoundError: the data file does not exist.
        ValueError: the offsets file is missing, malformed or disagrees with the
            data file's size, or the keys file does not hold one key per record.

    Example:
        >>> with Reader("train.msgpack") as reader:
        ...     sample = reader.get(0)  # {"key": ..., "image": ..., "label": ...}
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = data_path(path)
        self._mmap: mmap.mmap | None = None
        self._closed = False
        self._index: dict[str, int] | None = None
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._offsets = _read_offsets(self.path + OFFSETS_SUFFIX, self.path, size)
            self._keys = _read_keys(self.path + KEYS_SUFFIX, len(self._offsets) - 1)
            # mmap refuses empty files; an empty dataset has nothing to map.
            if size:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> bytes:
        """Return record ``index`` as msgpack bytes.

        Raises:
            IndexError: ``index`` is negative or not below ``len(self)``.
            TypeError: ``index`` is not an integer.
            ValueError: the reader is closed.
        """
        i = operator.index(index)
        length = len(self)
        if not 0 <= i < length:
            raise IndexError(f"index {i} out of range for {self.path} of length {length}")
        if self._closed:
            raise ValueError(f"read from closed Reader for {self.path}")
        assert self._mmap is not None  # a non-empty dataset has a non-empty data file
        return self._mmap[int(self._offsets[i]) : int(self._offsets[i + 1])]

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self[i]

    def get(self, index: int) -> dict[str, Any]:
        """Return record ``index`` unpacked into a dict."""
        return unpack(self[index])

    @property
    def keys(self) -> list[str]:
        """The records' keys, in order."""
        if self._keys is None:
            self._keys = [self.get(i)["key"] for i in range(len(self))]
        return self._keys

    def find(self, key: str) -> int:
        """Return the index of the record with ``key``.

        Raises:
            KeyError: no record has this key.
        """
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.keys)}
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"key {key!r} not in {self.path}") from None

    def close(self) -> None:
        """Unmap the data file. Reading afterwards raises ValueError."""
        self._closed = True
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # An mmap cannot be pickled; the receiving process maps the file itself.
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Reader({self.path!r}, len={len(self)})"
