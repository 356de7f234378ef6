"""Sphinx configuration of the crumpets documentation site (``nox -s docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "crumpets"
copyright = "the crumpets authors"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "myst_parser",
    "crumpets_preview",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
root_doc = "index"

html_theme = "furo"
html_title = "crumpets"

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# Google-style docstrings (STYLE.md); every public module's __all__ is documented.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" as fields of the class: a documented property of the same name stays the one entry
napoleon_use_ivar = True
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# No network during the build: links to Python and numpy are written out, not resolved.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

# The doctests run in a folder of their own (they write small dataset files): the pages'
# snippets, and the docstrings' examples, with every public name of the four packages
# imported, as a reader who imported the module would have them.
doctest_global_setup = """
import os, tempfile
os.chdir(tempfile.mkdtemp(prefix="crumpets-doctest-"))

import importlib, pkgutil
import numpy as np
import torch
for _top in ("crumpets.core", "crumpets.augment", "crumpets.torch", "crumpets.train"):
    _package = importlib.import_module(_top)
    for _info in [None, *pkgutil.walk_packages(_package.__path__, _top + ".")]:
        _name = _top if _info is None else _info.name
        if not any(part.startswith("_") for part in _name.split(".")):
            _module = importlib.import_module(_name)
            globals().update({n: getattr(_module, n) for n in _module.__all__})
"""
_TINYSET = Path(__file__).resolve().parents[1] / "examples" / "tinyset"
doctest_global_setup += f"""
TINYSET = {str(_TINYSET)!r}  # 12 photos, a folder per class
"""

# Docstring examples that are shown, not run: they stand for the reader's own data, worker
# and object store (the pages' doctests write and read dataset files, and load them, for
# real). Every other example of a docstring runs in `nox -s docs`.
SHOWN_NOT_RUN = {
    "crumpets.core.dataloader.TurboDataLoader",
    "crumpets.core.dataset.Reader",
    "crumpets.core.dataset.Writer",
    "crumpets.core.shards",
}


def _drop_type_docstrings(app, what, name, obj, options, lines):
    """A constant without a docstring of its own shows its type's (dict's, tuple's): drop it."""
    # compared before napoleon rewrites the lines (it runs first): on the object itself;
    # ==, not is: a builtin's __doc__ is a new string each time
    if what in ("data", "attribute") and not isinstance(obj, type):
        if type(obj).__doc__ and getattr(obj, "__doc__", None) == type(obj).__doc__:
            lines.clear()


def _skip_illustrations(app, what, name, obj, options, lines):
    if name in SHOWN_NOT_RUN:
        lines[:] = [
            f"{line}  # doctest: +SKIP" if line.lstrip().startswith(">>>") else line
            for line in lines
        ]


def setup(app):
    app.connect("autodoc-process-docstring", _drop_type_docstrings)
    app.connect("autodoc-process-docstring", _skip_illustrations)


# A reference to a crumpets name that the site does not document is an error (with -W);
# references to other libraries' names stay plain text where no inventory resolves them.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!crumpets\.).*|.*\._.*")]  # and private names
