"""Batched affine warps on the device: every image of a batch with its own 2x3 matrix, in
one ``torch.nn.functional.grid_sample`` per interpolation mode.

A matrix maps source pixel coordinates to target pixel coordinates, pixel centres at
integers, as ``batch['augmentation'][i]['transform']`` reports it and as
``cv2.warpAffine`` takes it.

Layout. The images are packed into one float32 atlas (C, height, width), each in a slot of
its own size (shelves of slots, tallest first, first fit, in a strip about as wide as the
square root of the batch's pixels), never on a canvas of the largest image's size. Each
pyramid level an image is sampled from (below) gets a slot too: a third of the image's
pixels at most. When a bicubic image is in the batch, every slot has a one-pixel border of
its edge repeated, so that bicubic taps never read a neighbour. The images reach the atlas
from one flat copy of them all (``flatten_dense_tensors``: one call whatever their number)
by one gather in the atlas's own order (index arithmetic over runs: a shelf's row through
one slot or gap, then over pixels), the pyramid levels after it, level by level, each
pixel the mean of the four below it (a gather and a scatter). ``grid_sample`` then reads
the one atlas for every image (expanded to the batch, not copied), each with its own
offsets. Each image's result is what it would be alone in a batch of the same k.

Cost. Calls: the torch calls per batch depend only on ``border`` and the interpolation
modes present, never on the number of images, their sizes or pyramid levels: the pyramid
loop always runs its five levels (an empty one costs its calls, no work) and the k x k mean
runs with k = 1 too. Host syncs: none. The per-image numbers (inverse matrices, bounds,
atlas offsets, fills, mode picks) and the atlas's tables (slots, shelves, segments) are
built on the host as two tensors, pinned where the device is CUDA and copied with
``non_blocking=True``, once per batch; the sizes the device needs (``repeat_interleave``'s)
come from the host. Memory: the atlas holds 4 bytes per channel and atlas pixel (packing
wastes some 3 to 6% for photos, more for a batch of a few very different sizes), and while
it is built, index tensors (int32 where the batch has fewer than 2**31 values) of a few
bytes per pixel: some 40 to 55 bytes per source pixel at the peak for three channels (a
12-megapixel photo among 31 small images: 0.6 GB on the CPU; a canvas of the largest size
took 12 GB), plus the output and the sampling grid as before, all proportional to the
batch's pixels. On the CPU, a batch of one size costs some 1.1x to 1.5x the time the canvas
took (64 images 375 x 500 to 224 x 224 with 2 x 2 samples; more with one sample, where the
sampling is cheap): the index arithmetic and gather of every pixel.

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
average: a pyramid of 2x2 means, each level's last row and column the means of the pixels
there are, as ``avg_pool2d(ceil_mode=True)`` on the image alone) until the warp shrinks it
by 2x to 4x, and the warp then averages k x k samples per target pixel (k = 2, more where
strong aspect or shear shrinks one axis further, at most 4; one sample where the warp
shrinks by less than 1.8x). Unlike the CPU path, k is the largest any image of the batch
needs (one sampling grid serves all), and the shrinking is by powers of two only (the CPU
also area-averages by other whole factors, and decodes JPEGs reduced).

Nearest-neighbour (labels) takes the pixel ``cv2.warpAffine`` takes, half pixels included:
rounded half up, to even with ``'reflect'`` (as OpenCV does), before ``grid_sample``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ._atlas import MAX_LEVEL, fill_atlas, level_size, plan_atlas

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
            level < MAX_LEVEL
            and largest * 2 ** (level + 1) <= _REACH
            and 2 ** (level + 1) <= longest
        ):
            level += 1
    shrunk = smallest * 2**level
    if shrunk >= _ONE_SAMPLE or shrunk <= 0:
        return level, 1
    return level, max(2, min(_MAX_SAMPLES, math.ceil(_REACH / shrunk)))


def _fill_values(fill: Any, n: int, channels: int) -> torch.Tensor:
    """``fill`` as (n, channels) float32 where it is (the host for numbers and lists): a
    number, one per channel, or one per sample (n values or n x channels)."""
    t = torch.as_tensor(fill, dtype=torch.float32)
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
    return t


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
        images: uint8 (or float) tensors (C, h_i, w_i) on one device, the same C and dtype;
            sizes may differ.
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
    k = max(p[7] for p in plans)
    present = sorted(set(modes), key=_MODES.index)
    # bicubic taps reach one pixel past the sampled one: a margin of repeated edge for them
    atlas_plan = plan_atlas(sizes, [p[6] for p in plans], channels, int("bicubic" in present))
    ah, aw = atlas_plan.height, atlas_plan.width

    # Per image: the affine map from the sample grid to the pixel coordinates of its
    # pyramid level ((x + 0.5) / 2**level - 0.5), that level's bounds and place in the
    # atlas, which mode samples it, and its fill: one row of host numbers.
    host_fill = not (isinstance(fill, torch.Tensor) and fill.device.type != "cpu")
    fills = _fill_values(fill, n, channels) if host_fill else None
    meta = []
    for i, ((ia, ib, ix, ic, id_, iy, level, _), (h, w)) in enumerate(zip(plans, sizes)):
        s = 0.5**level
        o = 0.5 * s - 0.5
        lh, lw = level_size(h, w, level)  # the level's pixels (the last partly)
        ox, oy = atlas_plan.origins[i]
        meta.append(
            [ia * s, ib * s, ix * s + o, ic * s, id_ * s, iy * s + o]
            # x last pixel, y last pixel, x extent, y extent, x offset, y offset
            + [lw - 1, lh - 1, w * s - 0.5, h * s - 0.5, ox, oy]
            + [float(modes[i] == mode) for mode in _MODES]
        )
    host = torch.tensor(meta, dtype=torch.float64)
    if fills is not None:
        host = torch.cat([host, fills.to(torch.float64)], 1)
    # int32 indices where they fit: half the memory of int64, and index_select takes them
    largest_index = max(channels * sum(h * w for h, w in sizes), ah * aw, *atlas_plan.pixels)
    index_type = torch.int32 if largest_index < 2**31 else torch.int64
    # the atlas's three int tables in one host tensor, sliced on the device
    tables = [atlas_plan.table, atlas_plan.shelves, atlas_plan.segments]
    ints = torch.tensor([v for t in tables for r in t for v in r], dtype=index_type)
    if device.type == "cuda":  # pinned, so that the copies below do not wait
        host, ints = host.pin_memory(), ints.pin_memory()
    meta_t = host.to(device, non_blocking=True)
    ints = ints.to(device, non_blocking=True)
    ends = list(itertools.accumulate(len(t) * w for t, w in zip(tables, (12, 5, 7))))
    slot_table, shelves, segments = (
        ints[start:stop].view(-1, w) for start, stop, w in zip([0, *ends], ends, (12, 5, 7))
    )
    atlas = fill_atlas(images, atlas_plan, slot_table, shelves, segments)

    theta_t = meta_t[:, :6].reshape(n, 2, 3)
    bound = meta_t[:, 6:12].to(torch.float32)[:, :, None, None]
    last_x, last_y = bound[:, 0], bound[:, 1]

    # The sample positions: k x k per target pixel, at (j + 0.5) / k - 0.5 target pixels.
    us = (torch.arange(tw * k, device=device, dtype=torch.float64) + 0.5) / k - 0.5
    vs = (torch.arange(th * k, device=device, dtype=torch.float64) + 0.5) / k - 0.5
    shape = (th * k, tw * k)
    grid = torch.stack([us.expand(shape), vs[:, None].expand(shape), us.new_ones(shape)], -1)
    coords = torch.einsum("hwk,njk->nhwj", grid, theta_t).float()  # (n, H, W, 2) level pixels
    xs, ys = coords[..., 0], coords[..., 1]
    weight: torch.Tensor | None = None
    if border == "constant":
        # the share of the bilinear taps that fall on the image
        wx = torch.minimum(xs + 1, last_x + 1 - xs).clamp_(0, 1)
        wy = torch.minimum(ys + 1, last_y + 1 - ys).clamp_(0, 1)
        weight = (wx * wy)[:, None]
    elif border == "background":
        # how much of the pixel the source covers, as the CPU warp measures it: a
        # bilinear ramp across the edge, 1/2 where the edge crosses the sample
        wx = torch.minimum(xs + 1, bound[:, 2] + 0.5 - xs).clamp_(0, 1)
        wy = torch.minimum(ys + 1, bound[:, 3] + 0.5 - ys).clamp_(0, 1)
        # one sample: its centre maps into the source (both ramps at least 1/2);
        # several: their mean coverage (below, at least 1/2). One call either way, so
        # the calls do not depend on k.
        weight = (torch.minimum(wx, wy) if k == 1 else wx * wy)[:, None]
    # every image samples the one atlas: expanded to the batch, not copied
    source = atlas.expand(n, -1, -1, -1)
    out, smooth = None, None
    for mode in present:  # one sampling call per interpolation mode in the batch
        if mode == "nearest":
            # the pixel cv2's INTER_NEAREST takes, made whole before the border (as cv2
            # does) and before grid_sample, whose own rounding of a half pixel would follow
            # float noise. cv2 rounds halves up, but to even with BORDER_REFLECT_101.
            if border == "reflect":
                x, y = xs.round(), ys.round()
            else:
                x, y = (xs + 0.5).floor_(), (ys + 0.5).floor_()
            grid = _atlas_grid(*_onto_image(x, y, bound, border), bound, ah, aw)
        else:  # bilinear and bicubic share one grid
            if smooth is None:
                smooth = _atlas_grid(*_onto_image(xs, ys, bound, border), bound, ah, aw)
            grid = smooth
        sampled = F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=False)
        if out is None:
            out = sampled
        else:
            pick = meta_t[:, 12 + _MODES.index(mode)] > 0.5
            out = torch.where(pick[:, None, None, None], sampled, out)
    assert out is not None
    # k x k samples to a pixel; with k = 1 a copy, so that the calls do not depend on k
    if border in ("constant", "background"):
        assert weight is not None  # made with the samples' positions above
        if host_fill:
            fill_t = meta_t[:, 12 + len(_MODES) :].to(torch.float32)
        else:
            fill_t = _fill_values(fill, n, channels).to(device)
        fill_t = fill_t.reshape(n, channels, 1, 1)
        if border == "constant":
            out = F.avg_pool2d(torch.lerp(fill_t, out, weight), k)
        else:
            out, covered = F.avg_pool2d(out, k), F.avg_pool2d(weight, k)
            out = torch.where(covered >= 0.5, out, fill_t)
    else:
        out = F.avg_pool2d(out, k)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _onto_image(
    xs: torch.Tensor, ys: torch.Tensor, bound: torch.Tensor, border: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates moved onto the image: mirrored for 'reflect', else clamped (replicate,
    and the other borders' samples before their blending with the fill)."""
    last_x, last_y = bound[:, 0], bound[:, 1]
    if border == "reflect":
        return _reflect(xs, last_x), _reflect(ys, last_y)
    return torch.minimum(xs.clamp(min=0), last_x), torch.minimum(ys.clamp(min=0), last_y)


def _atlas_grid(
    xs: torch.Tensor, ys: torch.Tensor, bound: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Level pixel coordinates moved to the image's place in the atlas (``bound``'s offsets)
    and normalised for grid_sample (align_corners=False: pixel i's centre is at
    (2i + 1) / size - 1)."""
    gx = (xs + bound[:, 4]) * (2 / width) + (1 / width - 1)
    gy = (ys + bound[:, 5]) * (2 / height) + (1 / height - 1)
    return torch.stack([gx, gy], -1)


def _reflect(x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Coordinates mirrored about 0 and ``last`` (BORDER_REFLECT_101: the edge pixel is
    not repeated); the linear interpolant of the mirrored pixels is the mirrored
    interpolant, so mirroring the coordinate is exact."""
    period = (2 * last).clamp(min=1)
    t = torch.remainder(x, period)
    return torch.minimum(torch.where(t > last, period - t, t), last)
