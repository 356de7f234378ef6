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

Every kernel works channel by channel on contiguous planes, as the workers write their result
((C, H, W) planes): the kernels here copy an HxWxC image into planes and run the one planar
implementation, :mod:`crumpets.augment._planar`, that the workers run too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from crumpets.core.params import NOISE_SCALE

from ._planar import (
    apply_blur,
    apply_gamma,
    apply_noise,
    blur_taps,
    gamma_rows,
    noise_windows,
    round_rows,
)

__all__ = [
    "add_blur",
    "add_gamma",
    "add_noise_other",
    "add_noise_rgb",
    "check_sigma",
    "gamma_lut",
    "gamma_table",
    "noise_sigma",
    "sensor_sigmas",
]


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
    im: np.ndarray, out: np.ndarray | None, apply: Callable[[np.ndarray], None]
) -> np.ndarray:
    """Run ``apply`` on a C-contiguous (C, H, W) copy of ``im``, as the workers' buffers
    are laid out; return the result in the layout of ``im`` (written into ``out`` when
    given)."""
    if im.size == 0:  # no pixels to change
        return _unchanged(im, out)
    if im.ndim == 3 and im.shape[2] == 3:
        planes = np.empty((3, *im.shape[:2]), np.uint8)
        cv2.split(im, list(planes))  # into the planes: faster than numpy's transposed copy
        apply(planes)
        result = cv2.merge(list(planes))
    else:
        planes = np.array(im.reshape(1, *im.shape[:2]))
        apply(planes)
        result = planes[0].reshape(im.shape)
    if out is None:
        return result
    np.copyto(out, result)
    return out


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
    rows = gamma_rows(color, gamma_gray, gamma_color, contrast, channels)
    if len(rows) < channels:  # one row serves every channel
        rows = np.repeat(rows, channels, axis=0)
    return rows.T


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
    return _per_plane(im, out, lambda planes: apply_gamma(planes, table))


def gamma_table(
    color: bool,
    gamma_gray: float | None,
    gamma_color: Sequence[float] | None,
    contrast: float | None,
    channels: int,
) -> np.ndarray:
    """The rounded lookup table of :func:`gamma_lut`: uint8, one row of 256 per channel."""
    return round_rows(gamma_lut(color, gamma_gray, gamma_color, contrast, channels).T)


def noise_sigma(strength: float | None) -> float:
    """Noise sigma in grey levels for ``strength`` (None is 0); ValueError unless
    ``strength`` is finite and >= 0."""
    value = 0.0 if strength is None else float(strength)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    return value * NOISE_SCALE


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
    return _per_plane(
        im,
        out,
        lambda planes: apply_noise(
            list(planes), noise_windows([planes.shape[1:]] * len(planes), sigmas, seed)
        ),
    )


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
    taps = blur_taps(s)
    if taps is None:  # too small to move any pixel
        return _unchanged(im, out)
    return _per_plane(im, out, lambda planes: apply_blur(list(planes), taps))


def check_sigma(sigma: float | None) -> float:
    """A blur sigma as a float (None is 0); ValueError unless finite and >= 0."""
    s = 0.0 if sigma is None else float(sigma)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    return s
