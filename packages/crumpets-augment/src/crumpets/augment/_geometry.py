"""The geometry of an augmentation: every geometric change in one 2x3 matrix that maps
source pixel coordinates to target pixel coordinates (pixel centres at integers).

The same matrix warps the image, maps keypoints and boxes, and is returned with every
sample, so any sample can be replayed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "OUTSIDE",
    "SCALE_MODES",
    "calc_scale_ratio",
    "make_transform",
    "map_boxes",
    "map_keypoints",
    "resize_matrix",
]

SCALE_MODES = ("shortest", "longest")
# What happens to keypoints that leave the image: dropped, or clipped to its border.
OUTSIDE = ("drop", "clip")


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
    return np.array(
        transform_rows(
            source_size,
            target_size,
            angle=angle,
            scale=scale,
            aspect=aspect,
            shift=shift,
            hmirror=hmirror,
            vmirror=vmirror,
            shear=shear,
            scale_mode=scale_mode,
        )
    )


def transform_rows(
    source_size: tuple[int, ...],
    target_size: tuple[int, ...],
    *,
    angle: float,
    scale: float,
    aspect: float,
    shift: Any,
    hmirror: bool,
    vmirror: bool,
    shear: float | None,
    scale_mode: str,
) -> list[list[float]]:
    """:func:`make_transform`'s matrix as two rows of Python floats."""
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
    return [[l00, l01, ox - (l00 * cx + l01 * cy)], [l10, l11, oy - (l10 * cx + l11 * cy)]]


def resize_matrix(fx: float, fy: float) -> np.ndarray:
    """The 3x3 matrix from an image's pixel coordinates to those of the image resized by
    (fx, fy), pixel centres at integers: x_resized = fx * (x + 0.5) - 0.5."""
    return np.array([[fx, 0.0, (fx - 1) / 2], [0.0, fy, (fy - 1) / 2], [0.0, 0.0, 1.0]])


def then_scale(matrix: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """``matrix`` applied to an image resized by 1/f: x = f*x_r + (f-1)/2."""
    return matrix @ resize_matrix(fx, fy)


def singular_values(matrix: Any) -> tuple[float, float]:
    """Largest and smallest scale of the linear part of a 2x3 matrix (an array, or rows
    of Python floats); closed form for 2x2."""
    rows = matrix.tolist() if isinstance(matrix, np.ndarray) else matrix
    (a, b, _), (c, d, _) = rows  # Python floats: numpy scalars are slower
    total = a * a + b * b + c * c + d * d
    det = abs(a * d - b * c)
    root = math.sqrt(max(total * total - 4 * det * det, 0.0))
    return math.sqrt((total + root) / 2), math.sqrt(max(total - root, 0.0) / 2)


def map_keypoints(
    points: Any, matrix: Any, size: tuple[int, int], outside: str = "drop"
) -> tuple[np.ndarray, list[int]]:
    """Keypoints through a sample's 2x3 ``matrix`` into a ``size`` (height, width) image.

    Args:
        points: N x 2 (x, y) in source pixel coordinates.
        matrix: the sample's ``transform``.
        size: (height, width) of the image the matrix maps to.
        outside: 'drop' the points that leave the image, or 'clip' them to its border.

    Returns:
        The mapped points (float32, M x 2) and the indices of the points they come from.
    """
    height, width = size
    m = np.asarray(matrix, np.float64)
    mapped = np.asarray(points, dtype=np.float64).reshape(-1, 2) @ m[:, :2].T + m[:, 2]
    if outside == "drop":
        inside = (
            (mapped >= -0.5).all(1) & (mapped[:, 0] <= width - 0.5) & (mapped[:, 1] <= height - 0.5)
        )
        index = np.flatnonzero(inside)
        mapped = mapped[index]
    else:
        index = np.arange(len(mapped))
        mapped = np.clip(mapped, -0.5, [width - 0.5, height - 0.5])
    return mapped.astype(np.float32), index.tolist()


def map_boxes(
    boxes: Any, matrix: Any, size: tuple[int, int], outside: str = "drop"
) -> tuple[np.ndarray, list[int]]:
    """Boxes through a sample's 2x3 ``matrix``: the box around each mapped box, clipped to
    the ``size`` (height, width) image; with ``outside='drop'`` boxes left without area go.

    Args:
        boxes: N x 4 (x0, y0, x1, y1) in source pixel coordinates.

    Returns:
        The mapped boxes (float32, M x 4) and the indices of the boxes they come from.
    """
    height, width = size
    m = np.asarray(matrix, np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
    mapped = corners @ m[:, :2].T + m[:, 2]
    # box edges lie on pixel borders: -0.5 .. size - 0.5 in pixel-centre coordinates
    limit = [width - 0.5, height - 0.5]
    lo = np.clip(mapped.min(1), -0.5, limit)
    hi = np.clip(mapped.max(1), -0.5, limit)
    hull = np.hstack([lo, hi])
    index = np.arange(len(hull))
    if outside == "drop":
        index = np.flatnonzero((hi > lo).all(1))
        hull = hull[index]
    return hull.astype(np.float32), index.tolist()
