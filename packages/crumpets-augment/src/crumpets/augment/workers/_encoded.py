"""The byte buffers of ``gpu_decode``: image workers write a sample's encoded bytes, and
(byte count, sample index, epoch), instead of its pixels, for a loader that decodes and
warps them itself (crumpets-torch's ``TorchTurboDataLoader(gpu_decode=True)``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from crumpets.core.broker import BufferWorker

__all__ = ["check_encoded", "swap_buffers", "write_encoded"]


def swap_buffers(
    worker: BufferWorker, keys: tuple[str, ...], max_bytes: int | None, decoded: dict[str, Any]
) -> dict[str, Any]:
    """Put ``worker``'s pixel buffers ``decoded`` (name -> spec) back, then, unless
    ``max_bytes`` is None, replace those named in ``keys`` by ``NAME_bytes`` (``max_bytes``
    uint8) and ``NAME_info`` (3 int64). Returns the pixel specs replaced.

    Raises:
        ValueError: ``max_bytes`` is not a positive integer.
    """
    # copies: a loader does this to a shallow copy of the user's worker
    worker.buffer_specs = dict(worker.buffer_specs)
    worker.written_in_full = set(worker.written_in_full)
    for key, spec in decoded.items():
        worker.buffer_specs.pop(f"{key}_bytes", None)
        worker.buffer_specs.pop(f"{key}_info", None)
        worker.written_in_full -= {f"{key}_bytes", f"{key}_info"}
        worker.buffer_specs[key] = spec
        worker.written_in_full.add(key)
    if max_bytes is None:
        return {}
    valid = isinstance(max_bytes, (int, np.integer)) and not isinstance(max_bytes, bool)
    if not valid or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    replaced = {}
    for key in keys:
        replaced[key] = worker.buffer_specs.pop(key)
        worker.written_in_full.discard(key)
        worker.add_buffer(f"{key}_bytes", ((int(max_bytes),), np.uint8, 0))
        worker.add_buffer(f"{key}_info", ((3,), np.int64, 0))
        # only a sample's first bytes are read: no need to clear the rest per batch
        worker.written_in_full |= {f"{key}_bytes", f"{key}_info"}
    return replaced


def check_encoded(im: Any, key: str, colorspace: str, shape: tuple[int, ...]) -> None:
    """Refuse what the loader's decoders cannot give: colour spaces other than RGB and
    gray, and images that are not encoded bytes.

    Raises:
        ValueError, TypeError: naming the buffer.
    """
    if colorspace not in ("rgb", "gray") or (shape[0] == 1) != (colorspace == "gray"):
        raise ValueError(
            f"gpu_decode gives RGB or gray images: colorspace {colorspace!r} for buffer "
            f"{key!r} of shape {shape} needs the CPU workers (gpu_decode=False)"
        )
    if not isinstance(im, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"gpu_decode needs encoded images (bytes): {key!r} is a {type(im).__name__}"
        )


def write_encoded(im: Any, buffers: dict, key: str, index: int | None, epoch: int | None) -> None:
    """Write the encoded image ``im`` of sample ``index`` into ``buffers``.

    Raises:
        ValueError: it has more bytes than its buffer holds (naming the sample and the
            loader's option that sets the size).
    """
    data = np.frombuffer(im, np.uint8)
    out = buffers[f"{key}_bytes"]
    if data.size > out.size:
        raise ValueError(
            f"image {key!r} of sample {index} has {data.size:,} encoded bytes, more than "
            f"gpu_decode's byte buffer holds per sample ({out.size:,}); pass a larger "
            "gpu_decode_bytes to TorchTurboDataLoader"
        )
    out[: data.size] = data
    buffers[f"{key}_info"][:] = (data.size, index or 0, epoch or 0)
