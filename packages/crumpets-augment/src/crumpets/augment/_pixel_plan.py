"""One image's pixel work as plain data: :func:`plan_pixels` works out everything from a
checked parameter dict (Python and numpy: the matrix, the warp's plan, the gamma table,
the blur's taps, the noise), and :meth:`PixelPlan.run` writes the pixels (OpenCV's calls:
decode, warp, pixel operations).

The two steps are apart because workers take the first for every sample of a batch before
the second for any: Python and numpy take about twice as long right after decoding and
warping an image, which flush their data from the caches.

Used by :func:`crumpets.augment.augmentation.transform_image` and the image workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from crumpets.core.params import NOISE_TABLE_SIZE, PARAMS

from ._geometry import singular_values, transform_rows
from ._planar import (
    apply_blur,
    apply_gamma,
    apply_noise,
    blur_taps,
    gamma_rows,
    noise_windows,
    round_rows,
)
from ._warp import WarpPlan, plan_warp, prepare_source, warp
from .augmentation_cpu import check_sigma, sensor_sigmas

__all__ = ["PixelPlan", "plan_pixels"]

# What a missing (or None) geometric parameter means: the schema's neutral value.
_NEUTRAL = {name: p.neutral for name, p in PARAMS.items()}
# warped RGBA -> the R, G and B planes
_RGB_OF_RGBA = [0, 0, 1, 1, 2, 2]


@dataclass(frozen=True, slots=True)
class PixelPlan:
    """What one image's pixels need, worked out; :meth:`run` writes them.

    Attributes:
        source: encoded bytes or a uint8 array (HxW or HxWx3), see
            :func:`crumpets.augment._decoding.read_source`.
        source_size: the source's (height, width).
        matrix: the 2x3 matrix from source to target pixels, as two rows of Python floats.
        shape: the result's (channels, height, width); 3 channels are RGB, 1 gray.
        border: the warp's border value, one per channel (and a 0 for alpha when colour).
        interpolation: OpenCV's interpolation.
        supersampling: k x k samples per pixel, 0 chosen by the matrix's scales.
        warp: how the source is shrunk, supersampled and warped (:func:`plan_warp`).
        gamma: gamma, colour and contrast as one lookup table (rows of 256), or None.
        blur: the Gaussian's taps, or None.
        noise_sigmas: the noise's sigma per channel, or None for no noise.
        noise_seed: places the noise pattern.
        noise_windows: the noise to add per plane (window, sigma) when it is a view of the
            shared table; None when drawn while running (a larger image: a batch of plans
            does not hold them all) or when there is no noise.
    """

    source: Any
    source_size: tuple[int, int]
    matrix: list[list[float]]
    shape: tuple[int, int, int]
    border: tuple[float, ...]
    interpolation: int
    supersampling: int
    warp: WarpPlan
    gamma: np.ndarray | None
    blur: np.ndarray | None
    noise_sigmas: list[float] | None
    noise_seed: int
    noise_windows: list[tuple[np.ndarray, float]] | None

    def run(self, out: np.ndarray) -> None:
        """Decode (if the source is encoded), warp and apply the pixel operations into
        ``out``, a C-contiguous uint8 array of :attr:`shape`."""
        channels, height, width = self.shape
        size = (height, width)
        color = channels == 3
        im, area = prepare_source(self.source, color, self.warp, self.source_size)
        planes = list(out)  # contiguous (H, W) views: every pixel operation runs per plane
        if color:
            warped = warp(im, self.warp, size, self.interpolation, self.border, None, area)
            cv2.mixChannels([warped], planes, _RGB_OF_RGBA)
        else:
            warp(im, self.warp, size, self.interpolation, self.border, planes[0], area)
        if self.gamma is not None:
            apply_gamma(out, self.gamma)
        if self.blur is not None:
            apply_blur(planes, self.blur)
        if self.noise_sigmas is not None:
            windows = self.noise_windows
            if windows is None:
                windows = noise_windows([size] * channels, self.noise_sigmas, self.noise_seed)
            apply_noise(planes, windows)


def _setting(params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    return _NEUTRAL[name] if value is None else value


def plan_pixels(
    params: Mapping[str, Any],
    source: Any,
    source_size: tuple[int, int],
    shape: tuple[int, ...],
    *,
    border: tuple[float, ...],
    skip: frozenset[str] = frozenset(),
) -> PixelPlan:
    """The pixel plan of one image.

    Args:
        params: checked parameters (:func:`crumpets.core.params.check_params`); a missing
            or None geometric parameter is its neutral value. A pixel operation is on when
            :func:`crumpets.core.params.enabled_ops` says so (a gamma given, even 1.0).
        source: encoded bytes or a uint8 array, and ``source_size`` its (height, width),
            as :func:`crumpets.augment._decoding.read_source` returns them.
        shape: the target buffer's (channels, height, width), channels 3 (RGB) or 1.
        border: the warp's border value, one per channel and a 0 for alpha when colour.
        skip: pixel operations left to the GPU (names of ``PIXEL_OPS``).
    """
    channels, height, width = shape
    size = (height, width)
    color = channels == 3
    rows = transform_rows(
        source_size,
        size,
        angle=_setting(params, "angle"),
        scale=_setting(params, "scale"),
        aspect=_setting(params, "aspect"),
        shift=_setting(params, "shift"),
        hmirror=_setting(params, "hmirror"),
        vmirror=_setting(params, "vmirror"),
        shear=_setting(params, "shear"),
        scale_mode=_setting(params, "scale_mode"),
    )
    interpolation = int(_setting(params, "interp_method"))
    supersampling = _setting(params, "supersampling")
    get = params.get
    table = taps = sigmas = windows = None
    if "gamma" not in skip:
        gamma_gray, gamma_color, contrast = get("gamma_gray"), get("gamma_color"), get("contrast")
        if gamma_gray is not None or contrast or (color and gamma_color is not None):
            table = round_rows(gamma_rows(color, gamma_gray, gamma_color, contrast, channels))
    blur = get("blur")
    if blur and "blur" not in skip:
        taps = blur_taps(check_sigma(blur * width))
    noise = get("noise")
    seed = _setting(params, "noise_seed")
    if noise and "noise" not in skip:
        sigmas = sensor_sigmas(noise, channels)
        if channels * height * width <= NOISE_TABLE_SIZE:  # windows of the table: views
            windows = noise_windows([size] * channels, sigmas, seed)
    warp_plan = plan_warp(
        np.array(rows), source_size, size, interpolation, supersampling, singular_values(rows)
    )
    return PixelPlan(
        source=source,
        source_size=source_size,
        matrix=rows,
        shape=(channels, height, width),
        border=border,
        interpolation=interpolation,
        supersampling=supersampling,
        warp=warp_plan,
        gamma=table,
        blur=taps,
        noise_sigmas=sigmas,
        noise_seed=seed,
        noise_windows=windows,
    )
