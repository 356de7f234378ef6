"""Memory for the buffer pool: the files it lives in, and the check that it fits.

- The pool's file: an anonymous memory file (``memfd_create``, Linux) that forked workers
  inherit and the kernel frees with the last process holding it, or a named POSIX segment
  (/dev/shm) that other processes attach to by name.
- Before allocating, the check that the memory the pool will take is there: available
  memory, every cgroup memory limit on the process, and /dev/shm's room for a named pool.
  Memory files and tmpfs allocate as they are written, so an oversized pool would be
  created fine and kill a worker later.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import shutil
from multiprocessing import shared_memory

__all__ = [
    "MemoryFile",
    "NamedSegment",
    "available_memory",
    "check_memory",
    "check_shm_space",
    "memory_file",
]


def check_shm_space(nbytes: int, path: str = "/dev/shm", what: str = "shared memory pool") -> None:
    """Raise before allocating if ``path`` cannot hold ``nbytes`` more (a named pool).

    tmpfs allocates lazily, so an oversized segment would otherwise be created fine and
    kill a worker with SIGBUS on its first write.

    Raises:
        OSError: ENOSPC, with the bytes needed and what to change.
    """
    if not os.path.isdir(path):
        return
    free = shutil.disk_usage(path).free
    if nbytes > free:
        raise OSError(
            errno.ENOSPC,
            f"{what} needs {nbytes:,} bytes but {path} has {free:,} free. "
            f"Use fewer or smaller buffers (shared_memory=N, batch_size), enlarge {path} "
            "(docker run --shm-size=...), or pass shared_memory=False.",
        )


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _meminfo_available(path: str = "/proc/meminfo") -> tuple[int, str] | None:
    try:
        text = _read(path)
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        return None
    return int(match[1]) * 1024, f"MemAvailable in {path}"


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes a space as \040, and so on
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _cgroup_dir(mountpoint: str, root: str, path: str) -> str:
    """The directory of cgroup ``path`` under a mount of the hierarchy's ``root``."""
    if root == "/":
        rel = path
    elif path == root or path.startswith(root + "/"):
        rel = path[len(root) :]
    else:
        # not below what this mount shows (a container without a cgroup namespace): the
        # mount's own root is the closest cgroup that can be read
        return mountpoint
    directory = os.path.normpath(mountpoint + "/" + rel.lstrip("/"))
    inside = directory == mountpoint or directory.startswith(mountpoint.rstrip("/") + "/")
    return directory if inside and os.path.isdir(directory) else mountpoint


# memory.max etc. of cgroup v2, memory.limit_in_bytes etc. of v1; the page cache named
# last is reclaimable, so it is room too (as in MemAvailable)
_CGROUP_FILES = {
    "cgroup2": ("memory.max", "memory.current", ("active_file", "inactive_file")),
    "cgroup": (
        "memory.limit_in_bytes",
        "memory.usage_in_bytes",
        ("total_active_file", "total_inactive_file"),
    ),
}


def _cgroup_headroom(directory: str, version: str) -> tuple[int, str] | None:
    limit_name, usage_name, cache_keys = _CGROUP_FILES[version]
    limit_path = os.path.join(directory, limit_name)
    try:
        text = _read(limit_path).strip()
        if text == "max":
            return None
        limit = int(text)
        usage = int(_read(os.path.join(directory, usage_name)))
    except (OSError, ValueError):
        return None
    if limit >= 1 << 60:  # v1 writes "no limit" as a huge number
        return None
    cache = 0
    with contextlib.suppress(OSError, ValueError):
        for line in _read(os.path.join(directory, "memory.stat")).splitlines():
            key, _, value = line.partition(" ")
            if key in cache_keys:
                cache += int(value)
    used = max(0, usage - cache)
    return limit - used, f"the cgroup memory limit {limit_path} ({limit:,} bytes, {used:,} in use)"


def _cgroup_limits(
    cgroup_file: str = "/proc/self/cgroup", mountinfo_file: str = "/proc/self/mountinfo"
) -> list[tuple[int, str]]:
    """(bytes left, what limits) of every cgroup memory limit on this process: its own
    cgroup's and its ancestors', in cgroup v2 and v1 (the memory controller)."""
    try:
        lines = _read(cgroup_file).splitlines()
        mounts = _read(mountinfo_file).splitlines()
    except OSError:
        return []
    paths: dict[str, str] = {}
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            paths["cgroup2"] = path
        elif "memory" in controllers.split(","):
            paths["cgroup"] = path
    found = []
    for line in mounts:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in paths:
            continue
        if tail[0] == "cgroup" and "memory" not in tail[2].split(","):
            continue
        mountpoint = _unescape(fields[4])
        directory = _cgroup_dir(mountpoint, _unescape(fields[3]), paths[tail[0]])
        while True:  # a parent's limit holds for its children too
            headroom = _cgroup_headroom(directory, tail[0])
            if headroom is not None:
                found.append(headroom)
            parent = os.path.dirname(directory)
            if directory == mountpoint or parent == directory:
                break
            directory = parent
    return found


