"""crumpets.torch.decode: the decoder interface, the per-sample fallback, nvJPEG's
refusals read from headers, and decode_sample, with a stand-in decoder of a raw format
(crumpets-torch works without crumpets-augment; OpenCV's decoder: tests/integration)."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
import torch
from _profile import top_level_ops

from crumpets.torch.decode import (
    Decoder,
    DecodeRefused,
    NvjpegDecoder,
    decode_batch,
    decode_sample,
    nvjpeg_refusal,
)


def raw(im: np.ndarray, tag: bytes = b"RAW0") -> bytes:
    """A 'file' of a trivial format: tag, (h, w, c), HWC pixels."""
    h, w, c = im.shape
    return tag + struct.pack("<3H", h, w, c) + im.tobytes()


class RawDecoder(Decoder):
    """Decodes RAW0 and RAW1 files; refuses RAW1 if ``picky`` (as nvJPEG refuses PNG)."""

    def __init__(self, picky: bool = False):
        self.picky = picky
        self.calls = 0

    def decode(self, data, device, color):
        self.calls += 1
        out = []
        for item in data:
            item = bytes(item)
            if item[:4] not in (b"RAW0", b"RAW1"):
                out.append(ValueError(f"cannot decode image ({len(item)} bytes)"))
                continue
            if self.picky and item[:4] == b"RAW1":
                out.append(DecodeRefused("not RAW0"))
                continue
            h, w, c = struct.unpack("<3H", item[4:10])
            im = np.frombuffer(item[10:], np.uint8).reshape(h, w, c).transpose(2, 0, 1)
            if color and c == 1:
                im = np.repeat(im, 3, 0)
            tensor = torch.from_numpy(im.copy())
            out.append(tensor if device.type == "cpu" else tensor.to(device))
        return out


def gradient(h, w, c=3, shift=0):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(xx * 7 + yy * 3 + shift + 40 * k) % 256 for k in range(c)], -1).astype(
        np.uint8
    )


def test_what_the_first_decoder_refuses_the_fallback_decodes_in_place():
    data = [raw(gradient(4, 5)), raw(gradient(3, 3, shift=9), b"RAW1"), raw(gradient(2, 6, 1))]
    picky, fallback = RawDecoder(picky=True), RawDecoder()
    out = decode_batch(picky, data, torch.device("cpu"), True, fallback=fallback)
    assert [tuple(t.shape) for t in out] == [(3, 4, 5), (3, 3, 3), (3, 2, 6)]
    assert torch.equal(out[1], torch.from_numpy(gradient(3, 3, shift=9).transpose(2, 0, 1)))
    # a gray file comes back as RGB where RGB is asked for
    assert torch.equal(out[2][0], out[2][2])
    assert fallback.calls == 1  # one call for the refused samples, not one each


def test_a_file_no_decoder_takes_names_its_sample():
    data = [raw(gradient(4, 5)), b"\xff\xd8garbage", raw(gradient(3, 3), b"RAW1")]
    names = ["sample 10 (epoch 0)", "sample 11 (epoch 0)", "sample 12 (epoch 0)"]
    with pytest.raises(ValueError, match=r"cannot decode image .*\n.*sample 11 \(epoch 0\)") as e:
        decode_batch(
            RawDecoder(picky=True),
            data,
            torch.device("cpu"),
            True,
            fallback=RawDecoder(),
            names=names,
            indices=[10, 11, 12],
        )
    assert e.value.sample_index == 11


def jpeg_header(marker=0xC0, precision=8, components=3, end=True, adobe=None):
    """The segments of a JPEG up to its frame header (no image data); ``adobe``: an APP14
    marker with that colour transform."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    if adobe is not None:
        app0 += b"\xff\xee" + struct.pack(">H", 14) + b"Adobe" + bytes(6) + bytes([adobe])
    sof = (
        bytes([0xFF, marker])
        + struct.pack(">HBHHB", 8 + 3 * components, precision, 16, 16, components)
        + bytes(3 * components)
    )
    return b"\xff\xd8" + app0 + sof + b"\x00" * 20 + (b"\xff\xd9" if end else b"")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (jpeg_header(), None),
        (jpeg_header(marker=0xC2, components=1), None),  # progressive gray
        (jpeg_header(components=4), "CMYK"),
        (jpeg_header(precision=12), "12-bit"),
        (jpeg_header(marker=0xC9), "arithmetic"),
        (jpeg_header(end=False), "end-of-image"),
        (jpeg_header(adobe=0), "stored as RGB"),
        (jpeg_header(adobe=1), None),  # YCbCr, as nvJPEG assumes
        (b"\x89PNG\r\n\x1a\n" + bytes(30), "not a JPEG"),
    ],
)
def test_nvjpeg_refusals_from_the_header(data, reason):
    got = nvjpeg_refusal(data)
    assert got is None if reason is None else reason in got
    assert nvjpeg_refusal(np.frombuffer(data, np.uint8)) == got


def encoded_batch(n, sizes=((20, 30), (16, 16))):
    """What workers write under gpu_decode: byte buffers, (length, index, epoch) and each
    sample's parameters, with matrices that scale each image to 8x8."""
    max_bytes = 2000
    data = np.zeros((n, max_bytes), np.uint8)
    info = np.zeros((n, 3), np.int64)
    augs = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        item = raw(gradient(h, w, shift=i))
        data[i, : len(item)] = np.frombuffer(item, np.uint8)
        info[i] = (len(item), 100 + i, 2)
        s = 8 / max(h, w)
        augs.append(
            {
                "transform": [[s, 0.0, s * 0.5 - 0.5], [0.0, s, s * 0.5 - 0.5]],
                "gpu_ops": [],
                "interp_method": 1,
            }
        )
    return {
        "image_bytes": torch.from_numpy(data),
        "image_info": torch.from_numpy(info),
        "augmentation": augs,
        "label": torch.arange(n),
    }


