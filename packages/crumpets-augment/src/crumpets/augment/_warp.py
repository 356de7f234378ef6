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
reach), so those pixels take only source pixels, however the image is turned or scaled.
Where the target reaches beyond the source, the warp also carries how much of each target
pixel the source covers (an RGBA source's alpha, 0 on the margin; a second, one-channel
warp for others), and the pixels covered less than half get the background. With one
sample per pixel that is the pixels whose centres map outside the source, to within a
32nd of a pixel (the warp's precision; around the source's corners, where bilinear
coverage rounds the corner off, the centres are tested directly); where several samples
are averaged, the pixels less than half covered.

:func:`plan_warp` works this out from the matrix alone (plain Python and numpy, the
workers' first step); :func:`prepare_source` and :func:`warp` do it (OpenCV's calls).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ._decoding import decode, image_size
from ._geometry import resize_matrix, singular_values, then_scale

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
    the shrunk source's pixels) with ``samples`` x ``samples`` samples per target pixel.
    ``outside``: part of the target lies outside the source (it gets the background);
    ``corners``: (top, left, outside) patches of the target around the source's corners,
    which pixels there lie outside, exactly (where one sample per pixel is taken)."""

    factor: int
    matrix: np.ndarray
    samples: int
    margin: int
    outside: bool
    corners: tuple[tuple[int, int, np.ndarray], ...] = ()


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
        (a, b, x), (c, d, y) = then_scale(np.vstack([matrix, [0, 0, 1]]), whole, whole)[:2].tolist()
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


def _reaches_outside(
    matrix: np.ndarray, source_size: tuple[int, int], target_size: tuple[int, int]
) -> bool:
    """Whether some of the target's area maps outside the source's (both convex: it is
    enough to map the target's four corners back)."""
    (a, b, x), (c, d, y) = matrix.tolist()
    det = a * d - b * c
    if det == 0:
        return True
    (th, tw), (h, w) = target_size, source_size
    for u, v in ((-0.5, -0.5), (tw - 0.5, -0.5), (-0.5, th - 0.5), (tw - 0.5, th - 0.5)):
        sx = (d * (u - x) - b * (v - y)) / det
        sy = (a * (v - y) - c * (u - x)) / det
        if not (-0.5 <= sx <= w - 0.5 and -0.5 <= sy <= h - 0.5):
            return True
    return False


def plan_warp(
    matrix: np.ndarray,
    source_size: tuple[int, int],
    target_size: tuple[int, int],
    method: int,
    supersampling: int,
    scales: tuple[float, float] | None = None,
) -> WarpPlan:
    """Work out how ``matrix`` (2x3, source to target pixels) takes a source of
    ``source_size`` to ``target_size`` (height, width).

    Args:
        method: OpenCV's interpolation; nearest-neighbour (labels) is never blended.
        supersampling: k x k samples per target pixel; 0 chooses by the matrix's scales.
            An explicit k shrinks the source to at most the target's scale first.
        scales: the matrix's largest and smallest scale (:func:`singular_values`), when
            known.
    """
    largest, smallest = scales or singular_values(matrix)
    nearest = method == cv2.INTER_NEAREST
    outside = not nearest and _reaches_outside(matrix, source_size, target_size)
    matrix0 = matrix
    reach = _REACH if supersampling == 0 else 1.0
    factor = 1 if nearest else _shrink_factor(matrix, largest, reach, max(source_size))
    if factor > 1:
        matrix = then_scale(np.vstack([matrix, [0, 0, 1]]), factor, factor)[:2]
        smallest *= factor
    k = 1 if nearest else supersampling or _samples(smallest)
    corners = _corners(matrix0, source_size, target_size, largest) if outside and k == 1 else ()
    return WarpPlan(factor, matrix, k, _margin(method, k, smallest), outside, corners)


def _corners(
    matrix: np.ndarray, source_size: tuple[int, int], target_size: tuple[int, int], largest: float
) -> tuple[tuple[int, int, np.ndarray], ...]:
    """Which target pixels near the source's corners lie outside it (255) or in (0).

    The coverage the warp carries is bilinear: along an edge it crosses one half where the
    edge is, but at a corner it is the product of two ramps, and rounds the corner off by
    up to a third of a source pixel. Around each corner the pixels are decided here by
    their centres instead.
    """
    (a, b, x), (c, d, y) = matrix.tolist()
    det = a * d - b * c
    (h, w), (th, tw) = source_size, target_size
    reach = math.ceil(largest / 2) + 1  # target pixels the rounding can reach
    patches = []
    for u, v in ((-0.5, -0.5), (w - 0.5, -0.5), (-0.5, h - 0.5), (w - 0.5, h - 0.5)):
        cx, cy = a * u + b * v + x, c * u + d * v + y
        x0, x1 = max(0, math.floor(cx) - reach), min(tw, math.floor(cx) + reach + 2)
        y0, y1 = max(0, math.floor(cy) - reach), min(th, math.floor(cy) + reach + 2)
        if x0 >= x1 or y0 >= y1 or det == 0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1] - np.array([y, x])[:, None, None]
        sx = (d * xx - b * yy) / det
        sy = (a * yy - c * xx) / det
        outside = (sx < -0.5) | (sx > w - 0.5) | (sy < -0.5) | (sy > h - 0.5)
        patches.append((y0, x0, outside.astype(np.uint8) * 255))
    return tuple(patches)


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
    outward; an RGBA result's alpha is 0 on the margin (255 on the image). The conversion
    writes into the middle of the larger image: one image made, not two."""
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
    if out.ndim == 3:
        _mark_margin(out[:, :, 3], m)
    return out


def _mark_margin(area: np.ndarray, m: int) -> None:
    area[:m] = 0
    area[-m:] = 0
    area[:, :m] = 0
    area[:, -m:] = 0


def _mark_covered(area: np.ndarray, m: int, covered: tuple[float, float]) -> None:
    """The last row and column of a source shrunk after padding cover only part of a
    shrunk pixel (``covered``: the fractions (y, x)): say so in its area (alpha)."""
    cy, cx = covered
    if cx < 1:
        area[m:-m, -m - 1] = area[m:-m, -m - 1] * cx
    if cy < 1:
        area[-m - 1, m:-m] = area[-m - 1, m:-m] * cy


def prepare_source(
    src: Any, color: bool | None, plan: WarpPlan, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode (or take) the source, shrunk by the plan's factor, as the warp takes it: RGBA
    if ``color``, gray if False (None: its channels as they are), with the plan's margin.

    Args:
        src: encoded bytes (BGR once decoded) or an array (RGB or gray).
        size: its (height, width), where the caller read it from the header.

    Returns:
        The pixels: RGBA (``color``), gray (False), or an array's channels as they are
        (None, for arrays only). And where the plan reaches outside the source and the
        pixels are not RGBA (whose alpha says it), the source's area: one channel of their
        size, 255 on the source, 0 on the margin; else None.
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
            im = decode(data, bool(color), reduce)
        else:
            im = decode(data, bool(color))
        bgr = im.ndim == 3
    rest = factor // reduce
    covered = (1.0, 1.0)
    if rest > 1:
        # a whole factor keeps OpenCV's fast area average; the edge is repeated to a
        # multiple of it, and the last row and column cover less of their pixels
        h, w = im.shape[:2]
        pad_h, pad_w = -h % rest, -w % rest
        if pad_h or pad_w:
            im = cv2.copyMakeBorder(im, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
            covered = (1 - pad_h / rest, 1 - pad_w / rest)
        im = cv2.resize(
            im, ((w + pad_w) // rest, (h + pad_h) // rest), interpolation=cv2.INTER_AREA
        )
    m = plan.margin
    if color is None:
        im = _with_margin(im, None, m)
    else:
        code = _conversion(im, color, bgr)
        if code is None and im.ndim == 3:
            im = im[:, :, 0]
        im = _with_margin(im, code, m)
    if not plan.outside or not m:
        return im, None
    if im.ndim == 3 and im.shape[2] == 4 and color:
        _mark_covered(im[:, :, 3], m, covered)
        return im, None
    area = np.full(im.shape[:2], 255, np.uint8)
    _mark_margin(area, m)
    _mark_covered(area, m, covered)
    return im, area


def warp(
    im: np.ndarray,
    plan: WarpPlan,
    target_size: tuple[int, int],
    method: int,
    border: tuple[float, ...],
    dst: np.ndarray | None = None,
    area: np.ndarray | None = None,
) -> np.ndarray:
    """Warp ``im`` (from :func:`prepare_source`) to ``target_size`` as ``plan`` says, the
    background ``border`` where the source covers less than half of a target pixel.

    Args:
        dst: where to write the result, if given.
        area: the source's area from :func:`prepare_source` (None: ``im``'s alpha, if the
            plan reaches outside the source).
    """
    out = _warp(im, plan, target_size, method, border, dst)
    if plan.outside and plan.margin:
        covered = cv2.extractChannel(out, 3) if area is None else _warp(area, plan, target_size)
        value = tuple(min(255, max(0, round(v))) for v in border[: _channels(out)])
        # less than half covered: 127 or less
        _, mask = cv2.threshold(covered, 127, 255, cv2.THRESH_BINARY_INV)
        for top, left, patch in plan.corners:
            mask[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
        cv2.copyTo(_background(out.shape, value), mask, out)
    return out


def _channels(im: np.ndarray) -> int:
    return im.shape[2] if im.ndim == 3 else 1


@functools.lru_cache(maxsize=4)
def _background(shape: tuple[int, ...], value: tuple[int, ...]) -> np.ndarray:
    """An image of ``value``, to copy from where the source does not reach."""
    image = np.empty(shape, np.uint8)
    image[...] = value
    return image


def _warp(
    im: np.ndarray,
    plan: WarpPlan,
    target_size: tuple[int, int],
    method: int = cv2.INTER_LINEAR,
    border: tuple[float, ...] = (0.0,),
    dst: np.ndarray | None = None,
) -> np.ndarray:
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
    up = resize_matrix(k, k)[:2] @ np.vstack([matrix, [0, 0, 1]])
    big = cv2.warpAffine(
        im, up, (tw * k, th * k), flags=method, borderMode=constant, borderValue=border
    )
    return cv2.resize(big, (tw, th), dst=dst, interpolation=cv2.INTER_AREA)


def fill_values(background: Any, channels: int) -> tuple[float, ...]:
    """The background as one value per channel (a single number fills every channel)."""
    values = list(background) if isinstance(background, (list, tuple, np.ndarray)) else [background]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ValueError(f"background needs 1 or {channels} values, got {background!r}")
    return tuple(float(v) for v in values)
