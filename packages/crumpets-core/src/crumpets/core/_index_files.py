"""The index files of a dataset: reading ``.offsets`` and ``.keys`` (or an older
datadings' ``.index``), and making and checking the ``.key_hashes``, ``.filter`` and
``.md5`` files that datadings reads and writes, without datadings.

A :class:`~crumpets.core.dataset.Reader` needs only ``.offsets`` and ``.keys``.
datadings' reader also expects the three below, which it uses to look samples up by key
(it warns when one is missing). Their formats, as datadings 3.4 writes and reads them:

- ``NAME.msgpack.key_hashes``: an 8-byte salt, then one big-endian uint64 per record,
  in record order: the first 8 bytes of ``blake2s(key.encode(), salt=salt)``. The
  salt is the first 8 bytes of ``blake2s(str(t).encode())`` for the first
  ``t = 0, 1, 2, ...`` under which no two keys hash alike.
- ``NAME.msgpack.filter``: a Bloom filter of the keys, in simplebloom's format: a
  32-byte big-endian header ``(b"SIMPBLOO", file size, n, p)`` (struct ``>8sQQd``)
  with capacity ``n = max(2, len)`` and false-positive rate ``p = 1 / n``, then
  ``m = ceil(n * ln(p) / c / 8) * 8`` bits, ``c = ln(1 / 2**ln(2))`` (as a float:
  ``-0.4804530139182015``). A key sets bits ``(h1 + j * h2) mod 2**64 mod m`` for
  ``j < round(m / n * ln(2))``, where ``h1`` and ``h2`` are the first two big-endian
  uint64 of ``blake2s(key.encode())``; bit ``b`` is ``1 << (b % 8)`` of byte ``b // 8``.
- ``NAME.msgpack.md5``: ``md5sum`` lines, ``HEX  FILENAME``, for the data file, then
  the offsets, keys, key_hashes and filter files.

crumpets adds one file of its own, which datadings ignores, and only while it replaces
files of a dataset: ``NAME.msgpack.journal``, a msgpack map of each suffix being replaced
(``""`` for the data file, ``".offsets"``, ...) to the temporary file, in the same folder,
that holds its new contents (see :mod:`crumpets.core.dataset`).

"""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

import msgpack
import numpy as np

SUFFIX = ".msgpack"
OFFSETS_SUFFIX = ".offsets"
KEYS_SUFFIX = ".keys"
KEY_HASHES_SUFFIX = ".key_hashes"
FILTER_SUFFIX = ".filter"
MD5_SUFFIX = ".md5"
# The index of datadings versions before .offsets and .keys: a map of key to offset.
LEGACY_INDEX_SUFFIX = ".index"
# Names the new files while a dataset's files are replaced; crumpets' own.
JOURNAL_SUFFIX = ".journal"
# What a Writer writes beside the data file.
INDEX_SUFFIXES = (OFFSETS_SUFFIX, KEYS_SUFFIX, KEY_HASHES_SUFFIX, FILTER_SUFFIX, MD5_SUFFIX)
_OFFSET_DTYPE = np.dtype(">u8")

_SALT_SIZE = 8
_FILTER_MAGIC = b"SIMPBLOO"
_FILTER_HEADER = struct.Struct(">8sQQd")
# As simplebloom spells them, so a filter's size comes out to the same bit (math.log(2) ** 2
# is one ulp smaller).
_LN2 = 0.6931471805599453
_LN2_SQUARED = 0.4804530139182015
# Keys per step of the vectorised filter: bounds the (keys x hashes) index array.
_FILTER_CHUNK = 1 << 16
_MD5_LINE = re.compile(r"([0-9a-f]{32})  (.+)")


def _key_hashes(keys: Sequence[str], max_tries: int = 1000) -> bytes:
    """The ``.key_hashes`` file's contents: a salt under which no two keys collide, and
    each key's salted blake2s hash (8 bytes, in record order)."""
    encoded = [key.encode("utf-8") for key in keys]
    for attempt in range(max_tries):
        salt = _hash_salt(attempt)
        hashes = b"".join(hashlib.blake2s(key, salt=salt).digest()[:8] for key in encoded)
        if len(np.unique(np.frombuffer(hashes, dtype=_OFFSET_DTYPE))) == len(encoded):
            return salt + hashes
    raise RuntimeError(f"key hashes collide under {max_tries} salts")


def _hash_salt(attempt: int) -> bytes:
    return hashlib.blake2s(str(attempt).encode()).digest()[:_SALT_SIZE]


def _filter_shape(capacity: int, rate: float) -> tuple[int, int]:
    """A Bloom filter's number of bits and of hash functions, sized as simplebloom does."""
    bits = int(math.ceil(capacity * math.log(rate) / -_LN2_SQUARED / 8) * 8)
    return bits, int(round(bits / capacity * _LN2))


