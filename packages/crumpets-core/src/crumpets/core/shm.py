"""Shared-memory buffer sets and the msgpack codec that references them.

One shared mapping holds ``num_buffers`` buffer sets; a set holds one array per buffer
spec, each ``(batch_size,) + shape``. The loader's main process hands a free set (a
*slot*) to a worker with each request; the worker writes the whole batch into it and
sends back a small message in which arrays living in the mapping are replaced by
references (offset, dtype, shape, strides). The main process turns those references into
views of its own mapping. Every view of a slot keeps a lease object alive; when the last
view is garbage-collected the lease returns the slot to the pool. Nothing is copied, and
memory is bounded by ``num_buffers`` sets.

On Linux the pool is an anonymous memory file (``memfd_create``) that forked workers
inherit: it has no name in /dev/shm, so /dev/shm's size (64 MB in a default Docker
container) does not limit it and no kill can leave it behind; the kernel frees it when
the last process holding it ends. Elsewhere, and for spawned workers, it is a named
segment in /dev/shm whose name is removed as soon as every worker has mapped it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import mmap
import os
import re
import shutil
import uuid
import weakref
from multiprocessing import shared_memory
from typing import Any

import msgpack
import numpy as np

from ._buffers import make_buffer, make_bufferspec, make_fill_value

EXT_NDARRAY = 1
EXT_SHARED = 2
# Cache-line alignment keeps every buffer's rows aligned for vectorised kernels.
ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _pack_array(arr: np.ndarray) -> msgpack.ExtType:
    if arr.dtype.hasobject:
        raise TypeError(f"cannot pack an array of dtype {arr.dtype}; use a numeric dtype")
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d
    raw = memoryview(arr.reshape(-1).view(np.uint8))
    return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([arr.dtype.str, arr.shape, raw]))


def _unpack_array(data: bytes) -> np.ndarray:
    dtype, shape, raw = msgpack.unpackb(data)
    # bytes are read-only; a writable copy behaves like any other array downstream
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot pack object of type {type(obj).__name__} with msgpack")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        return _unpack_array(data)
    return msgpack.ExtType(code, data)


def _msgpack_numpy_hook(obj: dict) -> Any:
    # Datasets written with msgpack_numpy encode arrays as dicts; decode them too.
    nd = obj.get(b"nd", obj.get("nd"))
    if nd is None or len(obj) > 5:
        return obj
    get = obj.get
    dtype, data = get(b"type", get("type")), get(b"data", get("data"))
    if dtype is None or data is None:
        return obj
    dtype = np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype)
    if nd is True:
        return np.frombuffer(data, dtype=dtype).reshape(get(b"shape", get("shape"))).copy()
    return np.frombuffer(data, dtype=dtype)[0]


def pack(obj: Any) -> bytes:
    """Pack an object with msgpack; numpy arrays and scalars are supported."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def unpack(data: Any) -> Any:
    """Unpack msgpack bytes made by :func:`pack` (or by msgpack_numpy)."""
    return msgpack.unpackb(
        data, raw=False, ext_hook=_ext_hook, object_hook=_msgpack_numpy_hook, strict_map_key=False
    )


