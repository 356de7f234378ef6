"""The ``crumpets`` command line: subcommands come from every installed crumpets package.

Each entry point in the group ``crumpets.commands`` is a function
``setup(parser: argparse.ArgumentParser) -> None`` that adds the command's
arguments and calls ``parser.set_defaults(func=run)``, where ``run(args) -> int``
returns the exit code. The first line of the setup function's docstring is the
command's description.

Core provides ``crumpets pack`` (image folder tree to dataset file) and
``crumpets info`` (describe a dataset file).
"""

from __future__ import annotations

import argparse
import os
import random
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import tqdm

from crumpets.core._version import __version__
from crumpets.core.dataset import Reader, Writer, data_path
from crumpets.core.plugins import (
    KNOWN_PLUGINS,
    PluginNotFound,
    entry_point_names,
    known_distribution,
    load_entry_point,
)

__all__ = ["main", "setup_info", "setup_pack"]

GROUP = "crumpets.commands"
CLASSES_SUFFIX = ".classes"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

Setup = Callable[[argparse.ArgumentParser], None]


def _error(command: str, message: str) -> int:
    """Report a usage or input error the way argparse does, and return its exit code."""
    sys.stderr.write(f"crumpets {command}: error: {message}\n")
    return 2


# ---------------------------------------------------------------- crumpets pack


def _warn_skipped(path: str, why: str) -> None:
    # A name that is not UTF-8 arrives with surrogates; show its bytes as \xNN instead.
    shown = os.fsencode(path).decode("utf-8", "backslashreplace")
    sys.stderr.write(f"warning: skipped {shown}: {why}\n")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept as surrogates by os.fsdecode
        return False
    return True


def _overlaps(folder: str, walked: list[str]) -> bool:
    """Whether real path ``folder`` is inside a walked folder, or holds one."""
    return any(os.path.commonpath([folder, other]) in (folder, other) for other in walked)


def _find_images(root: str) -> tuple[list[str], list[tuple[str, int]], int]:
    """Walk an ImageNet-style tree: returns (classes, [(relative path, label)], skipped files).

    Skipped with a warning on stderr: names that are not UTF-8 (keys are UTF-8 strings),
    what is not a regular file (reading a named pipe waits forever) and links to folders
    that overlap the tree or a folder walked already (their images would be packed twice,
    or forever). Other links to folders are followed, as are links to files.
    """
    walked = [os.path.realpath(root)]
    skipped = 0

    def folder(entry: os.DirEntry[str], relative: str) -> bool:
        """Whether to walk the folder ``entry``."""
        if not _is_utf8(entry.name):
            _warn_skipped(relative, "not UTF-8")
            return False
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if _overlaps(target, walked):
                _warn_skipped(
                    relative,
                    f"a link to a folder inside the tree (or holding it), {target}: "
                    "its images would be packed twice",
                )
                return False
            walked.append(target)
        return True

    def walk(relative: str, label: int) -> None:
        nonlocal skipped
        with os.scandir(os.path.join(root, relative)) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        subfolders = []
        for entry in entries:
            path = f"{relative}/{entry.name}"
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if folder(entry, path):
                    subfolders.append(path)
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                skipped += 1
            elif not _is_utf8(entry.name):
                _warn_skipped(path, "not UTF-8")
            elif not entry.is_file():
                _warn_skipped(path, "not a regular file")
            else:
                samples.append((path, label))
        for path in subfolders:
            walk(path, label)

    with os.scandir(root) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    classes = [
        entry.name
        for entry in entries
        if entry.is_dir() and not entry.name.startswith(".") and folder(entry, entry.name)
    ]
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        walk(name, label)
    return classes, samples, skipped


def _read_image(path: str) -> bytes:
    # Non-blocking, so that a file replaced by a named pipe since the walk cannot hang us.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


