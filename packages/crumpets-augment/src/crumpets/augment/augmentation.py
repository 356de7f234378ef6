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
import struct
from typing import Any

import cv2
import numpy as np

from crumpets.core.params import PIXEL_OPS

from .augmentation_cpu import (
    blur_planes,
    check_sigma,
    gamma_planes,
    gamma_table,
    noise_planes,
    sensor_sigmas,
)

__all__ = [
    "SCALE_MODES",
    "calc_scale_ratio",
    "decode_image",
    "decode_opencv",
    "image_size",
    "make_transform",
    "randomize_image",
    "rotate_and_resize",
    "transform_image",
]

SCALE_MODES = ("shortest", "longest")
_REDUCED = {
    (True, 2): cv2.IMREAD_REDUCED_COLOR_2,
    (True, 4): cv2.IMREAD_REDUCED_COLOR_4,
    (True, 8): cv2.IMREAD_REDUCED_COLOR_8,
    (False, 2): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (False, 4): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (False, 8): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Supersampling more than 4x4 per pixel costs much and adds nothing visible.
_MAX_SUPERSAMPLING = 4


# -- decoding -----------------------------------------------------------------------------
def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header without decoding, else None."""
    if data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG), CC (DAC) do not
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return h, w
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _check_complete(data: bytes) -> None:
    # libjpeg and libpng decode a truncated file into a partly grey image with only a
    # warning; a missing end marker tells us before we train on it.
    tail = bytes(data[-64:]).rstrip(b"\0")
    if data[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9"):
        raise ValueError(f"truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    if data[:8] == _PNG_MAGIC and b"IEND" not in tail:
        raise ValueError(f"truncated PNG ({len(data)} bytes, no IEND chunk)")


def _decode(data: bytes, color: bool, reduce: int = 1) -> np.ndarray:
    """Decode image bytes with OpenCV: BGR (HxWx3) if ``color``, else gray (HxW), as the
    workers want them (the BGR to RGB conversion folds into the warp's RGBA conversion).

    EXIF orientation is ignored, so pixels, sizes and keypoints refer to the stored
    pixel grid. ``reduce`` (2, 4 or 8) decodes a JPEG at that fraction of its size.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode.
    """
    _check_complete(data)
    if reduce == 1:
        flags = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    else:
        flags = _REDUCED[bool(color), reduce]
    try:
        im = cv2.imdecode(np.frombuffer(data, np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:  # OpenCV asserts on empty input instead of returning None
        im = None
    if im is None:
        head = bytes(data[:8])
        raise ValueError(f"cannot decode image ({len(data)} bytes, starting {head!r})")
    return im


def _as_reference(im: np.ndarray) -> np.ndarray:
    # what crumpets 3's decoders return: RGB (HxWx3), or gray as HxWx1
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB) if im.ndim == 3 else im[:, :, None]


def decode_opencv(data: bytes, color: bool) -> np.ndarray:
    """Decode image bytes with OpenCV: RGB (HxWx3) if ``color``, else gray (HxWx1).

    EXIF orientation is ignored, so pixels, sizes and keypoints refer to the stored
    pixel grid.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode.
    """
    return _as_reference(_decode(data, color))


def decode_image(
    data: bytes, color: bool, min_height: int = 0, min_width: int = 0, min_factor: int = 2
) -> np.ndarray:
    """Decode image bytes, as small as allowed: JPEGs at 1/2, 1/4 or 1/8 scale if the
    result is still at least ``min_height`` x ``min_width``.

    Args:
        data: encoded image bytes.
        color: RGB (HxWx3) if True, else gray (HxWx1).
        min_height, min_width: the smallest size the decoded image may have.
        min_factor: the smallest reduction worth doing: 2 (the default) allows 2, 4 and 8;
            4 allows 4 and 8; above 8 nothing is reduced.

    Returns:
        The pixels, RGB or gray.

    Raises:
        ValueError: if the data is not a complete image OpenCV can decode.
    """
    size = image_size(data) if data[:2] == b"\xff\xd8" else None
    factor = 1 if size is None else _reduction(size, min_height, min_width, min_factor)
    return _as_reference(_decode(data, color, factor))


def _reduction(size: tuple[int, int], min_height: int, min_width: int, min_factor: int = 2) -> int:
    """The largest JPEG reduction (8, 4, 2 from ``min_factor`` up, else 1) that keeps a
    (height, width) image at least min_height x min_width (libjpeg rounds reduced sizes
    up)."""
    h, w = size
    for f in (8, 4, 2):
        if f >= min_factor and -(-h // f) >= min_height and -(-w // f) >= min_width:
            return f
    return 1


# -- geometry -----------------------------------------------------------------------------
def calc_scale_ratio(
    source_size: tuple[int, ...], target_size: tuple[int, ...], scale: float, scale_mode: str
) -> float:
    """Factor that maps the source to the target: the shortest (or longest) edge fits the
    target exactly at ``scale=1``."""
    h, w = source_size[:2]
    th, tw = target_size[:2]
    if scale_mode == "shortest":
        return max(th / h, tw / w) * scale
    if scale_mode == "longest":
        return min(th / h, tw / w) * scale
    raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")


def make_transform(
    source_size: tuple[int, ...],
    target_size: tuple[int, ...],
    angle: float = 0,
    scale: float = 1,
    aspect: float = 1,
    shift: Any = None,
    hmirror: bool = False,
    vmirror: bool = False,
    shear: float | None = None,
    scale_mode: str = "shortest",
) -> np.ndarray:
    """The 2x3 matrix mapping source pixel coordinates to target pixel coordinates.

    The source centre goes to the target centre, scaled by :func:`calc_scale_ratio`;
    ``aspect`` stretches x by sqrt(aspect) and y by 1/sqrt(aspect); mirrors flip around
    the centre; ``shear`` tilts horizontal edges (y += shear * x); ``angle`` rotates
    counter-clockwise in degrees; ``shift`` (x, y) in [-1, 1] moves the image by up to
    the whole difference between its scaled size and the target: positive x shows more
    of its right side, positive y more of its bottom (the image moves up).
    """
    h, w = source_size[:2]
    th, tw = target_size[:2]
    s = calc_scale_ratio(source_size, target_size, scale, scale_mode)
    a = math.sqrt(aspect)
    sx, sy = s * a, s / a
    mx, my = -sx if hmirror else sx, -sy if vmirror else sy
    k = shear or 0.0
    rad = math.radians(angle)
    c, si = math.cos(rad), math.sin(rad)
    # rotate @ tilt @ stretch, written out (small numpy matrices cost more than the sums):
    # rotate = [[c, si], [-si, c]] (counter-clockwise on screen, y points down),
    # tilt = [[1, 0], [k, 1]], stretch = [[mx, 0], [0, my]]
    l00, l01 = (c + si * k) * mx, si * my
    l10, l11 = (c * k - si) * mx, c * my
    dx, dy = (0.0, 0.0) if shift is None else shift
    # the source centre goes to the target centre, moved by the shift
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ox = (tw - 1) / 2 - dx * abs(w * sx - tw) / 2
    oy = (th - 1) / 2 - dy * abs(h * sy - th) / 2
    return np.array(
        [[l00, l01, ox - (l00 * cx + l01 * cy)], [l10, l11, oy - (l10 * cx + l11 * cy)]]
    )


def _then(matrix: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """``matrix`` applied to an image resized by 1/f: x = f*x_r + (f-1)/2."""
    pre = np.array([[fx, 0.0, (fx - 1) / 2], [0.0, fy, (fy - 1) / 2], [0.0, 0.0, 1.0]])
    return matrix @ pre


def _singular_values(matrix: np.ndarray) -> tuple[float, float]:
    """Largest and smallest scale of the matrix's linear part (closed form for 2x2)."""
    (a, b, _), (c, d, _) = matrix.tolist()  # Python floats: numpy scalars are slower
    total = a * a + b * b + c * c + d * d
    det = abs(a * d - b * c)
    root = math.sqrt(max(total * total - 4 * det * det, 0.0))
    return math.sqrt((total + root) / 2), math.sqrt(max(total - root, 0.0) / 2)


def _warp(
    im: np.ndarray,
    matrix: np.ndarray,
    target_size: tuple[int, int],
    method: int,
    border: tuple[float, ...],
    supersampling: int,
    dst: np.ndarray | None = None,
) -> np.ndarray:
    """One warpAffine to target_size, supersampled k x k where downscaling would alias."""
    th, tw = target_size
    if supersampling == 0:
        # Bilinear sampling aliases only below half scale; the source was already brought
        # near the target's scale, so this is rare (strong aspect or shear).
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
    src: Any, color: bool, matrix: np.ndarray, method: int, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Decode (or take) the source, reduced toward the target's scale.

    Returns the pixels, the matrix for them, and whether they are in BGR order.
    """
    nearest = method == cv2.INTER_NEAREST  # labels must not be blended
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
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or not (src.ndim == 2 or src.ndim == 3 and src.shape[2] in (1, 3)):
            raise ValueError(
                f"image arrays must be uint8, HxW, HxWx1 or HxWx3; got {src.dtype} {src.shape}"
            )
    elif not isinstance(src, (bytes, bytearray, memoryview)):
        raise TypeError(f"image must be encoded bytes or a uint8 array, got {type(src).__name__}")
    source_size = src.shape[:2] if isinstance(src, np.ndarray) else image_size(src)
    if source_size is None:  # neither JPEG nor PNG: decode to learn the size
        src = _decode(src, color)
        src = cv2.cvtColor(src, cv2.COLOR_BGR2RGB) if color else src
        source_size = src.shape[:2]
    if min(source_size) < 1:
        raise ValueError(f"image has no pixels: {source_size[0]} x {source_size[1]}")
    matrix = make_transform(
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
    im, pixel_matrix, bgr = _prepare_source(src, color, matrix, method, tuple(source_size))
    planes = list(result)  # contiguous (H, W) views: every pixel operation runs per plane
    if color:
        warped = _warp(_rgba(im, bgr), pixel_matrix, size, method, (*fill, 0.0), supersampling)
        cv2.mixChannels([warped], planes, [0, 0, 1, 1, 2, 2])
    else:
        _warp(_gray(im, bgr), pixel_matrix, size, method, fill, supersampling, dst=planes[0])
    if "gamma" not in skip and (
        gamma_gray is not None or contrast or (color and gamma_color is not None)
    ):
        gamma_planes(planes, gamma_table(color, gamma_gray, gamma_color, contrast, channels))
    if "blur" not in skip and blur:
        blur_planes(planes, check_sigma(blur * tw))
    if "noise" not in skip and noise:
        noise_planes(planes, sensor_sigmas(noise, channels), noise_seed)
    if out is not None:
        return out, matrix
    return (cv2.merge(planes) if color else planes[0]), matrix


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
    return _warp(src, pixel_matrix, tuple(target_size), method, fill, supersampling)


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
    out, _ = transform_image(
        im,
        tuple(size),
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
