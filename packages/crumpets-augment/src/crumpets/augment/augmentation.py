"""Decoding and geometric augmentation: every geometric change in one affine warp.

Geometry. :func:`make_transform` composes scale (by ``scale_mode``), aspect, mirrors,
shear, rotation and shift into one 2x3 matrix that maps source pixel coordinates to
target pixel coordinates (pixel centres at integers). The same matrix maps keypoints
and boxes, and is returned with every sample.

Speed and fidelity. Before the warp the source is brought close to the target's scale
cheaply: JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg (``IMREAD_REDUCED_*``),
other images are area-averaged by an integer factor. What is left of a downscale is done
by warping to a k-times larger image and area-averaging it by k (supersampling), and
only where bilinear sampling would alias. The matrix is adjusted for each step, so the
returned one always refers to the original image.

Pixel operations (gamma, color, contrast via one lookup table; blur; noise) follow on the
target-sized image, in that order, unless ``gpu_augmentation`` leaves them to the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from crumpets.core.params import NOISE_TABLE_SIZE, PIXEL_OPS

from ._decoding import _decode, _reduction, decode_image, decode_opencv, image_size
from ._geometry import (
    SCALE_MODES,
    _singular_values,
    _then,
    _transform_rows,
    calc_scale_ratio,
    make_transform,
    map_boxes,
    map_keypoints,
)
from .augmentation_cpu import (
    _add_noise_windows,
    _blur_taps,
    _blur_with,
    _gamma_chw,
    _gamma_rows,
    _noise_windows,
    _round,
    check_sigma,
    sensor_sigmas,
)

__all__ = [
    "SCALE_MODES",
    "calc_scale_ratio",
    "decode_image",
    "decode_opencv",
    "image_size",
    "make_transform",
    "map_boxes",
    "map_keypoints",
    "randomize_image",
    "rotate_and_resize",
    "transform_image",
]

# Supersampling more than 4x4 per pixel costs much and adds nothing visible.
_MAX_SUPERSAMPLING = 4


def _warp(
    im: np.ndarray,
    matrix: np.ndarray,
    target_size: tuple[int, int],
    method: int,
    border: tuple[float, ...],
    supersampling: int,
    dst: np.ndarray | None = None,
    smallest: float | None = None,
) -> np.ndarray:
    """One warpAffine to target_size, supersampled k x k where downscaling would alias.

    ``smallest``: the matrix's smallest scale (:func:`_singular_values`), when known.
    """
    th, tw = target_size
    if supersampling == 0:
        # Bilinear sampling aliases only below half scale; the source was already brought
        # near the target's scale, so this is rare (strong aspect or shear).
        if smallest is None:
            smallest = _singular_values(matrix)[1]
        supersampling = (
            1 if smallest >= 0.5 or not smallest else min(_MAX_SUPERSAMPLING, round(1 / smallest))
        )
    k = 1 if method == cv2.INTER_NEAREST else supersampling
    if k == 1:
        return cv2.warpAffine(
            im,
            matrix,
            (tw, th),
            dst=dst,
            flags=method,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=border,
        )
    # a target pixel averages a k x k block whose centres are k*x + (k-1)/2
    up = np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2]]) @ np.vstack([matrix, [0, 0, 1]])
    big = cv2.warpAffine(
        im, up, (tw * k, th * k), flags=method, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )
    return cv2.resize(big, (tw, th), dst=dst, interpolation=cv2.INTER_AREA)


def _fill(background: Any, channels: int) -> tuple[float, ...]:
    """The background as one value per channel (a single number fills every channel)."""
    values = list(background) if isinstance(background, (list, tuple, np.ndarray)) else [background]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ValueError(f"background needs 1 or {channels} values, got {background!r}")
    return tuple(float(v) for v in values)


def _prepare_source(
    src: Any,
    color: bool,
    matrix: np.ndarray,
    method: int,
    size: tuple[int, int] | None = None,
    largest: float | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Decode (or take) the source, reduced toward the target's scale.

    ``largest``: the matrix's largest scale (:func:`_singular_values`), when known.

    Returns the pixels, the matrix for them (``matrix`` itself when unchanged), and
    whether they are in BGR order.
    """
    nearest = method == cv2.INTER_NEAREST  # labels must not be blended
    if largest is None:
        largest = _singular_values(matrix)[0]
    if isinstance(src, np.ndarray):
        im, bgr, reduce = src, False, 1
    else:
        data = bytes(src) if not isinstance(src, bytes) else src
        if size is None:  # callers that parsed the header pass its size
            size = image_size(data)
        if size is not None and data[:2] == b"\xff\xd8" and not nearest and largest > 0:
            h, w = size
            reduce = _reduction(size, math.ceil(h * largest), math.ceil(w * largest))
            im = _decode(data, color, reduce)
        else:
            im, reduce = _decode(data, color), 1
        bgr = im.ndim == 3
    if reduce > 1:
        return im, _then(np.vstack([matrix, [0, 0, 1]]), reduce, reduce)[:2], bgr
    factor = int(1 / largest) if largest > 0 else 1
    if factor >= 2 and not nearest:
        h, w = im.shape[:2]
        size = (max(1, round(w / factor)), max(1, round(h / factor)))
        im = cv2.resize(im, size, interpolation=cv2.INTER_AREA)
        matrix = _then(np.vstack([matrix, [0, 0, 1]]), w / size[0], h / size[1])[:2]
    return im, matrix, bgr


