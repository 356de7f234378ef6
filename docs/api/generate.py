"""Write the API reference pages docs/api/{core,augment,torch,train}.rst.

Run ``python docs/api/generate.py`` from the repository root after adding a public module
or a name to an ``__all__``; tests/docs/test_docs.py (in ``nox -s docs``) fails until
the reference covers every public name. It reads the sources (no imports):

- each subpackage's ``__init__``: its module docstring, its own functions, and links to the
  names it re-exports, documented in the module that defines them;
- each public module (no part of its dotted path starts with an underscore): autodoc of
  its ``__all__``; constants get an ``autodata`` each (autodoc passes over constants
  without a docstring), and names it imports from another public module are links.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "core": "loader, broker, shared memory, dataset files",
    "augment": "decoding, augmentation, RNGs, presets, workers, preview",
    "torch": "torch loader, tensors, GPU kernels",
    "train": "Trainer, losses, metrics, policies, snapshots, models",
}
CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")
HEADER = ".. Written by docs/api/generate.py: run it again rather than editing this file."


class Module:
    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        tree = ast.parse(path.read_text())
        self.all: list[str] = []
        self.imports: dict[str, str] = {}  # name -> module it is imported from
        self.relative: set[str] = set()  # names imported from this distribution
        self.assigned: set[str] = set()
        self.defined: set[str] = set()
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                self.defined.add(node.name)
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    self.assigned.add(target.id)
                    if target.id == "__all__":
                        self.all = [ast.literal_eval(e) for e in node.value.elts]
            if isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    source = f"{base}.{node.module}" if node.module else base
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = source
                    if node.level:
                        self.relative.add(alias.asname or alias.name)

    def from_public(self) -> dict[str, str]:
        """Names of ``__all__`` imported from another public module of this distribution.

        (A constant from another distribution gets its own entry: a number or a string is
        documented by name, it cannot be told apart from an equal one by identity.)
        """
        return {
            n: self.imports[n] for n in self.all if n in self.relative and public(self.imports[n])
        }

    def constants(self) -> list[str]:
        links = self.from_public()
        return [
            n
            for n in self.all
            if n != "__version__"
            and n not in links
            and (n in self.assigned or (CONSTANT.match(n) and n not in self.defined))
        ]


def public(dotted: str) -> bool:
    return not any(part.startswith("_") for part in dotted.split("."))


def modules(short: str) -> list[Module]:
    src = ROOT / "packages" / f"crumpets-{short}" / "src"
    found = []
    for path in sorted((src / "crumpets" / short).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if public(".".join(parts)):
            found.append(Module(".".join(parts), path))
    return found


def page(short: str) -> str:
    package, *rest = found = modules(short)
    by_name = {m.name: m for m in found}

    def home(name: str, source: str) -> str:
        """The module that defines ``name``, following re-exports from ``source`` on."""
        while source in by_name and name in by_name[source].from_public():
            source = by_name[source].from_public()[name]
        return source

    title = f"``crumpets.{short}``: {PACKAGES[short]}"
    out = [HEADER, "", title, "=" * len(title), "", f"The distribution ``crumpets-{short}``.", ""]
    data = [n for n in package.constants() if n in package.assigned]
    own = [n for n in package.all if n in package.defined]
    out += [f".. automodule:: {package.name}"]
    out += [f"   :members: {', '.join(own)}" if own else "   :no-members:", ""]
    out += [f"Names re-exported by ``{package.name}``:", ""]
    for name in package.all:
        if name in package.imports and name != "__version__":
            out.append(f"- :py:obj:`{name} <{home(name, package.imports[name])}.{name}>`")
    out += ["", f".. autodata:: {package.name}.__version__", "   :no-value:", ""]
    out += [line for name in data for line in (f".. autodata:: {package.name}.{name}", "")]
    for module in rest:
        links, constants = module.from_public(), module.constants()
        out += ["", f"``{module.name}``", "-" * (len(module.name) + 4), ""]
        out += [f".. automodule:: {module.name}"]
        if links or constants:
            out += [f"   :exclude-members: {', '.join([*links, *constants])}"]
        out.append("")
        out += [line for n in constants for line in (f".. autodata:: {module.name}.{n}", "")]
        if links:
            out += [f"``{module.name}`` also exports, documented where they are defined:", ""]
            out += [f"- :py:obj:`{n} <{home(n, source)}.{n}>`" for n, source in links.items()]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    for short in PACKAGES:
        path = ROOT / "docs" / "api" / f"{short}.rst"
        path.write_text(page(short))
        print(f"wrote {path.relative_to(ROOT)}")