def _write_classes(path: str, classes: list[str]) -> None:
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temp, "wb") as f:
            f.write(msgpack.packb(classes, use_bin_type=True))
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def run_pack(args: argparse.Namespace) -> int:
    """Run ``crumpets pack``; see :func:`setup_pack`."""
    if not os.path.isdir(args.dir):
        return _error("pack", f"{args.dir} is not a directory")
    classes, samples, skipped = _find_images(args.dir)
    if not classes:
        return _error("pack", f"no class folders in {args.dir} (expected DIR/CLASS/IMAGE)")
    if not samples:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        return _error("pack", f"no images ({extensions}) in the class folders of {args.dir}")
    out = data_path(args.out)
    classes_path = out + CLASSES_SUFFIX
    if not args.overwrite:
        for path in (out, out + ".offsets", out + ".keys", classes_path):
            if os.path.exists(path):
                return _error("pack", f"{path} exists; pass --overwrite to replace it")
    if args.shuffle:
        random.Random(args.seed).shuffle(samples)

    try:
        with (
            Writer(out, overwrite=args.overwrite) as writer,
            tqdm.tqdm(
                total=len(samples), unit="img", desc="pack", disable=args.quiet, file=sys.stderr
            ) as bar,
        ):
            for key, label in samples:
                image = _read_image(os.path.join(args.dir, key))
                writer.write({"key": key, "image": image, "label": label})
                bar.update()
        _write_classes(classes_path, classes)
    except OSError as e:
        return _error("pack", str(e))

    if not args.quiet:
        used = {label for _, label in samples}
        for label, name in enumerate(classes):
            if label not in used:
                sys.stderr.write(f"warning: class folder {name!r} holds no images\n")
        if skipped:
            sys.stderr.write(f"skipped {skipped} files that are not images\n")
        print("label\tclass")
        for label, name in enumerate(classes):
            print(f"{label}\t{name}")
        size = os.path.getsize(out)
        print(f"wrote {len(samples)} images of {len(classes)} classes to {out} ({size} bytes)")
    return 0


def setup_pack(parser: argparse.ArgumentParser) -> None:
    """Pack an image folder tree (DIR/CLASS/IMAGE) into a dataset file.

    Args:
        parser: the subcommand's parser.
    """
    parser.epilog = (
        "Records are {'key': 'CLASS/FILE', 'image': <file bytes>, 'label': <class index>}, "
        "classes numbered in sorted order; files are stored as they are, not decoded. "
        "The class names are also written to OUT.msgpack.classes (a msgpack list)."
    )
    parser.add_argument("dir", metavar="DIR", help="folder with one subfolder of images per class")
    parser.add_argument(
        "out", metavar="OUT", help="dataset to write: OUT.msgpack (+ .offsets, .keys)"
    )
    parser.add_argument("--shuffle", action="store_true", help="write the records in random order")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for --shuffle (default: a random one)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    parser.set_defaults(func=run_pack)


# ---------------------------------------------------------------- crumpets info


def _describe(value: Any) -> tuple[str, str]:
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