def _key_filter(
    keys: Sequence[str], capacity: int | None = None, rate: float | None = None
) -> bytes:
    """The ``.filter`` file's contents: a Bloom filter of ``keys`` in simplebloom's format.

    ``capacity`` defaults to ``max(2, len(keys))`` and ``rate`` to ``1 / capacity``, as
    datadings makes them.
    """
    capacity = max(2, len(keys)) if capacity is None else capacity
    rate = 1.0 / capacity if rate is None else rate
    num_bits, num_hashes = _filter_shape(capacity, rate)
    bits = np.zeros(num_bits // 8, dtype=np.uint8)
    if keys:
        digests = b"".join(hashlib.blake2s(key.encode("utf-8")).digest()[:16] for key in keys)
        h = np.frombuffer(digests, dtype=_OFFSET_DTYPE).astype(np.uint64).reshape(-1, 2)
        steps = np.arange(num_hashes, dtype=np.uint64)
        for start in range(0, len(h), _FILTER_CHUNK):
            h1, h2 = h[start : start + _FILTER_CHUNK, :1], h[start : start + _FILTER_CHUNK, 1:]
            # uint64 arithmetic wraps around, as the C implementation's does
            positions = (h1 + steps * h2) % np.uint64(num_bits)
            masks = (np.uint64(1) << (positions & np.uint64(7))).astype(np.uint8)
            np.bitwise_or.at(bits, positions >> np.uint64(3), masks)
    header = _FILTER_HEADER.pack(_FILTER_MAGIC, _FILTER_HEADER.size + len(bits), capacity, rate)
    return header + bits.tobytes()


def index_files(
    path: str, offsets: Sequence[int] | np.ndarray, keys: list[str], data_md5: str
) -> list[tuple[str, bytes]]:
    """Every index file of the dataset ``path`` as ``(final path, contents)``, .md5 last."""
    files = [
        (OFFSETS_SUFFIX, np.asarray(offsets, dtype=_OFFSET_DTYPE).tobytes()),
        (KEYS_SUFFIX, msgpack.packb(keys, use_bin_type=True)),
        (KEY_HASHES_SUFFIX, _key_hashes(keys)),
        (FILTER_SUFFIX, _key_filter(keys)),
    ]
    name = os.path.basename(path)
    lines = [f"{data_md5}  {name}\n"]
    lines += [f"{hashlib.md5(data).hexdigest()}  {name}{suffix}\n" for suffix, data in files]
    files.append((MD5_SUFFIX, "".join(lines).encode("utf-8")))
    return [(path + suffix, data) for suffix, data in files]


def _file_md5(path: str) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
    return md5.hexdigest()


def _read_md5_file(md5_path: str) -> dict[str, str]:
    """The ``.md5`` file as {file name: hex digest}; ValueError if a line is malformed."""
    with open(md5_path, "rb") as f:
        return _parse_md5(f.read(), md5_path)


def _parse_md5(raw: bytes, md5_path: str) -> dict[str, str]:
    lines = raw.decode("utf-8", errors="replace").splitlines()
    hashes = {}
    for number, line in enumerate(lines, 1):
        match = _MD5_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"{md5_path}: line {number} is not 'MD5  FILENAME': {line[:80]!r}")
        hashes[match[2]] = match[1]
    return hashes


def extras_problem(path: str, suffix: str, length: int, file: BinaryIO | None) -> str | None:
    """What is wrong with the optional index file ``path + suffix``, opened as ``file``
    (None: it does not exist), judged by its size and header only (cheap enough for every
    open); None if nothing."""
    if file is None:
        return None
    extra = path + suffix
    try:
        size = os.fstat(file.fileno()).st_size
        if suffix == KEY_HASHES_SUFFIX:
            expected = _SALT_SIZE + 8 * length
            if size != expected:
                return f"size {size} bytes, expected {expected} (a salt and {length} hashes)"
        elif suffix == FILTER_SUFFIX:
            header = file.read(_FILTER_HEADER.size)
            if len(header) < _FILTER_HEADER.size:
                return f"size {size} bytes is too small for a Bloom filter"
            magic, total, capacity, _ = _FILTER_HEADER.unpack(header)
            if magic != _FILTER_MAGIC:
                return f"starts with {magic!r}, not {_FILTER_MAGIC!r} (not a simplebloom filter)"
            if total != size:
                return f"size {size} bytes, but its header says {total}"
            if capacity != max(2, length):
                return f"a filter for {capacity} keys, but the dataset has {length}"
        elif suffix == MD5_SUFFIX:
            hashes = _parse_md5(file.read(), extra)
            if os.path.basename(path) not in hashes:
                return f"has no MD5 of {os.path.basename(path)}"
    except (OSError, ValueError) as e:
        return str(e)
    return None


