"""Batched affine warps on the device: every image of a batch with its own 2x3 matrix, in
one ``torch.nn.functional.grid_sample``.

A matrix maps source pixel coordinates to target pixel coordinates, pixel centres at
integers, as ``batch['augmentation'][i]['transform']`` reports it and as
``cv2.warpAffine`` takes it. Images of different sizes share one padded canvas: the
images of each size are stacked, padded and placed together (a few calls), so a batch costs
a fixed number of torch calls plus four per distinct source size, never a loop over its
samples.

Borders (``border``):

- ``'constant'``: ``cv2.BORDER_CONSTANT``: samples that fall outside blend with ``fill``.
- ``'replicate'``: ``cv2.BORDER_REPLICATE``: the edge pixel repeats outward.
- ``'reflect'``: ``cv2.BORDER_REFLECT_101``: mirrored about the edge pixel.
- ``'background'``: what crumpets' CPU workers do: a target pixel whose centre maps into
  the source takes only source pixels (the edge repeated), the others get ``fill``. With
  several samples per pixel, a pixel less than half covered gets ``fill``.

For bilinear sampling without antialiasing, the first three equal ``cv2.warpAffine`` with
the same matrix and border to within one grey level (OpenCV >= 5.1, whose warp computes
in floating point; older OpenCV's fixed-point warp differs by up to about 6 levels at
sharp edges).

Antialiasing (``antialias=True``), as the CPU workers do it in kind: where the matrix
shrinks an image by 2x or more, the image is first shrunk by a power of two (an area
average: a pyramid of 2x2 means, built once for the whole canvas) until the warp shrinks
it by 2x to 4x, and the warp then averages k x k samples per target pixel (k = 2, more
where strong aspect or shear shrinks one axis further, at most 4; one sample where the
warp shrinks by less than 1.8x). The pyramid's levels sit side by side in one atlas, so
one ``grid_sample`` still serves every image. Unlike the CPU path, k is the largest any
image of the batch needs (one sampling grid serves all), the shrinking is by powers of
two only (the CPU also area-averages by other whole factors, and decodes JPEGs reduced),
and bicubic taps near the edge of a shrunk level may read the neighbouring level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["BORDERS", "INTERPOLATIONS", "warp_images"]

BORDERS = ("constant", "replicate", "reflect", "background")
# OpenCV's codes (INTER_NEAREST, INTER_LINEAR, INTER_CUBIC) and grid_sample's modes; area
# and Lanczos (which warpAffine takes as bilinear and Lanczos) are warped bilinear here.
INTERPOLATIONS = {0: "nearest", 1: "bilinear", 2: "bicubic", 3: "bilinear", 4: "bicubic"}
_MODES = ("nearest", "bilinear", "bicubic")
# See crumpets.augment's warp: shrink the source until the warp shrinks by at most 4x
# (its largest scale at most _REACH), one sample per pixel down to 1.8x (_ONE_SAMPLE).
_REACH = 0.5
_ONE_SAMPLE = 0.55
_MAX_SAMPLES = 4
_MAX_LEVEL = 5  # 32x: beyond it the k x k samples of a smaller level still antialias


def _scales(a: float, b: float, c: float, d: float) -> tuple[float, float]:
    """Largest and smallest singular value of [[a, b], [c, d]] (closed form)."""
    total = a * a + b * b + c * c + d * d
    det = abs(a * d - b * c)
    root = math.sqrt(max(total * total - 4 * det * det, 0.0))
    return math.sqrt((total + root) / 2), math.sqrt(max(total - root, 0.0) / 2)


def _level_and_samples(largest: float, smallest: float, longest: int) -> tuple[int, int]:
    """Pyramid level (shrunk by 2**level) and samples per axis for one image."""
    level = 0
    if largest > 0:
        while (
            level < _MAX_LEVEL
            and largest * 2 ** (level + 1) <= _REACH
            and 2 ** (level + 1) <= longest
        ):
            level += 1
    shrunk = smallest * 2**level
    if shrunk >= _ONE_SAMPLE or shrunk <= 0:
        return level, 1
    return level, max(2, min(_MAX_SAMPLES, math.ceil(_REACH / shrunk)))


def _fill_tensor(fill: Any, n: int, channels: int, device: torch.device) -> torch.Tensor:
    """``fill`` as (n, channels, 1, 1) float32: a number, one per channel, or one per sample
    (n values or n x channels)."""
    t = torch.as_tensor(fill, dtype=torch.float32).to(device)
    if t.dim() == 0:
        t = t.expand(n, channels)
    elif t.dim() == 1 and t.numel() == channels and not (n == channels and channels != 1):
        t = t.expand(n, channels)
    elif t.dim() == 1 and t.numel() == n:
        t = t[:, None].expand(n, channels)
    elif t.dim() == 2 and t.shape[0] == n and t.shape[1] in (1, channels):
        t = t.expand(n, channels)
    else:
        raise ValueError(
            f"fill must be a number, {channels} values, {n} values or {n} x {channels} "
            f"values, got shape {tuple(t.shape)}"
        )
    return t.reshape(n, channels, 1, 1)


def _canvas(images: Sequence[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """The images on one float32 canvas (n, C, height, width), each at the top left, its
    right and bottom edges repeated to the canvas's (so the pyramid's means at an image's
    edge see its edge pixels, not its neighbours')."""
    first = images[0]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault((int(im.shape[-2]), int(im.shape[-1])), []).append(i)
    if len(groups) == 1:
        (h, w), _ = next(iter(groups.items()))
        stacked = torch.stack(list(images)).float()
        if (h, w) == (height, width):
            return stacked
        return F.pad(stacked, (0, width - w, 0, height - h), mode="replicate")
    canvas = torch.empty(
        (len(images), first.shape[0], height, width), dtype=torch.float32, device=first.device
    )
    for (h, w), index in groups.items():  # one round per distinct size, not per sample
        stacked = torch.stack([images[i] for i in index]).float()
        if (h, w) != (height, width):
            stacked = F.pad(stacked, (0, width - w, 0, height - h), mode="replicate")
        canvas.index_copy_(0, torch.tensor(index, device=first.device), stacked)
    return canvas