def _gray(im: np.ndarray, bgr: bool) -> np.ndarray:
    if im.ndim == 3 and im.shape[2] == 1:
        return im[:, :, 0]
    if im.ndim == 3:
        return cv2.cvtColor(im, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
    return im


def _rgba(im: np.ndarray, bgr: bool) -> np.ndarray:
    # warpAffine has SIMD paths for 1 and 4 channels: warping RGBA costs less than half of
    # warping RGB, far more than this conversion of the (already reduced) source.
    if im.ndim == 2 or im.shape[2] == 1:
        return cv2.cvtColor(im, cv2.COLOR_GRAY2RGBA)
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGBA if bgr else cv2.COLOR_RGB2RGBA)


def transform_image(
    src: Any,
    size: tuple[int, int],
    color: bool = True,
    background: Any = 0,
    angle: float = 0,
    scale: float = 1,
    shift: Any = None,
    aspect: float = 1,
    hmirror: bool = False,
    vmirror: bool = False,
    interp_method: int | None = None,
    gamma_gray: float | None = None,
    gamma_color: Any = None,
    contrast: float | None = None,
    noise: float | None = None,
    noise_seed: int = 0,
    blur: float | None = None,
    shear: float | None = None,
    scale_mode: str = "shortest",
    supersampling: int = 0,
    skip: frozenset[str] = frozenset(),
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (if bytes), warp and apply pixel operations; the workers' workhorse.

    Args:
        src: encoded image bytes (decoded here) or an RGB/gray uint8 array.
        size: (height, width) of the result.
        color: 3-channel RGB result if True, else gray.
        background: fill for areas without image data, a number or (r, g, b).
        skip: pixel operations left to the GPU: any of
            :data:`crumpets.core.params.PIXEL_OPS` ('gamma', 'blur', 'noise').
        out: optional C-contiguous uint8 array (C, H, W), C 3 if ``color`` else 1, to
            write the result into as planes (a worker's buffer).
        others: see :func:`randomize_image`.

    Returns:
        (image, matrix): the result, RGB (HxWx3) or gray (HxW) uint8, or ``out`` when
        given; and the 2x3 matrix from source to result pixel coordinates.
    """
    method = cv2.INTER_LINEAR if interp_method is None else int(interp_method)
    if not skip <= PIXEL_OPS.keys():
        raise ValueError(f"skip must name pixel operations {list(PIXEL_OPS)}, got {sorted(skip)}")
    src, source_size = _source(src, color)
    rows = _transform_rows(
        source_size, size, angle, scale, aspect, shift, hmirror, vmirror, shear, scale_mode
    )
    channels = 3 if color else 1
    th, tw = size
    if out is None:
        result = np.empty((channels, th, tw), np.uint8)
    elif (
        not isinstance(out, np.ndarray)
        or out.shape != (channels, th, tw)
        or out.dtype != np.uint8
        or not out.flags.c_contiguous
    ):
        shape = getattr(out, "shape", None)
        raise ValueError(
            f"out must be a C-contiguous uint8 array of shape {(channels, th, tw)}, got {shape}"
        )
    else:
        result = out
    fill = _fill(background, channels)
    _plan_pixels(
        src,
        source_size,
        rows,
        (th, tw),
        color,
        (*fill, 0.0) if color else fill,
        method,
        supersampling,
        result,
        skip,
        gamma_gray,
        gamma_color,
        contrast,
        blur,
        noise,
        noise_seed,
    )()
    matrix = np.array(rows)
    if out is not None:
        return out, matrix
    return (cv2.merge(list(result)) if color else result[0]), matrix


def _source(src: Any, color: bool) -> tuple[Any, tuple[int, int]]:
    """Check an image argument: encoded bytes or a uint8 array. Return it (decoded when it
    is neither JPEG nor PNG, whose sizes the header gives) and its (height, width)."""
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or not (src.ndim == 2 or src.ndim == 3 and src.shape[2] in (1, 3)):
            raise ValueError(
                f"image arrays must be uint8, HxW, HxWx1 or HxWx3; got {src.dtype} {src.shape}"
            )
        source_size = src.shape[:2]
    elif isinstance(src, (bytes, bytearray, memoryview)):
        source_size = image_size(src)
    else:
        raise TypeError(f"image must be encoded bytes or a uint8 array, got {type(src).__name__}")
    if source_size is None:  # neither JPEG nor PNG: decode to learn the size
        src = _decode(src, color)
        src = cv2.cvtColor(src, cv2.COLOR_BGR2RGB) if color else src
        source_size = src.shape[:2]
    if min(source_size) < 1:
        raise ValueError(f"image has no pixels: {source_size[0]} x {source_size[1]}")
    return src, tuple(source_size)


# warped RGBA -> the R, G and B planes
_RGB_OF_RGBA = [0, 0, 1, 1, 2, 2]


def _plan_pixels(
    src: Any,
    source_size: tuple[int, int],
    rows: list[list[float]],
    size: tuple[int, int],
    color: bool,
    border: tuple[float, ...],
    method: int,
    supersampling: int,
    result: np.ndarray,
    skip: frozenset[str],
    gamma_gray: float | None,
    gamma_color: Any,
    contrast: float | None,
    blur: float | None,
    noise: float | None,
    noise_seed: int,
) -> Callable[[], None]:
    """:func:`transform_image` on checked arguments, in two steps: this one works out what
    the pixel operations need (Python and numpy: the gamma table, the blur's taps, the
    noise) and returns the second, which decodes, warps and applies them into ``result``
    (OpenCV's calls).

    ``src`` comes from :func:`_source`, ``rows`` (the matrix's) from
    :func:`_transform_rows`; ``border`` is the warp's border value (with a 0 for alpha
    when ``color``); ``result`` is a C-contiguous uint8 (C, H, W) array.

    Workers take the first step for every sample of a batch before the second for any:
    Python and numpy take about twice as long right after decoding and warping an image,
    which flush their data from the caches.
    """
    channels = len(result)
    table = taps = windows = None
    if "gamma" not in skip and (
        gamma_gray is not None or contrast or (color and gamma_color is not None)
    ):
        table = _round(_gamma_rows(color, gamma_gray, gamma_color, contrast, channels))
    if blur and "blur" not in skip:
        taps = _blur_taps(check_sigma(blur * size[1]))
    noise_args = None
    if noise and "noise" not in skip:
        noise_args = ([size] * channels, sensor_sigmas(noise, channels), noise_seed)
        if channels * size[0] * size[1] <= NOISE_TABLE_SIZE:  # windows of the table: views
            windows = _noise_windows(*noise_args)
    matrix = np.array(rows)
    largest, scale = _singular_values(rows)

    def pixels() -> None:
        smallest: float | None = scale
        im, pixel_matrix, bgr = _prepare_source(src, color, matrix, method, source_size, largest)
        if pixel_matrix is not matrix:  # the source was reduced: other scales
            smallest = None
        planes = list(result)  # contiguous (H, W) views: every pixel operation runs per plane
        if color:
            warped = _warp(
                _rgba(im, bgr), pixel_matrix, size, method, border, supersampling, None, smallest
            )
            cv2.mixChannels([warped], planes, _RGB_OF_RGBA)
        else:
            gray = _gray(im, bgr)
            _warp(gray, pixel_matrix, size, method, border, supersampling, planes[0], smallest)
        if table is not None:
            _gamma_chw(result, table)
        if taps is not None:
            _blur_with(planes, taps)
        if noise_args is not None:
            # a larger image's fresh draws are made here, so a batch does not hold them all
            _add_noise_windows(planes, _noise_windows(*noise_args) if windows is None else windows)

    return pixels


def rotate_and_resize(
    im: np.ndarray,
    angle: float,
    target_size: tuple[int, int],
    scale: float,
    aspect: float,
    shift: Any,
    method: int,
    background: Any,
    hmirror: bool,
    vmirror: bool,
    shear: float | None = None,
    scale_mode: str = "shortest",
    supersampling: int = 0,
) -> np.ndarray:
    """Apply the geometric part of the augmentation to a decoded image, in one warp."""
    matrix = make_transform(
        im.shape[:2], target_size, angle, scale, aspect, shift, hmirror, vmirror, shear, scale_mode
    )
    src, pixel_matrix, _ = _prepare_source(im, im.ndim == 3, matrix, method)
    fill = _fill(background, 1 if src.ndim == 2 else src.shape[2])
    th, tw = target_size
    return _warp(src, pixel_matrix, (th, tw), method, fill, supersampling)


def randomize_image(
    im: np.ndarray,
    size: tuple[int, int],
    background: Any = None,
    color: bool = True,
    angle: float = 0,
    scale: float = 1,
    shift: Any = None,
    aspect: float = 1,
    hmirror: bool = False,
    vmirror: bool = False,
    interp_method: int = cv2.INTER_LINEAR,
    gamma_gray: float | None = None,
    gamma_color: Any = None,
    contrast: float | None = None,
    noise: float | None = None,
    blur: float | None = None,
    shear: float | None = None,
    is_rgb: bool = True,
    scale_mode: str = "shortest",
    supersampling: int = 0,
    gpu_augmentation: bool = False,
    do_rotate_and_resize: bool = True,
    noise_seed: int = 0,
) -> np.ndarray:
    """Randomize an image according to the given parameters.

    Args:
        im: image (HxWx3 or HxW uint8).
        size: (height, width) of the result.
        background: fill where there is no pixel data: a number or one per channel.
        color: True for a 3-channel image, False for gray.
        angle: degrees of counter-clockwise rotation.
        scale: 1.0 fits the image to size by ``scale_mode``; 2.0 doubles its sides.
        shift: (x, y) in [-1, 1]: moves the image by up to the difference between its
            scaled size and the target size.
        aspect: aspect ratio change: x stretched by sqrt(aspect), y by 1/sqrt(aspect).
        hmirror: mirror horizontally.
        vmirror: mirror vertically.
        interp_method: OpenCV interpolation (INTERP_* in crumpets.augment.rng).
        gamma_gray: gamma applied to all channels (brightness).
        gamma_color: (r, g, b) gammas (color).
        contrast: in [-1, 1]; positive steepens mid tones, negative flattens.
        noise: noise strength (sigma = 64 * noise grey levels, less in green).
        blur: Gaussian blur sigma relative to the result's width.
        shear: gradient of the horizontal edges; 0 keeps them horizontal.
        is_rgb: ``im`` is RGB (else BGR); gamma_color is always (r, g, b).
        scale_mode: 'shortest' (fill, crop the rest) or 'longest' (fit, pad).
        supersampling: k x k samples per pixel; 0 chooses where downscaling aliases.
        gpu_augmentation: leave gamma, blur and noise to the GPU Randomizer.
        do_rotate_and_resize: False skips the geometric part (the image must already
            have the target size).
        noise_seed: seed of the noise pattern.

    Returns:
        The randomized image, in the channel order of ``im``.
    """
    if not do_rotate_and_resize and tuple(im.shape[:2]) != tuple(size):
        raise ValueError(f"without do_rotate_and_resize, im must have size {size}")
    if color and not is_rgb:
        im = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
    height, width = size
    out, _ = transform_image(
        im,
        (height, width),
        color=color,
        background=0 if background is None else background,
        angle=angle if do_rotate_and_resize else 0,
        scale=scale if do_rotate_and_resize else 1,
        shift=shift if do_rotate_and_resize else None,
        aspect=aspect if do_rotate_and_resize else 1,
        hmirror=hmirror and do_rotate_and_resize,
        vmirror=vmirror and do_rotate_and_resize,
        interp_method=interp_method,
        gamma_gray=gamma_gray,
        gamma_color=gamma_color,
        contrast=contrast,
        noise=noise,
        noise_seed=noise_seed,
        blur=blur,
        shear=shear if do_rotate_and_resize else None,
        scale_mode=scale_mode,
        supersampling=supersampling,
        skip=frozenset(PIXEL_OPS) if gpu_augmentation else frozenset(),
    )
    if color and not is_rgb:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    return out