def verify_index_files(path: str, keys: list[str]) -> None:
    """Check the files of dataset ``path`` against its ``.md5`` file, and its
    ``.key_hashes`` and ``.filter`` files (where present) against ``keys``.

    Raises:
        FileNotFoundError: the dataset has no ``.md5`` file.
        ValueError: a file's MD5 differs from the one recorded, a file the ``.md5``
            file lists is missing, the ``.md5`` file does not list the data file, or
            the key hashes or the filter do not match the keys.
    """
    md5_path = path + MD5_SUFFIX
    hashes = _read_md5_file(md5_path)
    directory, name = os.path.split(path)
    if name not in hashes:
        raise ValueError(f"{md5_path}: has no MD5 of {name}")
    for listed, expected in hashes.items():
        listed_path = os.path.join(directory, listed)
        try:
            actual = _file_md5(listed_path)
        except FileNotFoundError:
            raise ValueError(f"{listed_path} is missing (listed in {md5_path})") from None
        if actual != expected:
            raise ValueError(
                f"{listed_path}: MD5 is {actual}, but {md5_path} records {expected} "
                "(the file was changed or damaged)"
            )
    hashes_path = path + KEY_HASHES_SUFFIX
    if os.path.exists(hashes_path):
        with open(hashes_path, "rb") as f:
            raw = f.read()
        salt = raw[:_SALT_SIZE]
        encoded = [key.encode("utf-8") for key in keys]
        expected_hashes = b"".join(hashlib.blake2s(key, salt=salt).digest()[:8] for key in encoded)
        if len(raw) != _SALT_SIZE + len(expected_hashes) or raw[_SALT_SIZE:] != expected_hashes:
            raise ValueError(f"{hashes_path}: the key hashes do not match the keys")
    filter_path = path + FILTER_SUFFIX
    if os.path.exists(filter_path):
        with open(filter_path, "rb") as f:
            raw = f.read()
        if len(raw) < _FILTER_HEADER.size:
            raise ValueError(f"{filter_path}: too small for a Bloom filter")
        magic, _, capacity, rate = _FILTER_HEADER.unpack_from(raw)
        # Sized from the header, as datadings loads it; compared only once the sizes
        # agree, so a damaged header cannot ask for a huge filter.
        sized = capacity >= 2 and 0 < rate < 1
        if sized:
            sized = _FILTER_HEADER.size + _filter_shape(capacity, rate)[0] // 8 == len(raw)
        if magic != _FILTER_MAGIC or not sized or raw != _key_filter(keys, capacity, rate):
            raise ValueError(f"{filter_path}: not the Bloom filter of the keys")


def _check_offsets(offsets: np.ndarray, source: str, data_path: str, data_size: int) -> np.ndarray:
    if offsets[0] != 0:
        raise ValueError(f"{source}: first offset is {offsets[0]}, expected 0")
    decreasing = np.flatnonzero(offsets[1:] < offsets[:-1])
    if decreasing.size:
        i = int(decreasing[0])
        raise ValueError(
            f"{source}: offsets must not decrease, but offset {i + 1} is "
            f"{offsets[i + 1]} after {offsets[i]}"
        )
    if offsets[-1] != data_size:
        raise ValueError(
            f"{source}: last offset is {offsets[-1]}, expected the size of {data_path}, "
            f"which is {data_size} bytes (truncated data file, or offsets of another file)"
        )
    return offsets


def read_offsets(raw: bytes, offsets_path: str, data_path: str, data_size: int) -> np.ndarray:
    if not raw or len(raw) % 8:
        raise ValueError(
            f"{offsets_path}: size {len(raw)} bytes is not a positive multiple of 8 "
            "(expected big-endian uint64 offsets; the file is truncated or not an offsets file)"
        )
    offsets = np.frombuffer(raw, dtype=_OFFSET_DTYPE).astype(np.uint64)
    return _check_offsets(offsets, offsets_path, data_path, data_size)


def read_legacy_index(
    raw: bytes, index_path: str, data_path: str, data_size: int
) -> tuple[np.ndarray, list[Any]]:
    try:
        pairs = msgpack.unpackb(raw, raw=False, object_pairs_hook=list, strict_map_key=False)
    except Exception as e:
        raise ValueError(f"{index_path}: not a msgpack map of keys to offsets ({e})") from e
    if not isinstance(pairs, list) or not all(
        isinstance(offset, int) and not isinstance(offset, bool) for _, offset in pairs
    ):
        raise ValueError(f"{index_path}: expected a msgpack map of keys to integer offsets")
    if any(offset < 0 for _, offset in pairs):
        raise ValueError(f"{index_path}: an offset is negative")
    offsets = np.array([offset for _, offset in pairs] + [data_size], dtype=np.uint64)
    offsets = _check_offsets(offsets, index_path, data_path, data_size)
    return offsets, [key for key, _ in pairs]


def read_keys(raw: bytes, keys_path: str, length: int) -> list[str]:
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
