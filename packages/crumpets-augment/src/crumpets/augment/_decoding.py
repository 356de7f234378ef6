"""Decoding image bytes with OpenCV, as small as the target allows: JPEGs at 1/2, 1/4 or
1/8 of their size by libjpeg, never below the resolution the output needs.

The workers decode to BGR (their RGBA conversion swaps the channels for free); the
reference's functions :func:`decode_opencv` and :func:`decode_image` return RGB (or gray
as HxWx1), as crumpets 3's did. EXIF orientation is ignored, so pixels, sizes and
keypoints refer to the stored pixel grid.

Two checks come before OpenCV sees the bytes. The size the header claims is compared with
``max_pixels``, so that a small file claiming a huge image (a decompression bomb) is
refused before anything is allocated for it; the header's size is read here for JPEG,
PNG, WebP, BMP, GIF and TIFF, and for the other formats OpenCV decodes (JPEG 2000, AVIF,
PNM, HDR, Sun raster) OpenCV's own limit applies (``OPENCV_IO_MAX_IMAGE_PIXELS``, 2**30
pixels unless set before cv2 is imported). And a JPEG or PNG must reach its end marker:
libjpeg and libpng decode a file that ends early into a partly grey image with only a
warning. Bytes after the end marker (a newline, a phone's appended video) are ignored, as
OpenCV and Pillow ignore them.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import cv2
import numpy as np

__all__ = ["decode_image", "decode_opencv", "image_size"]

# Pillow's default limit (Image.MAX_IMAGE_PIXELS): 89,478,485 pixels, 256 MiB as RGB.
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

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
        if data[i] != 0xFF:  # libjpeg skips bytes between segments (with a warning)
            skip = bytes(data[i:]).find(b"\xff")
            if skip < 0:
                return None
            i += skip
            continue
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


def _other_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(height, width) from a WebP, BMP, GIF or TIFF header, else None."""
    head = bytes(data[:30])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) == 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
            w, h = struct.unpack_from("<HH", head, 26)
            return h & 0x3FFF, w & 0x3FFF
        if chunk == b"VP8L":  # lossless: 14-bit sizes minus one, after the signature
            bits = int.from_bytes(head[21:25], "little")
            return (bits >> 14 & 0x3FFF) + 1, (bits & 0x3FFF) + 1
        if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
            w, h = int.from_bytes(head[24:27], "little"), int.from_bytes(head[27:30], "little")
            return h + 1, w + 1
        return None
    if head[:2] == b"BM" and len(head) >= 26:
        if head[14:18] == b"\x0c\x00\x00\x00":  # OS/2 header: 16-bit sizes
            w, h = struct.unpack_from("<HH", head, 18)
        else:  # a negative height means rows stored top-down
            w, h = struct.unpack_from("<ii", head, 18)
        return abs(h), abs(w)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        # OpenCV decodes onto the logical screen and refuses frames that leave it
        w, h = struct.unpack_from("<HH", head, 6)
        return h, w
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            return _tiff_size(data)
        except struct.error:  # a directory beyond the data
            return None
    return None


