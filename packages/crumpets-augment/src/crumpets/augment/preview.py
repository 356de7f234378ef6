"""``crumpets preview IMAGE OUT.png``: one image under every augmentation of the guide.

The grid shows the Augmentation Guide's examples with the guide's exact settings, each
tile labelled; with ``--preset NAME`` a second section shows ``--draws`` random draws of
that preset. Tiles come from an :class:`~crumpets.augment.workers.ImageWorker`'s own
``prepare``, so the preview shows exactly what a loader would produce.

Example:
    crumpets preview cat.jpg grid.png --preset AUGMENTATION_TRAIN --draws 5 --size 160
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict

import cv2
import numpy as np

from . import presets
from .rng import RNG, MixtureRNG
from .workers import ImageWorker

__all__ = [
    "COLUMNS",
    "GAP",
    "GUIDE",
    "available_presets",
    "label_height",
    "preview_grid",
    "preview_tiles",
    "run",
    "setup",
]

# The Augmentation Guide's examples, in its order, with its settings (all use prob=1.0).
GUIDE: list[tuple[str, dict]] = [
    ("none", {}),
    ("aspect", {"aspect_sigma": 0.3}),
    ("blur", {"blur_range": (1.5 / 448, 1.5 / 448)}),
    ("brightness", {"brightness_range": (0.45, 0.45)}),
    ("color", {"color_range": (-0.3, 0.3)}),
    ("contrast", {"contrast_range": (0.35, 0.35)}),
    ("horizontal mirror", {"hmirror": 1}),
    ("noise", {"noise_range": (0.2, 0.2)}),
    ("rotation", {"rotation_sigma": 24}),
    ("zoom in", {"scale_range": (1.4, 1.4)}),
    ("zoom out", {"scale_range": (0.6, 0.6)}),
    ("shear", {"shear_range": (0.06, 0.06)}),
    ("shift up", {"shift_range": (1, 1)}),
    ("shift down", {"shift_range": (-1, -1)}),
    ("vertical mirror", {"vmirror": 1}),
]
IMAGE_PARAMS = {"scale_mode": "longest"}
BACKGROUND = (128, 128, 128)
COLUMNS = 5
GAP = 2  # dark pixels between cells, so grey letterbox bands of neighbours do not merge
STRIP = (24, 24, 24)
TEXT = (235, 235, 235)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def label_height(size: int) -> int:
    """Height of the dark label strip above each tile of side ``size``."""
    return max(12, round(size * 0.1))


def available_presets() -> list[str]:
    """Names in :mod:`crumpets.augment.presets` that are RNG instances."""
    return [name for name in presets.__all__ if isinstance(getattr(presets, name), RNG)]


def _preset(name: str | RNG) -> RNG:
    if isinstance(name, RNG):  # your own RNG, e.g. the one you train with
        return name
    if name not in available_presets():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(available_presets())}")
    return getattr(presets, name)


def _tile(data: bytes, size: int, rng: RNG, seed: tuple[int, ...]) -> np.ndarray:
    worker = ImageWorker(
        ((3, size, size), np.uint8, BACKGROUND), image_params=IMAGE_PARAMS, image_rng=rng
    )
    worker.rng = np.random.default_rng(seed)
    buffers = {"image": np.full((3, size, size), BACKGROUND[0], np.uint8)}
    worker.prepare({"image": data}, defaultdict(list), buffers)
    return buffers["image"].transpose(1, 2, 0)


def preview_tiles(
    data: bytes, size: int = 224, preset: str | RNG | None = None, draws: int = 8, seed: int = 0
) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """The labelled tiles of the guide's examples, and of ``draws`` draws of ``preset``.

    Args:
        data: encoded image (JPEG, PNG, ...).
        size: side of each square tile in pixels.
        preset: name of an RNG in :mod:`crumpets.augment.presets`, an RNG, or None.
        draws: number of draws of the preset.
        seed: seed of the random examples (aspect, color, rotation) and of the draws.

    Returns:
        (guide tiles, preset tiles): lists of (label, RGB uint8 tile of size x size).

    Raises:
        ValueError: for an undecodable image, an unknown preset or a bad size or count.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    rng = _preset(preset) if preset is not None else None
    # Each tile has its own generator, so one example does not shift the others' draws.
    guide = [
        (label, _tile(data, size, MixtureRNG(prob=1.0, **settings), (seed, 0, i)))
        for i, (label, settings) in enumerate(GUIDE)
    ]
    extra = []
    if rng is not None:
        extra = [(f"draw {i + 1}", _tile(data, size, rng, (seed, 1, i))) for i in range(draws)]
    return guide, extra


