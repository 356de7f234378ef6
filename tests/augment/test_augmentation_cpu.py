"""CPU pixel kernels against straightforward float64 numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crumpets.augment import _planar
from crumpets.augment import augmentation_cpu as K


def _gray(im: np.ndarray) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114])
    return np.rint(im.astype(np.float64) @ weights).astype(np.uint8)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    # Real photos (bundled with scikit-image); only the tests that use them need it.
    skimage_data = pytest.importorskip("skimage.data")
    rgb = {name: getattr(skimage_data, name)() for name in ("astronaut", "chelsea", "coffee")}
    return {**rgb, "gray": _gray(rgb["astronaut"]), "gray1": _gray(rgb["chelsea"])[..., None]}


def _channels(im: np.ndarray) -> int:
    return 1 if im.ndim == 2 else im.shape[2]


# --- gamma, color, contrast ------------------------------------------------------------------


def reference_gamma(im, color, gamma_gray, gamma_color, contrast):
    """Per-pixel float64 formula, written independently of the kernel's table."""
    x = im.astype(np.float64) / 255.0
    pixels = x if x.ndim == 3 else x[..., None]
    out = np.empty_like(pixels)
    for c in range(pixels.shape[2]):
        g = gamma_gray if gamma_gray is not None else 1.0
        if color and gamma_color is not None:
            g *= gamma_color[c]
        y = pixels[..., c] ** g
        if contrast is not None and contrast > 0:
            y = (1 - contrast) * y + contrast * (0.5 - 0.5 * np.cos(np.pi * y))
        elif contrast is not None and contrast < 0:
            y = 0.5 + (y - 0.5) * (1 + contrast)
        out[..., c] = 255.0 * y
    return out.reshape(im.shape)


GAMMA_CASES = [
    (False, 0.5, None, None),
    (False, 2.5, None, None),
    (True, None, [0.7, 1.0, 1.6], None),
    (True, 1.3, [0.8, 1.2, 0.9], 0.4),
    (False, None, None, 0.8),
    (False, None, None, -0.6),
    (True, 0.4, [1.5, 0.6, 1.1], -0.3),
    (False, 4.0, [9.0, 9.0, 9.0], 1.0),  # color=False ignores gamma_color
]


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
@pytest.mark.parametrize(("color", "gamma_gray", "gamma_color", "contrast"), GAMMA_CASES)
def test_gamma_matches_per_pixel_reference(photos, name, color, gamma_gray, gamma_color, contrast):
    im = photos[name]
    result = K.add_gamma(im, color, gamma_gray, gamma_color, contrast)
    expected = reference_gamma(im, color, gamma_gray, gamma_color, contrast)
    assert result.shape == im.shape and result.dtype == np.uint8
    assert np.abs(result - expected).max() <= 0.5 + 1e-9
    assert not np.array_equal(result, im)


@pytest.mark.parametrize("name", ["gray", "gray1"])
@pytest.mark.parametrize(("gamma_gray", "contrast"), [(0.5, None), (2.0, 0.5), (None, -0.5)])
def test_gamma_on_gray_images(photos, name, gamma_gray, contrast):
    im = photos[name]
    result = K.add_gamma(im, False, gamma_gray, None, contrast)
    expected = reference_gamma(im, False, gamma_gray, None, contrast)
    assert result.shape == im.shape
    assert np.abs(result - expected).max() <= 0.5 + 1e-9


def test_gamma_color_applies_per_channel_in_image_order(photos):
    im = photos["coffee"]
    result = K.add_gamma(im, True, None, [1.0, 2.0, 1.0], None)
    assert np.array_equal(result[..., 0], im[..., 0])
    assert np.array_equal(result[..., 2], im[..., 2])
    assert result[..., 1].mean() < im[..., 1].mean() - 10  # gamma 2 darkens green only


