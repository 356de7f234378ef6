"""Decoding image bytes with OpenCV, as small as the target allows: JPEGs at 1/2, 1/4 or
1/8 of their size by libjpeg, never below the resolution the output needs.

The workers decode to BGR (their RGBA conversion swaps the channels for free); the
reference's functions :func:`decode_opencv` and :func:`decode_image` return RGB (or gray
as HxWx1), as crumpets 3's did. EXIF orientation is ignored, so pixels, sizes and
keypoints refer to the stored pixel grid.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

__all__ = ["decode_image", "decode_opencv", "image_size"]

_REDUCED = {
    (True, 2): cv2.IMREAD_REDUCED_COLOR_2,
    (True, 4): cv2.IMREAD_REDUCED_COLOR_4,
    (True, 8): cv2.IMREAD_REDUCED_COLOR_8,
    (False, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (False, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (False, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header without decoding, else None."""
    if data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG), CC (DAC) do not
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[i + 5] << 8 | data[i + 6], data[i + 7] << 8 | data[i + 8]
        i += 2 + (data[i + 2] << 8 | data[i + 3])  # big-endian segment length
    return None


def _check_complete(data: bytes) -> None:
    # libjpeg and libpng decode a truncated file into a partly grey image with only a
    # warning; a missing end marker tells us before we train on it.
    tail = bytes(data[-64:]).rstrip(b"\0")
    if data[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9"):
        raise ValueError(f"truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    if data[:8] == _PNG_MAGIC and b"IEND" not in tail:
        raise ValueError(f"truncated PNG ({len(data)} bytes, no IEND chunk)")


def _decode(data: bytes, color: bool, reduce: int = 1) -> np.ndarray:
    """Decode image bytes with OpenCV: BGR (HxWx3) if ``color``, else gray (HxW), as the
    workers want them (the BGR to RGB conversion folds into the warp's RGBA conversion).

    EXIF orientation is ignored, so pixels, sizes and keypoints refer to the stored
    pixel grid. ``reduce`` (2, 4 or 8) decodes a JPEG at that fraction of its size.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode.
    """
    _check_complete(data)
    if reduce == 1:
        flags = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    else:
        flags = _REDUCED[bool(color), reduce]
    try:
        im = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # OpenCV asserts on empty input instead of returning None
        im = None
    if im is None:
        head = bytes(data[:8])
        raise ValueError(f"cannot decode image ({len(data)} bytes, starting {head!r})")
    return im


def _as_reference(im: np.ndarray) -> np.ndarray:
    # what crumpets 3's decoders return: RGB (HxWx3), or gray as HxWx1
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB) if im.ndim == 3 else im[:, :, None]


def decode_opencv(data: bytes, color: bool) -> np.ndarray:
    """Decode image bytes with OpenCV: RGB (HxWx3) if ``color``, else gray (HxWx1).

    EXIF orientation is ignored, so pixels, sizes and keypoints refer to the stored
    pixel grid.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode.
    """
    return _as_reference(_decode(data, color))


def decode_image(
    data: bytes, color: bool, min_height: int = 0, min_width: int = 0, min_factor: int = 2
) -> np.ndarray:
    """Decode image bytes, as small as allowed: JPEGs at 1/2, 1/4 or 1/8 scale if the
    result is still at least ``min_height`` x ``min_width``.

    Args:
        data: encoded image bytes.
        color: RGB (HxWx3) if True, else gray (HxWx1).
        min_height, min_width: the smallest size the decoded image may have.
        min_factor: the smallest reduction worth doing: 2 (the default) allows 2, 4 and 8;
            4 allows 4 and 8; above 8 nothing is reduced.

    Returns:
        The pixels, RGB or gray.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode.
    """
    size = image_size(data) if data[:2] == b"\xff\xd8" else None
    factor = 1 if size is None else _reduction(size, min_height, min_width, min_factor)
    return _as_reference(_decode(data, color, factor))


def _reduction(size: tuple[int, int], min_height: int, min_width: int, min_factor: int = 2) -> int:
    """The largest JPEG reduction (8, 4, 2 from ``min_factor`` up, else 1) that keeps a
    (height, width) image at least min_height x min_width (libjpeg rounds reduced sizes
    up)."""
    h, w = size
    for f in (8, 4, 2):
        if f >= min_factor and -(-h // f) >= min_height and -(-w // f) >= min_width:
            return f
    return 1