def _atlas(canvas: torch.Tensor, levels: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The canvas and its pyramid (2x2 means, ``levels`` times) in one image: level 0 on
    the left, the smaller levels stacked in a column on its right. Returns the atlas and
    each level's (x, y) offset in it."""
    if levels == 0:
        return canvas, [(0, 0)]
    n, c, height, width = canvas.shape
    pyramid = [canvas]
    for _ in range(levels):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, ceil_mode=True))
    column = max(p.shape[-1] for p in pyramid[1:])
    rows = sum(p.shape[-2] for p in pyramid[1:])
    atlas = canvas.new_empty((n, c, max(height, rows), width + column))
    # never sampled, but a bilinear tap of weight 0 may read them: no NaN there
    atlas[:, :, :, width:].zero_()
    atlas[:, :, height:, :width].zero_()
    atlas[:, :, :height, :width] = canvas
    offsets = [(0, 0)]
    y = 0
    for p in pyramid[1:]:
        h, w = p.shape[-2:]
        atlas[:, :, y : y + h, width : width + w] = p
        offsets.append((width, y))
        y += h
    return atlas, offsets


def warp_images(
    images: Sequence[torch.Tensor],
    matrices: Any,
    size: tuple[int, int],
    *,
    border: str = "background",
    fill: Any = 0.0,
    interpolation: str | Sequence[str] = "bilinear",
    antialias: bool = True,
) -> torch.Tensor:
    """Warp each image with its own 2x3 matrix to ``size``, all in one batched sampling.

    Args:
        images: uint8 (or float) tensors (C, h_i, w_i) on one device, the same C; sizes
            may differ.
        matrices: (n, 2, 3): each image's matrix from source to target pixel coordinates
            (pixel centres at integers), as ``cv2.warpAffine`` takes it; nested lists or a
            tensor or array.
        size: the target's (height, width).
        border: 'constant', 'replicate', 'reflect' or 'background' (see the module).
        fill: the value outside the source for 'constant' and 'background': a number,
            one per channel, or one (or one per channel) per image.
        interpolation: 'bilinear', 'bicubic' or 'nearest', for all images or one per
            image (each mode present costs one more sampling call).
        antialias: shrink before sampling where the matrix shrinks (see the module).

    Returns:
        uint8 (n, C, height, width) on the images' device, rounded to nearest.

    Raises:
        ValueError: for an unknown border or interpolation, matrices that do not fit the
            images, a singular matrix, or images without pixels.
    """
    n = len(images)
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    th, tw = (int(v) for v in size)
    if n == 0:
        raise ValueError("warp_images needs at least one image")
    modes = [interpolation] * n if isinstance(interpolation, str) else list(interpolation)
    if len(modes) != n or not set(modes) <= set(_MODES):
        raise ValueError(f"interpolation must be one of {_MODES}, or one per image; got {modes}")
    rows = matrices.tolist() if hasattr(matrices, "tolist") else matrices
    if len(rows) != n:
        raise ValueError(f"{len(rows)} matrices for {n} images")
    first = images[0]
    device, channels = first.device, int(first.shape[0])
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    if any(h < 1 or w < 1 for h, w in sizes):
        raise ValueError(f"images must have pixels, got sizes {sizes}")
    # Per image, in plain Python (no device work): the inverse matrix, the pyramid level,
    # the samples per pixel.
    plans = []
    for i, ((a, b, x), (c, d, y)) in enumerate(rows):
        a, b, x, c, d, y = (float(v) for v in (a, b, x, c, d, y))
        det = a * d - b * c
        if det == 0 or not math.isfinite(det):
            raise ValueError(f"matrix {i} is singular: {rows[i]}")
        largest, smallest = _scales(a, b, c, d)
        h, w = sizes[i]
        level, k = _level_and_samples(largest, smallest, max(h, w)) if antialias else (0, 1)
        if modes[i] == "nearest":
            level, k = 0, 1  # labels are never blended
        # target -> source pixels: the inverse of [[a, b, x], [c, d, y]]
        ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
        plans.append((ia, ib, -(ia * x + ib * y), ic, id_, -(ic * x + id_ * y), level, k))
    levels = max(p[6] for p in plans)
    k = max(p[7] for p in plans)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    atlas, offsets = _atlas(_canvas(images, height, width), levels)
    ah, aw = atlas.shape[-2:]

    # Per image: the affine map from the sample grid to the pixel coordinates of its
    # pyramid level ((x + 0.5) / 2**level - 0.5), and that level's bounds and offset.
    theta, bounds = [], []
    for (ia, ib, ix, ic, id_, iy, level, _), (h, w) in zip(plans, sizes):
        s = 0.5**level
        o = 0.5 * s - 0.5
        theta.append([[ia * s, ib * s, ix * s + o], [ic * s, id_ * s, iy * s + o]])
        ox, oy = offsets[level]
        lw, lh = -(-w // 2**level), -(-h // 2**level)  # the level's pixels (the last partly)
        # [x last pixel, y last pixel, x extent, y extent, x offset, y offset]
        bounds.append([lw - 1, lh - 1, w * s - 0.5, h * s - 0.5, ox, oy])
    theta_t = torch.tensor(theta, dtype=torch.float64, device=device)
    bound = torch.tensor(bounds, dtype=torch.float32, device=device)[:, :, None, None]
    last_x, last_y = bound[:, 0], bound[:, 1]

    # The sample positions: k x k per target pixel, at (j + 0.5) / k - 0.5 target pixels.
    us = (torch.arange(tw * k, device=device, dtype=torch.float64) + 0.5) / k - 0.5
    vs = (torch.arange(th * k, device=device, dtype=torch.float64) + 0.5) / k - 0.5
    shape = (th * k, tw * k)
    grid = torch.stack([us.expand(shape), vs[:, None].expand(shape), us.new_ones(shape)], -1)
    coords = torch.einsum("hwk,njk->nhwj", grid, theta_t).float()  # (n, H, W, 2) level pixels
    xs, ys = coords[..., 0], coords[..., 1]
    if border == "reflect":
        xs, ys = _reflect(xs, last_x), _reflect(ys, last_y)
    else:  # replicate, and the others' samples before their blending with the fill
        weight: torch.Tensor | None = None
        if border == "constant":
            # the share of the bilinear taps that fall on the image
            wx = torch.minimum(xs + 1, last_x + 1 - xs).clamp_(0, 1)
            wy = torch.minimum(ys + 1, last_y + 1 - ys).clamp_(0, 1)
            weight = (wx * wy)[:, None]
        elif border == "background" and k == 1:
            # one sample: the pixels whose centres map outside get the fill
            ext_x, ext_y = bound[:, 2], bound[:, 3]
            weight = ((xs >= -0.5) & (xs <= ext_x) & (ys >= -0.5) & (ys <= ext_y))[:, None]
        elif border == "background":
            # several: how much of the pixel the source covers, as the CPU warp measures it
            # (a bilinear ramp across the edge, averaged), less than half gets the fill
            wx = torch.minimum(xs + 1, bound[:, 2] + 0.5 - xs).clamp_(0, 1)
            wy = torch.minimum(ys + 1, bound[:, 3] + 0.5 - ys).clamp_(0, 1)
            weight = (wx * wy)[:, None]
        xs = torch.minimum(xs.clamp(min=0), last_x)
        ys = torch.minimum(ys.clamp(min=0), last_y)
    # into the atlas, normalised for grid_sample (align_corners=False: pixel i's centre
    # is at (2i + 1) / size - 1)
    gx = (xs + bound[:, 4]) * (2 / aw) + (1 / aw - 1)
    gy = (ys + bound[:, 5]) * (2 / ah) + (1 / ah - 1)
    sample_grid = torch.stack([gx, gy], -1)
    present = sorted(set(modes), key=_MODES.index)
    out = None
    for mode in present:  # one sampling call per interpolation mode in the batch
        sampled = F.grid_sample(
            atlas, sample_grid, mode=mode, padding_mode="border", align_corners=False
        )
        if out is None:
            out = sampled
        else:
            pick = torch.tensor([m == mode for m in modes], device=device)[:, None, None, None]
            out = torch.where(pick, sampled, out)
    assert out is not None
    if border in ("constant", "background"):
        assert weight is not None  # made with the samples' positions above
        fills = _fill_tensor(fill, n, channels, device)
        if border == "constant":
            out = torch.lerp(fills, out, weight)
            if k > 1:
                out = F.avg_pool2d(out, k)
        else:
            covered = weight.float()
            if k > 1:
                out, covered = F.avg_pool2d(out, k), F.avg_pool2d(covered, k)
            out = torch.where(covered >= 0.5, out, fills)
    elif k > 1:
        out = F.avg_pool2d(out, k)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _reflect(x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Coordinates mirrored about 0 and ``last`` (BORDER_REFLECT_101: the edge pixel is
    not repeated); the linear interpolant of the mirrored pixels is the mirrored
    interpolant, so mirroring the coordinate is exact."""
    period = (2 * last).clamp(min=1)
    t = torch.remainder(x, period)
    return torch.minimum(torch.where(t > last, period - t, t), last)