def shared_array(shape: Any, dtype: Any = np.float32) -> np.ndarray:
    """Create a numpy array that resides in shared memory, inherited by forked children.

    The memory is an anonymous shared mapping: it is released when the last process
    holding it drops the array, so it cannot leak a /dev/shm entry.

    Args:
        shape: array shape.
        dtype: numpy dtype.

    Returns:
        np.ndarray
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = mmap.mmap(-1, max(nbytes, 1))
    return np.frombuffer(buf, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)


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


def _memory_file(name: str, size: int) -> int | None:
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


class _MemoryFile:
    """A pool in an anonymous memory file: mapped here, inherited by forked children.

    Nothing of it has a name: the kernel frees it when the last process that holds the
    file or a mapping of it ends, however it ends.
    """

    name = None

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self._mmap = mmap.mmap(fd, size)
        self.buf = memoryview(self._mmap)

    @classmethod
    def attach(cls, pid: int, fd: int, size: int, ident: tuple[int, int]) -> _MemoryFile:
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
        if buf is not None:
            try:
                buf.release()
                mapping.close()
            except BufferError:
                # Arrays still point into the mapping: it is unmapped when the last is freed.
                pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _NamedSegment:
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


class _Lease:
    """Alive as long as any view of one buffer set is; see SharedBufferManager.unpack."""

    __slots__ = ("__weakref__",)


class _SharedView:
    # numpy keeps the object an array was made from as its ``base``: the view holds
    # the lease, and the lease returns the slot when every view is gone.
    __slots__ = ("__array_interface__", "owner", "lease")

    def __init__(self, owner: np.ndarray, lease: _Lease | None):
        self.__array_interface__ = owner.__array_interface__
        self.owner = owner
        self.lease = lease


class _BufferManagerBase:
    """Buffer specs and per-slot buffers, shared by the shared and the dummy manager."""

    def __init__(self, batch_size: int, buffer_specs: dict[str, Any]):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.buffer_specs = {k: make_bufferspec(v) for k, v in buffer_specs.items()}
        self._fill = {k: make_fill_value(*spec) for k, spec in self.buffer_specs.items()}

    def fill(self, buffers: dict[str, np.ndarray], n: int) -> None:
        """Reset the first ``n`` rows of ``buffers`` to their fill values."""
        for key, arr in buffers.items():
            arr[:n] = self._fill[key]


class DummyBufferManager(_BufferManagerBase):
    """Replacement for SharedBufferManager when shared memory is off.

    Workers get fresh arrays for every batch, which travel inside the msgpack message.
    """

    num_buffers = 0

    def buffers(self, slot: int | None = None) -> dict[str, np.ndarray]:
        """Fresh arrays, one per buffer spec, each ``(batch_size,) + shape``."""
        return {k: make_buffer(self.batch_size, *spec) for k, spec in self.buffer_specs.items()}

    def fill(self, buffers: dict[str, np.ndarray], n: int) -> None:
        pass  # make_buffer already filled them

    def acquire(self) -> int | None:
        return None

    def release(self, slot: int | None) -> None:
        pass

    def pack(self, obj: Any) -> bytes:
        """Pack an object using msgpack; arrays are copied into the message."""
        return pack(obj)

    def unpack(self, data: Any, lease: Any = None) -> Any:
        """Unpack a msgpack message made by :meth:`pack`."""
        return unpack(data)

    def unlink(self) -> None:
        pass

    def close(self) -> None:
        pass


class SharedBufferManager(_BufferManagerBase):
    """``num_buffers`` sets of batch buffers in one shared memory mapping.

    Usage: the main process calls :meth:`acquire` for a free slot and sends its number
    with the request; the worker fills :meth:`buffers` of that slot and sends
    :meth:`pack` of its result; the main process calls :meth:`lease` and :meth:`unpack`
    with it. The slot is free again once every array returned by :meth:`unpack` is gone.
    Storing those arrays permanently exhausts the pool; the loader detects that and
    raises instead of waiting forever.

    The memory is an anonymous memory file where the system has one (Linux's
    ``memfd_create``) and ``anonymous`` is True: forked processes inherit its mapping,
    /dev/shm's size does not limit it, and it is freed when the last process holding it
    ends, however it ends. Otherwise it is a segment named ``crumpets_<pid>_...`` in
    /dev/shm, which other processes attach to by name (a pickled manager does); call
    :meth:`unlink` once they have, so that no kill can leave the name behind.

    Args:
        num_buffers: number of buffer sets.
        batch_size: rows per buffer.
        buffer_specs: dict of name -> ``(shape, dtype[, fill_value])`` or template array.
        anonymous: False for a named segment, e.g. for spawned (not forked) workers.

    Attributes:
        nbytes: size of the pool in bytes.
        address: address of its first byte in this process (e.g. to pin it for CUDA).
        anonymous: whether the pool is an anonymous memory file (else a named segment).

    Raises:
        OSError: ENOMEM if the available memory (or a cgroup's memory limit) cannot
            hold the pool; ENOSPC if /dev/shm cannot hold a named one. The message gives
            the bytes needed, the limit found and what to change.
    """

    def __init__(
        self,
        num_buffers: int,
        batch_size: int,
        buffer_specs: dict[str, Any],
        *,
        anonymous: bool = True,
    ):
        super().__init__(batch_size, buffer_specs)
        if int(num_buffers) < 1:
            raise ValueError(f"num_buffers must be >= 1, got {num_buffers}")
        self.num_buffers = int(num_buffers)
        self._layout: dict[str, int] = {}
        offset = 0
        for key, (shape, dtype, _) in self.buffer_specs.items():
            self._layout[key] = offset
            offset += _align(self.batch_size * int(np.prod(shape)) * dtype.itemsize)
        self.set_size = max(offset, ALIGN)
        self.nbytes = self.set_size * self.num_buffers
        # The pid in the name tells whose pool it is (/dev/shm, or /proc/PID/fd of a memfd).
        name = f"crumpets_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        fd = _memory_file(name, self.nbytes) if anonymous else None
        self.anonymous = fd is not None
        what = f"shared memory pool ({self.num_buffers} buffer sets of {self.set_size:,} bytes)"
        try:
            if not self.anonymous:
                check_shm_space(self.nbytes, what=what)
            check_memory(self.nbytes, what=what)
            if fd is not None:
                self._shm: _MemoryFile | _NamedSegment = _MemoryFile(fd, self.nbytes)
            else:
                self._shm = _NamedSegment(name, self.nbytes, create=True)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        self._owner = os.getpid()
        self._map()
        self._free: collections.deque[int] = collections.deque(range(self.num_buffers))

    def _map(self) -> None:
        self._master = np.frombuffer(self._shm.buf, dtype=np.uint8, count=self.nbytes)
        self._base = self._master.__array_interface__["data"][0]

    @property
    def address(self) -> int:
        """Address of the pool's first byte in this process's memory."""
        return self._base

    @property
    def name(self) -> str | None:
        """The segment's name in /dev/shm; None for an anonymous pool."""
        return self._shm.name

    def unlink(self) -> None:
        """Remove a named pool's name, once every process that needs it has mapped it.

        Mappings stay valid, and the memory is freed when the last is gone; no process can
        attach any more. The loader calls this when every worker has reported ready.
        Does nothing for an anonymous pool (it has no name) or outside the creator.
        """
        shm = self.__dict__.get("_shm")
        if shm is not None and os.getpid() == self._owner:
            shm.unlink()

    # -- pickling, for workers started with "spawn": attach by name -------------------
    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_shm", "_master", "_free")}
        shm = self._shm
        if isinstance(shm, _MemoryFile):
            # Another process can open it through /proc while this one holds it (Linux).
            state["memfd"] = (os.getpid(), shm.fd, shm.ident)
        else:
            state["name"] = shm.name
        return state

    def __setstate__(self, state: dict) -> None:
        memfd, name = state.pop("memfd", None), state.pop("name", None)
        self.__dict__.update(state)
        if memfd is not None:
            pid, fd, ident = memfd
            self._shm = _MemoryFile.attach(pid, fd, self.nbytes, ident)
        else:
            self._shm = _NamedSegment(name)
        self._map()
        self._free = collections.deque()

    # -- main process: the pool --------------------------------------------------------
    def acquire(self) -> int | None:
        """A free slot number, or None when every buffer set is in use."""
        try:
            return self._free.popleft()
        except IndexError:
            return None

    def release(self, slot: int) -> None:
        """Return a slot whose result will never be unpacked (discarded or failed)."""
        self._free.append(slot)

    def lease(self, slot: int) -> _Lease:
        """A lease that returns ``slot`` to the pool when it is garbage-collected."""
        lease = _Lease()
        weakref.finalize(lease, self._free.append, slot)
        return lease

    @property
    def free(self) -> int:
        return len(self._free)

    # -- worker: the buffers of one slot -----------------------------------------------
    def buffers(self, slot: int) -> dict[str, np.ndarray]:
        """Arrays of buffer set ``slot``, one per spec, each ``(batch_size,) + shape``."""
        start = slot * self.set_size
        out = {}
        for key, (shape, dtype, _) in self.buffer_specs.items():
            out[key] = np.ndarray(
                (self.batch_size,) + shape,
                dtype,
                buffer=self._master,
                offset=start + self._layout[key],
            )
        return out

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            addr = obj.__array_interface__["data"][0]
            if self._base <= addr < self._base + self.nbytes:
                ref = [addr - self._base, obj.dtype.str, obj.shape, obj.strides]
                return msgpack.ExtType(EXT_SHARED, msgpack.packb(ref))
        return _default(obj)

    def pack(self, obj: Any) -> bytes:
        """Pack an object using msgpack. Shared arrays are replaced by references."""
        return msgpack.packb(obj, default=self._default, use_bin_type=True)

    def unpack(self, data: Any, lease: _Lease | None = None) -> Any:
        """Unpack a message; shared references become views that hold ``lease``."""

        def ext_hook(code: int, payload: bytes) -> Any:
            if code != EXT_SHARED:
                return _ext_hook(code, payload)
            offset, dtype, shape, strides = msgpack.unpackb(payload)
            owner = np.ndarray(shape, dtype, buffer=self._master, offset=offset, strides=strides)
            return np.asarray(_SharedView(owner, lease))

        return msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=False)

    def close(self) -> None:
        """Release the pool. Views still held keep their memory until they are gone."""
        shm = self.__dict__.pop("_shm", None)
        if shm is None:
            return
        self.__dict__.pop("_master", None)
        if os.getpid() == self._owner:
            shm.unlink()
        shm.close()

    def __del__(self) -> None:
        if getattr(self, "_owner", None) == os.getpid():
            self.close()
