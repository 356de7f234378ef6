"""Replacing a dataset's files all at once, and opening one version of them.

A dataset is several files (see :mod:`crumpets.core.dataset`), and no file system renames
several at once. To replace them all or none, a writer, holding the dataset's lock (so
one at a time):

1. writes each new file to a temporary name in the same folder and fsyncs it;
2. publishes the journal ``NAME.msgpack.journal``, a msgpack map of each suffix it
   replaces (``""`` for the data file) to its temporary's name, by renaming a finished,
   fsynced file into place: the commit point;
3. renames each temporary over its file, fsyncs the folder and removes the journal.

Killed before 2, the old files are untouched and the temporaries are garbage, which the
next writer removes (a writer holds a lock on its temporary data file while it runs, so a
live writer's temporaries are told from a killed one's). Killed after 2, the new version
is complete in temporaries and final names, and whoever takes the lock next (a writer, or
a reader that may write the folder) does 3. A reader opens each file from its temporary
while a journal names one, then checks that nothing changed meanwhile
(:func:`open_one_version`).

The lock is a hidden file ``.NAME.msgpack.lock``, present only while held (or after its
holder was killed). Where there is no ``fcntl`` (Windows) there are no locks: writers of
one dataset must not run at the same time there, and temporaries are never removed as
stale.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import msgpack

from ._index_files import INDEX_SUFFIXES, JOURNAL_SUFFIX

try:
    import fcntl
except ImportError:  # Windows: no file locks
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "discard",
    "identity",
    "locked",
    "mark_alive",
    "new_token",
    "open_one_version",
    "recover",
    "remove_stale_temps",
    "replace_files",
    "sync",
    "temp_path",
]

# Random bytes in a writer's temporary file names.
_TOKEN_BYTES = 8
# Tries to open one version of the files while other processes replace them, and the
# first pause between tries (doubled after each): about a quarter of a second in all.
OPEN_TRIES = 8
_OPEN_PAUSE = 0.002


def new_token() -> str:
    """A fresh name for one writer's temporary files."""
    return secrets.token_hex(_TOKEN_BYTES)


def temp_path(final: str, token: str) -> str:
    """The temporary file of the writer ``token`` that becomes ``final``."""
    directory, name = os.path.split(final)
    return os.path.join(directory, f".{name}.{token}.tmp")


def identity(path: str) -> tuple[int, int] | None:
    """Which file ``path`` is now (device and inode), or None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _file_identity(file: BinaryIO | None) -> tuple[int, int] | None:
    if file is None:
        return None
    st = os.fstat(file.fileno())
    return st.st_dev, st.st_ino


def discard(files: list[BinaryIO], paths: list[str], owner: int) -> None:
    """Remove ``paths`` and close ``files``, emptying both lists.

    Removing comes first and closing cannot stop it: closing flushes what is buffered,
    which fails on a full disk, and that data is being thrown away anyway. A forked child
    (not ``owner``) only closes its copies: the files are its parent's.
    """
    if os.getpid() == owner:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    paths.clear()
    for file in files:
        try:
            file.close()
        except OSError:
            pass
    files.clear()


def sync(file: Any) -> None:
    """Flush ``file`` and fsync it."""
    file.flush()
    os.fsync(file.fileno())


def _sync_folder(path: str) -> None:
    """fsync the folder holding ``path``, so that renames in it survive a power cut, where
    the file system can (some network and FUSE file systems refuse, EINVAL)."""
    if os.name != "posix":  # no folder descriptors to fsync
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


# flock on a file system without locks (Lustre without -o flock, some FUSE and CIFS
# mounts): that file system then gets no locks, as where there is no fcntl.
_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP)


def _flock(fd: int, operation: int) -> bool:
    """flock, False where the file system has no locks."""
    try:
        fcntl.flock(fd, operation)
    except OSError as e:
        if e.errno in _NO_LOCKS:
            return False
        raise
    return True


@contextlib.contextmanager
def locked(path: str, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of dataset ``path``: yields True, or False when ``wait`` is False and
    another process holds it.

    Raises:
        OSError: the lock file cannot be created (e.g. a read-only folder).
    """
    if fcntl is None:
        yield True
        return
    directory, name = os.path.split(path)
    lock = os.path.join(directory, f".{name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB):
                break  # no locks here: as without fcntl
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        # The last holder removes the file before letting go; if it did, this lock guards
        # a file nobody else sees, and a fresh one must be locked.
        st = os.fstat(fd)
        if identity(lock) == (st.st_dev, st.st_ino):
            break
        os.close(fd)
    try:
        yield True
    finally:
        try:
            os.unlink(lock)
        finally:
            os.close(fd)


def mark_alive(file: BinaryIO) -> None:
    """Lock a writer's new temporary data file until it is closed: a later writer then
    keeps this writer's temporaries. Call it holding the dataset's lock, under which
    :func:`remove_stale_temps` runs, so that no one sees the file unlocked."""
    if fcntl is not None:
        _flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _writer_alive(data_temp: str) -> bool:
    """Whether the writer whose temporary data file is ``data_temp`` still runs."""
    try:
        f = open(data_temp, "rb")
    except FileNotFoundError:
        return False
    with f:
        try:
            if not _flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB):
                return True  # no locks here: never take a file for a killed writer's
        except BlockingIOError:
            return True
    return False


