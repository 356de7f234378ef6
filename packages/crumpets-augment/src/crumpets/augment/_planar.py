"""The pixel operations on contiguous uint8 (H, W) planes: the one implementation that
:mod:`crumpets.augment.augmentation_cpu`'s HxWxC kernels and the workers' pixel plans
(:mod:`crumpets.augment._pixel_plan`) share. Its formulas are stated in
:mod:`crumpets.augment.augmentation_cpu`'s docstring.

Each operation is split in two: the first function works out its data from the parameters
(:func:`gamma_rows` and :func:`round_rows`, :func:`noise_windows`, :func:`blur_taps`), the
second writes pixels with it (:func:`apply_gamma`, :func:`apply_noise`, :func:`apply_blur`).
A worker takes the first step for every sample of a batch before the second for any.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from crumpets.core.params import NOISE_TABLE_SEED, NOISE_TABLE_SIZE

# Fixed size (256 values), computed once; not a cache that can grow.
with np.errstate(divide="ignore"):
    # log of the 256 input levels; log 0 = -inf, and exp(g * -inf) = 0 = 0 ** g for g > 0
    _LOG_X = np.log(np.arange(256, dtype=np.float64) / 255.0)


def _check_gamma(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def gamma_rows(
    color: bool,
    gamma_gray: float | None,
    gamma_color: Sequence[float] | None,
    contrast: float | None,
    channels: int,
) -> np.ndarray:
    """:func:`crumpets.augment.augmentation_cpu.gamma_lut`'s table as rows of 256
    (channels, 256), or one row when every channel has the same gamma (no ``gamma_color``):
    the same values, a third of the work."""
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


def round_rows(rows: np.ndarray) -> np.ndarray:
    # y is in [0, 1] for every formula of gamma_lut, so rounding needs no clipping
    return np.rint(rows, out=rows).astype(np.uint8)


def apply_gamma(image: np.ndarray, rows: np.ndarray) -> None:
    """Look up a C-contiguous uint8 (C, H, W) image in place: plane c in row c of a rounded
    :func:`gamma_rows` table (:func:`round_rows`), or every plane in one call when it has
    one row."""
    channels, height, width = image.shape
    if len(rows) == 1:
        cv2.LUT(image.reshape(channels * height, width), rows[0], dst=image.reshape(-1, width))
    else:
        for c in range(channels):
            cv2.LUT(image[c], rows[c], dst=image[c])


_NOISE_TABLE = NOISE_TABLE_SIZE  # standard normal samples per process: 8 MB, made once


@functools.cache
def noise_table() -> np.ndarray:
    return np.random.default_rng(NOISE_TABLE_SEED).standard_normal(_NOISE_TABLE, np.float32)


def noise_windows(
    shapes: Sequence[tuple[int, ...]], sigmas: Sequence[float], seed: int
) -> list[tuple[np.ndarray, float]]:
    """The noise added to planes of these shapes (see
    :mod:`crumpets.augment.augmentation_cpu`): per plane, its window of standard normal
    samples and its sigma."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    sizes = [math.prod(shape) for shape in shapes]
    size = sum(sizes)
    if size <= _NOISE_TABLE:
        # A window of a fixed table of normal samples, placed by the seed: as random as
        # fresh draws for augmentation, replayable, and a quarter of their cost.
        offset = int(seed) % (_NOISE_TABLE - size + 1)
        z = noise_table()[offset : offset + size]
    else:
        # fresh samples from the seed's own generator (never OpenCV's global one)
        z = np.random.default_rng(int(seed)).standard_normal(size, np.float32)
    windows = []
    start = 0
    for shape, n, sigma in zip(shapes, sizes, sigmas, strict=True):
        windows.append((z[start : start + n].reshape(shape), float(sigma)))
        start += n
    return windows


def apply_noise(planes: Sequence[np.ndarray], windows: Sequence[tuple[np.ndarray, float]]) -> None:
    for plane, (window, sigma) in zip(planes, windows, strict=True):
        # one pass in float32: plane + window * sigma, rounded and saturated to uint8
        cv2.addWeighted(plane, 1.0, window, sigma, 0.0, dst=plane, dtype=cv2.CV_8U)


def blur_taps(sigma: float) -> np.ndarray | None:
    """The Gaussian's taps for :func:`apply_blur`; None for a blur that changes no pixel."""
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


def apply_blur(planes: Sequence[np.ndarray], taps: np.ndarray) -> None:
    for plane in planes:
        cv2.sepFilter2D(plane, -1, taps, taps, dst=plane, borderType=cv2.BORDER_REFLECT_101)
