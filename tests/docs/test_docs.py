"""The documentation site, as `nox -s docs` built it into docs/_build/html.

- The API reference documents every name in the ``__all__`` of every public module of the
  four packages (a module whose dotted path has no part starting with an underscore).
- The Augmentation Guide has a picture, drawn at build time, of every augmentation of
  ``crumpets.augment.preview.GUIDE`` and of every preset.
- Headless Chromium opens the front page and the guide: no console errors, and the
  screenshots show the pictures.

`nox -s docs` runs this file after the build (it sets CRUMPETS_DOCS_BUILT); no other
session collects tests/docs. Run by hand before a build, it skips: there is no site yet.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BUILT = os.environ.get("CRUMPETS_DOCS_BUILT")
pytestmark = pytest.mark.skipif(
    not BUILT, reason="the documentation site is built and checked by `nox -s docs`"
)
ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / (BUILT or "docs/_build/html")
SUBPACKAGES = ["crumpets.core", "crumpets.augment", "crumpets.torch", "crumpets.train"]
PAGES = [
    "getting-started",
    "loading-data",
    "augmentation",
    "workers",
    "pytorch",
    "training",
    "datasets",
    "examples",
    "performance",
    "reliability",
    "coming-from-crumpets-3",
    "api/index",
    "api/core",
    "api/augment",
    "api/torch",
    "api/train",
]


def raise_it(name: str) -> None:
    raise ImportError(f"{name} cannot be imported")  # never a module silently left out


def public_modules() -> list[str]:
    names = []
    for top in SUBPACKAGES:
        package = importlib.import_module(top)
        names.append(top)
        for info in pkgutil.walk_packages(package.__path__, top + ".", onerror=raise_it):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


def documented_names() -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with open(SITE / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda a, b: b)
    data = getattr(inventory, "data", inventory)  # a plain dict before Sphinx 8.2
    return {name for kind, entries in data.items() if kind.startswith("py:") for name in entries}


def resolve(name: str) -> object:
    """The object a dotted name documents, or None where it cannot be imported."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def undocumented(modules: list[str], documented: set[str]) -> list[str]:
    """Public modules and names of ``__all__`` that the documented names do not cover.

    A name counts as documented under its own dotted path, or where the same object is
    documented (a re-export documented in the module that defines it).
    """
    objects = {id(resolve(name)) for name in documented}
    missing = []
    for module_name in modules:
        if module_name not in documented:
            missing.append(module_name)
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            full = f"{module_name}.{name}"
            if full in documented:
                continue
            obj = getattr(module, name)
            # small ints and strings are shared by identity; they must be documented by name
            if isinstance(obj, (int, str, float)) or id(obj) not in objects:
                missing.append(full)
    return missing


def test_api_reference_covers_every_public_name():
    modules = public_modules()
    assert len(modules) >= 30, modules
    missing = undocumented(modules, documented_names())
    assert not missing, f"not in the API reference: {missing}; run python docs/api/generate.py"


def test_a_console_error_is_caught(tmp_path):
    page = tmp_path / "error.html"
    page.write_text("<script>console.error('boom'); undefinedFunction();</script>")
    log = screenshot(str(page), tmp_path / "error.png", 300)  # SITE / absolute = absolute
    assert len(console_messages(log)) == 2, log


def test_a_name_left_out_is_reported():
    documented = documented_names()
    assert undocumented(["crumpets.core"], documented) == []
    for name in ("crumpets.core.dataloader.TurboDataLoader", "crumpets.core.__version__"):
        assert "crumpets.core" in documented
        gone = {n for n in documented if n != name and not n.startswith(name + ".")}
        modules = ["crumpets.core", "crumpets.core.dataloader"]
        assert name in undocumented(modules, gone)


def test_every_page_is_built():
    for page in ["index", *PAGES]:
        assert (SITE / f"{page}.html").is_file(), page


def test_augmentation_guide_has_a_picture_of_each_augmentation_and_preset():
    from crumpets.augment.preview import GUIDE, available_presets

    html = (SITE / "augmentation.html").read_text()
    images = dict(re.findall(r'<img alt="chelsea: ([^"]+)"[^>]* src="([^"]+)"', html))
    wanted = [label for label, _ in GUIDE] + available_presets()
    assert sorted(images) == sorted(wanted)
    for src in images.values():
        picture = (SITE / src).read_bytes()
        assert picture[:8] == b"\x89PNG\r\n\x1a\n" and len(picture) > 10_000, src


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def screenshot(page: str, out: Path, height: int) -> str:  # page: relative to SITE
    """Open the page headless, write a screenshot to ``out``; returns Chromium's log."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            f"--window-size=1280,{height}",
            f"--screenshot={out}",
            (SITE / page).as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and out.is_file(), result.stderr
    return result.stderr


def console_messages(log: str) -> list[str]:
    """Lines of the page's console in Chromium's log.

    Chromium logs every console message (console.error, an uncaught exception) as
    ``INFO:CONSOLE``, whatever its level; the site should log nothing at all.
    """
    return [line for line in log.splitlines() if ":CONSOLE" in line]


def missing_resources(page: str) -> list[str]:
    """Local files the page links or loads (src=, href=) that the build lacks."""
    html = (SITE / page).read_text()
    missing = []
    for ref in re.findall(r'(?:src|href)="([^"#?]+)', html):
        if "://" in ref or ref.startswith(("mailto:", "data:")):
            continue
        if not (SITE / page).parent.joinpath(ref).exists():
            missing.append(ref)
    return missing


def colourful_fraction(png: Path) -> float:
    """Share of pixels with clearly saturated colour: the cat, not the page's greys."""
    import cv2

    image = cv2.imread(str(png))
    assert image is not None, png
    saturation = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1]
    return float((saturation > 60).mean())


@pytest.mark.parametrize(("page", "height"), [("index.html", 1600), ("augmentation.html", 5000)])
def test_browser_shows_the_pictures_without_console_errors(page, height):
    out = SITE.parent / "screenshots" / page.replace(".html", ".png")
    out.parent.mkdir(exist_ok=True)
    assert missing_resources(page) == []
    log = screenshot(page, out, height)
    assert console_messages(log) == [], log
    # the photo's fur and the furo page's greys and blues: a page without the pictures has
    # almost no saturated pixels
    assert colourful_fraction(out) > 0.03, out
