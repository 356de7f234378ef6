"""The Augmentation Guide's pictures, drawn when the site is built.

``.. crumpets-preview:: NAME`` (``{crumpets-preview} NAME`` in MyST) inserts the picture of
one augmentation of :data:`crumpets.augment.preview.GUIDE` (its label, e.g. ``rotation``),
of a preset's draws (``AUGMENTATION_TRAIN``), or the whole grid (``grid``). Every picture
comes from crumpets' own preview code on scikit-image's ``chelsea`` photo, so the pages
always show what the installed crumpets-augment does; nothing is checked in.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

SIZE = 192  # side of one tile in pixels
DRAWS = 4  # draws of each preset
OUT = Path("_build") / "previews"  # under the source folder; ignored by git


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _photo() -> bytes:
    import cv2
    from skimage import data

    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))
    assert ok
    return jpeg.tobytes()


def _row(tiles: list) -> object:
    import numpy as np

    from crumpets.augment.preview import GAP

    height = tiles[0].shape[0]
    gap = np.full((height, GAP, 3), 255, np.uint8)
    parts = [part for tile in tiles for part in (tile, gap)][:-1]
    return np.hstack(parts)


def draw_all(folder: Path) -> dict[str, tuple[Path, str]]:
    """Write every picture into ``folder``; returns name -> (file, caption)."""
    import cv2

    from crumpets.augment.preview import (
        GUIDE,
        IMAGE_PARAMS,
        available_presets,
        preview_grid,
        preview_tiles,
    )

    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    pictures = {}

    def write(name, rgb, caption):
        path = folder / f"{slug(name)}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")
        pictures[name] = (path, caption)

    guide, _ = preview_tiles(photo, SIZE)
    settings = dict(GUIDE)
    for label, tile in guide:
        args = ", ".join(f"{k}={v!r}" for k, v in settings[label].items())
        rng = f"MixtureRNG(prob=1.0, {args})" if args else "no image_rng"
        write(label, tile, f"{rng}, image_params={IMAGE_PARAMS!r}")
    for preset in available_presets():
        _, draws = preview_tiles(photo, SIZE, preset, DRAWS)
        write(preset, _row([tile for _, tile in draws]), f"{DRAWS} draws of {preset}, seed 0")
    write("grid", preview_grid(photo, 128, "AUGMENTATION_TRAIN", 5), "")
    return pictures


class PreviewDirective(SphinxDirective):
    """``crumpets-preview NAME``: the picture NAME drawn by :func:`draw_all`."""

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"alt": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        pictures = self.env.app.crumpets_previews
        if name not in pictures:
            raise self.error(f"no preview named {name!r}; known: {', '.join(pictures)}")
        path, caption = pictures[name]
        rel = path.relative_to(Path(self.env.srcdir)).as_posix()
        alt = self.options.get("alt", f"chelsea: {name}")
        image = nodes.image(uri="/" + rel, alt=alt, classes=["crumpets-preview"])
        if not caption:
            return [image]
        return [nodes.figure("", image, nodes.caption("", "", nodes.literal(caption, caption)))]


def _draw(app: Sphinx) -> None:
    app.crumpets_previews = draw_all(Path(app.srcdir) / OUT)


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", _draw)
    app.add_directive("crumpets-preview", PreviewDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
