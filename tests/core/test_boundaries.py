"""crumpets-core must work with numpy alone: no torch and no OpenCV, at any depth."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import crumpets.core


def test_importing_every_core_module_loads_neither_torch_nor_cv2():
    modules = [m.name for m in pkgutil.walk_packages(crumpets.core.__path__, "crumpets.core.")]
    assert "crumpets.core.dataloader" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch', 'cv2') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_crumpets_is_a_namespace_package():
    import crumpets

    assert getattr(crumpets, "__file__", None) is None