def available_memory() -> tuple[int, str] | None:
    """The memory this process may still take, and what limits it.

    The tightest of the system's available memory (``MemAvailable`` in /proc/meminfo)
    and every cgroup memory limit on the process (cgroup v2 ``memory.max`` minus
    ``memory.current``, v1 ``memory.limit_in_bytes`` minus ``memory.usage_in_bytes``, of
    its cgroup and their parents; reclaimable page cache counts as room).

    Returns:
        ``(bytes, description)``, or None where none of these can be read (not Linux).
    """
    limits = _cgroup_limits()
    system = _meminfo_available()
    if system is not None:
        limits.append(system)
    return min(limits, key=lambda limit: limit[0]) if limits else None


def check_memory(nbytes: int, what: str = "shared memory pool") -> None:
    """Raise before allocating if ``nbytes`` more exceed :func:`available_memory`.

    A memory file, like tmpfs, allocates as it is written: an oversized pool would be
    created fine and kill a worker (the OOM killer, or SIGBUS) on a later write.

    Raises:
        OSError: ENOMEM, with the bytes needed, the limit found and what to change.
    """
    found = available_memory()
    if found is None or nbytes <= found[0]:
        return
    free, limit = found
    raise OSError(
        errno.ENOMEM,
        f"{what} needs {nbytes:,} bytes but {limit} leaves {max(free, 0):,}. "
        "Use fewer or smaller buffers (shared_memory=N, batch_size) or raise that limit "
        "(e.g. docker run --memory=...).",
    )


# The memfd_create flag that Linux 6.3 added and os does not name: a pool is data, never
# code (and newer kernels warn about a memory file created without saying so).
_MFD_NOEXEC_SEAL = 0x0008


def memory_file(name: str, size: int) -> int | None:
    """An anonymous memory file of ``size`` bytes, or None where there is none."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    for flags in (os.MFD_CLOEXEC | _MFD_NOEXEC_SEAL, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING):
        try:
            fd = create(name, flags)
            break
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: a kernel before 6.3; else ENOSYS, EPERM
                return None
    else:
        return None
    try:
        os.ftruncate(fd, size)
        import fcntl  # not on Windows, which has no memfd_create either

        # A file that can never shrink can never take pages from under a mapping (SIGBUS).
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


class MemoryFile:
    """A pool in an anonymous memory file: mapped here, inherited by forked children.

    Nothing of it has a name: the kernel frees it when the last process that holds the
    file or a mapping of it ends, however it ends.
    """

    name = None

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self._mmap: mmap.mmap | None = mmap.mmap(fd, size)
        self.buf: memoryview | None = memoryview(self._mmap)  # None once closed

    @classmethod
    def attach(cls, pid: int, fd: int, size: int, ident: tuple[int, int]) -> MemoryFile:
        """Open the memory file that process ``pid`` holds as ``fd`` (Linux's /proc)."""
        try:
            own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot open the anonymous shared memory pool of process {pid}: {exc}. "
                "Such a pool is inherited by forked processes; other processes need a "
                "named one (SharedBufferManager(..., anonymous=False)).",
            ) from None
        try:
            stat = os.fstat(own)
            if (stat.st_dev, stat.st_ino) != tuple(ident):
                raise OSError(errno.ENOENT, f"process {pid} no longer holds the shared memory pool")
            return cls(own, size)
        except BaseException:
            os.close(own)
            raise

    @property
    def ident(self) -> tuple[int, int]:
        stat = os.fstat(self.fd)
        return stat.st_dev, stat.st_ino

    def unlink(self) -> None:
        pass  # no name to remove

    def close(self) -> None:
        buf, mapping, self.buf, self._mmap = self.buf, self._mmap, None, None
        if buf is not None and mapping is not None:  # both set or both None
            try:
                buf.release()
                mapping.close()
            except BufferError:
                # Arrays still point into the mapping: it is unmapped when the last is freed.
                pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NamedSegment:
    """A pool in a named POSIX shared-memory segment (/dev/shm on Linux), for processes
    that attach by name: spawned workers, or where there is no anonymous memory file."""

    def __init__(self, name: str, size: int = 0, create: bool = False):
        # Attaching registers the name with the resource tracker again (bpo-39959). The
        # tracker is the parent's, so that is harmless; unregistering here would remove
        # the parent's entry and the cleanup it gives if the parent is killed.
        self._shm = shared_memory.SharedMemory(name=name, create=create, size=size)
        self.name = self._shm.name
        self.buf = self._shm.buf
        self._unlinked = False

    def unlink(self) -> None:
        if self._unlinked:
            return
        self._unlinked = True
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()

    def close(self) -> None:
        shm, self.buf = self._shm, None
        try:
            shm.close()
        except BufferError:
            # Arrays still point into the mapping: they keep it alive, and it is unmapped
            # when the last is freed. Only the file descriptor is ours to close now.
            shm._mmap = None  # type: ignore[attr-defined]
            if shm._fd >= 0:  # type: ignore[attr-defined]
                os.close(shm._fd)  # type: ignore[attr-defined]
                shm._fd = -1  # type: ignore[attr-defined]
