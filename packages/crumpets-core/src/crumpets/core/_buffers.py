"""Buffer specifications: what a worker writes per sample, declared up front.

A buffer spec is ``(shape, dtype, fill_value)`` for one sample; the loader allocates
``(batch_size,) + shape`` per buffer, so shared memory can be sized before any process
starts. Re-exported by :mod:`crumpets.core.broker`, where the reference documents them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

BufferSpec = tuple[tuple[int, ...], np.dtype, Any]


def make_fill_value(shape: tuple[int, ...], dtype: Any, fill_value: Any = 0) -> np.ndarray:
    """Create an array that fills any array of the given shape and dtype.

    ``arr[:] = make_fill_value(arr.shape[1:], arr.dtype, 17)`` sets every element of a
    batch ``arr`` to 17. An implicit first dimension for the batch is added. An iterable
    ``fill_value`` gives one value per channel (the first dimension of ``shape``) and is
    padded with unit dimensions, e.g. ``make_fill_value((3, 224, 224), np.uint8, (1, 2, 3))``
    has shape ``(1, 3, 1, 1)``.

    Args:
        shape: shape of one sample.
        dtype: numpy dtype.
        fill_value: a scalar, or one value per channel.

    Returns:
        The fill value array.

    Raises:
        ValueError: if an iterable fill value does not have one value per channel.
    """
    shape = tuple(shape)
    if isinstance(fill_value, Iterable) and not isinstance(fill_value, (str, bytes)):
        values = np.asarray(list(fill_value), dtype=dtype)
        if values.ndim != 1 or not shape or values.shape[0] != shape[0]:
            raise ValueError(
                f"fill_value {list(fill_value)!r} must be a scalar or have one value per "
                f"channel (first dimension of shape {shape})"
            )
        return values.reshape((1, values.shape[0]) + (1,) * (len(shape) - 1))
    return np.full((1,) * (len(shape) + 1), fill_value, dtype=dtype)


def make_bufferspec(buf: Any) -> BufferSpec:
    """Turn an array or a ``(shape, dtype[, fill_value])`` tuple into a buffer spec.

    Args:
        buf: ``np.ndarray`` (template for one sample) or buffer spec.

    Returns:
        ``(shape, dtype, fill_value)`` with a tuple shape and a ``np.dtype``.

    Raises:
        TypeError: if ``buf`` is neither an array nor a 2- or 3-tuple.
        ValueError: if the shape has non-positive sizes or the fill value does not fit.
    """
    if isinstance(buf, np.ndarray):
        shape, dtype, fill = buf.shape, buf.dtype, 0
    elif isinstance(buf, (tuple, list)) and len(buf) in (2, 3):
        shape, dtype = buf[0], buf[1]
        fill = buf[2] if len(buf) == 3 else 0
    else:
        raise TypeError(f"a buffer spec is (shape, dtype[, fill_value]) or an array, got {buf!r}")
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise ValueError(f"buffer shape {shape} must have positive sizes")
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ValueError(f"buffer dtype {dtype} holds Python objects; use a numeric dtype")
    make_fill_value(shape, dtype, fill)  # fail here, not in a worker
    return shape, dtype, fill


def make_buffer(batchsize: int, shape: tuple[int, ...], dtype: Any, fill_value: Any = 0):
    """Create an array of shape ``(batchsize,) + shape`` pre-filled with ``fill_value``."""
    arr = np.empty((batchsize,) + tuple(shape), dtype=dtype)
    arr[...] = make_fill_value(shape, dtype, fill_value)
    return arr