def _label(strip: np.ndarray, text: str) -> None:
    h, w = strip.shape[:2]
    # One size for every label (measured on tall letters), smaller only where one is too wide.
    (_, th), base = cv2.getTextSize("Ag", FONT, 1.0, 1)
    (tw, _), _ = cv2.getTextSize(text, FONT, 1.0, 1)
    scale = min((h - 4) / (th + base), (w - 4) / tw)
    y = round((h + th * scale - base * scale) / 2)
    cv2.putText(strip, text, (2, y), FONT, scale, TEXT, 1, cv2.LINE_AA)


def _section(tiles: list[tuple[str, np.ndarray]], size: int) -> np.ndarray:
    strip = label_height(size)
    rows = math.ceil(len(tiles) / COLUMNS)
    out = np.empty((rows * (strip + size + GAP), COLUMNS * (size + GAP) + GAP, 3), np.uint8)
    out[...] = STRIP
    for i, (text, tile) in enumerate(tiles):
        y = (i // COLUMNS) * (strip + size + GAP)
        x = GAP + (i % COLUMNS) * (size + GAP)
        _label(out[y : y + strip, x : x + size], text)
        out[y + strip : y + strip + size, x : x + size] = tile
    return out


def preview_grid(
    data: bytes, size: int = 224, preset: str | RNG | None = None, draws: int = 8, seed: int = 0
) -> np.ndarray:
    """A labelled grid of one image under each augmentation of the Augmentation Guide.

    Layout: rows of :data:`COLUMNS` cells, each a dark label strip of
    :func:`label_height` pixels above a size x size tile, cells :data:`GAP` pixels apart;
    the guide's 15 examples first, in :data:`GUIDE` order. With ``preset``, a title strip
    and ``draws`` draws of that preset follow.

    Args:
        data: encoded image (JPEG, PNG, ...).
        size: side of each square tile in pixels.
        preset: name of an RNG in :mod:`crumpets.augment.presets`, an RNG, or None.
        draws: number of draws of the preset.
        seed: seed of the random examples and of the draws.

    Returns:
        The grid as an RGB uint8 array.

    Raises:
        ValueError: for an undecodable image, an unknown preset or a bad size or count.
    """
    guide, extra = preview_tiles(data, size, preset, draws, seed)
    parts = [_section(guide, size)]
    if extra:
        width = parts[0].shape[1]
        title = np.empty((label_height(size) + GAP, width, 3), np.uint8)
        title[...] = STRIP
        name = preset if isinstance(preset, str) else type(preset).__name__
        _label(title[: label_height(size), GAP:], f"{name}, seed {seed}")
        parts += [title, _section(extra, size)]
    parts.append(np.full((GAP, parts[0].shape[1], 3), STRIP, np.uint8))
    return np.vstack(parts)


def _at_least(low: int):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    check.__name__ = "integer"  # argparse names the type in its messages
    return check


def run(args: argparse.Namespace) -> int:
    """Run ``crumpets preview``; see :func:`setup`."""

    def error(message: str) -> int:
        sys.stderr.write(f"crumpets preview: error: {message}\n")
        return 2

    if args.preset is not None and args.preset not in available_presets():
        return error(f"unknown preset {args.preset!r}; available: {', '.join(available_presets())}")
    try:
        with open(args.image, "rb") as f:
            data = f.read()
    except OSError as e:
        return error(f"cannot read {args.image}: {e.strerror or e}")
    try:
        grid = preview_grid(data, args.size, args.preset, args.draws, args.seed)
    except (ValueError, MemoryError, cv2.error) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        return error(f"{args.image}: {message}")
    try:
        ok = cv2.imwrite(args.out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    except cv2.error:  # no writer for the extension
        ok = False
    if not ok:
        return error(f"cannot write {args.out} (does its folder exist? use a .png name)")
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


def setup(parser: argparse.ArgumentParser) -> None:
    """Write a labelled grid of an image under each augmentation of the guide.

    Args:
        parser: the subcommand's parser.
    """
    parser.epilog = (
        "Tiles use the Augmentation Guide's settings (prob=1.0, scale_mode='longest', grey "
        f"background); presets: {', '.join(available_presets())}."
    )
    parser.add_argument("image", metavar="IMAGE", help="image file (JPEG, PNG, ...)")
    parser.add_argument("out", metavar="OUT.png", help="grid image to write")
    parser.add_argument(
        "--size", type=_at_least(8), default=224, help="side of each tile in pixels (default 224)"
    )
    parser.add_argument(
        "--preset", metavar="NAME", help="also show draws of this preset, e.g. AUGMENTATION_TRAIN"
    )
    parser.add_argument(
        "--draws", type=_at_least(1), default=8, metavar="N", help="draws of --preset (default 8)"
    )
    parser.add_argument(
        "--seed", type=_at_least(0), default=0, help="seed of the random tiles (default 0)"
    )
    parser.set_defaults(func=run)