@settings(max_examples=60, deadline=None)
@given(
    color=st.booleans(),
    gamma_gray=st.none() | st.floats(0.25, 4.0),
    gamma_color=st.none() | st.lists(st.floats(0.25, 4.0), min_size=3, max_size=3),
    contrast=st.none() | st.floats(-1.0, 1.0),
)
def test_gamma_lut_matches_scalar_formula(color, gamma_gray, gamma_color, contrast):
    lut = K.gamma_lut(color, gamma_gray, gamma_color, contrast, 3)
    assert lut.shape == (256, 3) and lut.dtype == np.float64
    for c in range(3):
        g = (gamma_gray or 1.0) * (gamma_color[c] if color and gamma_color is not None else 1.0)
        for i in (0, 1, 37, 100, 128, 200, 254, 255):
            y = (i / 255.0) ** g
            if contrast and contrast > 0:
                y = y + contrast * ((0.5 - 0.5 * math.cos(math.pi * y)) - y)
            elif contrast and contrast < 0:
                y = 0.5 + (y - 0.5) * (1 + contrast)
            assert lut[i, c] == pytest.approx(255.0 * y, abs=1e-9)


def test_positive_contrast_is_steepest_at_mid_grey():
    lut = K.gamma_lut(False, None, None, 1.0, 1)[:, 0]
    slope = np.diff(lut)
    assert slope[127] > 1.5 > slope[5]
    assert lut[0] == 0 and lut[255] == pytest.approx(255)


def test_negative_contrast_flattens_toward_mid_grey():
    lut = K.gamma_lut(False, None, None, -0.5, 1)[:, 0]
    assert lut[0] == pytest.approx(63.75) and lut[255] == pytest.approx(191.25)
    assert K.gamma_lut(False, None, None, -1.0, 1) == pytest.approx(127.5)


@pytest.mark.parametrize("name", ["astronaut", "gray", "gray1"])
def test_gamma_identity_when_params_none(photos, name):
    im = photos[name]
    assert K.add_gamma(im, True, None, None, None) is im
    assert K.add_gamma(im, False, None, [2.0, 2.0, 2.0], 0) is im
    out = np.zeros_like(im)
    assert K.add_gamma(im, True, None, None, None, out=out) is out
    assert np.array_equal(out, im)


@pytest.mark.parametrize("name", ["astronaut", "gray", "gray1"])
def test_gamma_out_in_place(photos, name):
    im = photos[name].copy()
    expected = K.add_gamma(im, True, 0.6, None, 0.3)
    result = K.add_gamma(im, True, 0.6, None, 0.3, out=im)
    assert result is im
    assert np.array_equal(im, expected)


def test_gamma_out_non_contiguous(photos):
    im = photos["chelsea"]
    chw = np.zeros((3, *im.shape[:2]), np.uint8)
    result = K.add_gamma(im, True, 0.6, [1.0, 1.2, 0.8], None, out=chw.transpose(1, 2, 0))
    assert np.array_equal(result, K.add_gamma(im, True, 0.6, [1.0, 1.2, 0.8], None))
    assert np.array_equal(chw.transpose(1, 2, 0), result)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(gamma_gray=0.0), "gamma_gray"),
        (dict(gamma_gray=float("nan")), "gamma_gray"),
        (dict(gamma_color=[1.0, -1.0, 1.0]), "gamma_color"),
        (dict(gamma_color=[1.0, 1.0]), "gamma_color"),
        (dict(contrast=1.5), "contrast"),
        (dict(contrast=float("nan")), "contrast"),
    ],
)
def test_gamma_rejects_bad_parameters(photos, kwargs, match):
    params = dict(color=True, gamma_gray=None, gamma_color=None, contrast=None) | kwargs
    with pytest.raises(ValueError, match=match):
        K.add_gamma(photos["astronaut"], **params)


# --- validation shared by all kernels --------------------------------------------------------

