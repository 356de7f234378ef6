"""The msgpack codec for samples and batches: numpy arrays and scalars in msgpack messages.

An array travels as msgpack extension type :data:`EXT_NDARRAY` (dtype, shape, raw bytes);
a numpy scalar as the plain Python number. :func:`unpack` also reads arrays that
msgpack_numpy wrote as dicts, as datasets made with crumpets 3 hold them. The buffer pool
(:mod:`crumpets.core.shm`) builds on :func:`encode` and :func:`decode_ext` and adds its
own extension type for arrays in shared memory.

:func:`pack` and :func:`unpack` are public as ``crumpets.core.pack``/``unpack`` and
``crumpets.core.shm.pack``/``unpack``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

__all__ = ["EXT_NDARRAY", "decode_ext", "encode", "pack", "unpack"]

EXT_NDARRAY = 1


def _pack_array(arr: np.ndarray) -> msgpack.ExtType:
    if arr.dtype.hasobject:
        raise TypeError(f"cannot pack an array of dtype {arr.dtype}; use a numeric dtype")
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d
    raw = arr.reshape(-1).view(np.uint8).data  # a memoryview of the bytes, not a copy
    return msgpack.ExtType(EXT_NDARRAY, msgpack.packb([arr.dtype.str, arr.shape, raw]))


def _unpack_array(data: bytes) -> np.ndarray:
    dtype, shape, raw = msgpack.unpackb(data)
    # bytes are read-only; a writable copy behaves like any other array downstream
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def encode(obj: Any) -> Any:
    """msgpack's ``default`` hook: numpy arrays and scalars; TypeError for anything else."""
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot pack object of type {type(obj).__name__} with msgpack")


def decode_ext(code: int, data: bytes) -> Any:
    """msgpack's ``ext_hook``: arrays; other extension types are returned as they are."""
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
    return msgpack.packb(obj, default=encode, use_bin_type=True)


def unpack(data: Any) -> Any:
    """Unpack msgpack bytes made by :func:`pack` (or by msgpack_numpy)."""
    return msgpack.unpackb(
        data, raw=False, ext_hook=decode_ext, object_hook=_msgpack_numpy_hook, strict_map_key=False
    )
