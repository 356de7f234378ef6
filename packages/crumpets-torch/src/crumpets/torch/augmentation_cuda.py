"""Pixel augmentations on batches of images as torch tensors, on any device.

Twins of ``crumpets.augment.augmentation_cpu``: for the same parameters they give the same
image within one grey level. crumpets-torch does not depend on crumpets-augment, so the
formulas are restated here:

- gamma, color, contrast: for input level ``x`` in [0, 1] and channel ``c``,
  ``y = x ** (gamma_gray * gamma_color[c])`` (``gamma_color`` only for 3 channels and
  where the sample's optional ``'color'`` flag, default True, is set); contrast ``k > 0``:
  ``y += k * (0.5 - 0.5 * cos(pi * y) - y)``; ``k < 0``: ``y = 0.5 + (y - 0.5) * (1 + k)``.
  uint8 images go through one lookup table per (image, channel), computed in float64 and
  rounded like the CPU's table.
- blur: Gaussian, sigma = ``blur * width`` pixels, ``ksize = int(rint(6 * sigma + 1)) | 1``
  (OpenCV's rule for uint8), reflect-101 border, separable, in float32, rounded to the
  nearest level; a blur that cannot move a pixel by half a level is skipped, as on the CPU.
- noise: ``sigma = 64 * noise`` grey levels, green (channel 1 of 3, in ``add_noise_rgb``)
  ``sigma / sqrt(2)``. The pattern is the CPU's: the window of the fixed table of standard
  normal samples (``crumpets.core.params.NOISE_TABLE_*``) that starts at
  ``noise_seed % (table size - image size + 1)``, in planar (CHW) order, so CPU and GPU
  add the same noise. A sample without ``noise_seed`` (or with None) gets a fresh one from
  the OS's entropy, as the CPU kernels do without a seed: a new pattern on every call.
  Images larger than the table get fresh samples from one torch generator seeded with the
  batch's seeds (the CPU uses numpy's generator there): the same in distribution only, and
  reproducible per batch, not per sample.

Each kernel works on the whole batch: the batch's parameters go to the device as one
float64 tensor, in one copy, and each operation is a fixed number of batched torch calls
whatever the batch size (no loop over samples on the device, no host reads). uint8 in and
out, float32 inside. Samples whose operation is off come out unchanged.

Images are NCHW; uint8 (0..255) or floating point with values in 0..maxv (default 255,
as crumpets workers fill float buffers with 0..255 values). ``augs`` is the batch's
``'augmentation'`` list: one parameter dict per image; None values mean "not applied".
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import torch
import torch.nn.functional as F
from crumpets.core.params import (
    NOISE_SCALE,
    NOISE_TABLE_SEED,
    NOISE_TABLE_SIZE,
    PIXEL_OPS,
    check_param,
)

__all__ = [
    "NOISE_SCALE",
    "add_blur",
    "add_gamma",
    "add_noise_other",
    "add_noise_rgb",
    "apply_pixel_ops",
]

GREEN_RGB = 1 / math.sqrt(2)  # noise sigma of green relative to red and blue (sensor-like)

# The columns of a batch's parameter matrix (one float64 row per sample; see _gather), in
# order: (name, width, neutral value). They hold values derived from the schema's parameters
# (a gamma per channel, contrast split by sign, a noise sigma per channel, ...), not the
# parameters themselves, so the layout is declared here rather than read from
# crumpets.core.params. Per-channel columns hold channels 0..2. The neutral row changes
# nothing: gamma 1, contrast 0, sigma 0, radius 0.
_LAYOUT = (
    ("gamma", 3, 1.0),  # gamma_gray * gamma_color[c]
    ("contrast_pos", 1, 0.0),  # contrast if > 0, else 0
    ("contrast_neg", 1, 0.0),  # contrast if < 0, else 0
    ("noise_sigma", 3, 0.0),  # in the image's units
    ("noise_offset", 1, 0.0),  # where the sample's window of the noise table starts
    ("blur_sigma", 1, 0.0),
    ("blur_radius", 1, 0.0),  # 0: no blur
)
_NEUTRAL = tuple(neutral for _, width, neutral in _LAYOUT for _ in range(width))
_TAPS = len(_NEUTRAL)


def _column_slices() -> dict[str, slice]:
    """Each name of :data:`_LAYOUT` -> its columns, and 'taps' -> the columns after them."""
    columns, start = {}, 0
    for name, width, _ in _LAYOUT:
        columns[name] = slice(start, start + width)
        start += width
    # the blur taps follow: centred, padded with zeros to the batch's largest radius
    columns["taps"] = slice(start, None)
    return columns


_COLUMNS = _column_slices()


def _channels(name: str, c: int) -> slice:
    """The columns of per-channel ``name`` for the first ``c`` channels."""
    start = _COLUMNS[name].start
    return slice(start, start + c)


def param(aug: dict, key: str, index: int) -> Any:
    """``aug[key]``, or a KeyError naming the parameter, the sample and what it has."""
    try:
        return aug[key]
    except KeyError:
        raise KeyError(
            f"augmentation of sample {index} in the batch lacks {key!r}, which the GPU "
            f"augmentation needs; it has {sorted(aug)}"
        ) from None


# Parameters a sample may leave out: the kernel draws them, as the CPU twins do.
_DRAWN = frozenset({"noise_seed"})


def _values(aug: dict, op: str, index: int) -> list[Any]:
    """The parameters of pixel operation ``op`` in sample ``index``, as they are (None for
    a missing one of :data:`_DRAWN`)."""
    return [aug.get(key) if key in _DRAWN else param(aug, key, index) for key in PIXEL_OPS[op]]


def _check(aug: dict, ops: Sequence[str], index: int) -> None:
    """Raise a ValueError naming the sample and the first of its parameters of ``ops``
    that is not valid (:func:`crumpets.core.params.check_param`)."""
    for op in ops:
        for key, value in zip(PIXEL_OPS[op], _values(aug, op, index)):
            try:
                check_param(key, value)
            except ValueError as e:
                raise ValueError(f"augmentation of sample {index} in the batch: {e}") from None


def _top(maxv: float | None) -> float:
    return 255.0 if maxv is None else float(maxv)


# -- a batch's parameters, gathered on the host ------------------------------------------
def _gamma_row(row: list[float], gray: Any, color: Any, k: Any, channels: int) -> None:
    g = [1.0 if gray is None else float(gray)] * 3
    if color is not None and channels == 3:
        if len(color) != 3:
            raise ValueError("gamma_color needs 3 values")
        g = [a * float(c) for a, c in zip(g, color)]  # the CPU table's products
    k = float(k or 0.0)
    row[_COLUMNS["gamma"]] = g
    row[_COLUMNS["contrast_pos"]] = [max(k, 0.0)]
    row[_COLUMNS["contrast_neg"]] = [min(k, 0.0)]


def _noise_row(
    row: list[float], strength: Any, seed: Any, green: float, channels: int, size: int, top: float
) -> None:
    sigma = NOISE_SCALE * float(strength or 0.0) * top / 255.0
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):  # None drawn before
        raise TypeError("noise_seed must be an int")
    offset = int(seed) % (NOISE_TABLE_SIZE - size + 1) if size <= NOISE_TABLE_SIZE else 0
    row[_COLUMNS["noise_sigma"]] = [sigma, sigma * green if channels == 3 else sigma, sigma]
    row[_COLUMNS["noise_offset"]] = [float(offset)]


def _blur_row(row: list[float], blur: Any, width: int, limit: int) -> None:
    sigma = float(blur or 0.0) * width
    if sigma == 0:
        return
    if not 0 < sigma <= width:  # blur in [0, 1]; NaN fails too
        raise ValueError("blur must be in [0, 1]")
    radius = (round(6 * sigma + 1) | 1) // 2  # round half to even, as on the CPU
    if sigma < 0.3:
        # the CPU skips a blur whose centre tap keeps every pixel within half a level
        taps = sum(math.exp(-j * j / (2 * sigma * sigma)) for j in range(-radius, radius + 1))
        if 255 * (1 - 1 / (taps * taps)) < 0.5:
            return
    # reflect-101 padding needs radius < size; wider kernels only touch edge pixels more
    row[_COLUMNS["blur_sigma"]] = [sigma]
    row[_COLUMNS["blur_radius"]] = [float(min(radius, limit))]


def _taps(rows: np.ndarray) -> np.ndarray:
    """Every sample's normalised Gaussian taps exp(-j^2 / (2 sigma^2)) for |j| up to its
    radius, centred in 2R+1 columns (R the largest radius; radius 0: the identity)."""
    radius = rows[:, _COLUMNS["blur_radius"]]
    j = np.arange(-radius.max(), radius.max() + 1)
    sigma = np.where(radius > 0, rows[:, _COLUMNS["blur_sigma"]], 1.0)
    taps = np.where(np.abs(j) <= radius, np.exp(-(j * j) / (2 * sigma * sigma)), 0.0)
    return taps / taps.sum(1, keepdims=True)


def _noise_seeds(augs: Sequence[dict], on: Sequence[bool]) -> list[Any]:
    """Each sample's 'noise_seed'. A sample with noise on and no seed (missing or None) gets
    a fresh one from the OS's entropy, as the CPU twins draw theirs: a new pattern on every
    call, never the global generator. Samples with noise off keep theirs, or 0."""
    seeds = [aug.get("noise_seed") for aug in augs]
    missing = [i for i, (seed, wants) in enumerate(zip(seeds, on)) if wants and seed is None]
    if missing:
        fresh = np.random.default_rng().integers(2**31, size=len(missing))
        for i, seed in zip(missing, fresh.tolist()):
            seeds[i] = seed
    return [0 if seed is None else seed for seed in seeds]


def _gather(
    im: torch.Tensor,
    augs: Sequence[dict],
    wanted: Mapping[str, Sequence[bool]],
    green: float,
    maxv: float | None,
    seeds: Sequence[Any],
) -> tuple[torch.Tensor, int]:
    """The parameters of the operations in ``wanted`` (op -> which samples get it), as a
    float64 (N, W, 1, 1) tensor on the image's device (one copy; columns in :data:`_LAYOUT`),
    and the blur's largest radius. ``seeds``: :func:`_noise_seeds`, where noise is wanted."""
    n, c, h, w = im.shape
    if len(augs) != n:
        raise ValueError(f"{len(augs)} augmentation dicts for a batch of {n} images")
    top, limit, size = _top(maxv), min(h, w) - 1, c * h * w
    gamma, blur, noise = (wanted.get(op) for op in PIXEL_OPS)
    rows = []
    for i, aug in enumerate(augs):
        row = list(_NEUTRAL)
        try:
            if gamma is not None and gamma[i]:
                gray, color, k = _values(aug, "gamma", i)
                # the reference's 'color' flag, as the CPU twin's: False ignores gamma_color
                _gamma_row(row, gray, color if aug.get("color", True) else None, k, c)
            if noise is not None and noise[i]:
                strength = param(aug, "noise", i)
                _noise_row(row, strength, seeds[i], green, c, size, top)
            if blur is not None and blur[i]:
                (amount,) = _values(aug, "blur", i)
                _blur_row(row, amount, w, limit)
        except (TypeError, ValueError, OverflowError):
            _check(aug, [op for op, on in wanted.items() if on[i]], i)  # names what is wrong
            raise
        rows.append(row)
    host = np.array(rows, np.float64).reshape(n, _TAPS)
    # the rest of the schema's ranges, for the whole batch at once (a few numpy calls
    # instead of a check per parameter and sample): gammas > 0, contrast in [-1, 1],
    # noise >= 0, all finite; the first bad sample is then named
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(host).all(1) & (host[:, _COLUMNS["gamma"]] > 0).all(1)
        valid &= (host[:, _COLUMNS["noise_sigma"]] >= 0).all(1)
        valid &= (host[:, _COLUMNS["contrast_pos"]] <= 1).all(1)
        valid &= (host[:, _COLUMNS["contrast_neg"]] >= -1).all(1)
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        _check(augs[i], [op for op, on in wanted.items() if on[i]], i)
        raise ValueError(f"augmentation of sample {i} in the batch: invalid parameters")
    radius = int(host[:, _COLUMNS["blur_radius"]].max(initial=0))
    if radius:
        host = np.hstack([host, _taps(host)])
    p = torch.from_numpy(host).to(im.device, non_blocking=True)
    return p.view(n, -1, 1, 1), radius