def remove_stale_temps(path: str) -> None:
    """Remove the temporary files that killed writers of dataset ``path`` left (hold the
    lock, and :func:`recover` first: a killed writer's journal names files that are not
    stale)."""
    if fcntl is None:  # no way to tell a running writer's files from a killed one's
        return
    directory, name = os.path.split(path)
    suffixes = "|".join(re.escape(s) for s in ("", *INDEX_SUFFIXES, JOURNAL_SUFFIX))
    pattern = re.compile(rf"\.{re.escape(name)}({suffixes})\.([0-9a-f]{{{2 * _TOKEN_BYTES}}})\.tmp")
    by_writer: dict[str, list[str]] = {}
    with os.scandir(directory or ".") as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is not None:
                by_writer.setdefault(match[2], []).append(entry.path)
    for token, temps in by_writer.items():
        if not _writer_alive(temp_path(path, token)):
            discard([], temps, os.getpid())


def _read_journal(path: str) -> dict[str, str] | None:
    """The journal of dataset ``path``, {suffix: temporary file name}, or None if none.

    Raises:
        ValueError: the journal is not one a writer wrote.
    """
    journal = path + JOURNAL_SUFFIX
    try:
        with open(journal, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        files = msgpack.unpackb(raw, raw=False)
    except Exception as e:
        raise ValueError(f"{journal}: not a journal written by crumpets ({e!r})") from e
    if not isinstance(files, dict) or not all(
        suffix in ("", *INDEX_SUFFIXES)
        and isinstance(name, str)
        and name.startswith(".")
        and os.path.basename(name) == name
        and name not in (".", "..")
        for suffix, name in files.items()
    ):
        raise ValueError(
            f"{journal}: not a journal written by crumpets (expected a map of the dataset's "
            "suffixes to temporary file names in its folder)"
        )
    return files


def _finish(path: str, journal: dict[str, str]) -> None:
    """Step 3: move the journal's files into place, then remove the journal."""
    directory = os.path.dirname(path)
    for suffix, name in journal.items():
        try:
            os.replace(os.path.join(directory, name), path + suffix)
        except FileNotFoundError:  # moved before the last writer was killed
            pass
    _sync_folder(path)
    os.unlink(path + JOURNAL_SUFFIX)


def recover(path: str) -> None:
    """Finish the replacement of a writer killed after its commit point (hold the lock)."""
    journal = _read_journal(path)
    if journal is not None:
        _finish(path, journal)


def replace_files(
    path: str,
    token: str,
    files: Sequence[tuple[str, bytes]],
    temps: list[str],
    ready: Mapping[str, str] | None = None,
) -> None:
    """Replace files of dataset ``path``, all or none (hold its lock): write ``files``
    ((final path, contents)) to temporaries of writer ``token`` (added to ``temps``), then
    publish them and the ``ready`` temporaries ({suffix: path}). Once committed, the
    temporaries are the journal's, and ``temps`` is emptied: they must survive any error
    from there on.
    """
    recover(path)
    journal = {suffix: os.path.basename(temp) for suffix, temp in (ready or {}).items()}
    for final, contents in files:
        temps.append(temp_path(final, token))
        with open(temps[-1], "xb") as f:
            f.write(contents)
            sync(f)
        journal[final[len(path) :]] = os.path.basename(temps[-1])
    # The temporaries' names must be on disk before a journal on disk names them.
    _sync_folder(path)
    temps.append(temp_path(path + JOURNAL_SUFFIX, token))
    with open(temps[-1], "xb") as f:
        f.write(msgpack.packb(journal, use_bin_type=True))
        sync(f)
    os.replace(temps[-1], path + JOURNAL_SUFFIX)
    temps.clear()
    _sync_folder(path)
    _finish(path, journal)


def _open_version(path: str, suffix: str, journal: dict[str, str] | None) -> BinaryIO | None:
    """Open ``path + suffix``, from the temporary ``journal`` names for it while there is
    one; None if the file does not exist."""
    if journal is not None and suffix in journal:
        try:
            return open(os.path.join(os.path.dirname(path), journal[suffix]), "rb")
        except FileNotFoundError:  # moved into place already
            pass
    try:
        return open(path + suffix, "rb")
    except FileNotFoundError:
        return None


def _version_identity(path: str, suffix: str, journal: dict[str, str] | None) -> Any:
    """Which file :func:`_open_version` would open now."""
    if journal is not None and suffix in journal:
        found = identity(os.path.join(os.path.dirname(path), journal[suffix]))
        if found is not None:
            return found
    return identity(path + suffix)


def close_all(files: Mapping[str, BinaryIO | None]) -> None:
    """Close the files :func:`open_one_version` opened."""
    for file in files.values():
        if file is not None:
            file.close()


def _finish_killed_writer(path: str) -> bool:
    """Finish the replacement of a writer killed after its commit point, as the next
    writer would, so that datadings reads the new files too (as SQLite's readers roll
    back a hot journal). False if a writer is at work, or the folder may not be written:
    then the files are read through the journal."""
    try:
        with locked(path, wait=False) as held:
            if held:
                recover(path)
            return held
    except OSError:
        return False


def open_one_version(path: str, suffixes: Sequence[str]) -> dict[str, BinaryIO | None]:
    """Open ``path + suffix`` for each suffix (None where there is no such file), all of
    one version of the dataset, while other processes may be replacing its files.

    Each file is opened from the temporary a journal names for it, if any, else under its
    own name. Then the journal must be the one found before, and each name must still be
    the file opened: files of a dataset are only ever replaced by new files, so if all
    names held the opened files at one moment with no journal, or one journal stood the
    whole time, the files are one version. Otherwise a writer was at work: close them,
    and try again a little later.

    Raises:
        OSError: (``EBUSY``) the files changed every time, :data:`OPEN_TRIES` times.
        ValueError: a journal is malformed.
    """
    for attempt in range(OPEN_TRIES):
        journal = _read_journal(path)
        if journal is not None and _finish_killed_writer(path):
            continue
        files: dict[str, BinaryIO | None] = {}
        try:
            for suffix in suffixes:
                files[suffix] = _open_version(path, suffix, journal)
            if _read_journal(path) == journal and all(
                _version_identity(path, suffix, journal) == _file_identity(file)
                for suffix, file in files.items()
            ):
                return files
        except BaseException:
            close_all(files)
            raise
        close_all(files)
        if attempt + 1 < OPEN_TRIES:
            time.sleep(_OPEN_PAUSE * 2**attempt)
    raise OSError(
        errno.EBUSY,
        f"{path}: the dataset changed while it was opened, {OPEN_TRIES} times in a row: "
        "another process is replacing its files; open it when that is done",
    )
