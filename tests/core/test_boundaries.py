"""crumpets-core must work with numpy alone: no torch and no OpenCV, at any depth."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

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


SOURCES = Path(__file__).resolve().parents[2] / "packages"
PRIVATE_IMPORT = re.compile(r"crumpets\.(core|augment|torch|train)\._\w+")


def python_sources() -> list[Path]:
    files = sorted(SOURCES.glob("crumpets-*/src/crumpets/**/*.py"))
    assert len(files) > 30, f"no sources under {SOURCES}"
    return files


def test_no_distribution_uses_a_siblings_private_module():
    # four independently versioned distributions: what one uses of another is public API
    found = []
    for path in python_sources():
        own = path.relative_to(SOURCES).parts[0].removeprefix("crumpets-")
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for match in PRIVATE_IMPORT.finditer(line):
                if match[1] != own:
                    found.append(f"{path.relative_to(SOURCES)}:{n}: {match[0]}")
    assert not found, "\n".join(found)


def test_modules_hold_one_job_of_at_most_500_lines():
    too_long = {}
    for path in python_sources():
        lines = path.read_text().splitlines()
        if len(lines) > 500:
            too_long[str(path.relative_to(SOURCES))] = len(lines)
        if path.name not in ("__init__.py", "_version.py"):
            assert lines[0].startswith('"""'), f"{path} does not start with a docstring"
    assert not too_long, too_long