# -- constants per device, made once ----------------------------------------------------
@functools.cache
def _log_levels(device: torch.device) -> torch.Tensor:
    # log(i / 255) of the 256 levels, as the CPU table computes it (log 0 = -inf, and
    # exp(g * -inf) = 0 = 0 ** g for g > 0)
    with np.errstate(divide="ignore"):
        levels = np.log(np.arange(256, dtype=np.float64) / 255.0)
    return torch.from_numpy(levels).to(device)


@functools.cache
def _table_starts(device: torch.device, n: int, c: int) -> torch.Tensor:
    # where each (image, channel) table starts among the flattened (N, C, 1, 256) tables
    return torch.arange(0, n * c * 256, 256, dtype=torch.int32, device=device).view(n, c, 1, 1)


@functools.cache
def _noise_table(device: torch.device) -> torch.Tensor:
    z = np.random.default_rng(NOISE_TABLE_SEED).standard_normal(NOISE_TABLE_SIZE, np.float32)
    return torch.from_numpy(z).to(device)


# -- kernels on a parameter tensor -------------------------------------------------------
def _curves(
    log_x: torch.Tensor, g: torch.Tensor, k_pos: torch.Tensor, k_neg: torch.Tensor
) -> torch.Tensor:
    """Gamma and contrast curves of levels given as ``log x``; parameters broadcast."""
    y = torch.exp(g * log_x)
    # k > 0: y + k * (s(y) - y), s the S-curve 0.5 - 0.5 cos(pi y); k < 0:
    # 0.5 + (y - 0.5) * (1 + k), which is y + k * (y - 0.5). One of k_pos, k_neg is 0.
    s = torch.cos(y * math.pi).mul_(-0.5).add_(0.5).sub_(y)
    return torch.addcmul(y, k_pos, s).addcmul_(k_neg, y - 0.5)


