"""Read and write dataset files in the datadings layout.

A dataset ``NAME`` is a data file and its index files:

- ``NAME.msgpack``: the records, concatenated. Each is a msgpack map with a
  ``"key"`` string and the sample's fields (e.g. ``"image"`` bytes, ``"label"``).
- ``NAME.msgpack.offsets``: len+1 big-endian uint64 byte offsets into
  ``NAME.msgpack``; record ``i`` is ``data[offsets[i]:offsets[i + 1]]``, the first
  offset is 0 and the last is the data file's size.
- ``NAME.msgpack.keys``: a msgpack list of the records' keys, in order.

These three are all a :class:`Reader` needs. datadings' reader also expects
``.key_hashes``, ``.filter`` and ``.md5`` files, to look samples up by key (it warns
when one is missing): :mod:`crumpets.core._index_files` gives their formats.

:class:`Writer` writes all six, so datadings opens the files without warnings and
finds samples by key. It replaces an existing dataset's files all at once (see
:mod:`crumpets.core._replace`): meanwhile, and after a writer was killed, a
``NAME.msgpack.journal`` file, a ``.NAME.msgpack.lock`` file and hidden
``.NAME.msgpack*.tmp`` files may stand beside them.
Numpy arrays in records are encoded as msgpack_numpy encodes them (a map of
``b"nd"``, ``b"type"``, ``b"kind"``, ``b"shape"``, ``b"data"``), which datadings
decodes and so does :class:`Reader`. A :class:`Reader` reads datasets written by
datadings, also those of older datadings versions whose index is one
``NAME.msgpack.index`` file (a msgpack map of key to offset, in record order) in
place of ``.offsets`` and ``.keys``. :func:`write_index` adds the missing index files
to a dataset written by an earlier crumpets-core or such an older datadings.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import operator
import os
import warnings
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import msgpack
import numpy as np

from ._index_files import (
    FILTER_SUFFIX,
    INDEX_SUFFIXES,
    KEY_HASHES_SUFFIX,
    KEYS_SUFFIX,
    LEGACY_INDEX_SUFFIX,
    MD5_SUFFIX,
    OFFSETS_SUFFIX,
    SUFFIX,
    extras_problem,
    index_files,
    read_keys,
    read_legacy_index,
    read_offsets,
    verify_index_files,
)
from ._replace import (
    close_all,
    discard,
    identity,
    locked,
    mark_alive,
    new_token,
    open_one_version,
    recover,
    remove_stale_temps,
    replace_files,
    sync,
    temp_path,
)
from .shm import unpack

__all__ = ["Reader", "Writer", "write_index"]


def data_path(path: str | os.PathLike[str]) -> str:
    """Return the data file's path: ``path`` itself if it ends in .msgpack, else path + .msgpack."""
    path = os.fspath(path)
    return path if path.endswith(SUFFIX) else path + SUFFIX


# ---------------------------------------------------------------- record encoding


