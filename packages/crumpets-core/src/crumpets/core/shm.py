"""Shared-memory buffer sets, and the messages that reference them instead of copying.

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

The plain msgpack codec (:func:`pack`, :func:`unpack`) lives in :mod:`crumpets.core._codec`
and is re-exported here, where crumpets 3 had it.
"""

from __future__ import annotations

import collections
import gc
import mmap
import os
import time
import uuid
import weakref
from typing import Any

import msgpack
import numpy as np

from ._buffers import make_buffer, make_bufferspec, make_fill_value
from ._codec import decode_ext, encode, pack, unpack
from ._memory import (
    MemoryFile,
    NamedSegment,
    available_memory,
    check_memory,
    check_shm_space,
    memory_file,
)

__all__ = [
    "DummyBufferManager",
    "SharedBufferManager",
    "available_memory",
    "check_memory",
    "check_shm_space",
    "pack",
    "shared_array",
    "unpack",
]

EXT_SHARED = 2
# Cache-line alignment keeps every buffer's rows aligned for vectorised kernels.
ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


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

    def next(self) -> dict[str, np.ndarray]:
        """Not supported, as in crumpets 3: there is no pool to take a set from.

        Raises:
            NotImplementedError: always; :meth:`buffers` makes fresh arrays.
        """
        raise NotImplementedError(
            "DummyBufferManager does not support next: it has no pool of buffer sets; "
            "buffers() makes fresh arrays"
        )

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

    crumpets 3's usage works too, with sender and receiver in the process that created
    the pool (threads): the sender calls :meth:`next` for a set of free buffers, fills
    them and sends :meth:`pack` of them; the receiver calls :meth:`unpack` and drops the
    arrays when done.

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
        fd = memory_file(name, self.nbytes) if anonymous else None
        self.anonymous = fd is not None
        what = f"shared memory pool ({self.num_buffers} buffer sets of {self.set_size:,} bytes)"
        try:
            if not self.anonymous:
                check_shm_space(self.nbytes, what=what)
            check_memory(self.nbytes, what=what)
            if fd is not None:
                self._shm: MemoryFile | NamedSegment = MemoryFile(fd, self.nbytes)
            else:
                self._shm = NamedSegment(name, self.nbytes, create=True)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        self._owner = os.getpid()
        self._attached = False  # True in a copy made by unpickling: it has no free sets
        self._map()
        self._free: collections.deque[int] = collections.deque(range(self.num_buffers))
        self._track_sets()

    def _track_sets(self) -> None:
        # Sets taken with next(): the lease of each while anything holds it, and those of
        # sets packed into a message that is not unpacked yet (the message owns them).
        self._taken: weakref.WeakValueDictionary[int, _Lease] = weakref.WeakValueDictionary()
        self._sent: dict[int, _Lease] = {}

    def _map(self) -> None:
        assert self._shm.buf is not None, "the pool is closed"
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
        skip = ("_shm", "_master", "_free", "_taken", "_sent")
        state = {k: v for k, v in self.__dict__.items() if k not in skip}
        shm = self._shm
        if isinstance(shm, MemoryFile):
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
            self._shm = MemoryFile.attach(pid, fd, self.nbytes, ident)
        else:
            self._shm = NamedSegment(name)
        self._attached = True
        self._map()
        self._free = collections.deque()
        self._track_sets()

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

    def next(self, timeout: float | None = None) -> dict[str, np.ndarray] | None:
        """Take a free buffer set out of the pool and return its buffers, as crumpets 3 did.

        Blocks until a set is free: another thread must drop what holds one. One array per
        buffer spec, each ``(batch_size,) + shape``, not reset to the fill values. The set
        belongs to the caller until nothing holds it any more: neither these arrays (nor
        views of them), nor a message :meth:`pack` made of them that is not unpacked yet,
        nor the arrays :meth:`unpack` made of that message; then it returns to the pool.
        A message that is packed but never unpacked keeps its set, and storing arrays
        permanently exhausts the pool: a ``next`` without timeout then waits forever.

        The pool's free sets live in the process that created it: a worker process gets
        its set's number with its request and writes into :meth:`buffers` of it.

        Args:
            timeout: seconds to wait for a free set; None waits as long as it takes.

        Returns:
            dict of name -> array, or None once the pool is closed (:meth:`close` wakes
            a thread waiting here).

        Raises:
            TimeoutError: no set became free within ``timeout`` seconds.
            RuntimeError: called in a process other than the pool's creator.
        """
        if self._attached or os.getpid() != self._owner:
            raise RuntimeError(
                "next() takes buffer sets from the pool of the process that created it; "
                "in another process, use buffers(slot) of the slot the request names"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, collected = 0.0, False
        while "_shm" in self.__dict__:
            slot = self.acquire()
            if slot is not None:
                lease = self.lease(slot)
                self._taken[slot] = lease
                return {
                    key: np.asarray(_SharedView(owner, lease))
                    for key, owner in self.buffers(slot).items()
                }
            if not collected:  # arrays in reference cycles hold sets until a collection
                gc.collect()
                collected = True
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no buffer set became free within {timeout:g} s")
            # Sets return from garbage collection, in whatever thread drops the last
            # array: there is nothing to wait on, so poll, briefly at first.
            delay = min(2 * delay or 1e-4, 0.01)
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            time.sleep(delay)
        return None

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
                offset = addr - self._base
                if self._taken:  # a set taken with next(): the message holds it too
                    lease = self._taken.get(offset // self.set_size)
                    if lease is not None:
                        self._sent[offset // self.set_size] = lease
                ref = [offset, obj.dtype.str, obj.shape, obj.strides]
                return msgpack.ExtType(EXT_SHARED, msgpack.packb(ref))
        return encode(obj)

    def pack(self, obj: Any) -> bytes:
        """Pack an object using msgpack. Shared arrays are replaced by references."""
        return msgpack.packb(obj, default=self._default, use_bin_type=True)

    def unpack(self, data: Any, lease: _Lease | None = None) -> Any:
        """Unpack a message; shared references become views that hold ``lease``.

        Without ``lease``, views of a set taken with :meth:`next` hold that set's lease.
        """
        received: set[int] = set()

        def ext_hook(code: int, payload: bytes) -> Any:
            if code != EXT_SHARED:
                return decode_ext(code, payload)
            offset, dtype, shape, strides = msgpack.unpackb(payload)
            owner = np.ndarray(shape, dtype, buffer=self._master, offset=offset, strides=strides)
            held = lease
            if held is None and self._taken:
                slot = offset // self.set_size
                held = self._taken.get(slot)
                received.add(slot)
            return np.asarray(_SharedView(owner, held))

        out = msgpack.unpackb(data, raw=False, ext_hook=ext_hook, strict_map_key=False)
        for slot in received:  # the views hold those sets now, not the message
            self._sent.pop(slot, None)
        return out

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