def _gamma(im: torch.Tensor, p: torch.Tensor, maxv: float | None) -> torch.Tensor:
    n, c = im.shape[:2]
    g = p[:, _channels("gamma", c)]
    k_pos, k_neg = p[:, _COLUMNS["contrast_pos"]], p[:, _COLUMNS["contrast_neg"]]
    if im.dtype == torch.uint8:
        # one table per (image, channel), applied with one lookup of level + table start
        y = _curves(_log_levels(im.device), g, k_pos, k_neg)
        tables = y.mul_(255.0).round_().to(torch.uint8)  # y is in [0, 1]: no clipping
        index = im + _table_starts(im.device, n, c)  # int32
        return tables.view(-1).index_select(0, index.view(-1)).view(im.shape)
    top = _top(maxv)
    log_x = (im / top).clamp_(0, 1).log_().float()
    y = _curves(log_x, g.float(), k_pos.float(), k_neg.float())
    return y.mul_(top).to(im.dtype)


def _blur(im: torch.Tensor, p: torch.Tensor, radius: int) -> torch.Tensor:
    n, c, h, w = im.shape
    work = torch.float64 if im.dtype == torch.float64 else torch.float32
    taps = p[:, _COLUMNS["taps"]].to(work).repeat_interleave(c, 0)  # one row per (image, channel)
    # one grouped convolution per direction over all planes; the rows of the padded
    # border are reflected rows, so padding once before both passes is the same as
    # padding before each
    x = F.pad(im.view(1, n * c, h, w).to(work), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, taps.view(n * c, 1, 1, -1), groups=n * c)
    x = F.conv2d(x, taps.view(n * c, 1, -1, 1), groups=n * c)
    if not im.is_floating_point():
        x = x.round_()  # a convex combination of levels: within [0, 255]
    return x.view(im.shape).to(im.dtype)