def _encode(obj: Any) -> Any:
    # numpy arrays as msgpack_numpy encodes them: datadings decodes these to arrays,
    # and so does crumpets' unpack.
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OV":
            raise TypeError(
                f"cannot write an array of dtype {obj.dtype} to a dataset; use a numeric dtype"
            )
        return {
            b"nd": True,
            b"type": obj.dtype.str,
            b"kind": b"",
            b"shape": list(obj.shape),
            b"data": obj.tobytes(),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot pack object of type {type(obj).__name__} with msgpack")


def _pack_record(sample: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(sample), default=_encode, use_bin_type=True)


# ---------------------------------------------------------------- writer


class Writer:
    """Write samples to a dataset file in the datadings layout.

    Besides the data file, :meth:`close` writes the index files: ``.offsets`` and
    ``.keys``, and the ``.key_hashes``, ``.filter`` and ``.md5`` files that datadings'
    reader uses for lookups by key (see the module's documentation for their formats).

    Records go to a temporary file next to ``path``; :meth:`close` writes the index files
    to temporaries too and replaces the dataset's files all at once: killed at any moment,
    the writer leaves the previous dataset (or none) or the new one, never a mix, and a
    :class:`Reader` opened meanwhile reads one of them in full. Leaving a ``with`` block by
    an exception, or calling :meth:`abort`, removes the temporary files and keeps any
    existing dataset; the next Writer of the dataset removes those a killed writer left.

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
        # Names this writer's temporaries, so a later writer can tell whether they are stale.
        self._token = new_token()
        self._temps: list[str] = []
        self._open: list[BinaryIO] = []
        # Temporaries left behind by a Writer that was never closed are removed
        # when it is garbage collected or at interpreter exit.
        weakref.finalize(self, discard, self._open, self._temps, os.getpid())
        with locked(self.path):
            recover(self.path)
            remove_stale_temps(self.path)
            if not overwrite:
                for suffix in ("", *INDEX_SUFFIXES):
                    if os.path.exists(self.path + suffix):
                        raise FileExistsError(
                            f"{self.path + suffix} exists; pass overwrite=True to replace it"
                        )
            self._temps.append(temp_path(self.path, self._token))
            # "xb" creates the file with the umask's permissions, unlike tempfile.mkstemp's 0600.
            self._file: BinaryIO | None = open(self._temps[0], "xb")
            self._open.append(self._file)
            mark_alive(self._file)
        self._offsets = [0]
        self._keys: dict[str, None] = {}
        self._md5 = hashlib.md5()

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def size(self) -> int:
        """Bytes of the records written so far (the data file's size once closed)."""
        return self._offsets[-1]

    def write(self, sample: Mapping[str, Any]) -> int:
        """Append one sample.

        Args:
            sample: a mapping with a unique ``"key"`` string and the sample's fields;
                values must be msgpack-able; numpy arrays (of numeric dtypes) and
                scalars are supported.

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
        data = _pack_record(sample)
        self._file.write(data)
        self._md5.update(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self._keys[key] = None
        return len(self._keys) - 1

    def close(self) -> None:
        """Finish the dataset: write the index files and replace the dataset's files."""
        if self._file is None:
            return
        try:
            # The file stays open, and locked, until abort() below.
            sync(self._file)
            self._file = None
            files = index_files(self.path, self._offsets, list(self._keys), self._md5.hexdigest())
            with locked(self.path):
                replace_files(self.path, self._token, files, self._temps, {"": self._temps[0]})
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop writing and remove the temporary files; the final files are not touched."""
        self._file = None
        discard(self._open, self._temps, os.getpid())

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"Writer({self.path!r}, written={len(self)})"


def write_index(path: str | os.PathLike[str]) -> None:
    """Write all index files of an existing dataset from its data file and index.

    For a dataset written by an earlier crumpets-core (no ``.key_hashes``, ``.filter``
    or ``.md5``, so datadings warns and cannot look samples up by key), or by a
    datadings version that wrote a ``.index`` file: afterwards it has every file a
    :class:`Writer` writes. The ``.md5`` file records the data file as it is now, so
    check the dataset first if it may be damaged. The index files are replaced all at
    once, as a :class:`Writer` replaces them; the data file is not touched.

    Args:
        path: ``NAME.msgpack``, or ``NAME`` to which ``.msgpack`` is added.

    Raises:
        FileNotFoundError: the data file does not exist.
        ValueError: the dataset's offsets or keys are missing or malformed (see
            :class:`Reader`).
        TypeError: a key is not a str.
        OSError: another process replaced the data file meanwhile.
    """
    with Reader._open_quietly(path) as reader:
        keys = reader.keys
        offsets = reader._offsets
        # From the mapping: the very file the offsets and keys belong to.
        data_md5 = hashlib.md5(reader._mmap if reader._mmap is not None else b"").hexdigest()
        opened = reader._identity
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"{reader.path}: key {key!r} is not a str")
    files = index_files(reader.path, offsets, keys, data_md5)
    temps: list[str] = []
    try:
        with locked(reader.path):
            recover(reader.path)
            if identity(reader.path) != opened:
                raise OSError(
                    errno.EBUSY,
                    f"{reader.path} was replaced while its index was written; "
                    "write_index again if it still needs one",
                )
            replace_files(reader.path, new_token(), files, temps)
    finally:
        discard([], temps, os.getpid())


# ---------------------------------------------------------------- reader

# The files a Reader opens: the data file, the index (or an old datadings' .index) and
# datadings' optional files, checked on open.
_READ_SUFFIXES = ("", *INDEX_SUFFIXES, LEGACY_INDEX_SUFFIX)


class Reader:
    """Random access to the records of a dataset file in the datadings layout.

    The data file is memory-mapped; ``reader[i]`` returns record ``i`` as msgpack
    bytes, which is what TurboDataLoader and its workers consume, so a Reader can
    be given to the loader directly (it shuffles the indices per epoch itself).
    A Reader survives pickling (the path is stored and the files re-opened) and fork.

    Opening reads one version of the dataset even while another process replaces its
    files (a :class:`Writer` with ``overwrite=True``): the previous or the new one, in
    full, or, if the files keep changing under it, an error. A Reader that finds the files
    of a killed writer half moved into place, and may write to the folder, moves the rest.

    The offsets and keys are checked when opened; a missing ``.keys`` file is allowed,
    the keys are then read from the records on first use of :attr:`keys`. Datasets of
    older datadings versions, with a ``.index`` file in place of ``.offsets`` and
    ``.keys``, load too. The ``.key_hashes``, ``.filter`` and ``.md5`` files are
    datadings' and optional here: a Reader does not need them, and :meth:`find` looks
    keys up without them. If one is present but malformed (wrong size, wrong header,
    not for this many records), opening warns, since datadings' lookups by key would
    fail or mislead; :func:`write_index` writes them again. :meth:`verify` checks every
    file's contents.

    Args:
        path: ``NAME.msgpack``, or ``NAME`` to which ``.msgpack`` is added.

    Raises:
        FileNotFoundError: the data file does not exist.
        ValueError: the offsets file is missing, malformed or disagrees with the
            data file's size, or the keys file does not hold one key per record.
        OSError: (errno ``EBUSY``) the files changed every time they were opened, for
            about a quarter of a second: another process replaces them again and again.

    Warns:
        UserWarning: a ``.key_hashes``, ``.filter`` or ``.md5`` file is malformed.

    Example:
        >>> with Reader("train.msgpack") as reader:
        ...     sample = reader.get(0)  # {"key": ..., "image": ..., "label": ...}
        ...     sample = reader.get(reader.find("cat/1.jpg"))
    """

    # The loader's workers open the file themselves (a memory map each), so only indices
    # cross the socket; any sequence that is cheap to pickle and fork may say so too.
    read_in_workers = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        for suffix, problem in self._open(data_path(path), check_extras=True):
            warnings.warn(
                f"{self.path + suffix}: {problem}. crumpets does not need this file, but "
                "datadings looks keys up with it; crumpets.core.dataset.write_index "
                "writes it again",
                UserWarning,
                stacklevel=2,
            )

    @classmethod
    def _open_quietly(cls, path: str | os.PathLike[str]) -> Reader:
        """A Reader that does not look at the optional index files."""
        reader = cls.__new__(cls)
        reader._open(data_path(path))
        return reader

    def _open(self, path: str, check_extras: bool = False) -> list[tuple[str, str]]:
        """Open the dataset; returns the problems of its optional files, (suffix, problem)."""
        self.path = path
        self._mmap: mmap.mmap | None = None
        self._closed = False
        self._index: dict[str, int] | None = None
        files = open_one_version(self.path, _READ_SUFFIXES)
        try:
            data = files[""]
            if data is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
            st = os.fstat(data.fileno())
            self._identity = (st.st_dev, st.st_ino)
            size = st.st_size
            offsets_path = self.path + OFFSETS_SUFFIX
            legacy_path = self.path + LEGACY_INDEX_SUFFIX
            offsets_file, legacy_file = files[OFFSETS_SUFFIX], files[LEGACY_INDEX_SUFFIX]
            if offsets_file is not None:
                self._offsets = read_offsets(offsets_file.read(), offsets_path, self.path, size)
                keys = files[KEYS_SUFFIX]
                self._keys = (
                    None
                    if keys is None
                    else read_keys(keys.read(), self.path + KEYS_SUFFIX, len(self._offsets) - 1)
                )
            elif legacy_file is not None:
                self._offsets, self._keys = read_legacy_index(
                    legacy_file.read(), legacy_path, self.path, size
                )
            else:
                raise ValueError(
                    f"{offsets_path} is missing: a dataset needs its offsets file (or the "
                    f".index file of older datadings versions) next to {self.path}"
                )
            problems = []
            for suffix in (KEY_HASHES_SUFFIX, FILTER_SUFFIX, MD5_SUFFIX) if check_extras else ():
                problem = extras_problem(self.path, suffix, len(self), files[suffix])
                if problem is not None:
                    problems.append((suffix, problem))
            # mmap refuses empty files; an empty dataset has nothing to map.
            if size:
                self._mmap = mmap.mmap(data.fileno(), 0, access=mmap.ACCESS_READ)
        finally:
            close_all(files)
        return problems

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

    def verify(self) -> None:
        """Check the dataset's files against its ``.md5`` file, and its ``.key_hashes`` and
        ``.filter`` files (where present) against its keys.

        This reads every file in full, the data file too: a check after copying or
        downloading a dataset, not one for every open.

        Raises:
            FileNotFoundError: the dataset has no ``.md5`` file.
            ValueError: a file's MD5 differs from the one recorded, a file the ``.md5``
                file lists is missing, the ``.md5`` file does not list the data file, or
                the key hashes or the filter do not match the keys.
        """
        verify_index_files(self.path, self.keys)

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
        return {"path": self.path, "identity": self._identity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checked (and warned about) when the original was opened; not again in each worker.
        self._open(state["path"])
        identity = state.get("identity")
        if identity is not None and tuple(identity) != self._identity:
            # a spawned worker would read another version than the process that sent it
            self.close()
            raise ValueError(
                f"{self.path} was replaced since it was opened: this process would read "
                "another version of the dataset than the Reader it was sent; open it again"
            )

    def __repr__(self) -> str:
        return f"Reader({self.path!r}, len={len(self)})"