def _tiff_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(height, width) from the first image directory of a TIFF or BigTIFF (the image
    OpenCV decodes), else None."""
    order = "<" if data[:2] == b"II" else ">"
    if data[2:4] in (b"+\x00", b"\x00+"):  # BigTIFF: 8-byte offsets and counts
        offset_format, count_format, entry_size = "Q", "Q", 20
        (offset,) = struct.unpack_from(order + "Q", data, 8)
    else:
        offset_format, count_format, entry_size = "I", "H", 12
        (offset,) = struct.unpack_from(order + "I", data, 4)
    if offset >= len(data):  # (struct cannot seek to every 64-bit offset)
        return None
    (count,) = struct.unpack_from(order + count_format, data, offset)
    at = offset + struct.calcsize(count_format)
    value_at = 4 + struct.calcsize(offset_format)  # after tag, type and count
    # the value's format by field type: SHORT, LONG, LONG8
    formats = {3: "H", 4: "I", 16: "Q"}
    sizes: dict[int, int] = {}
    for entry in range(at, at + min(count, 1000) * entry_size, entry_size):
        tag, kind = struct.unpack_from(order + "HH", data, entry)
        if tag in (256, 257) and kind in formats:  # ImageWidth, ImageLength
            (sizes[tag],) = struct.unpack_from(order + formats[kind], data, entry + value_at)
            if len(sizes) == 2:
                return sizes[257], sizes[256]
    return None


def check_pixels(
    data: bytes | bytearray | memoryview,
    max_pixels: int | None,
    size: tuple[int, int] | None = None,
) -> None:
    """Refuse an image whose header claims more than ``max_pixels`` pixels, before any of
    it is decoded.

    Args:
        data: encoded image bytes.
        max_pixels: the most pixels allowed; None allows any number.
        size: the (height, width) :func:`image_size` gave, if the caller has it.

    Raises:
        ValueError: naming the claimed size and the limit.
    """
    if max_pixels is None:
        return
    if size is None:
        if data[:2] == b"\xff\xd8" or data[:8] == _PNG_MAGIC:
            # OpenCV would find a size where we did not: decoding to learn it is what a
            # bomb wants. A file cut before its frame header says so first.
            _check_complete(bytes(data))
            kind = "JPEG" if data[:2] == b"\xff\xd8" else "PNG"
            raise ValueError(
                f"{kind} header gives no image size ({len(data)} bytes): cannot check it "
                f"against max_pixels={max_pixels:,}; pass max_pixels=None to decode it anyway"
            )
        size = _other_size(data)
        if size is None:
            return
    h, w = size
    if h * w > max_pixels:
        raise ValueError(
            f"image header claims {w} x {h} pixels (width x height), {w * h:,} in all: more "
            f"than max_pixels={max_pixels:,} (a decompression bomb?); pass a larger "
            "max_pixels, or None, to decode it"
        )


def check_max_pixels(value: object) -> int | None:
    """``value`` as a pixel limit: a positive integer, or None for no limit.

    Raises:
        ValueError: for anything else.
    """
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if value >= 1:
            return int(value)
    raise ValueError(f"max_pixels must be a positive integer or None, got {value!r}")


# In entropy-coded data a 0xFF byte is followed by 0x00 (a stuffed 0xFF) or a restart
# marker (0xD0-0xD7): any other byte after 0xFF is the marker that ends the scan (0xFF
# fill bytes may come before it).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_EOI = b"\xff\xd9"


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG reaches its end-of-image marker: its segments walked by their
    lengths, and the entropy-coded data after each start of scan up to its next marker.
    An end marker inside a segment (an EXIF thumbnail's) is not the end."""
    n = len(data)
    i = 2
    while i + 1 < n:
        if data[i] != 0xFF:  # libjpeg skips bytes between segments, and so do we
            i = data.find(b"\xff", i)
            if i < 0:
                return False
            continue
        marker = data[i + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # a fill byte
            i += 1
        elif marker <= 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2  # a marker without a length, or FF 00, which libjpeg skips here too
        elif i + 3 >= n:
            return False
        else:
            i += 2 + (data[i + 2] << 8 | data[i + 3])
            if marker != 0xDA:
                continue
            # Start of scan. The usual file ends with its end marker: entropy-coded data
            # cannot hold FF D9, and the segments between the scans of a progressive file
            # (tables) never do as encoders write them. This spares scanning the data (a
            # few percent of the time decoding takes) for every file but one with a trailer.
            if data.endswith(_EOI) and i <= n - 2:
                return True
            scan_end = _SCAN_END.search(data, i)
            if scan_end is None:
                return False
            i = scan_end.start()
    return False


def _png_complete(data: bytes) -> bool:
    """Whether a PNG's chunks, walked by their lengths, reach a whole IEND chunk."""
    n = len(data)
    i = 8
    while i + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, i)
        i += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            return i <= n
    return False


def _check_complete(data: bytes) -> None:
    # libjpeg and libpng decode a file that ends early into a partly grey image with only
    # a warning; the end marker's absence tells us before we train on it.
    if data[:2] == b"\xff\xd8" and not _jpeg_complete(data):
        raise ValueError(f"truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    if data[:8] == _PNG_MAGIC and not _png_complete(data):
        raise ValueError(f"truncated PNG ({len(data)} bytes, no IEND chunk)")


def _describe(data: bytes) -> str:
    """The image bytes, for a message: their length, the size the header claims, and
    their first bytes."""
    size = image_size(data) or _other_size(data)
    claims = f", header claims {size[1]} x {size[0]} pixels" if size else ""
    return f"image ({len(data)} bytes{claims}, starting {bytes(data[:8])!r})"


def decode(data: bytes, color: bool, reduce: int = 1) -> np.ndarray:
    """Decode image bytes with OpenCV: BGR (HxWx3) if ``color``, else gray (HxW), as the
    workers want them (the BGR to RGB conversion folds into the warp's RGBA conversion).

    EXIF orientation is ignored, so pixels, sizes and keypoints refer to the stored
    pixel grid. ``reduce`` (2, 4 or 8) decodes a JPEG at that fraction of its size.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode.
        MemoryError: if OpenCV cannot allocate the image.
    """
    if isinstance(data, memoryview):
        data = bytes(data)
    _check_complete(data)
    if reduce == 1:
        flags = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    else:
        flags = _REDUCED[bool(color), reduce]
    reason = ""
    try:
        im = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        # OpenCV raises where it allocates the image, and asserts on empty input or a size
        # beyond its own limit, instead of returning None.
        reason = str(exc).strip().split("error: ", 1)[-1]
        if exc.code == cv2.Error.StsNoMem:
            raise MemoryError(f"out of memory decoding {_describe(data)}: {reason}") from None
        im = None
    if im is None:
        raise ValueError(f"cannot decode {_describe(data)}" + (f": {reason}" if reason else ""))
    return im


def _as_reference(im: np.ndarray) -> np.ndarray:
    # what crumpets 3's decoders return: RGB (HxWx3), or gray as HxWx1
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB) if im.ndim == 3 else im[:, :, None]