def _noise(
    im: torch.Tensor, p: torch.Tensor, seeds: Sequence[Any], minv: float | None, top: float
) -> torch.Tensor:
    n, c, h, w = im.shape
    if c * h * w <= NOISE_TABLE_SIZE:
        # each sample's window of the table: rows of a strided view of all windows
        windows = _noise_table(im.device).unfold(0, c * h * w, 1)
        offsets = p[:, _COLUMNS["noise_offset"]].view(n).to(torch.int64)
        z = windows.index_select(0, offsets).view(im.shape)
    else:
        z = torch.randn(im.shape, generator=_batch_generator(seeds, im.device), device=im.device)
    x = torch.addcmul(im, z, p[:, _channels("noise_sigma", c)].float())  # float32 (type promotion)
    if im.is_floating_point():
        return x.clamp_(float(minv or 0.0), top).to(im.dtype)
    # round half to even and saturate, like OpenCV's conversion to uint8
    return x.round_().clamp_(0, top).to(im.dtype)


def _batch_generator(seeds: Sequence[Any], device: torch.device) -> torch.Generator:
    seed = 0
    for sample_seed in seeds:
        seed = (seed * 6364136223846793005 + int(sample_seed) + 1) % 2**63
    return torch.Generator(device=device).manual_seed(seed)


def _check_image(im: Any, name: str) -> None:
    if not isinstance(im, torch.Tensor) or im.dim() != 4:
        shape = tuple(getattr(im, "shape", ()))
        raise ValueError(f"{name} needs a batch of images (N, C, H, W), got shape {shape}")
    if not im.is_floating_point() and im.dtype != torch.uint8:
        raise TypeError(f"{name} needs uint8 or floating point images, got {im.dtype}")


