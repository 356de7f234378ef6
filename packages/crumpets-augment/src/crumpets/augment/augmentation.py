"""Decoding and geometric augmentation: every geometric change in one affine warp.

Geometry. :func:`make_transform` composes scale (by ``scale_mode``), aspect, mirrors,
shear, rotation and shift into one 2x3 matrix that maps source pixel coordinates to
target pixel coordinates (pixel centres at integers). The same matrix maps keypoints
and boxes, and is returned with every sample.

Speed and fidelity. The warp is antialiased where it shrinks the image (the source
shrunk cheaply by a whole factor first, JPEGs as they are decoded, then supersampled), and
a target pixel whose centre maps into the source takes only source pixels: see
:mod:`crumpets.augment._warp`. The matrix returned always refers to the original image.

Pixel operations (gamma, color, contrast via one lookup table; blur; noise) follow on the
target-sized image, in that order, unless ``gpu_augmentation`` leaves them to the GPU.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from crumpets.core.params import PIXEL_OPS

from ._decoding import MAX_PIXELS, decode_image, decode_opencv, image_size, read_source
from ._geometry import (
    SCALE_MODES,
    calc_scale_ratio,
    make_transform,
    map_boxes,
    map_keypoints,
)
from ._pixel_plan import plan_pixels
from ._warp import fill_values, plan_warp, prepare_source, warp

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
    max_pixels: int | None = MAX_PIXELS,
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
        max_pixels: refuse encoded images whose header claims more pixels than this,
            before decoding them (Pillow's limit by default, about 89 million); None
            decodes any size.
        others: see :func:`randomize_image`.

    Returns:
        (image, matrix): the result, RGB (HxWx3) or gray (HxW) uint8, or ``out`` when
        given; and the 2x3 matrix from source to result pixel coordinates.
    """
    if not skip <= PIXEL_OPS.keys():
        raise ValueError(f"skip must name pixel operations {list(PIXEL_OPS)}, got {sorted(skip)}")
    src, source_size = read_source(src, color, max_pixels)
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
    fill = fill_values(background, channels)
    params = {
        "angle": angle,
        "scale": scale,
        "aspect": aspect,
        "shift": shift,
        "hmirror": hmirror,
        "vmirror": vmirror,
        "shear": shear,
        "scale_mode": scale_mode,
        "interp_method": interp_method,
        "supersampling": supersampling,
        "gamma_gray": gamma_gray,
        "gamma_color": gamma_color,
        "contrast": contrast,
        "blur": blur,
        "noise": noise,
        "noise_seed": noise_seed,
    }
    plan = plan_pixels(
        params, src, source_size, result.shape, border=(*fill, 0.0) if color else fill, skip=skip
    )
    plan.run(result)
    matrix = np.array(plan.matrix)
    if out is not None:
        return out, matrix
    return (cv2.merge(list(result)) if color else result[0]), matrix


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
    plan = plan_warp(matrix, im.shape[:2], target_size, method, supersampling)
    src, area = prepare_source(im, None, plan)
    fill = fill_values(background, src.shape[2] if src.ndim == 3 else 1)
    return warp(src, plan, target_size, method, fill, None, area)


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
        supersampling: k x k samples per pixel; 0 chooses by how much the geometry
            shrinks the image: one down to 1.8x, 2x2 (after shrinking the source by a
            whole factor, cheaply) below.
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