def decode_opencv(data: bytes, color: bool, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes with OpenCV: RGB (HxWx3) if ``color``, else gray (HxWx1).

    EXIF orientation is ignored, so pixels, sizes and keypoints refer to the stored
    pixel grid.

    Args:
        data: encoded image bytes.
        color: RGB (HxWx3) if True, else gray (HxWx1).
        max_pixels: refuse images whose header claims more pixels than this (Pillow's
            limit by default, about 89 million); None decodes any size.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode, or claims more
            than ``max_pixels`` pixels.
        MemoryError: if OpenCV cannot allocate the image.
    """
    check_pixels(data, max_pixels, image_size(data))
    return _as_reference(decode(data, color))


def decode_image(
    data: bytes,
    color: bool,
    min_height: int = 0,
    min_width: int = 0,
    min_factor: int = 2,
    *,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Decode image bytes, as small as allowed: JPEGs at 1/2, 1/4 or 1/8 scale if the
    result is still at least ``min_height`` x ``min_width``.

    Args:
        data: encoded image bytes.
        color: RGB (HxWx3) if True, else gray (HxWx1).
        min_height, min_width: the smallest size the decoded image may have.
        min_factor: the smallest reduction worth doing: 2 (the default) allows 2, 4 and 8;
            4 allows 4 and 8; above 8 nothing is reduced.
        max_pixels: refuse images whose header claims more pixels than this, whatever
            the reduction (Pillow's limit by default, about 89 million); None decodes any
            size.

    Returns:
        The pixels, RGB or gray.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode, or claims more
            than ``max_pixels`` pixels.
        MemoryError: if OpenCV cannot allocate the image.
    """
    size = image_size(data)
    check_pixels(data, max_pixels, size)
    factor = 1
    if size is not None and data[:2] == b"\xff\xd8":
        factor = _reduction(size, min_height, min_width, min_factor)
    return _as_reference(decode(data, color, factor))


def _reduction(size: tuple[int, int], min_height: int, min_width: int, min_factor: int = 2) -> int:
    """The largest JPEG reduction (8, 4, 2 from ``min_factor`` up, else 1) that keeps a
    (height, width) image at least min_height x min_width (libjpeg rounds reduced sizes
    up)."""
    h, w = size
    for f in (8, 4, 2):
        if f >= min_factor and -(-h // f) >= min_height and -(-w // f) >= min_width:
            return f
    return 1


def read_source(
    src: Any, color: bool, max_pixels: int | None = MAX_PIXELS
) -> tuple[Any, tuple[int, int]]:
    """Check an image argument: encoded bytes or a uint8 array. Return it (decoded when it
    is neither JPEG nor PNG, whose sizes the header gives) and its (height, width).

    Encoded images whose header claims more than ``max_pixels`` pixels are refused
    (:func:`check_pixels`) before anything is decoded."""
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or not (src.ndim == 2 or src.ndim == 3 and src.shape[2] in (1, 3)):
            raise ValueError(
                f"image arrays must be uint8, HxW, HxWx1 or HxWx3; got {src.dtype} {src.shape}"
            )
        source_size = src.shape[:2]
    elif isinstance(src, (bytes, bytearray, memoryview)):
        source_size = image_size(src)
        check_pixels(src, max_pixels, source_size)
    else:
        raise TypeError(f"image must be encoded bytes or a uint8 array, got {type(src).__name__}")
    if source_size is None:  # neither JPEG nor PNG: decode to learn the size
        src = decode(src, color)
        src = cv2.cvtColor(src, cv2.COLOR_BGR2RGB) if color else src
        source_size = src.shape[:2]
    if min(source_size) < 1:
        raise ValueError(f"image has no pixels: {source_size[0]} x {source_size[1]}")
    return src, tuple(source_size)