KERNELS = [
    lambda im, out=None: K.add_gamma(im, True, 0.5, None, None, out=out),
    lambda im, out=None: K.add_noise_rgb(im, 0.1, 1, out=out),
    lambda im, out=None: K.add_noise_other(im, 0.1, 1, out=out),
    lambda im, out=None: K.add_blur(im, 1.5, out=out),
]
KERNEL_IDS = ["gamma", "noise_rgb", "noise_other", "blur"]


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
def test_kernels_reject_non_uint8(kernel):
    with pytest.raises(TypeError, match="uint8"):
        kernel(np.zeros((8, 8, 3), np.float32))


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("shape", [(8,), (8, 8, 2), (8, 8, 3, 1)])
def test_kernels_reject_bad_shapes(kernel, shape):
    with pytest.raises(ValueError, match="shape"):
        kernel(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
def test_kernels_reject_mismatched_out(kernel):
    with pytest.raises(ValueError, match="out"):
        kernel(np.zeros((8, 8, 3), np.uint8), out=np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("kernel", KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("name", ["chelsea", "gray", "gray1"])
def test_kernels_keep_shape_and_write_out(photos, kernel, name):
    im = photos[name]
    before = im.copy()
    expected = kernel(im)
    assert expected.shape == im.shape and expected.dtype == np.uint8
    assert np.array_equal(im, before)  # input untouched without out=
    out = np.zeros_like(im)
    assert kernel(im, out=out) is out
    assert np.array_equal(out, expected)
    inplace = im.copy()
    assert kernel(inplace, out=inplace) is inplace
    assert np.array_equal(inplace, expected)


# --- noise -----------------------------------------------------------------------------------


def _flat(value: int = 128, channels: int = 3) -> np.ndarray:
    shape = (256, 256, channels) if channels > 1 else (256, 256)
    return np.full(shape, value, np.uint8)


@pytest.mark.parametrize("strength", [0.05, 0.2])
def test_noise_rgb_std_per_channel(strength):
    noisy = K.add_noise_rgb(_flat(), strength, seed=3).astype(np.float64)
    sigma = strength * 64
    std = noisy.reshape(-1, 3).std(axis=0)
    assert std[0] == pytest.approx(sigma, rel=0.1)
    assert std[1] == pytest.approx(sigma / math.sqrt(2), rel=0.1)
    assert std[2] == pytest.approx(sigma, rel=0.1)
    assert std[1] / std[0] == pytest.approx(1 / math.sqrt(2), rel=0.05)
    assert noisy.mean() == pytest.approx(128, abs=0.5)


def test_noise_rgb_gray_gets_full_sigma():
    noisy = K.add_noise_rgb(_flat(channels=1), 0.2, seed=3).astype(np.float64)
    assert noisy.std() == pytest.approx(0.2 * 64, rel=0.1)


def test_noise_other_same_sigma_every_channel():
    noisy = K.add_noise_other(_flat(), 0.2, seed=4).astype(np.float64)
    std = noisy.reshape(-1, 3).std(axis=0)
    assert std == pytest.approx([0.2 * 64] * 3, rel=0.1)


@pytest.mark.parametrize("name", ["astronaut", "gray", "gray1"])
@pytest.mark.parametrize("rgb", [True, False])
def test_noise_is_the_documented_window_of_the_table(photos, name, rgb):
    im = photos[name][:120, :150]
    seed, strength = 987654, 0.1
    result = (K.add_noise_rgb if rgb else K.add_noise_other)(im, strength, seed)
    table = _planar.noise_table()
    offset = seed % (table.size - im.size + 1)
    planes = im.reshape(120, 150, -1)
    z = table[offset : offset + im.size].reshape(planes.shape[2], 120, 150)  # planar order
    sigma = strength * 64
    expected = np.empty_like(planes)
    for c in range(planes.shape[2]):
        s = sigma / math.sqrt(2) if rgb and c == 1 and planes.shape[2] == 3 else sigma
        noisy = planes[:, :, c].astype(np.float32) + z[c] * np.float32(s)
        expected[:, :, c] = np.clip(np.rint(noisy), 0, 255)
    assert np.array_equal(result, expected.reshape(im.shape))


@pytest.mark.parametrize("kernel", [K.add_noise_rgb, K.add_noise_other])
def test_noise_replays_from_seed(photos, kernel):
    im = photos["astronaut"]
    a = kernel(im, 0.1, seed=42)
    assert np.array_equal(a, kernel(im, 0.1, seed=42))
    assert np.array_equal(a, kernel(im, 0.1, seed=np.int64(42)))
    assert not np.array_equal(a, kernel(im, 0.1, seed=43))


@pytest.mark.parametrize("kernel", [K.add_noise_rgb, K.add_noise_other])
def test_noise_saturates_instead_of_wrapping(kernel):
    black = kernel(_flat(0), 0.5, seed=1)
    white = kernel(_flat(255), 0.5, seed=1)
    assert black.max() < 200 and black.mean() > 5
    assert white.min() > 55 and white.mean() < 250


@pytest.mark.parametrize("kernel", [K.add_noise_rgb, K.add_noise_other])
def test_noise_zero_strength_is_identity(photos, kernel):
    im = photos["chelsea"]
    assert kernel(im, 0.0, seed=1) is im
    assert kernel(im, None, seed=1) is im


@pytest.mark.parametrize("kernel", [K.add_noise_rgb, K.add_noise_other])
def test_noise_rejects_bad_arguments(photos, kernel):
    im = photos["chelsea"]
    with pytest.raises(ValueError, match="strength"):
        kernel(im, -0.1, seed=1)
    with pytest.raises(TypeError, match="seed"):
        kernel(im, 0.1, seed=1.5)


# --- blur ------------------------------------------------------------------------------------


def reference_blur(im: np.ndarray, sigma: float) -> np.ndarray:
    """Separable float64 Gaussian, reflect-101 border, OpenCV's uint8 kernel size rule."""
    ksize = int(np.rint(6 * sigma + 1)) | 1
    r = ksize // 2
    taps = np.exp(-((np.arange(ksize) - r) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    x = im.astype(np.float64)
    x = x if x.ndim == 3 else x[..., None]
    # numpy's "reflect" does not repeat the edge pixel: OpenCV's BORDER_REFLECT_101.
    padded = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    h, w = x.shape[:2]
    rows = sum(taps[j] * padded[:, j : j + w] for j in range(ksize))
    both = sum(taps[j] * rows[j : j + h] for j in range(ksize))
    return both.reshape(im.shape)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "gray", "gray1"])
@pytest.mark.parametrize("sigma", [0.6, 1.5, 3.2])
def test_blur_matches_separable_reference(photos, name, sigma):
    im = photos[name][:160, :200]  # keep the reference quick
    result = K.add_blur(im, sigma)
    expected = reference_blur(im, sigma)
    assert result.shape == im.shape
    # float32 arithmetic rounded to nearest: half a grey level from the float64 formula
    assert np.abs(result - expected).max() <= 0.5 + 1e-3
    assert np.abs(result.astype(np.float64) - im).mean() > 1.0  # it did blur


def test_blur_border_is_reflect_101():
    im = np.zeros((32, 32), np.uint8)
    im[:, 0] = 255  # bright edge column: reflect-101 does not duplicate it
    result = K.add_blur(im, 2.0).astype(np.float64)
    expected = reference_blur(im, 2.0)
    # rounded to nearest; BORDER_REFLECT would be ~45 off.
    assert np.abs(result - expected).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("name", ["astronaut", "gray"])
def test_blur_too_small_to_change_a_pixel_is_skipped_exactly(photos, name):
    im = photos[name][:160, :200]
    # below sigma ~0.26 the formula moves no pixel by half a grey level, so skipping is exact
    assert np.abs(reference_blur(im, 0.25) - im).max() < 0.5
    assert np.array_equal(K.add_blur(im, 0.25), im)
    assert not np.array_equal(K.add_blur(im, 0.3), im)  # just above it, the blur runs


@pytest.mark.parametrize("sigma", [0, 0.0, None])
def test_blur_zero_is_identity(photos, sigma):
    im = photos["chelsea"]
    assert K.add_blur(im, sigma) is im


def test_blur_rejects_negative_sigma(photos):
    with pytest.raises(ValueError, match="sigma"):
        K.add_blur(photos["chelsea"], -1.0)


def test_noise_without_a_seed_is_the_references_call():
    im = np.full((64, 64, 3), 128, np.uint8)
    a, b = K.add_noise_rgb(im, 0.1), K.add_noise_rgb(im, 0.1)  # add_noise_rgb(im, strength)
    assert not np.array_equal(a, b)  # a fresh pattern each call
    assert abs((a.astype(float) - 128).std() / (0.1 * 64 * np.sqrt(5 / 6)) - 1) < 0.1
    assert not np.array_equal(K.add_noise_other(im, 0.1), K.add_noise_other(im, 0.1))
