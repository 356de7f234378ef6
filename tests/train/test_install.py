"""crumpets-train installs beside crumpets-core into the one `crumpets` namespace."""

from __future__ import annotations

from importlib import metadata

import crumpets
import crumpets.core
import crumpets.train


def test_distribution_version_matches_the_package():
    assert metadata.version("crumpets-train") == crumpets.train.__version__


def test_shares_the_namespace_with_core():
    assert getattr(crumpets, "__file__", None) is None  # PEP 420: no crumpets/__init__.py
    paths = {p.rsplit("crumpets", 1)[0] for p in crumpets.__path__}
    assert len(paths) >= 2  # one src/ per installed distribution
