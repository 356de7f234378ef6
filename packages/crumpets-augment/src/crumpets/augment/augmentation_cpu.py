"""Pure CPU pixel kernels: gamma/color/contrast lookup tables, sensor noise and Gaussian blur.

Every kernel is a function of (image, parameters): none of them touches a random generator
except :func:`add_noise_rgb` and :func:`add_noise_other`, which build their own from the
explicit ``seed`` argument, so any sample can be replayed from its parameter dict.

Images are ``uint8``, either HxWx3 (RGB or BGR; green is channel 1 in both orders) or gray,
HxW or HxWx1. Every kernel accepts ``out``: an array of the same shape and dtype to write
into (it may be the input itself); the result is returned.

The GPU twins in ``crumpets.torch.augmentation_cuda`` reproduce the formulas below, so they
are stated exactly here.

Gamma, color and contrast (:func:`gamma_lut`, :func:`add_gamma`), for channel ``c`` and input
grey level ``i`` in 0..255::

    x = i / 255
    g = (gamma_gray or 1) * (gamma_color[c] if color and gamma_color is not None else 1)
    y = x ** g
    if contrast k > 0:  y = y + k * (s(y) - y),  s(y) = 0.5 - 0.5 * cos(pi * y)
    if contrast k < 0:  y = 0.5 + (y - 0.5) * (1 + k)
    lut[i, c] = 255 * y                                   (float64, what gamma_lut returns)
    table[i, c] = uint8(clip(rint(255 * y), 0, 255))      (rint: round half to even)

Positive contrast blends toward an S-curve that is steepest at mid grey; negative contrast
flattens linearly toward mid grey. The asymmetry is deliberate (it looks better than one
formula for both signs). ``contrast`` None or 0 is the identity.

Noise (:func:`add_noise_rgb`, :func:`add_noise_other`)::

    sigma = strength * 64                    (grey levels)
    z = a window of im.size standard normal samples from a fixed table (2**21 float32
        samples drawn once per process from numpy's generator with seed 0x5EED),
        starting at seed % (2**21 - im.size + 1), in planar order: channel c takes the
        window's samples c*H*W .. (c+1)*H*W - 1, row by row
    result = uint8(clip(rint(im + z * sigma_c), 0, 255))     (in float32)

``sigma_c`` is ``sigma`` for every channel, except that :func:`add_noise_rgb` uses
``sigma / sqrt(2)`` for green (channel 1) of a 3-channel image: a Bayer sensor has twice as
many green pixels, so green is less noisy. The GPU twins use the same table, so CPU and GPU
add the same noise. (Larger images than the table draw fresh samples from numpy's
generator seeded with ``seed``; the GPU's differ there, in distribution only.)

Blur (:func:`add_blur`): a separable Gaussian of standard deviation ``sigma`` pixels with
``ksize = int(rint(6 * sigma + 1)) | 1`` taps
``exp(-(j - (ksize - 1) / 2) ** 2 / (2 * sigma ** 2))`` for j in 0..ksize-1, normalised to
sum 1 (OpenCV's rule and taps for ``GaussianBlur``), applied along rows and columns with
``cv2.sepFilter2D`` in float32, border ``BORDER_REFLECT_101``, rounded to the nearest grey
level. (``GaussianBlur`` itself works in fixed point on uint8: up to one grey level further
from the formula, and slower.) A blur too small to move any pixel by half a grey level
(``255 * (1 - centre_tap ** 2) < 0.5``, sigma below about 0.26) is skipped.

Every kernel works channel by channel on contiguous planes: the workers write their result as
(C, H, W) planes, and the functions ending in ``_planes`` apply a kernel to such planes in
place, with the same results as the HxWxC kernels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from crumpets.core.params import NOISE_SCALE, NOISE_TABLE_SEED, NOISE_TABLE_SIZE

__all__ = [
    "add_blur",
    "add_gamma",
    "add_noise_other",
    "add_noise_rgb",
    "blur_planes",
    "check_sigma",
    "gamma_lut",
    "gamma_planes",
    "gamma_table",
    "noise_planes",
    "noise_sigma",
    "sensor_sigmas",
]

# Fixed size (256 values), computed once; not a cache that can grow.
with np.errstate(divide="ignore"):
    # log of the 256 input levels; log 0 = -inf, and exp(g * -inf) = 0 = 0 ** g for g > 0
    _LOG_X = np.log(np.arange(256, dtype=np.float64) / 255.0)


def _channels(im: np.ndarray) -> int:
    """Return the number of channels of a kernel input; check its dtype and shape."""
    if not isinstance(im, np.ndarray) or im.dtype != np.uint8:
        dtype = getattr(im, "dtype", type(im).__name__)
        raise TypeError(f"image must be a uint8 numpy array, got {dtype}")
    if im.ndim == 2:
        return 1
    if im.ndim == 3 and im.shape[2] in (1, 3):
        return im.shape[2]
    raise ValueError(f"image must be HxW, HxWx1 or HxWx3, got shape {im.shape}")


def _check_out(im: np.ndarray, out: np.ndarray | None) -> None:
    if out is None:
        return
    if not isinstance(out, np.ndarray) or out.shape != im.shape or out.dtype != im.dtype:
        shape = getattr(out, "shape", None)
        dtype = getattr(out, "dtype", type(out).__name__)
        raise ValueError(
            f"out must be a {im.dtype} array of shape {im.shape}, got {dtype} of shape {shape}"
        )


def _unchanged(im: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Return ``im`` itself, or copied into ``out`` when one is given."""
    if out is None:
        return im
    if out is not im:
        np.copyto(out, im)
    return out