SPECS = {"image": ((3, 8, 8), np.dtype(np.uint8), 0)}


def test_decode_sample_replaces_the_byte_buffers_by_images():
    sample = encoded_batch(4)
    out = decode_sample(sample, SPECS, torch.device("cpu"), RawDecoder())
    assert set(out) == {"image", "augmentation", "label"}
    assert out["image"].shape == (4, 3, 8, 8) and out["image"].dtype == torch.uint8
    assert out["augmentation"] is sample["augmentation"]
    # a scaled gradient is still a gradient of the same mean, roughly
    assert abs(out["image"][1].float().mean().item() - gradient(16, 16, shift=1).mean()) < 12


def test_decode_sample_names_the_sample_of_a_bad_file():
    sample = encoded_batch(3)
    sample["image_bytes"][1, :4] = torch.tensor(list(b"JUNK"), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"sample 101 \(epoch 2\)"):
        decode_sample(sample, SPECS, torch.device("cpu"), RawDecoder())


def test_decode_sample_ops_do_not_grow_with_the_batch():
    counts = {}
    for n in (4, 32):
        sample = encoded_batch(n)
        # torch.from_numpy (aten::lift_fresh, no kernel) wraps each image the stand-in
        # decoder made: the decoding is per image by nature; what follows must not be
        ops = top_level_ops(
            lambda sample=sample: decode_sample(sample, SPECS, torch.device("cpu"), RawDecoder()),
            ignore=("aten::lift_fresh",),
        )
        counts[n] = len(ops)
    assert counts[4] == counts[32], counts


def _torchvision_works() -> bool:
    try:
        import torchvision.io  # noqa: F401
    except Exception:  # not installed, or a wheel built for another torch
        return False
    return True


@pytest.mark.skipif(
    not (torch.cuda.is_available() and _torchvision_works()),
    reason="needs a CUDA device and torchvision",
)
def test_nvjpeg_decodes_and_refuses_per_sample():
    import torchvision.io as io

    im = torch.from_numpy(gradient(32, 48).transpose(2, 0, 1).copy())
    jpeg = io.encode_jpeg(im, quality=95).numpy().tobytes()
    gray = io.encode_jpeg(im[:1], quality=95).numpy().tobytes()
    png = io.encode_png(im).numpy().tobytes()
    out = NvjpegDecoder().decode([jpeg, png, gray, jpeg[:-200]], torch.device("cuda"), True)
    assert isinstance(out[1], DecodeRefused) and isinstance(out[3], DecodeRefused)
    assert out[0].device.type == "cuda" and out[0].shape == (3, 32, 48)
    assert out[2].shape == (3, 32, 48)  # gray as RGB
    assert (out[0].cpu().int() - im.int()).abs().float().mean().item() < 3


class FakeIO:
    """torchvision.io's decode_jpeg and encode_jpeg as far as NvjpegDecoder uses them, on
    the CPU: decodes nothing (``fail``) or every JPEG to a grey image."""

    class ImageReadMode:
        RGB, GRAY = "rgb", "gray"

    def __init__(self, fail: bool):
        self.fail = fail
        self.calls = 0

    def encode_jpeg(self, image):
        return torch.frombuffer(
            bytearray(b"\xff\xd8\xff\xc0" + bytes(12) + b"\xff\xd9"), dtype=torch.uint8
        )

    def decode_jpeg(self, data, mode=None, device=None):
        self.calls += 1
        if self.fail:
            raise RuntimeError("nvjpegCreate failed: no device")
        many = isinstance(data, list)
        images = [torch.full((3, 2, 2), 128, dtype=torch.uint8) for _ in (data if many else [0])]
        return images if many else images[0]


def jpeg_like() -> bytes:
    # what nvjpeg_refusal lets through: SOI, a baseline frame header (8-bit, 3 components), EOI
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 2, 2, 3) + bytes(9)
    return b"\xff\xd8" + frame + b"\xff\xd9"


def test_nvjpeg_load_tries_a_decode_on_the_device():
    decoder = NvjpegDecoder()
    decoder._io = FakeIO(fail=True)
    with pytest.raises(RuntimeError, match="cannot decode JPEGs on cpu .*nvjpegCreate failed"):
        decoder.load(torch.device("cpu"))
    decoder._io = FakeIO(fail=False)
    decoder.load(torch.device("cpu"))  # a decoder that works: no error


def test_nvjpeg_failing_on_every_file_says_so_once():
    decoder = NvjpegDecoder()
    decoder._io = FakeIO(fail=True)
    assert nvjpeg_refusal(jpeg_like()) is None
    with pytest.warns(RuntimeWarning, match="nvJPEG decoded none of a batch's 3 JPEGs"):
        out = decoder.decode([jpeg_like()] * 3, torch.device("cpu"), True)
    assert all(isinstance(o, DecodeRefused) for o in out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second batch: no second warning
        decoder.decode([jpeg_like()] * 3, torch.device("cpu"), True)
    decoder._io = FakeIO(fail=False)
    out = decoder.decode([jpeg_like(), b"PNG"], torch.device("cpu"), True)
    assert out[0].shape == (3, 2, 2) and isinstance(out[1], DecodeRefused)
