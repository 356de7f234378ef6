"""Decoding: decompression bombs refused by their header's size (max_pixels), and files with
bytes after their end marker decoded like the file without them, while files that end
early are still refused."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from _photos import encode, photo

from crumpets.augment import ClassificationWorker, ImageWorker
from crumpets.augment.augmentation import decode_image, decode_opencv, transform_image
from crumpets.core import TurboDataLoader, pack

GIB = 1 << 30
SIDE = 30000  # the bombs claim SIDE x SIDE pixels


def jpeg(rgb: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return buf.tobytes()


def jpeg_bomb(progressive: bool) -> bytes:
    """An 8x8 JPEG whose frame header claims SIDE x SIDE (about 600 bytes)."""
    flags = (cv2.IMWRITE_JPEG_PROGRESSIVE, 1) if progressive else ()
    data = bytearray(jpeg(np.full((8, 8, 3), 128, np.uint8), *flags))
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", SIDE, SIDE)  # height, width
    return bytes(data)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb() -> bytes:
    """A valid all-black gray SIDE x SIDE PNG (about 875 KB), built from one compressed
    block of rows repeated: after a full flush, deflate blocks do not refer back."""
    row = bytes(1 + SIDE)  # filter type 0 and black pixels
    rows = 1000
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(row * rows) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = (SIDE * len(row)) % 65521 << 16 | 1  # the Adler-32 of that many zero bytes
    stream = b"\x78\xda" + block * (SIDE // rows) + deflate.flush() + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 0, 0, 0, 0)  # 8-bit gray
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", stream)
        + png_chunk(b"IEND", b"")
    )


# Runs in its own process, its address space capped (so that a regression cannot take the
# machine's memory), and reports each path's error and the peak memory of the process that
# decoded: itself for decode_image and decode_opencv, its loader's worker for the loader.
BOMB_SCRIPT = """
import json, resource, sys
cap = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import cv2
import numpy as np
from crumpets.augment import ClassificationWorker
from crumpets.augment.augmentation import decode_image, decode_opencv
from crumpets.core import TurboDataLoader, pack

data = open(sys.argv[1], "rb").read()
limit = {} if sys.argv[2] == "default" else {"max_pixels": None}
errors = {}

def attempt(name, call):
    try:
        call()
        errors[name] = None
    except Exception as exc:
        # the message, and the line naming the worker and the sample
        errors[name] = f"{type(exc).__name__}: " + " ".join(str(exc).splitlines()[:2])

attempt("decode_image", lambda: decode_image(data, True, **limit))
attempt("decode_opencv", lambda: decode_opencv(data, True, **limit))
decoder_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
good = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
items = [pack({"image": good, "label": 0})] * 4
items[2] = pack({"image": data, "label": 0})
worker = ClassificationWorker(((3, 32, 32), np.uint8), ((1,), np.int64), **limit)

def load():
    with TurboDataLoader(items, 2, worker, 1, seed=0, stall_timeout=60) as loader:
        for _ in loader:
            pass

