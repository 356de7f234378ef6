"""One affine warp from a source to a target, antialiased where it shrinks the image and
exact at the image's edge.

Antialiasing. Where the matrix needs at most half the source's scale, the source is first
shrunk cheaply by a whole factor: JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg
(``IMREAD_REDUCED_*``), then area-averaged by a whole number, until the warp is left to
shrink it by 2x to 4x; the warp then averages 2x2 samples per target pixel (one warp to a
k-times larger image, area-averaged by k), more where strong aspect or shear shrinks one
axis further. Where the matrix shrinks by a whole factor without turning the image (4x,
8x), the shrunk source is the area average itself. Where the warp shrinks by less than
1.8x it takes one sample per pixel.

The edge. Before the warp the source's edge is repeated outward by a few pixels (the
``margin``: as far as the samples of a target pixel whose centre maps into the source can
reach), and the warp fills the rest with the background. So a target pixel whose centre
maps into the source takes only source pixels, however the image is turned or scaled; the
pixels just outside blend the edge into the background, as far as one source pixel (more
where supersampled); beyond, the background.

:func:`plan_warp` works this out from the matrix alone (plain Python and numpy, the
workers' first step); :func:`prepare_source` and :func:`warp` do it (OpenCV's calls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ._decoding import _decode, image_size
from ._geometry import _singular_values, _then

__all__ = ["WarpPlan", "plan_warp", "prepare_source", "warp"]

# Supersampling more than 4x4 per pixel costs much and adds nothing visible.
_MAX_SUPERSAMPLING = 4
# Where the matrix shrinks the image by 2x or more, the source is first shrunk by a whole
# factor until the warp shrinks it by 2x to 4x (to this scale), and the warp averages 2x2
# samples per target pixel: a shrunk pixel then spans at most half a target pixel.
# Shrinking it until the warp shrinks it by 1x to 2x and taking one sample, as crumpets
# did, blurs by up to half a target pixel wherever the samples fall between shrunk pixels:
# 27.5 dB instead of 39 against the area average at 9.14x (benchmarks/fidelity.py).
_REACH = 0.5
# The warp takes one sample per target pixel where it shrinks by less than 1.8x: up to 6 dB
# below Pillow's antialiased resize there, but 2x2 samples (or two warps) would cost a
# worker a third (a quarter) more time on the training preset's crops, which shrink by
# 1.3x to 2x (benchmarks/paired_worker.py).
_ONE_SAMPLE = 0.55
# Source pixels an interpolation reads beyond a sample's position: bilinear (and
# INTER_AREA, which warpAffine treats as bilinear) 1, bicubic 2, Lanczos 4.
_KERNEL_REACH = {cv2.INTER_CUBIC: 2, cv2.INTER_LANCZOS4: 4}
# Samples cannot reach further than this from a target pixel whose centre is inside,
# where they matter: past it the image is smaller than a fraction of a target pixel.
_MAX_MARGIN = 64

_TO_RGBA = (cv2.COLOR_GRAY2RGBA, cv2.COLOR_BGR2RGBA, cv2.COLOR_RGB2RGBA)


@dataclass(frozen=True)
class WarpPlan:
    """How a source becomes the target: shrunk by ``factor`` (a JPEG partly as it is
    decoded), its edge repeated ``margin`` pixels outward, then warped by ``matrix`` (from
    the shrunk source's pixels) with ``samples`` x ``samples`` samples per target pixel."""

    factor: int
    matrix: np.ndarray
    samples: int
    margin: int


def _samples(smallest: float) -> int:
    """Samples per target pixel along each axis where the matrix's smallest scale is
    ``smallest``: one down to 1.8x shrinking (``_ONE_SAMPLE``), 2 below (the source was
    shrunk until the warp shrinks it by at most 4x), more where one axis shrinks by more
    than 4x (strong aspect or shear), at most ``_MAX_SUPERSAMPLING``."""
    if smallest >= _ONE_SAMPLE or smallest <= 0:
        return 1
    return max(2, min(_MAX_SUPERSAMPLING, math.ceil(_REACH / smallest)))


def _margin(method: int, k: int, smallest: float) -> int:
    """How far the source's edge must be repeated outward for every sample of a target
    pixel whose centre maps into the source to read source pixels only: the kernel's
    reach, plus, for k x k samples, their distance from the centre (up to (k - 1) / 2k
    target pixels along each axis, so sqrt(2) times that in all, at most that over
    ``smallest`` source pixels)."""
    if method == cv2.INTER_NEAREST:
        return 0  # labels: a target pixel is a source pixel or the background
    reach = _KERNEL_REACH.get(method, 1)
    if k == 1:
        return reach
    spread = (k - 1) * math.sqrt(2) / (2 * k * max(smallest, 1e-300))
    return min(_MAX_MARGIN, reach + math.ceil(spread))


def _shrink_factor(matrix: np.ndarray, largest: float, reach: float, limit: int) -> int:
    """By how much to shrink the source before the warp: a power of two (at most 8, by
    which a JPEG shrinks as it decodes) times a whole number (area averaging), or 1.

    Where the matrix shrinks by a whole factor without turning the image or moving it by
    a fraction of a pixel (4x, 8x), that factor: the warp then only copies, and the result
    is the area average itself. Else the largest that leaves the matrix's largest scale at
    most ``reach``. Never more than ``limit`` (the source's longer side: one pixel is left).
    """
    if largest <= 0:
        return 1
    whole = round(min(1 / largest, limit + 1))
    if 2 <= whole <= limit and abs(largest * whole - 1) < 1e-9:
        (a, b, x), (c, d, y) = _then(np.vstack([matrix, [0, 0, 1]]), whole, whole)[:2].tolist()
        if (
            b == c == 0
            and abs(abs(a) - 1) < 1e-9
            and abs(abs(d) - 1) < 1e-9
            and abs(x - round(x)) < 1e-6
            and abs(y - round(y)) < 1e-6
        ):
            return whole
    factor = int(min(reach / largest, limit))
    if factor < 2:
        return 1
    power = min(8, 1 << (factor.bit_length() - 1))
    return power * (factor // power)


def plan_warp(
    matrix: np.ndarray,
    source_size: tuple[int, int],
    method: int,
    supersampling: int,
    scales: tuple[float, float] | None = None,
) -> WarpPlan:
    """Work out how ``matrix`` (2x3, source to target pixels) is applied to a source of
    ``source_size`` (height, width).

    Args:
        method: OpenCV's interpolation; nearest-neighbour (labels) is never blended.
        supersampling: k x k samples per target pixel; 0 chooses by the matrix's scales.
            An explicit k shrinks the source to at most the target's scale first.
        scales: the matrix's largest and smallest scale (:func:`_singular_values`), when
            known.
    """
    largest, smallest = scales or _singular_values(matrix)
    nearest = method == cv2.INTER_NEAREST
    reach = _REACH if supersampling == 0 else 1.0
    factor = 1 if nearest else _shrink_factor(matrix, largest, reach, max(source_size))
    if factor > 1:
        matrix = _then(np.vstack([matrix, [0, 0, 1]]), factor, factor)[:2]
        smallest *= factor
    k = 1 if nearest else supersampling or _samples(smallest)
    return WarpPlan(factor, matrix, k, _margin(method, k, smallest))


def _conversion(im: np.ndarray, color: bool, bgr: bool) -> int | None:
    """The cv2.cvtColor code that makes ``im`` what the warp takes: RGBA if ``color``, else
    gray; None where it is gray already."""
    # warpAffine has SIMD paths for 1 and 4 channels: warping RGBA costs less than half of
    # warping RGB, far more than this conversion of the (already reduced) source.
    gray = im.ndim == 2 or im.shape[2] == 1
    if color:
        return _TO_RGBA[0 if gray else 1 if bgr else 2]
    if gray:
        return None
    return cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY


def _with_margin(im: np.ndarray, code: int | None, margin: int) -> np.ndarray:
    """``im`` converted by ``code`` (None: as it is), its edge repeated ``margin`` pixels
    outward. The conversion writes into the middle of the larger image: one image made,
    not two."""
    if code is None:
        m = margin
        return cv2.copyMakeBorder(im, m, m, m, m, cv2.BORDER_REPLICATE) if m else im
    if not margin:
        return cv2.cvtColor(im, code)
    m = margin
    h, w = im.shape[:2]
    shape = (h + 2 * m, w + 2 * m, 4) if code in _TO_RGBA else (h + 2 * m, w + 2 * m)
    out = np.empty(shape, np.uint8)
    cv2.cvtColor(im, code, dst=out[m:-m, m:-m])
    out[:m, m:-m] = out[m, m:-m]
    out[-m:, m:-m] = out[-m - 1, m:-m]
    out[:, :m] = out[:, m : m + 1]
    out[:, -m:] = out[:, -m - 1 : -m]
    return out


def prepare_source(
    src: Any, color: bool | None, plan: WarpPlan, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode (or take) the source, shrunk by the plan's factor, as the warp takes it: RGBA
    if ``color``, gray if False (None: its channels as they are), with the plan's margin.

    Args:
        src: encoded bytes (BGR once decoded) or an array (RGB or gray).
        size: its (height, width), where the caller read it from the header.

    Returns:
        The pixels: RGBA (``color``), gray (False), or an array's channels as they are
        (None, for arrays only).
    """
    factor = plan.factor
    reduce = 1
    if isinstance(src, np.ndarray):
        im, bgr = src, False
    else:
        data = bytes(src) if not isinstance(src, bytes) else src
        if size is None:  # callers that parsed the header pass its size
            size = image_size(data)
        if size is not None and data[:2] == b"\xff\xd8" and factor > 1:
            reduce = min(8, factor & -factor)  # the power of two in factor: libjpeg's part
            im = _decode(data, bool(color), reduce)
        else:
            im = _decode(data, bool(color))
        bgr = im.ndim == 3
    rest = factor // reduce
    if rest > 1:
        # a whole factor keeps OpenCV's fast area average; the edge repeated to a multiple
        # of it lies outside the source's area, which the warp leaves to the border
        h, w = im.shape[:2]
        pad_h, pad_w = -h % rest, -w % rest
        if pad_h or pad_w:
            im = cv2.copyMakeBorder(im, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
        im = cv2.resize(
            im, ((w + pad_w) // rest, (h + pad_h) // rest), interpolation=cv2.INTER_AREA
        )
    if color is None:
        return _with_margin(im, None, plan.margin)
    code = _conversion(im, color, bgr)
    if code is None and im.ndim == 3:
        im = im[:, :, 0]
    return _with_margin(im, code, plan.margin)


def warp(
    im: np.ndarray,
    plan: WarpPlan,
    target_size: tuple[int, int],
    method: int,
    border: tuple[float, ...],
    dst: np.ndarray | None = None,
) -> np.ndarray:
    """Warp ``im`` (from :func:`prepare_source`) to ``target_size`` as ``plan`` says, the
    background ``border`` where no sample reads the image.

    Args:
        dst: where to write the result, if given.
    """
    th, tw = target_size
    m, k = plan.margin, plan.samples
    matrix = plan.matrix
    if m:  # from the image with its margin: its pixel (x + m, y + m) is the source's (x, y)
        (a, b, x), (c, d, y) = matrix.tolist()
        matrix = np.array([[a, b, x - m * (a + b)], [c, d, y - m * (c + d)]])
    constant = cv2.BORDER_CONSTANT
    if k == 1:
        return cv2.warpAffine(
            im, matrix, (tw, th), dst=dst, flags=method, borderMode=constant, borderValue=border
        )
    # a target pixel averages a k x k block whose centres are k*x + (k-1)/2
    up = np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2]]) @ np.vstack([matrix, [0, 0, 1]])
    big = cv2.warpAffine(
        im, up, (tw * k, th * k), flags=method, borderMode=constant, borderValue=border
    )
    return cv2.resize(big, (tw, th), dst=dst, interpolation=cv2.INTER_AREA)
