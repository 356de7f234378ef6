"""Baseline for benchmarks/pixel_ops.py: the GPU pixel kernels of crumpets-torch 0.1.0
(commit 6882b00), kept verbatim but for this docstring. They loop over the samples of a
batch in Python (a host tensor, pads, convolutions and a generator per image).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["add_blur", "add_gamma", "add_noise_other", "add_noise_rgb"]

NOISE_SCALE = 64.0  # grey levels of noise sigma per unit of strength


def param(aug: dict, key: str, index: int) -> Any:
    """``aug[key]``, or a KeyError naming the parameter, the sample and what it has."""
    try:
        return aug[key]
    except KeyError:
        raise KeyError(
            f"augmentation of sample {index} in the batch lacks {key!r}, which the GPU "
            f"augmentation needs; it has {sorted(aug)}"
        ) from None


def _range(maxv: float | None) -> float:
    return 255.0 if maxv is None else float(maxv)


def _curves(augs: list[dict], channels: int, x: torch.Tensor) -> torch.Tensor:
    """Gamma/contrast curves of x in [0, 1] (shape (1, 1, L) or (N, C, L)) as (N, C, L)
    float64."""
    n = len(augs)
    gamma = torch.ones(n, channels, dtype=torch.float64)
    contrast = torch.zeros(n, 1, dtype=torch.float64)
    for i, aug in enumerate(augs):
        gray, color, k = (param(aug, key, i) for key in ("gamma_gray", "gamma_color", "contrast"))
        if gray is not None:
            gamma[i] *= float(gray)
        if color is not None and channels == 3:
            gamma[i] *= torch.tensor([float(g) for g in color], dtype=torch.float64)
        contrast[i] = float(k or 0.0)
    gamma, contrast = gamma.to(x.device), contrast.to(x.device)
    y = x.to(torch.float64) ** gamma[:, :, None]
    k = contrast[:, :, None]
    steep = y + k * (0.5 - 0.5 * torch.cos(math.pi * y) - y)
    flat = 0.5 + (y - 0.5) * (1 + k)
    return torch.where(k > 0, steep, torch.where(k < 0, flat, y))


def add_gamma(im_tensor: torch.Tensor, augs: list[dict], maxv: float | None = None) -> torch.Tensor:
    """Gamma (brightness), per-channel gamma (color) and contrast of each image.

    Args:
        im_tensor: NCHW images.
        augs: per image a dict with 'gamma_gray', 'gamma_color' and 'contrast'.
        maxv: value of white; default 255.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    n, c = im_tensor.shape[:2]
    if not im_tensor.is_floating_point():
        if im_tensor.dtype != torch.uint8:
            raise TypeError(
                f"add_gamma needs uint8 or floating point images, got {im_tensor.dtype}"
            )
        levels = torch.arange(256, device=im_tensor.device, dtype=torch.float64) / 255.0
        lut = torch.round(255.0 * _curves(augs, c, levels.view(1, 1, -1)))
        lut = lut.clamp(0, 255).to(torch.uint8)
        flat = im_tensor.reshape(n, c, -1).long()
        return torch.gather(lut, 2, flat).reshape(im_tensor.shape)
    top = _range(maxv)
    x = (im_tensor.reshape(n, c, -1) / top).clamp(0, 1)
    return (_curves(augs, c, x) * top).to(im_tensor.dtype).reshape(im_tensor.shape)


def _gaussian_taps(sigma: float, device: torch.device) -> torch.Tensor:
    ksize = int(round(6 * sigma + 1)) | 1  # OpenCV's kernel size for uint8 images
    j = torch.arange(ksize, dtype=torch.float64, device=device) - (ksize - 1) / 2
    taps = torch.exp(-(j**2) / (2 * sigma**2))
    return (taps / taps.sum()).to(torch.float32)


def add_blur(im: torch.Tensor, augs: list[dict]) -> torch.Tensor:
    """Gaussian blur of each image with sigma = ``blur * width`` pixels.

    Args:
        im: NCHW images.
        augs: per image a dict with 'blur' (relative to the width) or None.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    n, c, h, w = im.shape
    out = im.clone()
    for i, aug in enumerate(augs):
        blur = param(aug, "blur", i)
        if not blur:
            continue
        taps = _gaussian_taps(float(blur) * w, im.device)
        # reflect-101 padding needs pad < size; wider kernels only touch edge pixels more
        radius = min(len(taps) // 2, h - 1, w - 1)
        if radius < 1:
            continue
        taps = taps[len(taps) // 2 - radius : len(taps) // 2 + radius + 1]
        taps = taps / taps.sum()
        x = im[i : i + 1].to(torch.float32)
        x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
        x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = F.pad(x, (0, 0, radius, radius), mode="reflect")
        x = F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        out[i] = _cast(x[0], im.dtype)
    return out


def _cast(x: torch.Tensor, dtype: torch.dtype, top: float = 255.0) -> torch.Tensor:
    if dtype.is_floating_point:
        return x.to(dtype)
    return torch.round(x).clamp(0, top).to(dtype)


def _noise(im: torch.Tensor, augs: list[dict], green: float, maxv: float | None) -> torch.Tensor:
    n, c = im.shape[:2]
    top = _range(maxv)
    out = im.clone()
    for i, aug in enumerate(augs):
        strength = param(aug, "noise", i)
        if not strength:
            continue
        seed = int(param(aug, "noise_seed", i))
        generator = torch.Generator(device=im.device).manual_seed(seed)
        z = torch.randn(im.shape[1:], generator=generator, device=im.device)
        sigma = torch.full((c, 1, 1), NOISE_SCALE * float(strength) * top / 255.0, device=im.device)
        if c == 3:
            sigma[1] *= green
        noisy = im[i].to(torch.float32) + z * sigma
        out[i] = _cast(noisy.clamp(0, top), im.dtype, top)
    return out


def add_noise_rgb(
    im: torch.Tensor,
    augs: list[dict],
    minv: float | None = None,
    maxv: float | None = None,
    internal_ftype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian noise like a camera sensor's: less in green (channel 1).

    Args:
        im: NCHW images.
        augs: per image a dict with 'noise' (strength or None) and 'noise_seed'.
        minv: unused, values are clamped to [0, maxv]; kept for the reference's signature.
        maxv: value of white; default 255.
        internal_ftype: unused; noise is computed in float32.
    """
    return _noise(im, augs, 1 / math.sqrt(2), maxv)


def add_noise_other(
    im: torch.Tensor,
    augs: list[dict],
    minv: float | None = None,
    maxv: float | None = None,
    internal_ftype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian noise of the same strength in every channel. See :func:`add_noise_rgb`."""
    return _noise(im, augs, 1.0, maxv)
