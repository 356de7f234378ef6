"""The atlas of :func:`crumpets.torch.warp.warp_images`: a batch's images, and the
pyramid levels it samples them from, packed into one float32 image in slots of their own
sizes (shelves, tallest first, first fit), and filled from one flat copy of the images by
index arithmetic, so that the torch calls do not depend on the number of images or their
sizes, and memory follows the batch's pixels. The layout is planned on the host
(:func:`plan_atlas`, plain Python), the pixels are written on the device
(:func:`fill_atlas`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["AtlasPlan", "MAX_LEVEL", "fill_atlas", "level_size", "plan_atlas"]

MAX_LEVEL = 5  # 32x: beyond it the k x k samples of a smaller level still antialias

# The columns of the slot table (one row per slot: an image, or one pyramid level of it).
(
    _ROWS,  # the slot's height
    _WIDTH,  # the slot's width
    _FIRST_ROW,  # its first row among the rows of its part (images, or pyramid levels)
    _FIRST_PIXEL,  # its first pixel among the pixels of its part
    _ORIGIN,  # the atlas index (y * width + x) of its top-left pixel
    _LAST_Y,  # the last row and column of what it holds
    _LAST_X,
    _SOURCE,  # where that comes from: the index of its pixel (0, 0) ...
    _SOURCE_STRIDE,  # ... the source's row stride ...
    _SOURCE_LAST_Y,  # ... and its last row and column (the parent level's, for a level)
    _SOURCE_LAST_X,
    _PLANE,  # the flat copy's channel stride (images only)
) = range(12)
# The shelves of the atlas (one row each) and their segments, left to right.
_SHELF_RUNS, _SHELF_SEGMENTS, _SHELF_FIRST_SEGMENT, _SHELF_FIRST_RUN, _SHELF_TOP = range(5)
(
    _SEGMENT_X,
    _SEGMENT_WIDTH,
    _SEGMENT_SOURCE,  # an image's first value in the flat copy (0 for a gap) ...
    _SEGMENT_STRIDE,  # ... its row stride, last row and column, channel stride (0: a gap)
    _SEGMENT_LAST_Y,
    _SEGMENT_LAST_X,
    _SEGMENT_PLANE,
) = range(7)


def _shelves(
    sizes: Sequence[tuple[int, int]], order: Sequence[int], width: int
) -> tuple[int, list[tuple[int, int]]]:
    """Shelf packing (first fit, in ``order``: tallest first) of rectangles (height, width)
    into a strip ``width`` wide. Returns the strip's height and each rectangle's (y, x)."""
    shelves: list[list[int]] = []  # [y, height, used width]
    where = [(0, 0)] * len(sizes)
    height = 0
    for j in order:
        h, w = sizes[j]
        for shelf in shelves:  # the first shelf with room (all are at least h tall)
            if shelf[2] + w <= width:
                break
        else:
            shelf = [height, h, 0]
            shelves.append(shelf)
            height += h
        where[j] = (shelf[0], shelf[2])
        shelf[2] += w
    return height, where


def _pack(sizes: Sequence[tuple[int, int]]) -> tuple[int, int, list[tuple[int, int]]]:
    """Rectangles (height, width) packed into the smallest of a few strips about as wide as
    the square root of their area (near square: grid_sample's float32 coordinates stay
    precise), or as the widest. Returns the strip's height and width and each rectangle's
    top-left (y, x)."""
    order = sorted(range(len(sizes)), key=lambda j: (-sizes[j][0], -sizes[j][1]))
    widest = max(w for _, w in sizes)
    side = math.isqrt(sum(h * w for h, w in sizes) - 1) + 1
    first = sizes[order[0]][1]  # whole numbers of the tallest fill shelves of one size
    candidates = {side, side * 9 // 8, side * 5 // 4, side * 3 // 2}
    candidates |= {first * max(1, side // first), first * (side // first + 1)}
    best = None
    # at most the area: a gap in the atlas copies as many values from the flat copy's start
    for width in sorted(max(widest, min(w, side * side)) for w in candidates):
        height, where = _shelves(sizes, order, width)
        if best is None or height * width < best[0] * best[1]:
            best = (height, width, where)
    assert best is not None
    return best


@dataclass(frozen=True)
class AtlasPlan:
    """Where each image, and each pyramid level of it that is used, sits in the atlas:
    plain numbers made on the host, executed by :func:`fill_atlas`.

    ``table`` has a row per slot (columns ``_ROWS`` ... ``_PLANE``): first the n images
    (sources: the flat copy of them all), then the pyramid levels, level by level
    (sources: the level above, in the atlas). ``rows`` and ``pixels`` count the slots'
    rows and pixels in these two parts; ``levels`` is each pyramid level's range of pixels
    among the second part's; ``origins`` is each image's (x, y) in the atlas of pixel (0, 0)
    of the level it is sampled from.

    The images' values are gathered in the atlas's own order (no scatter, no zeroing):
    ``shelves`` (columns ``_SHELF_*``) and their ``segments`` from left to right (columns
    ``_SEGMENT_*``: an image's slot, or a gap, which copies finite values of no use), each
    row of a shelf one run per segment, ``runs`` runs in all.
    """

    height: int
    width: int
    margin: int
    table: list[list[int]]
    rows: tuple[int, int]
    pixels: tuple[int, int]
    levels: list[tuple[int, int]]
    origins: list[tuple[int, int]]
    shelves: list[list[int]]
    segments: list[list[int]]
    runs: int


def level_size(h: int, w: int, level: int) -> tuple[int, int]:
    """An image's size at a pyramid level (its last row and column partly covered)."""
    s = 2**level
    return -(-h // s), -(-w // s)


def plan_atlas(
    sizes: Sequence[tuple[int, int]], levels: Sequence[int], channels: int, margin: int
) -> AtlasPlan:
    """The atlas for images of ``sizes`` (height, width), each sampled from its pyramid
    level in ``levels``, with ``margin`` pixels of repeated edge around every slot."""
    n = len(sizes)
    # (image, level) of every slot: the images, then the pyramid level by level
    slots = [(i, 0) for i in range(n)]
    for level in range(1, MAX_LEVEL + 1):
        slots += [(i, level) for i in range(n) if levels[i] >= level]
    shapes = [level_size(*sizes[i], level) for i, level in slots]
    height, width, where = _pack([(h + 2 * margin, w + 2 * margin) for h, w in shapes])
    inner = {slot: (x + margin, y + margin) for slot, (y, x) in zip(slots, where)}
    table = []
    rows, pixels = [0, 0], [0, 0]
    offset = 0  # the image's first pixel in the flat copy
    ranges = [[0, 0] for _ in range(MAX_LEVEL)]
    for (i, level), (h, w), (y, x) in zip(slots, shapes, where):
        part = int(level > 0)
        sh, sw = h + 2 * margin, w + 2 * margin
        row = [sh, sw, rows[part], pixels[part], y * width + x, h - 1, w - 1]
        if level == 0:
            row += [channels * offset, w, h - 1, w - 1, h * w]
            offset += h * w
        else:
            px, py = inner[i, level - 1]
            ph, pw = level_size(*sizes[i], level - 1)
            row += [py * width + px, width, ph - 1, pw - 1, 0]
        table.append(row)
        rows[part] += sh
        pixels[part] += sh * sw
        if level:
            ranges[level - 1][1] = pixels[1]
            # the levels after it start where it ends, until they have slots
            for later in ranges[level:]:
                later[0] = later[1] = pixels[1]
    # the shelves: the slots' tops (first fit packs each shelf from the left)
    shelf_of: dict[int, list[int]] = {}
    for j, (y, _) in enumerate(where):
        shelf_of.setdefault(y, []).append(j)
    tops = sorted(shelf_of)
    shelves: list[list[int]] = []
    segments: list[list[int]] = []
    runs = 0
    for top, bottom in zip(tops, [*tops[1:], height]):
        row_segments = []
        x = 0
        for j in sorted(shelf_of[top], key=lambda j: where[j][1]):
            if where[j][1] > x:  # a gap
                row_segments.append([x, where[j][1] - x, 0, 0, 0, 0, 0])
            sw = shapes[j][1] + 2 * margin
            columns = [_SOURCE, _SOURCE_STRIDE, _LAST_Y, _LAST_X, _PLANE]
            # a pyramid level's slot is filled later: here a gap
            source = [table[j][c] for c in columns] if j < n else [0] * 5
            row_segments.append([where[j][1], sw, *source])
            x = where[j][1] + sw
        if x < width:
            row_segments.append([x, width - x, 0, 0, 0, 0, 0])
        count = len(row_segments)
        shelves.append([(bottom - top) * count, count, len(segments), runs, top])
        segments += row_segments
        runs += (bottom - top) * count
    return AtlasPlan(
        shelves=shelves,
        segments=segments,
        runs=runs,
        height=height,
        width=width,
        margin=margin,
        table=table,
        rows=(rows[0], rows[1]),
        pixels=(pixels[0], pixels[1]),
        levels=[(a, b) for a, b in ranges],
        origins=[inner[i, levels[i]] for i in range(n)],
    )


def _slot_rows(
    table: torch.Tensor, rows: int, margin: int, atlas_width: int
) -> tuple[torch.Tensor, ...]:
    """Every row of the slots in ``table``: its slot, the row of the image (or level) it
    holds (clamped: the margin repeats the edge), its width, its first pixel among the
    slots' pixels and its first pixel's atlas index. ``rows`` comes from the host, so the
    device is never asked for a size."""
    ids = torch.arange(len(table), dtype=table.dtype, device=table.device)
    slot = ids.repeat_interleave(table[:, _ROWS], output_size=rows)
    row = torch.arange(rows, dtype=table.dtype, device=table.device)
    row.sub_(table[:, _FIRST_ROW].index_select(0, slot))
    width = table[:, _WIDTH].index_select(0, slot)
    first = table[:, _FIRST_PIXEL].index_select(0, slot).add_(row * width)
    origin = table[:, _ORIGIN].index_select(0, slot).add_(row * atlas_width)
    y = torch.minimum(row.sub_(margin).clamp_(min=0), table[:, _LAST_Y].index_select(0, slot))
    return slot, y, width, first, origin


def _row_pixels(
    width: torch.Tensor, first: torch.Tensor, origin: torch.Tensor, pixels: int
) -> tuple[torch.Tensor, ...]:
    """Every pixel of the rows: its row, its number (``arange``) and its atlas index (int64,
    as ``index_copy_`` takes it). A pixel's column in its row is its number less its row's
    ``first``: callers fold per-row offsets into one gather per pixel, as here."""
    ids = torch.arange(len(width), dtype=width.dtype, device=width.device)
    run = ids.repeat_interleave(width, output_size=pixels)
    number = torch.arange(pixels, dtype=width.dtype, device=width.device)
    # in the table's type, then int64: an in-place add across types is slow on the CPU
    where = (origin - first).index_select(0, run).add_(number).long()
    return run, number, where


def _columns(
    run: torch.Tensor, number: torch.Tensor, first: torch.Tensor, last: torch.Tensor, margin: int
) -> torch.Tensor:
    """Each pixel's column of the image (or level) its slot holds, clamped to ``last`` (per
    row): the margin repeats the edge."""
    column = (number - first.index_select(0, run)).sub_(margin).clamp_(min=0)
    return torch.minimum(column, last.index_select(0, run))


def fill_atlas(
    images: Sequence[torch.Tensor],
    plan: AtlasPlan,
    table: torch.Tensor,
    shelves: torch.Tensor,
    segments: torch.Tensor,
) -> torch.Tensor:
    """The atlas (1, C, height, width), float32: ``plan`` executed with its tables (on the
    images' device)."""
    first_image = images[0]
    channels, n, width, margin = int(first_image.shape[0]), len(images), plan.width, plan.margin
    device, kind = first_image.device, table.dtype
    # one copy of all the images, one after the other, whatever their number and sizes
    flat = torch.ops.aten.flatten_dense_tensors(list(images))
    # The atlas in its own order, run by run (a shelf's row, one segment): per run, which
    # segment and row of it, and where its values start in the flat copy
    shelf = torch.arange(len(shelves), dtype=kind, device=device)
    shelf = shelf.repeat_interleave(shelves[:, _SHELF_RUNS], output_size=plan.runs)
    place = torch.arange(plan.runs, dtype=kind, device=device)
    place.sub_(shelves[:, _SHELF_FIRST_RUN].index_select(0, shelf))
    count = shelves[:, _SHELF_SEGMENTS].index_select(0, shelf)
    row = torch.div(place, count, rounding_mode="floor")
    segment = shelves[:, _SHELF_FIRST_SEGMENT].index_select(0, shelf).add_(place)
    segment.sub_(row * count)
    first = shelves[:, _SHELF_TOP].index_select(0, shelf).add_(row).mul_(width)
    first.add_(segments[:, _SEGMENT_X].index_select(0, segment))
    # the row the run copies: clamped, so margins and the space below a shorter slot repeat
    # the edge, and a gap copies the flat copy's first values
    y = torch.minimum(
        row.sub_(margin).clamp_(min=0), segments[:, _SEGMENT_LAST_Y].index_select(0, segment)
    )
    source = segments[:, _SEGMENT_STRIDE].index_select(0, segment).mul_(y)
    source.add_(segments[:, _SEGMENT_SOURCE].index_select(0, segment))
    plane = segments[:, _SEGMENT_PLANE].index_select(0, segment)
    run_width = segments[:, _SEGMENT_WIDTH].index_select(0, segment)
    pixels = plan.height * width
    run = torch.arange(plan.runs, dtype=kind, device=device)
    run = run.repeat_interleave(run_width, output_size=pixels)
    number = torch.arange(pixels, dtype=kind, device=device)
    # (C, pixels): each atlas value's index in the flat copy, written in place (on the CPU
    # a fresh tensor costs its page faults, more than the arithmetic)
    index = torch.empty((channels, pixels), dtype=kind, device=device)
    if margin:
        last_x = segments[:, _SEGMENT_LAST_X].index_select(0, segment)
        torch.index_select(source, 0, run, out=index[0])
        index[0].add_(_columns(run, number, first, last_x, margin))
    else:  # the column is the number less the run's first: one gather, no clamp
        torch.index_select(source.sub_(first), 0, run, out=index[0]).add_(number)
    channel = torch.arange(1, channels, dtype=kind, device=device)[:, None]
    torch.mul(plane.index_select(0, run), channel, out=index[1:]).add_(index[0])
    del run, number, source, plane  # each buffer freed as soon as it is spent: a lower peak
    values = flat.index_select(0, index.view(-1))
    del flat, index
    atlas = values.view(channels, pixels).to(torch.float32)
    del values
    part = table[n:]
    slot, y, row_width, first, origin = _slot_rows(part, plan.rows[1], margin, width)
    # each pixel of a level: the mean of the (up to) four of the level above it covers
    top = part[:, _SOURCE].index_select(0, slot)
    bottom = torch.minimum(y * 2 + 1, part[:, _SOURCE_LAST_Y].index_select(0, slot))
    bottom.mul_(width).add_(top)
    top.add_(y.mul_(2 * width))
    run, number, where = _row_pixels(row_width, first, origin, plan.pixels[1])
    left = _columns(run, number, first, part[:, _LAST_X].index_select(0, slot), margin).mul_(2)
    right = torch.minimum(
        left + 1, part[:, _SOURCE_LAST_X].index_select(0, slot).index_select(0, run)
    )
    top, bottom = top.index_select(0, run), bottom.index_select(0, run)
    taps = torch.stack([top + left, top + right, bottom + left, bottom + right], 1)
    for start, stop in plan.levels:  # one level after the other: each reads the one above
        means = atlas.index_select(1, taps[start:stop].view(-1)).view(channels, -1, 4).mean(2)
        atlas.index_copy_(1, where[start:stop], means)
    return atlas.view(1, channels, plan.height, width)