def _per_plane(
    im: np.ndarray, out: np.ndarray | None, apply: Callable[[list[np.ndarray]], None]
) -> np.ndarray:
    """Run ``apply`` on contiguous copies of the channel planes of ``im``; return the
    result in the layout of ``im`` (written into ``out`` when given)."""
    if im.ndim == 3 and im.shape[2] == 3:
        planes = list(cv2.split(im))
        apply(planes)
        result = cv2.merge(planes)
    else:
        planes = [np.array(im.reshape(im.shape[:2]))]
        apply(planes)
        result = planes[0].reshape(im.shape)
    if out is None:
        return result
    np.copyto(out, result)
    return out


def _check_gamma(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def gamma_lut(
    color: bool,
    gamma_gray: float | None,
    gamma_color: Sequence[float] | None,
    contrast: float | None,
    channels: int,
) -> np.ndarray:
    """Build the gamma, color and contrast lookup table before rounding.

    See the module docstring for the exact formula.

    Args:
        color: whether ``gamma_color`` is used.
        gamma_gray: gamma applied to every channel; None means 1.
        gamma_color: one gamma per channel, multiplied with ``gamma_gray``; None means 1.
        contrast: contrast change in [-1, 1]; None or 0 means none.
        channels: number of channels of the table (1 for gray, 3 for color images).

    Returns:
        float64 array of shape (256, channels): ``255 * y`` for each input level and channel.

    Raises:
        ValueError: if a gamma is not a finite number > 0, ``contrast`` is outside [-1, 1], or
            ``gamma_color`` is used and does not have ``channels`` entries.
    """
    rows = _gamma_rows(color, gamma_gray, gamma_color, contrast, channels)
    if len(rows) < channels:  # one row serves every channel
        rows = np.repeat(rows, channels, axis=0)
    return rows.T


def _gamma_rows(
    color: bool,
    gamma_gray: float | None,
    gamma_color: Sequence[float] | None,
    contrast: float | None,
    channels: int,
) -> np.ndarray:
    """:func:`gamma_lut`'s table as rows of 256 (channels, 256), or one row when every
    channel has the same gamma (no ``gamma_color``): the same values, a third of the work."""
    if gamma_gray is not None:
        g = _check_gamma("gamma_gray", gamma_gray)
    else:
        g = 1.0
    if color and gamma_color is not None:
        if len(gamma_color) != channels:
            raise ValueError(
                f"gamma_color must have one value per channel ({channels}), got {len(gamma_color)}"
            )
        gamma = [g * _check_gamma("gamma_color", c) for c in gamma_color]
    else:
        gamma = [g]
    k = 0.0 if contrast is None else float(contrast)
    if not -1.0 <= k <= 1.0:  # also rejects NaN
        raise ValueError(f"contrast must be in [-1, 1], got {contrast}")
    # x ** g as exp(g * log x): a quarter of the cost of pow, the same to ~1e-13.
    # In place wherever it can be: on 256 values per row, each numpy call costs more
    # than its arithmetic.
    if len(gamma) == 1:
        y = (_LOG_X * gamma[0])[None]
    else:
        y = np.array(gamma)[:, None] * _LOG_X
    np.exp(y, out=y)
    if k > 0:
        s = np.cos(np.pi * y)
        s *= 0.5
        np.subtract(0.5, s, out=s)  # the S-curve
        s -= y
        s *= k
        y += s
    elif k < 0:
        y -= 0.5
        y *= 1.0 + k
        y += 0.5
    y *= 255.0
    return y


def add_gamma(
    im: np.ndarray,
    color: bool,
    gamma_gray: float | None,
    gamma_color: Sequence[float] | None,
    contrast: float | None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Apply gamma (brightness), per-channel gamma (color) and contrast in one LUT pass.

    Args:
        im: uint8 image, HxWx3 or gray (HxW, HxWx1).
        color: whether ``gamma_color`` is used; pass False for gray images.
        gamma_gray: gamma for all channels (< 1 brightens, > 1 darkens); None means 1.
        gamma_color: three gammas, one per channel in the image's channel order; None means 1.
        contrast: contrast change in [-1, 1]; None or 0 means none.
        out: optional array of the same shape and dtype to write into; may be ``im``.

    Returns:
        The adjusted image (``out`` when given). When there is nothing to do, ``im`` itself,
        or ``im`` copied into ``out``.

    Raises:
        TypeError: if ``im`` is not uint8.
        ValueError: on an unsupported shape, a mismatched ``out`` or invalid parameters.
    """
    channels = _channels(im)
    _check_out(im, out)
    if gamma_gray is None and not contrast and (not color or gamma_color is None):
        return _unchanged(im, out)
    table = gamma_table(color, gamma_gray, gamma_color, contrast, channels)
    return _per_plane(im, out, lambda planes: gamma_planes(planes, table))


def gamma_table(
    color: bool,
    gamma_gray: float | None,
    gamma_color: Sequence[float] | None,
    contrast: float | None,
    channels: int,
) -> np.ndarray:
    """The rounded lookup table of :func:`gamma_lut`: uint8, one row of 256 per channel."""
    return _round(gamma_lut(color, gamma_gray, gamma_color, contrast, channels).T)


def _round(rows: np.ndarray) -> np.ndarray:
    # y is in [0, 1] for every formula of gamma_lut, so rounding needs no clipping
    return np.rint(rows, out=rows).astype(np.uint8)


def _gamma_chw(image: np.ndarray, rows: np.ndarray) -> None:
    """Look up a C-contiguous uint8 (C, H, W) image in place: plane c in row c of a
    :func:`_gamma_rows` table, rounded, or every plane in one call when it has one row."""
    channels, height, width = image.shape
    if len(rows) == 1:
        cv2.LUT(image.reshape(channels * height, width), rows[0], dst=image.reshape(-1, width))
    else:
        for c in range(channels):
            cv2.LUT(image[c], rows[c], dst=image[c])


def gamma_planes(planes: Sequence[np.ndarray], table: np.ndarray) -> None:
    """Look up each contiguous uint8 plane in its row of a :func:`gamma_table`, in place."""
    for plane, row in zip(planes, table, strict=True):
        cv2.LUT(plane, row, dst=plane)


def noise_sigma(strength: float | None) -> float:
    """Noise sigma in grey levels for ``strength`` (None is 0); ValueError unless
    ``strength`` is finite and >= 0."""
    value = 0.0 if strength is None else float(strength)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    return value * NOISE_SCALE


_NOISE_TABLE = NOISE_TABLE_SIZE  # standard normal samples per process: 8 MB, made once


@functools.cache
def _noise_table() -> np.ndarray:
    return np.random.default_rng(NOISE_TABLE_SEED).standard_normal(_NOISE_TABLE, np.float32)


def noise_planes(planes: Sequence[np.ndarray], sigmas: Sequence[float], seed: int) -> None:
    """Add noise of ``sigmas[c]`` grey levels to contiguous uint8 plane ``c``, in place,
    from a window of the noise table placed by ``seed`` (see the module docstring)."""
    _add_noise_windows(planes, _noise_windows([plane.shape for plane in planes], sigmas, seed))


def _noise_windows(
    shapes: Sequence[tuple[int, ...]], sigmas: Sequence[float], seed: int
) -> list[tuple[np.ndarray, float]]:
    """What :func:`noise_planes` adds to planes of these shapes: per plane, its window of
    standard normal samples and its sigma."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    sizes = [math.prod(shape) for shape in shapes]
    size = sum(sizes)
    if size <= _NOISE_TABLE:
        # A window of a fixed table of normal samples, placed by the seed: as random as
        # fresh draws for augmentation, replayable, and a quarter of their cost.
        offset = int(seed) % (_NOISE_TABLE - size + 1)
        z = _noise_table()[offset : offset + size]
    else:
        # fresh samples from the seed's own generator (never OpenCV's global one)
        z = np.random.default_rng(int(seed)).standard_normal(size, np.float32)
    windows = []
    start = 0
    for shape, n, sigma in zip(shapes, sizes, sigmas, strict=True):
        windows.append((z[start : start + n].reshape(shape), float(sigma)))
        start += n
    return windows


def _add_noise_windows(
    planes: Sequence[np.ndarray], windows: Sequence[tuple[np.ndarray, float]]
) -> None:
    for plane, (window, sigma) in zip(planes, windows, strict=True):
        # one pass in float32: plane + window * sigma, rounded and saturated to uint8
        cv2.addWeighted(plane, 1.0, window, sigma, 0.0, dst=plane, dtype=cv2.CV_8U)


def add_noise_rgb(
    im: np.ndarray,
    strength: float | None,
    seed: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Add Gaussian noise that mimics a camera sensor: green is less noisy.

    Sigma is ``strength * 64`` grey levels for channels 0 and 2, ``sigma / sqrt(2)`` for green
    (channel 1), and the full sigma for gray images.

    Args:
        im: uint8 image, HxWx3 (RGB or BGR) or gray (HxW, HxWx1).
        strength: noise strength >= 0; 0 or None leaves the image unchanged.
        seed: places the noise pattern (a window of a fixed table of normal samples);
            None (the reference's call, ``add_noise_rgb(im, strength)``) draws a fresh one.
        out: optional array of the same shape and dtype to write into; may be ``im``.

    Returns:
        The noisy image, rounded and saturated to uint8 (``out`` when given).

    Raises:
        TypeError: if ``im`` is not uint8 or ``seed`` is not an int.
        ValueError: if ``strength`` is negative, or on an unsupported shape or ``out``.
    """
    return _add_noise(im, sensor_sigmas(strength, _channels(im)), seed, out)


def sensor_sigmas(strength: float | None, channels: int) -> list[float]:
    """Noise sigma per channel for :func:`add_noise_rgb`: green (channel 1 of 3) gets
    1/sqrt(2) of the others'; ValueError unless ``strength`` is finite and >= 0."""
    sigma = noise_sigma(strength)
    return [sigma, sigma / math.sqrt(2.0), sigma] if channels == 3 else [sigma] * channels


def add_noise_other(
    im: np.ndarray,
    strength: float | None,
    seed: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Add Gaussian noise of the same strength to every channel.

    Sigma is ``strength * 64`` grey levels.

    Args:
        im: uint8 image, HxWx3 or gray (HxW, HxWx1).
        strength: noise strength >= 0; 0 or None leaves the image unchanged.
        seed: places the noise pattern (a window of a fixed table of normal samples);
            None (the reference's call, ``add_noise_rgb(im, strength)``) draws a fresh one.
        out: optional array of the same shape and dtype to write into; may be ``im``.

    Returns:
        The noisy image, rounded and saturated to uint8 (``out`` when given).

    Raises:
        TypeError: if ``im`` is not uint8 or ``seed`` is not an int.
        ValueError: if ``strength`` is negative, or on an unsupported shape or ``out``.
    """
    return _add_noise(im, [noise_sigma(strength)] * _channels(im), seed, out)


def _add_noise(
    im: np.ndarray, sigmas: list[float], seed: int | None, out: np.ndarray | None
) -> np.ndarray:
    _check_out(im, out)
    if sigmas[0] == 0:  # no strength: no noise
        return _unchanged(im, out)
    if seed is None:  # a fresh pattern, from the OS's entropy (never the global generator)
        seed = int(np.random.default_rng().integers(2**31))
    return _per_plane(im, out, lambda planes: noise_planes(planes, sigmas, seed))


def add_blur(
    im: np.ndarray,
    sigma: float | None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Blur with a Gaussian of standard deviation ``sigma`` pixels.

    The reference's ``blur`` parameter is relative to the image width; the caller converts
    it (``sigma = blur * width``). Border handling is ``cv2.BORDER_REFLECT_101``; the module
    docstring gives the kernel OpenCV uses.

    Args:
        im: uint8 image, HxWx3 or gray (HxW, HxWx1).
        sigma: standard deviation in pixels; 0 or None leaves the image unchanged.
        out: optional array of the same shape and dtype to write into; may be ``im``.

    Returns:
        The blurred image (``out`` when given).

    Raises:
        TypeError: if ``im`` is not uint8.
        ValueError: if ``sigma`` is negative, or on an unsupported shape or ``out``.
    """
    _channels(im)
    _check_out(im, out)
    s = check_sigma(sigma)
    if s == 0:
        return _unchanged(im, out)
    return _per_plane(im, out, lambda planes: blur_planes(planes, s))


def check_sigma(sigma: float | None) -> float:
    """A blur sigma as a float (None is 0); ValueError unless finite and >= 0."""
    s = 0.0 if sigma is None else float(sigma)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    return s


def blur_planes(planes: Sequence[np.ndarray], sigma: float) -> None:
    """Blur each contiguous uint8 plane with a Gaussian of ``sigma`` pixels, in place."""
    taps = _blur_taps(sigma)
    if taps is not None:
        _blur_with(planes, taps)


def _blur_taps(sigma: float) -> np.ndarray | None:
    """The Gaussian's taps for :func:`blur_planes`; None for a blur that changes no pixel."""
    if sigma < 0.25:
        # The test below skips these without building the kernel: 1 or 3 taps, and with 3
        # the centre weight 1 / (1 + 2 exp(-1 / (2 sigma**2))) is above 0.9993.
        return None
    taps = cv2.getGaussianKernel(round(6 * sigma + 1) | 1, sigma)  # round: half to even
    centre = float(taps[len(taps) // 2, 0])
    if 255 * (1 - centre * centre) < 0.5:
        # A pixel moves by at most 255 times the weight off the centre tap: below half a
        # grey level nothing changes (sigma < 0.26; half of AUGMENTATION_TRAIN's blurs).
        return None
    return taps


def _blur_with(planes: Sequence[np.ndarray], taps: np.ndarray) -> None:
    for plane in planes:
        cv2.sepFilter2D(plane, -1, taps, taps, dst=plane, borderType=cv2.BORDER_REFLECT_101)