def _reason(error: Exception) -> str:
    # msgpack's FormatError, for one, has no message: its type is the reason.
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _read_classes(path: str) -> list[str] | None:
    """The class names in ``path`` (a msgpack list), or None if there is no such file.

    Raises:
        ValueError: the file is not a msgpack list of strings.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        classes = msgpack.unpackb(raw, raw=False)
    except Exception as e:
        raise ValueError(f"{path}: not a msgpack list of class names ({_reason(e)})") from e
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise ValueError(
            f"{path}: expected a msgpack list of class names, found {_describe(classes)[1]}"
        )
    return classes


def run_info(args: argparse.Namespace) -> int:
    """Run ``crumpets info``; see :func:`setup_info`."""
    try:
        reader = Reader(args.file)
    except (OSError, ValueError) as e:
        return _error("info", str(e))
    with reader:
        print(f"file:     {reader.path} ({os.path.getsize(reader.path)} bytes)")
        print(f"length:   {len(reader)}")
        try:
            keys = reader.keys
        except Exception as e:  # no .keys file, and a record that is not a dict with a key
            return _error("info", f"{reader.path}: cannot read the keys ({_reason(e)})")
        print(f"keys:     {len(keys)}")
        shown = ", ".join(map(str, keys[: args.keys]))
        more = ", ..." if len(keys) > args.keys else ""
        print(f"first keys: {shown}{more}")
        try:
            classes = _read_classes(reader.path + CLASSES_SUFFIX)
        except (OSError, ValueError) as e:
            return _error("info", str(e))
        if classes is not None:
            print(
                f"classes:  {len(classes)} ({', '.join(classes[:10])}"
                f"{', ...' if len(classes) > 10 else ''})"
            )
        if len(reader):
            try:
                record = reader.get(0)
            except Exception as e:  # whatever msgpack makes of damaged bytes
                return _error("info", f"{reader.path}: record 0 is not msgpack ({_reason(e)})")
            if not isinstance(record, dict):
                print(f"record 0: {_describe(record)[0]}, not a dict")
                return 0
            print("record 0:")
            width = max((len(str(name)) for name in record), default=0)
            for name, value in record.items():
                kind, text = _describe(value)
                print(f"  {str(name):<{width}}  {kind:<6}  {text}")
    return 0


def setup_info(parser: argparse.ArgumentParser) -> None:
    """Describe a dataset file: length, keys and the fields of its first record.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("file", metavar="FILE", help="dataset file NAME.msgpack (or NAME)")
    parser.add_argument(
        "-k", "--keys", type=int, default=5, metavar="N", help="how many keys to show (default 5)"
    )
    parser.set_defaults(func=run_info)


# ---------------------------------------------------------------- main

# Core's own commands, used when the package metadata is not installed (running
# from a source tree with PYTHONPATH).
_BUILTIN: dict[str, Setup] = {"pack": setup_pack, "info": setup_info}


def _first_line(doc: str | None) -> str | None:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else None


def _summary(name: str) -> str:
    """One line on a command for ``crumpets --help``, without importing its package (a
    sibling's module imports torch or OpenCV: a second, for a list of names)."""
    if name in _BUILTIN:
        return _first_line(_BUILTIN[name].__doc__) or ""
    dist = known_distribution(GROUP, name)
    return f"from {dist}: crumpets {name} --help" if dist else f"crumpets {name} --help"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``crumpets`` command line.

    Only the command that runs is imported: ``crumpets --help`` lists the installed
    commands by name, and ``crumpets COMMAND --help`` describes one.

    Args:
        argv: arguments without the program name; None means ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 2 for usage errors, bad input and commands
        whose package is not installed.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    installed = set(entry_point_names(GROUP)) | set(_BUILTIN)
    missing = sorted(set(KNOWN_PLUGINS[GROUP]) - installed)

    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in missing:
        sys.stderr.write(f"{PluginNotFound(GROUP, command)}\n")
        return 2
    setup: Setup | None = None
    if command in installed:
        try:
            setup = load_entry_point(GROUP, command)
        except PluginNotFound:  # running from a source tree without package metadata
            setup = _BUILTIN[command]
        except Exception as error:  # a broken plugin must not break the other commands
            return _error(command, f"cannot load the command: {type(error).__name__}: {error}")

    parser = argparse.ArgumentParser(
        prog="crumpets", description="crumpets: fast data loading for deep learning."
    )
    if missing:
        parser.epilog = "not installed: " + ", ".join(
            f"{name} ({KNOWN_PLUGINS[GROUP][name]})" for name in missing
        )
    parser.add_argument("--version", action="version", version=f"crumpets-core {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in sorted(installed):
        if name == command and setup is not None:
            doc = _first_line(setup.__doc__)
            setup(subparsers.add_parser(name, help=doc, description=doc))
        else:
            subparsers.add_parser(name, help=_summary(name))

    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