attempt("loader", load)
worker_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"errors": errors, "decoder_kib": decoder_kib, "worker_kib": worker_kib}))
"""


def run_bomb(tmp_path, data: bytes, limit: str, cap: int) -> dict:
    path = tmp_path / "bomb"
    path.write_bytes(data)
    args = [sys.executable, "-c", BOMB_SCRIPT, str(path), limit, str(cap)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    print(report)  # the peak memory figures, shown with -s
    return report


def with_stray_byte(data: bytes) -> bytes:
    """A stray byte between the JPEG's first two segments: libjpeg skips it (with a
    warning), so the header must be read past it too."""
    after_app0 = 4 + (data[4] << 8 | data[5])
    return data[:after_app0] + b"\x00" + data[after_app0:]


BOMBS = {
    "jpeg": lambda: jpeg_bomb(False),
    "progressive-jpeg": lambda: jpeg_bomb(True),
    "jpeg-with-a-stray-byte": lambda: with_stray_byte(jpeg_bomb(False)),
    "png": png_bomb,
}


@pytest.mark.parametrize("kind", BOMBS)
def test_decompression_bomb_is_refused_before_decoding(tmp_path, kind):
    report = run_bomb(tmp_path, BOMBS[kind](), "default", 3 * GIB)
    for path, error in report["errors"].items():
        assert error is not None, f"{path} decoded the {kind} bomb"
        assert error.startswith("ValueError"), f"{path}: {error}"
        assert f"{SIDE} x {SIDE}" in error and "max_pixels" in error, f"{path}: {error}"
    assert "on sample 2 (" in report["errors"]["loader"]
    # refused before any large allocation: the memory a process needs to run at all
    assert report["decoder_kib"] << 10 < GIB, report
    assert report["worker_kib"] << 10 < GIB, report


def test_failed_allocation_says_out_of_memory(tmp_path):
    # max_pixels=None lets the 2.7 GB image through; 1.5 GB of address space cannot hold it.
    report = run_bomb(tmp_path, png_bomb(), "none", 3 * GIB // 2)
    for path, error in report["errors"].items():
        assert error is not None and error.startswith("MemoryError"), f"{path}: {error}"
        assert f"{SIDE} x {SIDE}" in error, f"{path}: {error}"
    assert "on sample 2 (" in report["errors"]["loader"]


def small_photo() -> np.ndarray:
    return cv2.resize(photo("coffee"), (120, 80), interpolation=cv2.INTER_AREA)


def pillow(rgb: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt, **options)
    return out.getvalue()


def big_endian_tiff(rgb: np.ndarray) -> bytes:
    from PIL import Image

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(">u2") * 257
    out = io.BytesIO()
    Image.frombytes("I;16B", gray.shape[::-1], gray.tobytes()).save(out, "TIFF")
    assert out.getvalue()[:2] == b"MM"
    return out.getvalue()


FORMATS = {
    "jpeg": lambda im: encode(im),
    "png": lambda im: encode(im, ".png"),
    "webp-lossy": lambda im: cv2.imencode(".webp", im, [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes(),
    "webp-lossless": lambda im: encode(im, ".webp"),
    "webp-extended": lambda im: pillow(np.dstack([im, im[:, :, 0]]), "WEBP"),  # alpha: VP8X
    "bmp": lambda im: encode(im, ".bmp"),
    "tiff": lambda im: encode(im, ".tiff"),
    "tiff-big-endian": lambda im: big_endian_tiff(im),
    "bigtiff": lambda im: pillow(im, "TIFF", big_tiff=True),
    "gif": lambda im: pillow(im, "GIF"),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_max_pixels_reads_the_size_of_each_format_from_its_header(fmt):
    data = FORMATS[fmt](small_photo())
    assert decode_opencv(data, True).shape == (80, 120, 3)  # the format decodes at all
    assert decode_opencv(data, True, max_pixels=80 * 120).shape == (80, 120, 3)
    assert decode_image(data, False, 80, 120, max_pixels=None).shape == (80, 120, 1)
    for call in (decode_opencv, decode_image):
        with pytest.raises(ValueError, match=r"120 x 80 .*max_pixels=9,599\b"):
            call(data, True, max_pixels=80 * 120 - 1)
    with pytest.raises(ValueError, match="120 x 80"):
        transform_image(data, (16, 16), max_pixels=1000)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp-lossy", "tiff"])
def test_worker_max_pixels_names_the_sample(fmt):
    data = FORMATS[fmt](small_photo())
    items = [pack({"image": data, "label": 0})] * 4
    image, label = ((3, 16, 16), np.uint8), ((1,), np.int64)
    refused = r"120 x 80 [^\n]*max_pixels=9,599[^\n]*\n.*on sample 0 \("
    with pytest.raises(ValueError, match=refused):
        worker = ClassificationWorker(image, label, max_pixels=80 * 120 - 1)
        with TurboDataLoader(items, 2, worker, 1, seed=0) as loader:
            list(loader)
    worker = ClassificationWorker(image, label, max_pixels=80 * 120)
    with TurboDataLoader(items, 2, worker, 1, seed=0) as loader:
        assert sum(len(mb["image"]) for _, (mb,) in loader) == 4


@pytest.mark.parametrize("value", [0, -1, 1.5, "many", True])
def test_bad_max_pixels_is_refused_when_the_worker_is_built(value):
    assert ImageWorker(((3, 16, 16), np.uint8), max_pixels=None).max_pixels is None
    assert ImageWorker(((3, 16, 16), np.uint8), max_pixels=np.int64(7)).max_pixels == 7
    with pytest.raises(ValueError, match=f"max_pixels must be a positive integer.*{value!r}"):
        ImageWorker(((3, 16, 16), np.uint8), max_pixels=value)


# -- bytes after the end marker, and files that end early ---------------------------------
def thumbnailed(data: bytes) -> bytes:
    """``data`` with an EXIF segment holding a thumbnail, the way cameras write it: the
    thumbnail ends with its own end-of-image marker, inside the segment."""
    thumb = jpeg(cv2.resize(photo("coffee"), (24, 16), interpolation=cv2.INTER_AREA))
    tiff = b"II*\x00" + struct.pack("<IHI", 8, 0, 0)  # an empty first directory
    body = b"Exif\x00\x00" + tiff + thumb
    return data[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(body)) + body + data[2:]


def video() -> bytes:
    """What a phone appends after the JPEG: an MP4 whose bytes include JPEG markers."""
    noise = np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes()
    return b"\x00\x00\x00\x18ftypmp42" + noise[:20_000] + b"\xff\xd9\xff\xd8" + noise[20_000:]


IMAGES = {
    "baseline": lambda: jpeg(photo("coffee")),
    "progressive": lambda: jpeg(photo("coffee"), cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "restart-markers": lambda: jpeg(photo("coffee"), cv2.IMWRITE_JPEG_RST_INTERVAL, 4),
    "exif-thumbnail": lambda: thumbnailed(jpeg(photo("coffee"))),
    "png": lambda: encode(photo("coffee"), ".png"),
}
TRAILERS = {
    "newline": b"\n",
    "100-bytes": bytes(range(100)),
    "zeros": bytes(4096),
    "video": video(),
}


@pytest.mark.parametrize("trailer", TRAILERS)
@pytest.mark.parametrize("image", IMAGES)
def test_bytes_after_the_end_marker_decode_like_the_file_without_them(image, trailer):
    data = IMAGES[image]()
    expected = decode_opencv(data, True)
    np.testing.assert_array_equal(decode_opencv(data + TRAILERS[trailer], True), expected)
    np.testing.assert_array_equal(
        decode_image(data + TRAILERS[trailer], False, 100, 150),
        decode_image(data, False, 100, 150),
    )


def test_bytes_after_the_end_marker_through_a_worker():
    data = jpeg(photo("coffee"))
    items = [pack({"image": d, "label": 0}) for d in (data, data + video(), data + b"\n")]
    worker = ClassificationWorker(((3, 32, 32), np.uint8), ((1,), np.int64))
    with TurboDataLoader(items, 3, worker, 1, seed=0) as loader:
        (_, (batch,)), *_ = list(loader)
        images = np.array(batch["image"])
    np.testing.assert_array_equal(images[1], images[0])
    np.testing.assert_array_equal(images[2], images[0])


@pytest.mark.parametrize("image", ["progressive", "restart-markers", "exif-thumbnail", "png"])
def test_a_file_cut_anywhere_is_refused_as_truncated(image):
    data = IMAGES[image]()
    if image == "png":
        data = encode(small_photo(), ".png")
    else:  # small, so that every cut can be tried
        small = thumbnailed if image == "exif-thumbnail" else lambda d: d
        params = {
            "progressive": (cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
            "restart-markers": (cv2.IMWRITE_JPEG_RST_INTERVAL, 1),
        }.get(image, ())
        data = small(jpeg(small_photo(), *params))
    magic = 8 if image == "png" else 2
    for cut in range(magic, len(data)):
        with pytest.raises(ValueError, match="truncated") as error:
            decode_opencv(data[:cut], True)
        assert f"{cut} bytes" in str(error.value)
    assert decode_opencv(data, True).shape == (80, 120, 3)


def test_end_marker_inside_an_exif_thumbnail_is_not_the_end():
    data = thumbnailed(jpeg(photo("coffee")))
    thumbnail_end = data.find(b"\xff\xd9") + 2  # the first end marker: the thumbnail's
    app1_end = 4 + struct.unpack_from(">H", data, 4)[0]
    assert thumbnail_end == app1_end  # the cut leaves a whole segment, the photo's frame after
    with pytest.raises(ValueError, match="truncated JPEG"):
        decode_opencv(data[:thumbnail_end], True)
    with pytest.raises(ValueError, match="truncated JPEG"):
        decode_opencv(data[:thumbnail_end] + b"trailer", True)


def test_a_jpeg_whose_header_gives_no_size_is_not_decoded_to_learn_it():
    # no frame header (SOF) before the data ends: the size cannot be checked
    data = bytearray(jpeg_bomb(False))
    sof = data.find(b"\xff\xc0")
    data[sof + 1] = 0xFE  # the frame header becomes a comment
    with pytest.raises(ValueError, match="gives no image size"):
        decode_image(bytes(data), True)
    with pytest.raises(ValueError, match="gives no image size"):
        transform_image(bytes(data), (8, 8))
