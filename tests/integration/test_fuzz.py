"""Fuzzing through the real workers and loader: random bytes, truncated photos, wrong
msgpack shapes and extreme augmentation parameters go through ClassificationWorker or
ImageWorker in a TurboDataLoader with 2 worker processes.

Every case must end in one of two ways:

- an exception raised in the main process whose message names the sample
  ("on sample N") or, for augmentation parameters, the parameter;
- well-defined batches: every buffer has its declared dtype and shape, float buffers hold
  no NaN or inf, and every sample's transform matrix is finite.

Never a killed worker (its RuntimeError names no sample, so it fails here), never a hang
(``stall_timeout`` turns one into a TimeoutError, which fails here), and nothing left
behind (the leak check in conftest.py). The tests at the end pin down four bugs this
fuzzing found (a huge blur hanging a worker, NaN from float arrays, 0x0 images, labels
an int64 cannot hold), now fixed.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import pytest
from _photos import encode, photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crumpets.augment import ClassificationWorker, ImageWorker
from crumpets.core import TurboDataLoader, pack

N = 8  # samples per loader: 2 batches of 4, one for each worker
BATCH = 4
STALL = 20  # seconds without a batch before the loader raises TimeoutError
IMAGE = (3, 32, 32)
LABEL = ((1,), np.int64)
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
PNG_MAGIC, PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
NONFINITE = (math.nan, math.inf, -math.inf)

# One loader per example; a few dozen examples per test keep the file fast.
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def small_photo(name: str) -> np.ndarray:
    return cv2.resize(photo(name), (120, 80), interpolation=cv2.INTER_AREA)


@functools.cache
def encoded(name: str, ext: str = ".jpg") -> bytes:
    return encode(small_photo(name), ext)


@functools.cache
def good_samples() -> tuple[bytes, ...]:
    return tuple(
        pack({"image": encode(np.roll(small_photo(PHOTOS[i % 4]), 9 * i, axis=1)), "label": i})
        for i in range(N)
    )


def with_bad(index: int, item: bytes) -> list[bytes]:
    data = list(good_samples())
    data[index] = item
    return data


def load(worker, data, stall_timeout=STALL):
    """Every batch of one epoch, copied out of shared memory; or the exception raised."""
    try:
        with TurboDataLoader(data, BATCH, worker, 2, seed=0, stall_timeout=stall_timeout) as loader:
            return [
                {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in mb.items()}
                for _, (mb,) in loader
            ]
    except TimeoutError as exc:
        raise AssertionError(f"the loader hung: {exc}") from exc
    except Exception as exc:
        return exc


def check_batches(worker, batches, n: int = N) -> None:
    assert sum(len(b["image"]) for b in batches) == n
    for batch in batches:
        for key, (shape, dtype, _) in worker.buffer_specs.items():
            values = batch[key]
            assert values.dtype == dtype and values.shape[1:] == shape, key
            if values.dtype.kind == "f":
                assert np.isfinite(values).all(), f"buffer {key!r} holds NaN or inf"
        for augmentation in batch["augmentation"]:
            assert np.isfinite(augmentation["transform"]).all(), augmentation


def check(worker, data, names: list[str], stall_timeout=STALL) -> Exception | None:
    """Load ``data``: an exception whose message contains one of ``names``, or
    well-defined batches. Returns the exception, if any."""
    result = load(worker, data, stall_timeout)
    if isinstance(result, Exception):
        text = f"{type(result).__name__}: {result}"
        assert any(name in text for name in names), f"does not name any of {names}: {text}"
        return result
    check_batches(worker, result, len(data))
    return None


def names_sample(index: int) -> list[str]:
    return [f"on sample {index} ("]


def classification_worker(dtype=np.uint8, **kwargs) -> ClassificationWorker:
    return ClassificationWorker((IMAGE, dtype), LABEL, **kwargs)


# -- random bytes as the image ------------------------------------------------------------
random_images = st.one_of(
    st.binary(max_size=600),
    st.tuples(
        st.sampled_from([JPEG_SOI + b"\xff", PNG_MAGIC]),
        st.binary(max_size=600),
        st.sampled_from([b"", JPEG_EOI, PNG_IEND]),
    ).map(b"".join),
)


@FUZZ
@given(
    image=random_images, index=st.integers(0, N - 1), dtype=st.sampled_from([np.uint8, np.float32])
)
def test_random_bytes_as_image(image, index, dtype):
    data = with_bad(index, pack({"image": image, "label": 1}))
    check(classification_worker(dtype), data, names_sample(index))


# -- truncated and corrupted photos -------------------------------------------------------
@FUZZ
@given(
    name=st.sampled_from(PHOTOS),
    ext=st.sampled_from([".jpg", ".png"]),
    cut=st.floats(0, 1, exclude_max=True),
    index=st.integers(0, N - 1),
)
def test_truncated_photo(name, ext, cut, index):
    full = encoded(name, ext)
    image = full[: int(cut * len(full))]
    error = check(
        classification_worker(),
        with_bad(index, pack({"image": image, "label": 1})),
        names_sample(index),
    )
    # Only a PNG cut inside its last chunk's checksum still holds every pixel.
    if ext == ".jpg" or len(image) < len(full) - 8:
        assert isinstance(error, ValueError), f"{len(image)} of {len(full)} bytes: {error!r}"
        assert "truncated" in str(error) or "cannot decode" in str(error)


@FUZZ
@given(
    name=st.sampled_from(PHOTOS),
    ext=st.sampled_from([".jpg", ".png"]),
    at=st.floats(0, 1, exclude_max=True),
    junk=st.binary(min_size=1, max_size=64),
    index=st.integers(0, N - 1),
)
def test_corrupted_photo(name, ext, at, junk, index):
    # Bytes overwritten before the last 12: the end marker stays, so the decoder runs.
    full = encoded(name, ext)
    start = int(at * (len(full) - len(junk) - 12))
    image = full[:start] + junk + full[start + len(junk) :]
    data = with_bad(index, pack({"image": image, "label": 1}))
    check(classification_worker(), data, names_sample(index))


# -- wrong msgpack shapes -----------------------------------------------------------------
int64s = st.integers(-(2**63), 2**63 - 1)
texts = st.text(max_size=6)
wrong_arrays = st.sampled_from(
    [
        np.zeros((40, 60, 5), np.uint8),  # 5 channels
        np.zeros((40, 60, 4), np.uint8),
        np.zeros((60,), np.uint8),  # 1-d
        np.zeros((2, 40, 60, 3), np.uint8),  # 4-d
        np.zeros((40, 60, 3), np.int32),
        np.zeros((40, 60, 3), bool),
        np.zeros((0, 60, 3), np.uint8),  # no rows
    ]
)
wrong_images = st.one_of(
    int64s,
    st.floats(),
    st.none(),
    st.booleans(),
    texts,
    st.lists(st.integers(0, 255), max_size=6),
    st.lists(st.lists(st.integers(0, 255), max_size=3), max_size=3),
    st.dictionaries(texts, int64s, max_size=3),
    wrong_arrays,
)
wrong_labels = st.one_of(
    texts,
    st.binary(max_size=4),
    st.none(),
    st.lists(int64s, min_size=2, max_size=4),
    st.lists(texts, min_size=1, max_size=2),
    st.dictionaries(texts, st.dictionaries(texts, int64s, max_size=2), max_size=2),
    st.just([]),
)
not_dicts = st.one_of(
    int64s,
    st.floats(),
    st.none(),
    st.booleans(),
    texts,
    st.binary(max_size=8),
    st.lists(int64s, max_size=3),
)


@functools.cache
def good_image() -> bytes:
    return encoded("coffee")


def bad_item(kind: str, value) -> bytes:
    image = good_image()
    if kind == "no image":
        return pack(value)
    if kind == "image":
        return pack({"image": value, "label": 1})
    if kind == "label":
        return pack({"image": image, "label": value})
    if kind == "not a dict":
        return pack(value)
    if kind == "cut msgpack":
        whole = pack({"image": image, "label": 1})
        return whole[: int(value * len(whole))]
    assert kind == "raw bytes"
    return value


bad_items = st.one_of(
    st.tuples(
        st.just("no image"),
        st.sampled_from(
            [{}, {"label": 1}, {"img": b"x", "label": 1}, {"IMAGE": b"x"}, {1: b"x", "label": 1}]
        ),
    ),
    st.tuples(st.just("image"), wrong_images),
    st.tuples(st.just("label"), wrong_labels),
    st.tuples(st.just("not a dict"), not_dicts),
    st.tuples(st.just("cut msgpack"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("raw bytes"), st.binary(max_size=32)),
)


@settings(FUZZ, max_examples=30)
@given(item=bad_items, index=st.integers(0, N - 1), dtype=st.sampled_from([np.uint8, np.float32]))
def test_wrong_msgpack_shapes(item, index, dtype):
    data = with_bad(index, bad_item(*item))
    check(classification_worker(dtype), data, names_sample(index))


# -- extreme augmentation parameters ------------------------------------------------------
def extreme_params(*also):
    def extreme(*values):
        return st.sampled_from(values + also)

    return st.fixed_dictionaries(
        {},
        optional={
            "angle": extreme(1e6, -1e6, 1e12),
            "scale": extreme(1e-6, 1e6),
            "shear": extreme(1e6, -1e6),
            "aspect": extreme(1e-6, 1e6),
            "shift": st.lists(extreme(1e6, -1e6, 0.0), min_size=2, max_size=2),
            "gamma_gray": extreme(1e-6, 1e6),
            "gamma_color": st.lists(extreme(1e-6, 1e6, 1.0), min_size=3, max_size=3),
            "contrast": extreme(-1.0, 1.0),
            "noise": extreme(0.0, 1e6),
            "blur": extreme(0.0, 1.0),  # larger blurs hang: test_huge_blur_does_not_hang
        },
    ).filter(bool)


def nonfinite(value) -> bool:
    if isinstance(value, list):
        return any(nonfinite(v) for v in value)
    return not math.isfinite(value)


@settings(FUZZ, max_examples=30)
@given(
    params=st.one_of(extreme_params(), extreme_params(*NONFINITE)),
    dtype=st.sampled_from([np.uint8, np.float32]),
    classify=st.booleans(),
)
def test_extreme_augmentation_parameters(params, dtype, classify):
    bad = sorted(name for name, value in params.items() if nonfinite(value))
    try:
        if classify:
            worker = classification_worker(dtype, image_params=params)
        else:
            worker = ImageWorker((IMAGE, dtype), image_params=params)
    except ValueError as exc:
        # NaN and inf are refused when the worker is built, naming the parameter.
        assert bad and any(repr(name) in str(exc) for name in bad), str(exc)
        return
    assert not bad, f"{bad} accepted"
    check(worker, list(good_samples()), ["on sample "])


# -- bugs this fuzzing found, now fixed ------------------------------------------------
def test_huge_blur_is_refused_when_the_worker_is_built():
    # It used to be accepted and hang the worker in cv2.GaussianBlur for minutes.
    with pytest.raises(ValueError, match="'blur' must be in"):
        ImageWorker((IMAGE, np.uint8), image_params={"blur": 1000.0})
    worker = ImageWorker((IMAGE, np.uint8), image_params={"blur": 1.0})  # the largest allowed
    check(worker, list(good_samples()), ["on sample "], stall_timeout=20)


@pytest.mark.parametrize("value", [math.nan, 1e300])
def test_float_array_as_image_gives_finite_pixels(value):
    image = np.full((80, 120, 3), value)
    data = with_bad(5, pack({"image": image, "label": 1}))
    check(classification_worker(np.float32), data, names_sample(5))


def zero_size(kind: str):
    if kind == "array":
        return np.zeros((0, 0, 3), np.uint8)
    data = bytearray(encoded("coffee", kind))
    if kind == ".jpg":  # SOF0: marker, length, precision, height, width
        sof = data.find(b"\xff\xc0")
        data[sof + 5 : sof + 9] = bytes(4)
    else:  # IHDR: width and height
        data[16:24] = bytes(8)
    return bytes(data)


@pytest.mark.parametrize("kind", [".jpg", ".png", "array"])
def test_zero_size_image_is_a_value_error(kind):
    data = with_bad(5, pack({"image": zero_size(kind), "label": 1}))
    error = check(classification_worker(), data, names_sample(5))
    assert isinstance(error, ValueError), f"{type(error).__name__}: {str(error).splitlines()[:2]}"


@pytest.mark.parametrize("label", [math.nan, math.inf, 1e30, 2**64 - 1])
def test_label_that_no_int64_holds_is_an_error(label):
    worker = classification_worker()
    result = load(worker, with_bad(5, pack({"image": good_image(), "label": label})))
    if isinstance(result, Exception):
        assert "on sample 5 (" in str(result) and "label" in str(result), str(result)
        return
    got = np.concatenate([b["label"] for b in result])[5].tolist()
    raise AssertionError(f"label {label!r} became {got} in the int64 buffer")
