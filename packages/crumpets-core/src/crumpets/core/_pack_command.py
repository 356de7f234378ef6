"""``crumpets pack``: an image folder tree or a dataset file into a dataset file or a
sharded dataset."""

from __future__ import annotations

import argparse
import os
import random
import stat
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import tqdm

from crumpets.core.dataset import Reader, Writer, data_path
from crumpets.core.shards import INDEX, ShardedReader, ShardWriter, parse_size

from ._cli_common import (
    CLASSES_SUFFIX,
    SHARDED_CLASSES,
    read_classes,
    reason,
    usage_error,
    write_classes,
)

__all__ = ["run_pack", "setup_pack"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


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


def _tree_records(root: str, samples: list[tuple[str, int]]) -> Iterator[dict[str, Any]]:
    """The records of the images ``samples`` (relative path, label) under ``root``, in order."""
    for key, label in samples:
        yield {"key": key, "image": _read_image(os.path.join(root, key)), "label": label}


def _dataset_records(reader: Reader, order: Iterable[int]) -> Iterator[dict[str, Any]]:
    """The records ``order`` of a dataset file, unpacked.

    Raises:
        ValueError: naming the file and the record, for one that is not msgpack or not a
            dict with a key.
    """
    for i in order:
        try:
            record = reader.get(i)
        except Exception as e:  # whatever msgpack makes of damaged bytes
            raise ValueError(f"{reader.path}: record {i} is not msgpack ({reason(e)})") from e
        if not isinstance(record, dict) or "key" not in record:
            raise ValueError(f"{reader.path}: record {i} is not a dict with a 'key'")
        yield record


def _write_records(
    writer: Writer | ShardWriter,
    records: Iterable[dict[str, Any]],
    total: int,
    unit: str,
    quiet: bool,
) -> None:
    """Write ``records`` with a progress bar on stderr (none if ``quiet``)."""
    with tqdm.tqdm(total=total, unit=unit, desc="pack", disable=quiet, file=sys.stderr) as bar:
        for record in records:
            writer.write(record)
            bar.update()


def _destination(args: argparse.Namespace) -> tuple[str, str] | str:
    """(the dataset file or shards folder, the class names file) that pack writes, or the
    error why it must not."""
    if args.shard_size is None:
        out = data_path(args.out)
        classes_path = out + CLASSES_SUFFIX
        paths = [out, out + ".offsets", out + ".keys", classes_path]
    else:
        out = args.out
        if os.path.exists(out) and not os.path.isdir(out):
            return f"{out} exists and is not a folder (--shard-size writes a folder of shards)"
        classes_path = os.path.join(out, SHARDED_CLASSES)
        paths = [os.path.join(out, INDEX), classes_path]
    if not args.overwrite:
        for path in paths:
            if os.path.exists(path):
                return f"{path} exists; pass --overwrite to replace it"
    return out, classes_path


def _open_writer(args: argparse.Namespace, out: str) -> Writer | ShardWriter:
    if args.shard_size is None:
        return Writer(out, overwrite=args.overwrite)
    return ShardWriter(out, args.shard_size, overwrite=args.overwrite)


def _written(args: argparse.Namespace, out: str) -> str:
    """Where pack wrote, and how much, for its summary."""
    if args.shard_size is None:
        return f"{out} ({os.path.getsize(out)} bytes)"
    with ShardedReader(out) as reader:
        return f"{out} ({len(reader.shards)} shards, {reader.nbytes} bytes)"


def _pack_tree(args: argparse.Namespace) -> int:
    """Pack the image folder tree ``args.src`` into a dataset file or a sharded dataset."""
    classes, samples, skipped = _find_images(args.src)
    if not classes:
        return usage_error("pack", f"no class folders in {args.src} (expected DIR/CLASS/IMAGE)")
    if not samples:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        return usage_error("pack", f"no images ({extensions}) in the class folders of {args.src}")
    destination = _destination(args)
    if isinstance(destination, str):
        return usage_error("pack", destination)
    out, classes_path = destination
    if args.shuffle:
        random.Random(args.seed).shuffle(samples)

    try:
        with _open_writer(args, out) as writer:
            records = _tree_records(args.src, samples)
            _write_records(writer, records, len(samples), "img", args.quiet)
        write_classes(classes_path, classes)
    except OSError as e:
        return usage_error("pack", str(e))

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
        print(f"wrote {len(samples)} images of {len(classes)} classes to {_written(args, out)}")
    return 0


def _pack_dataset(args: argparse.Namespace) -> int:
    """Rewrite the records of the dataset file ``args.src`` into a sharded dataset, in order
    (or shuffled), its class names file (if any) with them."""
    try:
        reader = Reader(args.src)
    except (OSError, ValueError) as e:
        return usage_error("pack", str(e))
    with reader:
        try:
            classes = read_classes(reader.path + CLASSES_SUFFIX)
        except (OSError, ValueError) as e:
            return usage_error("pack", str(e))
        destination = _destination(args)
        if isinstance(destination, str):
            return usage_error("pack", destination)
        out, classes_path = destination
        order = list(range(len(reader)))
        if args.shuffle:
            random.Random(args.seed).shuffle(order)
        try:
            with _open_writer(args, out) as writer:
                records = _dataset_records(reader, order)
                _write_records(writer, records, len(order), "rec", args.quiet)
            if classes is not None:
                write_classes(classes_path, classes)
            elif os.path.exists(classes_path):  # the replaced dataset's
                os.unlink(classes_path)
        except (OSError, ValueError, TypeError) as e:  # TypeError: a value Writer cannot pack
            return usage_error("pack", str(e))
        if not args.quiet:
            print(f"wrote {len(order)} records of {reader.path} to {_written(args, out)}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    """Run ``crumpets pack``; see :func:`setup_pack`."""
    if os.path.isdir(args.src):
        return _pack_tree(args)
    if os.path.isfile(data_path(args.src)):
        if args.shard_size is None:
            return usage_error(
                "pack",
                f"{args.src} is a dataset file, not a directory: packing a dataset file "
                "needs --shard-size SIZE (it is rewritten into a sharded dataset)",
            )
        return _pack_dataset(args)
    if args.shard_size is not None:
        return usage_error("pack", f"{args.src} is not a directory nor a dataset file")
    return usage_error("pack", f"{args.src} is not a directory")


def _shard_size(text: str) -> int:
    """``--shard-size``'s value in bytes; an error message for argparse otherwise."""
    try:
        return parse_size(text, "SIZE")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def setup_pack(parser: argparse.ArgumentParser) -> None:
    """Pack an image folder tree (DIR/CLASS/IMAGE) into a dataset file, or into shards.

    Args:
        parser: the subcommand's parser.
    """
    parser.epilog = (
        "Records are {'key': 'CLASS/FILE', 'image': <file bytes>, 'label': <class index>}, "
        "classes numbered in sorted order; files are stored as they are, not decoded. "
        "The class names are also written to OUT.msgpack.classes (a msgpack list). "
        "With --shard-size, OUT is a folder that becomes a sharded dataset (index.json and "
        "shards of about SIZE bytes, class names in OUT/classes), and SRC may also be a "
        "dataset file, whose records (and NAME.msgpack.classes) are rewritten into shards "
        "in order."
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        help="folder with one subfolder of images per class; with --shard-size also a "
        "dataset file NAME.msgpack (or NAME)",
    )
    parser.add_argument(
        "out",
        metavar="OUT",
        help="dataset to write: OUT.msgpack (+ .offsets, .keys); with --shard-size the "
        "folder of the sharded dataset",
    )
    parser.add_argument(
        "--shard-size",
        type=_shard_size,
        default=None,
        metavar="SIZE",
        help="write a sharded dataset of shards of about SIZE bytes: bytes, or a size like "
        "512MB, 1GB (powers of 1000), 64MiB (powers of 1024)",
    )
    parser.add_argument("--shuffle", action="store_true", help="write the records in random order")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for --shuffle (default: a random one)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    parser.set_defaults(func=run_pack)