def apply_pixel_ops(
    im: torch.Tensor,
    augs: Sequence[dict],
    wanted: Mapping[str, Sequence[bool]],
    green: float = GREEN_RGB,
    minv: float | None = None,
    maxv: float | None = None,
) -> torch.Tensor:
    """Apply pixel operations to a batch, each to the samples that want it, in the order
    of :data:`crumpets.core.params.PIXEL_OPS`, with one copy of the parameters.

    Args:
        im: NCHW images, uint8 or floating point.
        augs: one parameter dict per image (see :func:`add_gamma`, :func:`add_blur` and
            :func:`add_noise_rgb` for what each operation reads).
        wanted: operation name -> one bool per image; operations not named are not applied.
        green: noise sigma of channel 1 of 3 relative to the others (1 for plain noise).
        minv, maxv: value range of floating point images (default 0, 255).

    Returns:
        A new tensor of the same shape, dtype and device (``im`` itself if nothing is
        applied).

    Raises:
        KeyError: a sample lacks a parameter that an operation it wants needs.
        ValueError: a parameter is invalid (names it and the sample), or the batch is not
            NCHW, or ``augs`` does not have one dict per image.
    """
    _check_image(im, "the pixel operations")
    unknown = set(wanted) - PIXEL_OPS.keys()
    if unknown:
        raise ValueError(f"unknown pixel operations {sorted(unknown)}; known: {list(PIXEL_OPS)}")
    wanted = {op: on for op, on in wanted.items() if any(on)}
    if not wanted:
        return im
    seeds = _noise_seeds(augs, wanted["noise"]) if "noise" in wanted else []
    p, radius = _gather(im, augs, wanted, green, maxv, seeds)
    if "gamma" in wanted:
        im = _gamma(im, p, maxv)
    if radius:
        im = _blur(im, p, radius)
    if "noise" in wanted:
        im = _noise(im, p, seeds, minv, _top(maxv))
    return im


# -- the reference's functions -----------------------------------------------------------
def add_gamma(im_tensor: torch.Tensor, augs: list[dict], maxv: float | None = None) -> torch.Tensor:
    """Gamma (brightness), per-channel gamma (color) and contrast of each image.

    Args:
        im_tensor: NCHW images, uint8 or floating point.
        augs: per image a dict with 'gamma_gray', 'gamma_color' and 'contrast' (None: off),
            and optionally 'color' (default True): False ignores 'gamma_color', as the CPU
            twin's ``color`` argument does.
        maxv: value of white for floating point images; default 255.

    Returns:
        A new tensor of the same shape, dtype and device.

    Raises:
        KeyError: a sample lacks one of the parameters (names both).
        ValueError: a parameter is invalid (names both), or the batch is not NCHW.
    """
    return apply_pixel_ops(im_tensor, augs, {"gamma": [True] * len(augs)}, maxv=maxv)


def add_blur(im: torch.Tensor, augs: list[dict]) -> torch.Tensor:
    """Gaussian blur of each image with sigma = ``blur * width`` pixels.

    Args:
        im: NCHW images, uint8 or floating point.
        augs: per image a dict with 'blur' (relative to the width) or None.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    return apply_pixel_ops(im, augs, {"blur": [True] * len(augs)})


def add_noise_rgb(
    im: torch.Tensor,
    augs: list[dict],
    minv: float | None = None,
    maxv: float | None = None,
    internal_ftype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian noise like a camera sensor's: less in green (channel 1 of 3).

    Args:
        im: NCHW images, uint8 or floating point.
        augs: per image a dict with 'noise' (strength or None) and optionally 'noise_seed',
            which places the pattern; without it (or None), a fresh seed from the OS's
            entropy, as the CPU twin draws: a new pattern on every call.
        minv: lowest value of floating point images (default 0); uint8 saturates at 0.
        maxv: value of white; default 255.
        internal_ftype: unused; noise is computed in float32.
    """
    return apply_pixel_ops(im, augs, {"noise": [True] * len(augs)}, GREEN_RGB, minv, maxv)


def add_noise_other(
    im: torch.Tensor,
    augs: list[dict],
    minv: float | None = None,
    maxv: float | None = None,
    internal_ftype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian noise of the same strength in every channel. See :func:`add_noise_rgb`."""
    return apply_pixel_ops(im, augs, {"noise": [True] * len(augs)}, 1.0, minv, maxv)
