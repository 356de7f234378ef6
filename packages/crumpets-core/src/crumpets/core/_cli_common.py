"""What the ``crumpets`` commands share: their usage errors and class names files."""

from __future__ import annotations

import os
import sys
from typing import Any

import msgpack

__all__ = [
    "CLASSES_SUFFIX",
    "SHARDED_CLASSES",
    "describe",
    "parse_classes",
    "read_classes",
    "reason",
    "usage_error",
    "write_classes",
]

CLASSES_SUFFIX = ".classes"
# The class names of a sharded dataset: a file in its folder, next to index.json.
SHARDED_CLASSES = "classes"


def usage_error(command: str, message: str) -> int:
    """Report a usage or input error the way argparse does, and return its exit code."""
    sys.stderr.write(f"crumpets {command}: error: {message}\n")
    return 2


def reason(error: Exception) -> str:
    # msgpack's FormatError, for one, has no message: its type is the reason.
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def describe(value: Any) -> tuple[str, str]:
    """Return (type name, short description) of a record field."""
    kind = type(value).__name__
    if isinstance(value, (bytes, bytearray)):
        return kind, f"{len(value)} bytes"
    if isinstance(value, str) and len(value) > 60:
        return kind, f"{value[:40]!r}... ({len(value)} chars)"
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        return kind, f"{len(value)} items"
    text = repr(value)
    return kind, text if len(text) <= 60 else text[:57] + "..."


def parse_classes(raw: bytes, where: str) -> list[str]:
    """The class names in ``raw``, the bytes of the class names file ``where``.

    Raises:
        ValueError: they are not a msgpack list of strings.
    """
    try:
        classes = msgpack.unpackb(raw, raw=False)
    except Exception as e:
        raise ValueError(f"{where}: not a msgpack list of class names ({reason(e)})") from e
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise ValueError(
            f"{where}: expected a msgpack list of class names, found {describe(classes)[1]}"
        )
    return classes


def read_classes(path: str) -> list[str] | None:
    """The class names in ``path`` (a msgpack list), or None if there is no such file.

    Raises:
        ValueError: the file is not a msgpack list of strings.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    return parse_classes(raw, path)


def write_classes(path: str, classes: list[str]) -> None:
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temp, "wb") as f:
            f.write(msgpack.packb(classes, use_bin_type=True))
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
