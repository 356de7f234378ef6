"""crumpets-core must work with numpy alone: no torch and no OpenCV, at any depth."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import re
import subprocess
import sys
from collections.abc import Iterator
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


def is_module(package: str, name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:  # package is a module: name is something in it
        return False


def private_names_used(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module.name) for each ``_name`` a source takes from another crumpets module:
    imported from it (``from ._x import _y``), or read off it (``from . import _x`` then
    ``_x._y``; ``import crumpets.a._x as x`` then ``x._y``)."""
    package = ".".join(path.relative_to(SOURCES).parts[2:-1])  # e.g. crumpets.augment.workers
    tree = ast.parse(path.read_text())
    modules: dict[str, str] = {}  # local name -> the crumpets module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("crumpets."):
                    local = alias.asname or alias.name.split(".")[0]
                    modules[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if not module.startswith("crumpets."):
                continue
            for alias in node.names:
                if is_module(module, alias.name):
                    modules[alias.asname or alias.name] = f"{module}.{alias.name}"
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield node.lineno, f"{module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = [node.attr]
        base = node.value
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in modules:
            continue
        module = modules[base.id]
        for attr in reversed(chain):  # walk down the submodules to the first other name
            if not is_module(module, attr):
                if attr.startswith("_") and not attr.startswith("__"):
                    yield node.lineno, f"{module}.{attr}"
                break
            module = f"{module}.{attr}"


def test_an_underscore_name_is_used_only_in_its_module():
    # "_name" says "only this module uses it"; what a package's modules share has a plain
    # name (in a private module when it is not public API). Importing a private module
    # itself (from . import _platform) is how a package uses its private modules.
    found = {
        f"{path.relative_to(SOURCES)}:{line}: {name}"
        for path in python_sources()
        for line, name in private_names_used(path)
    }
    assert not found, "\n".join(sorted(found))


def test_private_functions_take_at_most_8_positional_parameters():
    # Past 8, swapped arguments of one type fail silently: a private function takes the
    # rest by keyword. Public ones keep the reference's signatures (transform_image: 23).
    found = []
    for path in python_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.posonlyargs + node.args.args
                positional = [a for a in args if a.arg not in ("self", "cls")]
                private = node.name.startswith("_") and not node.name.startswith("__")
                if private and len(positional) > 8:
                    found.append(f"{path.relative_to(SOURCES)}:{node.lineno}: {node.name}")
    assert not found, "\n".join(found)
