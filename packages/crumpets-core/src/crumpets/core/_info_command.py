"""``crumpets info``: describe a dataset file, or a sharded dataset's folder or URL."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from crumpets.core._remote import Store, is_url
from crumpets.core.dataset import Reader, data_path
from crumpets.core.shards import INDEX, ShardedReader
from crumpets.core.shm import unpack

from ._cli_common import (
    CLASSES_SUFFIX,
    SHARDED_CLASSES,
    describe,
    parse_classes,
    read_classes,
    reason,
    usage_error,
)

__all__ = ["run_info", "setup_info"]


# ---------------------------------------------------------------- crumpets info


def _print_keys(keys: Sequence[Any], total: int, limit: int) -> None:
    shown = ", ".join(map(str, keys[:limit]))
    more = ", ..." if total > limit else ""
    print(f"first keys: {shown}{more}")


def _print_classes(classes: list[str] | None) -> None:
    if classes is not None:
        print(
            f"classes:  {len(classes)} ({', '.join(classes[:10])}"
            f"{', ...' if len(classes) > 10 else ''})"
        )


def _print_record(record: Any) -> None:
    """Describe record 0's fields."""
    if not isinstance(record, dict):
        print(f"record 0: {describe(record)[0]}, not a dict")
        return
    print("record 0:")
    width = max((len(str(name)) for name in record), default=0)
    for name, value in record.items():
        kind, text = describe(value)
        print(f"  {str(name):<{width}}  {kind:<6}  {text}")


def _one_line(error: Exception) -> str:
    """An exception's message on one line (a storage client's may span several)."""
    text = str(error) if isinstance(error, (OSError, ValueError)) else reason(error)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _is_sharded(path: str) -> bool:
    """Whether ``path`` names a sharded dataset rather than a dataset file: a URL, or a folder
    with an index.json."""
    return is_url(path) or os.path.exists(os.path.join(path, INDEX))


def _sharded_classes(url: str, storage_options: dict[str, Any]) -> list[str] | None:
    """The class names of the sharded dataset at ``url``, or None if it has none.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a msgpack list of strings.
    """
    if not is_url(url):
        return read_classes(os.path.join(url, SHARDED_CLASSES))
    store = Store(url, storage_options)
    try:
        raw = store.cat(SHARDED_CLASSES)
    except FileNotFoundError:
        return None
    return parse_classes(raw, store.path(SHARDED_CLASSES))


def _info_sharded(args: argparse.Namespace) -> int:
    """Describe the sharded dataset at ``args.file``, a folder or a URL."""
    url = args.file
    options = dict(args.storage_options or [])
    where = f"{url.rstrip('/')}/{INDEX}" if is_url(url) else os.path.join(url, INDEX)
    try:
        reader = ShardedReader(url, storage_options=options)
    except FileNotFoundError:
        return usage_error("info", f"{where} not found: {url} is not a sharded dataset")
    except (OSError, ValueError, TypeError, ImportError) as e:
        message = _one_line(e)  # fsspec's "Protocol not known: foo" does not name the URL
        return usage_error("info", message if url in message else f"{url}: {message}")
    with reader:
        nbytes = reader.nbytes  # read_index checked every entry
        sizes = [(s["bytes"], s["samples"], s["name"]) for s in reader.shards]
        print(f"dataset:  {url} (sharded)")
        print(f"shards:   {len(reader.shards)}")
        print(f"samples:  {len(reader)}")
        print(f"bytes:    {nbytes}")
        if sizes:
            for label, (size, samples, name) in (
                ("smallest:", min(sizes)),
                ("largest: ", max(sizes)),
            ):
                print(f"{label} {name} ({samples} samples, {size} bytes)")
        # The keys from the first records: the shards' .keys files may be remote.
        count = min(max(args.keys, 1), len(reader))
        try:
            raw = reader.read_batch(list(range(count)))
        except (OSError, ValueError, TypeError, ImportError) as e:
            return usage_error("info", _one_line(e))
        records = []
        for i, data in enumerate(raw):
            try:
                records.append(unpack(data))
            except Exception as e:  # whatever msgpack makes of damaged bytes
                return usage_error("info", f"{url}: record {i} is not msgpack ({reason(e)})")
        if records:
            try:
                keys = [record["key"] for record in records]
            except Exception as e:  # a record that is not a dict with a key
                return usage_error("info", f"{url}: cannot read the keys ({reason(e)})")
            _print_keys(keys, len(reader), args.keys)
        try:
            classes = _sharded_classes(url, options)
        except (OSError, ValueError, TypeError, ImportError) as e:
            return usage_error("info", _one_line(e))
        _print_classes(classes)
        if records:
            _print_record(records[0])
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Run ``crumpets info``; see :func:`setup_info`."""
    if _is_sharded(args.file):
        return _info_sharded(args)
    if args.storage_options:
        return usage_error(
            "info", f"{args.file} is not a URL: --storage-option is for URLs (s3://, gs://, ...)"
        )
    if os.path.isdir(args.file) and not os.path.exists(data_path(args.file)):
        return usage_error(
            "info", f"{args.file} is a folder without {INDEX}: not a sharded dataset"
        )
    try:
        reader = Reader(args.file)
    except (OSError, ValueError) as e:
        return usage_error("info", str(e))
    with reader:
        print(f"file:     {reader.path} ({os.path.getsize(reader.path)} bytes)")
        print(f"length:   {len(reader)}")
        try:
            keys = reader.keys
        except Exception as e:  # no .keys file, and a record that is not a dict with a key
            return usage_error("info", f"{reader.path}: cannot read the keys ({reason(e)})")
        print(f"keys:     {len(keys)}")
        _print_keys(keys, len(keys), args.keys)
        try:
            classes = read_classes(reader.path + CLASSES_SUFFIX)
        except (OSError, ValueError) as e:
            return usage_error("info", str(e))
        _print_classes(classes)
        if len(reader):
            try:
                record = reader.get(0)
            except Exception as e:  # whatever msgpack makes of damaged bytes
                return usage_error("info", f"{reader.path}: record 0 is not msgpack ({reason(e)})")
            _print_record(record)
    return 0


def _option_value(text: str) -> Any:
    """A ``--storage-option`` value: an int, float, bool or JSON value if it reads as one,
    else the string."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
        if math.isfinite(number):
            return number
    except ValueError:
        pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _storage_option(text: str) -> tuple[str, Any]:
    """``--storage-option KEY=VALUE`` as (key, value); an error message for argparse
    otherwise."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), _option_value(value)


def setup_info(parser: argparse.ArgumentParser) -> None:
    """Describe a dataset file or a sharded dataset: length, keys and its first record.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument(
        "file",
        metavar="PATH_OR_URL",
        help="dataset file NAME.msgpack (or NAME), or a sharded dataset: its folder (with "
        "index.json) or URL (s3://, gs://, https://, file://)",
    )
    parser.add_argument(
        "-k", "--keys", type=int, default=5, metavar="N", help="how many keys to show (default 5)"
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        type=_storage_option,
        default=None,
        dest="storage_options",
        metavar="KEY=VALUE",
        help="an option of the URL's file system (s3fs: endpoint_url, key, secret, ...), "
        "repeatable; a value that reads as an int, float, bool or JSON is one (quote it "
        "in JSON, KEY='\"123\"', for a string)",
    )
    parser.set_defaults(func=run_info)
