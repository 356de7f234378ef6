"""Sharded datasets: ShardWriter, ShardedReader (a local folder, a file:// URL with a cache
and one read by byte ranges), the shard cache (checksums, locks, eviction, temporaries) and
TurboDataLoader over shards. Only local folders and file:// URLs: S3 is tested in
tests/integration."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter

import msgpack
import numpy as np
import pytest
from _core_workers import IndexWorker

from crumpets.core import Reader, ShardedReader, ShardWriter, TurboDataLoader, WorkerError
from crumpets.core._remote import Store
from crumpets.core._shard_cache import ShardCache
from crumpets.core._shard_format import FILES, INDEX, READ_FILES
from crumpets.core.shards import parse_size, read_index

N = 150  # samples of the main dataset
SHARD_SIZE = 1000  # bytes: about 18 records of about 55 bytes, so 8 or 9 shards
BATCH = 16
SEED = 11
FORK = multiprocessing.get_context("fork")
MODES = ("local", "cached", "ranged")
STALL = 20  # seconds: a loader that hangs fails, with its workers' stacks


# ---------------------------------------------------------------- helpers


def record(i, blob_size=None):
    """Sample ``i``: its blob's size varies, so shards hold different numbers of samples."""
    size = 20 + (i * 7) % 41 if blob_size is None else blob_size
    return {"key": f"k{i}", "i": i, "blob": np.random.default_rng(i).bytes(size)}


def packed(sample):
    """What a reader returns for ``sample``: its msgpack bytes."""
    return msgpack.packb(sample, use_bin_type=True)


def write_dataset(folder, samples=None, shard_size=SHARD_SIZE, **kwargs):
    samples = [record(i) for i in range(N)] if samples is None else samples
    with ShardWriter(folder, shard_size, **kwargs) as writer:
        for j, sample in enumerate(samples):
            assert writer.write(sample) == j
    return samples


def load_index(folder):
    with open(os.path.join(folder, INDEX)) as f:
        return json.load(f)


def url_of(folder):
    return "file://" + os.fspath(folder)  # tmp_path is absolute: file:///tmp/...


def open_reader(mode, folder, cache_dir, **kwargs):
    if mode == "local":
        return ShardedReader(folder, **kwargs)
    if mode == "cached":
        return ShardedReader(url_of(folder), cache_dir=cache_dir, **kwargs)
    return ShardedReader(url_of(folder), **kwargs)


def new_cache(folder, cache_dir, limit=None):
    return ShardCache(Store(url_of(folder)), os.fspath(cache_dir), limit, READ_FILES)


def lock_path(cache, shard):
    return os.path.join(cache.dir, f".{cache.entry(shard)}.lock")


def lock_held(cache, shard):
    """Whether anyone holds the shard's lock (probed without taking it for long)."""
    fd = os.open(lock_path(cache, shard), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # lets go of the lock if it was taken
    return False


def entry_files(cache, shard):
    """The files in the cache's folder that belong to the shard."""
    return sorted(name for name in os.listdir(cache.dir) if cache.entry(shard) in name)


def cached_set(cache, shards):
    return {k for k, shard in enumerate(shards) if cache.cached(shard)}


def flip_byte(path, at=None):
    """Change one byte of a file in place (size and inode stay)."""
    time.sleep(0.02)  # a change time the stamp's cannot equal on coarse-clock file systems
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        at = size // 2 if at is None else at
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def deadline(seconds):
    """Raise TimeoutError in the block if it is still running after ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class DownloadLog:
    """Counts the shard files fetched through Store.cat (and read ranges), in every
    process forked after it was set up: each call appends a line to a file."""

    def __init__(self, path, monkeypatch):
        self.path = path
        self.delay = 0.0
        cat, cat_ranges = Store.cat, Store.cat_ranges
        log = self

        def counting_cat(self, name, start=None, end=None):
            if name != INDEX:
                log._append(name)
                time.sleep(log.delay)
            return cat(self, name, start, end)

        def counting_ranges(self, name, starts, ends):
            log._append(f"ranges:{name}:{len(starts)}")  # one call, this many ranges
            return cat_ranges(self, name, starts, ends)

        monkeypatch.setattr(Store, "cat", counting_cat)
        monkeypatch.setattr(Store, "cat_ranges", counting_ranges)

    def _append(self, line):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)

    def counts(self):
        if not os.path.exists(self.path):
            return Counter()
        with open(self.path) as f:
            return Counter(f.read().split())


@pytest.fixture
def downloads(tmp_path, monkeypatch):
    return DownloadLog(tmp_path / "downloads.log", monkeypatch)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(folder, samples) of a dataset the tests only read."""
    folder = tmp_path_factory.mktemp("shards") / "ds"
    return folder, write_dataset(folder)


def uniform_dataset(folder, shards=6, per_shard=10):
    """A dataset of ``shards`` shards of identical sizes, ``per_shard`` samples each."""
    samples = [record(i, blob_size=100) | {"key": f"k{i:03d}"} for i in range(shards * per_shard)]
    size = len(packed(samples[0]))
    assert all(len(packed(s)) == size for s in samples)
    write_dataset(folder, samples, shard_size=per_shard * size)
    index = load_index(folder)
    assert [s["samples"] for s in index["shards"]] == [per_shard] * shards
    return index["shards"]


# ---------------------------------------------------------------- ShardWriter


def test_shards_are_closed_once_they_reach_shard_size(dataset):
    folder, samples = dataset
    index = load_index(folder)
    assert len(index["shards"]) >= 6
    first = 0
    for k, shard in enumerate(index["shards"]):
        with Reader(os.path.join(folder, shard["name"])) as reader:
            records = list(reader)
        size = sum(len(r) for r in records)
        assert shard["bytes"] == size
        if k < len(index["shards"]) - 1:
            assert size >= SHARD_SIZE
        assert size - len(records[-1]) < SHARD_SIZE  # closed by its last record
        assert records == [packed(s) for s in samples[first : first + len(records)]]
        first += len(records)
    assert first == N


def test_a_shard_filled_exactly_by_the_last_sample_leaves_no_empty_shard(tmp_path):
    samples = [record(i, blob_size=50) for i in range(9)]
    size = len(packed(samples[0]))
    write_dataset(tmp_path / "ds", samples, shard_size=3 * size)
    index = load_index(tmp_path / "ds")
    assert [s["samples"] for s in index["shards"]] == [3, 3, 3]


def test_index_json_records_every_file(dataset):
    folder, samples = dataset
    index = load_index(folder)
    assert index["format"] == "crumpets.shards"
    assert index["version"] == 1
    assert index["samples"] == N == sum(s["samples"] for s in index["shards"])
    expected_files = {INDEX}
    for k, shard in enumerate(index["shards"]):
        assert shard["name"].startswith("shard-") and shard["name"].endswith(f"-{k:05d}")
        assert set(shard["files"]) == set(FILES)
        for suffix, entry in shard["files"].items():
            path = os.path.join(folder, shard["name"] + suffix)
            with open(path, "rb") as f:
                data = f.read()
            assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            expected_files.add(shard["name"] + suffix)
        assert shard["bytes"] == shard["files"][".msgpack"]["bytes"]
    assert set(os.listdir(folder)) == expected_files  # no temporaries left
    assert read_index(json.dumps(index).encode(), "here") == index


def test_every_shard_opens_in_reader_with_its_records(dataset):
    folder, samples = dataset
    got = []
    for shard in load_index(folder)["shards"]:
        with Reader(os.path.join(folder, shard["name"] + ".msgpack")) as reader:
            reader.verify()  # md5, key hashes and filter: datadings reads it too
            assert len(reader) == shard["samples"]
            got.extend(reader.get(j) for j in range(len(reader)))
            assert reader.keys == [s["key"] for s in got[-len(reader) :]]
    assert got == samples


def test_prefix_names_the_shards_and_is_checked(tmp_path):
    write_dataset(tmp_path / "ds", [record(i) for i in range(30)], prefix="train_a.1")
    assert all(s["name"].startswith("train_a.1-") for s in load_index(tmp_path / "ds")["shards"])
    with pytest.raises(ValueError, match="prefix"):
        ShardWriter(tmp_path / "other", 100, prefix="a/b")


def test_duplicate_key_across_shards_is_an_error(tmp_path):
    folder = tmp_path / "ds"
    with pytest.raises(ValueError, match="duplicate key 'k0'"):
        with ShardWriter(folder, 100) as writer:
            for i in range(10):  # a shard or more
                writer.write(record(i))
            writer.write(record(0) | {"i": 99})
    assert os.listdir(folder) == []  # nothing of the aborted writer


def test_a_refused_duplicate_can_be_skipped_and_writing_goes_on(tmp_path):
    folder = tmp_path / "ds"
    with ShardWriter(folder, 200) as writer:
        for i in range(10):
            writer.write(record(i))
        with pytest.raises(ValueError, match="duplicate key 'k3'"):
            writer.write(record(3))
        for i in range(10, 20):
            writer.write(record(i))
        assert len(writer) == 20
    reader = ShardedReader(folder)
    assert [reader.get(i) for i in range(len(reader))] == [record(i) for i in range(20)]


def test_a_refused_sample_after_a_full_shard_leaves_no_empty_shard(tmp_path):
    folder = tmp_path / "ds"
    with ShardWriter(folder, 1) as writer:  # every sample closes its shard
        writer.write(record(0))
        with pytest.raises(ValueError, match="no 'key'"):
            writer.write({"i": 1})
    assert [s["samples"] for s in load_index(folder)["shards"]] == [1]


def test_write_after_close_is_an_error(tmp_path):
    writer = ShardWriter(tmp_path / "ds", 100)
    writer.write(record(0))
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(record(1))


def test_existing_index_without_overwrite_is_refused(dataset):
    folder, samples = dataset
    before = {name: os.path.getmtime(os.path.join(folder, name)) for name in os.listdir(folder)}
    with pytest.raises(FileExistsError, match="index.json.*overwrite=True"):
        ShardWriter(folder, 100)
    after = {name: os.path.getmtime(os.path.join(folder, name)) for name in os.listdir(folder)}
    assert after == before


class _SpyOS:
    """The os module for shards.py, noting index.json's shards at each unlink."""

    def __init__(self, folder):
        self.folder = folder
        self.unlinked = []  # (file name, the shard names index.json lists at that moment)

    def __getattr__(self, name):
        return getattr(os, name)

    def unlink(self, path):
        names = {s["name"] for s in load_index(self.folder)["shards"]}
        self.unlinked.append((os.path.basename(path), names))
        os.unlink(path)


def test_overwrite_replaces_the_dataset_and_removes_old_shards_after_publishing(
    tmp_path, monkeypatch
):
    folder = tmp_path / "ds"
    old_samples = write_dataset(folder, [record(i) for i in range(60)])
    old = load_index(folder)
    old_files = {s["name"] + suffix for s in old["shards"] for suffix in FILES}
    spy = _SpyOS(folder)
    monkeypatch.setattr(sys.modules[ShardWriter.__module__], "os", spy)
    new_samples = [record(i) | {"key": f"new{i}"} for i in range(1000, 1045)]
    with ShardWriter(folder, SHARD_SIZE, overwrite=True) as writer:
        for sample in new_samples:
            writer.write(sample)
        # until it is closed, readers find the previous dataset, complete
        assert load_index(folder) == old
        with ShardedReader(folder) as reader:
            assert [reader.get(i) for i in range(len(reader))] == old_samples
        assert spy.unlinked == []
    new = load_index(folder)
    new_names = {s["name"] for s in new["shards"]}
    assert not new_names & {s["name"] for s in old["shards"]}
    assert {name for name, _ in spy.unlinked} == old_files
    assert all(listed == new_names for _, listed in spy.unlinked)  # published first
    assert set(os.listdir(folder)) == {INDEX} | {n + suffix for n in new_names for suffix in FILES}
    with ShardedReader(folder) as reader:
        assert [reader.get(i) for i in range(len(reader))] == new_samples


def test_an_aborted_overwrite_keeps_the_previous_dataset(tmp_path):
    folder = tmp_path / "ds"
    samples = write_dataset(folder, [record(i) for i in range(40)])
    before = sorted(os.listdir(folder))
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(folder, 200, overwrite=True) as writer:
            for i in range(100, 140):
                writer.write(record(i))
            raise RuntimeError("boom")
    assert sorted(os.listdir(folder)) == before
    with ShardedReader(folder) as reader:
        assert [reader.get(i) for i in range(len(reader))] == samples


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
    ],
)
def test_overwrite_over_a_malformed_index(tmp_path, content):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / INDEX).write_bytes(content)
    samples = write_dataset(folder, [record(i) for i in range(30)], overwrite=True)
    with ShardedReader(folder) as reader:
        assert [reader.get(i) for i in range(len(reader))] == samples


def test_an_exception_inside_with_leaves_no_file_of_the_writer(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "README").write_text("not the writer's")
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(folder, 300) as writer:
            for i in range(50):  # finished shards and one being written
                writer.write(record(i))
            assert len(os.listdir(folder)) > 6
            raise RuntimeError("boom")
    assert os.listdir(folder) == ["README"]
    writer = ShardWriter(folder, 300)
    writer.write(record(0))
    writer.abort()
    assert os.listdir(folder) == ["README"]


def test_an_empty_dataset(tmp_path):
    with ShardWriter(tmp_path / "ds", 100):
        pass
    index = load_index(tmp_path / "ds")
    assert (index["samples"], index["shards"]) == (0, [])
    with ShardedReader(tmp_path / "ds") as reader:
        assert len(reader) == 0
        assert reader.read_batch([]) == []
        with pytest.raises(IndexError):
            reader[0]


@pytest.mark.parametrize(
    "size, expected",
    [
        ("512MB", 512 * 10**6),
        ("1GiB", 2**30),
        ("1.5GB", 1_500_000_000),
        ("64MiB", 64 * 2**20),
        (" 2 kb ", 2000),
        ("0.5KiB", 512),
        ("7", 7),
        ("7B", 7),
        ("3TB", 3 * 10**12),
        (100, 100),
        (np.int64(5), 5),
        ("2.01KB", 2010),
    ],
)
def test_parse_size(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["", "MB", "12XB", "lots", "-1MB", "1 2MB", "0", "0MB", "0.1B", 0])
def test_parse_size_rejects_naming_the_argument(size):
    with pytest.raises(ValueError, match="cache_limit"):
        parse_size(size, "cache_limit")


@pytest.mark.parametrize("size", [1.5, True, None, b"1MB"])
def test_parse_size_rejects_other_types(size):
    with pytest.raises(TypeError, match="shard_size"):
        parse_size(size, "shard_size")


def test_sizes_are_checked_where_they_are_given(tmp_path, dataset):
    with pytest.raises(ValueError, match="shard_size"):
        ShardWriter(tmp_path / "ds", "lots")
    with pytest.raises(ValueError, match="shard_size"):
        ShardWriter(tmp_path / "ds", 0)
    with pytest.raises(ValueError, match="cache_limit"):
        ShardedReader(url_of(dataset[0]), cache_dir=tmp_path / "cache", cache_limit="0GB")


# ---------------------------------------------------------------- ShardedReader


@pytest.mark.parametrize("mode", MODES)
def test_reader_gives_the_records(mode, dataset, tmp_path):
    folder, samples = dataset
    with open_reader(mode, folder, tmp_path / "cache", window=2) as reader:
        assert len(reader) == N
        assert sum(reader.shard_sizes) == N
        assert reader.shard_sizes == tuple(s["samples"] for s in load_index(folder)["shards"])
        data_files = [os.path.join(folder, s["name"] + ".msgpack") for s in reader.shards]
        assert reader.nbytes == sum(os.path.getsize(path) for path in data_files)
        for i in (0, 1, N // 2, N - 1):
            assert reader[i] == packed(samples[i])
            assert reader.get(i) == samples[i]
        assert [reader[i] for i in range(N)] == [packed(s) for s in samples]
        order = np.random.default_rng(0).permutation(N).tolist()
        order += [5, 5, N - 1, 0, 5]  # repeats, across shards
        assert reader.read_batch(order) == [packed(samples[i]) for i in order]
        assert reader.read_batch(np.array(order[:20])) == [packed(samples[i]) for i in order[:20]]
        assert reader.read_batch([]) == []
        for bad in (N, N + 10, -1):
            with pytest.raises(IndexError, match="out of range"):
                reader[bad]
            with pytest.raises(IndexError, match="out of range"):
                reader.read_batch([0, bad])
        with pytest.raises(TypeError):
            reader[1.0]


@pytest.mark.parametrize("mode", MODES)
def test_reader_pickle_round_trip_reads_the_same(mode, dataset, tmp_path):
    folder, samples = dataset
    reader = open_reader(mode, folder, tmp_path / "cache", window=1)
    assert reader.get(3) == samples[3]  # opened a shard (and cached it)
    copy = pickle.loads(pickle.dumps(reader))
    reader.close()
    assert (len(copy), copy.shard_sizes, copy.window) == (N, reader.shard_sizes, 1)
    assert copy.read_batch(range(N)) == [packed(s) for s in samples]
    assert pickle.loads(pickle.dumps(copy)).get(N - 1) == samples[-1]
    copy.close()


def test_shard_of_and_shard_url(dataset):
    folder, _ = dataset
    with ShardedReader(folder) as reader:
        ends = np.cumsum(reader.shard_sizes)
        assert reader.shard_of([0, ends[0] - 1, ends[0], N - 1]).tolist() == [
            0,
            0,
            1,
            len(ends) - 1,
        ]
        assert reader.shard_url(1) == os.path.join(folder, reader.shards[1]["name"] + ".msgpack")
    remote = ShardedReader(url_of(folder))
    assert remote.shard_url(0) == f"{url_of(folder)}/{remote.shards[0]['name']}.msgpack"


@pytest.mark.parametrize("remote", [False, True])
def test_a_missing_index_names_it(tmp_path, remote):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="index.json"):
        ShardedReader(url_of(folder) if remote else folder)


def _index_variants():
    good = {
        "format": "crumpets.shards",
        "version": 1,
        "samples": 3,
        "shards": [
            {
                "name": "a",
                "samples": 3,
                "bytes": 10,
                "files": {s: {"bytes": 1, "sha256": "00"} for s in FILES},
            }
        ],
    }
    bad_name = json.loads(json.dumps(good))
    bad_name["shards"][0]["name"] = "../a"
    no_keys_file = json.loads(json.dumps(good))
    del no_keys_file["shards"][0]["files"][".msgpack.keys"]
    negative = json.loads(json.dumps(good))
    negative["shards"][0]["samples"] = -1
    return {
        "not json": b"{not json",
        "a list": b"[]",
        "other format": json.dumps({**good, "format": "webdataset"}).encode(),
        "newer version": json.dumps({**good, "version": 2}).encode(),
        "samples do not add up": json.dumps({**good, "samples": 4}).encode(),
        "no shards": json.dumps({k: v for k, v in good.items() if k != "shards"}).encode(),
        "a name with a slash": json.dumps(bad_name).encode(),
        "a file missing": json.dumps(no_keys_file).encode(),
        "negative samples": json.dumps(negative).encode(),
    }


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("variant", sorted(_index_variants()))
def test_a_malformed_index_is_a_clear_error(tmp_path, variant, remote):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / INDEX).write_bytes(_index_variants()[variant])
    url = url_of(folder) if remote else os.fspath(folder)
    with pytest.raises(ValueError, match=rf"{url}/index.json is not a sharded dataset's index"):
        ShardedReader(url)


def test_a_newer_version_says_so(tmp_path):
    data = _index_variants()["newer version"]
    with pytest.raises(ValueError, match="version 2.*newer crumpets-core"):
        read_index(data, "x/index.json")


def test_a_shard_that_is_not_the_index_s_is_an_error(tmp_path):
    folder = tmp_path / "ds"
    write_dataset(folder, [record(i) for i in range(40)], shard_size=400)
    name = load_index(folder)["shards"][1]["name"]
    from crumpets.core import Writer

    with Writer(folder / name, overwrite=True) as writer:
        writer.write(record(1000))
    with ShardedReader(folder) as reader:
        reader.get(0)
        with pytest.raises(ValueError, match=f"{name}.msgpack holds 1 records, index.json says"):
            reader.get(reader.shard_sizes[0])


def test_cache_dir_and_storage_options_are_for_urls(dataset, tmp_path):
    folder, _ = dataset
    with pytest.raises(ValueError, match="local folder.*cache_dir"):
        ShardedReader(folder, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="local folder"):
        ShardedReader(folder, storage_options={"anon": True})


@pytest.mark.parametrize("name, value", [("window", 0), ("window", 1.5), ("prefetch", -1)])
def test_window_and_prefetch_are_checked(dataset, name, value):
    with pytest.raises(ValueError, match=name):
        ShardedReader(dataset[0], **{name: value})


def test_cache_limit_must_hold_the_window(dataset, tmp_path):
    folder, _ = dataset
    sizes = [sum(s["files"][f]["bytes"] for f in READ_FILES) for s in load_index(folder)["shards"]]
    need = sum(sorted(sizes, reverse=True)[:3])
    url, cache = url_of(folder), tmp_path / "cache"
    with pytest.raises(ValueError, match=rf"cache_limit={need - 1} bytes.* 3 largest .* {need} "):
        ShardedReader(url, cache_dir=cache, cache_limit=need - 1, window=3)
    assert len(ShardedReader(url, cache_dir=cache, cache_limit=need, window=3)) == N
    assert ShardedReader(url, cache_dir=cache, cache_limit="1GB").cache_limit == 10**9


# ---------------------------------------------------------------- the cache


def _flip(path):
    flip_byte(path)


def _truncate(path):
    os.truncate(path, os.path.getsize(path) - 3)


@pytest.mark.parametrize(
    "damage, suffix, error, message",
    [
        (_flip, ".msgpack", ValueError, r"\.msgpack: SHA-256 .* differs"),
        (_flip, ".msgpack.keys", ValueError, r"\.msgpack\.keys: SHA-256 .* differs"),
        (_truncate, ".msgpack.offsets", OSError, r"\.msgpack\.offsets: got .* bytes"),
        (os.unlink, ".msgpack", FileNotFoundError, r"\.msgpack"),
    ],
)
def test_a_damaged_shard_in_the_store_is_refused_and_not_cached(
    tmp_path, damage, suffix, error, message
):
    folder = tmp_path / "ds"
    samples = write_dataset(folder)
    shard = load_index(folder)["shards"][1]
    damage(folder / (shard["name"] + suffix))
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache")
    first = reader.shard_sizes[0]
    assert reader.get(0) == samples[0]  # other shards are fine
    for _ in range(2):  # refused every time: no bad copy stays
        with pytest.raises(error, match=re.escape(shard["name"]) + message):
            reader.get(first)
        cache = reader._shard_cache()
        assert not cache.cached(shard)
        lock, failed = f".{cache.entry(shard)}.lock", f".{cache.entry(shard)}.failed"
        # no data, stamp or temporary; the failure, for others waiting for the shard
        assert sorted(entry_files(cache, shard)) == [failed, lock]
        assert not lock_held(cache, shard)
    assert reader.get(first + reader.shard_sizes[1]) == samples[first + reader.shard_sizes[1]]
    reader.close()


def test_a_cached_copy_changed_after_download_is_removed_and_fetched_again(tmp_path, downloads):
    folder = tmp_path / "ds"
    samples = write_dataset(folder)
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache")
    cache = reader._shard_cache()
    shard = reader.shards[0]
    assert reader.get(2) == samples[2]
    assert downloads.counts()[shard["name"] + ".msgpack"] == 1
    reader.close()  # lets the shard go: the next read opens it again
    copy = cache.path(shard) + ".msgpack"
    flip_byte(copy)
    with pytest.raises(ValueError, match=rf"{copy}: the cached copy .* changed after"):
        reader.get(2)
    assert not cache.cached(shard)
    assert not os.path.exists(copy)
    assert reader.get(2) == samples[2]  # downloaded again
    assert downloads.counts()[shard["name"] + ".msgpack"] == 2
    first = samples[: shard["samples"]]
    assert reader.read_batch(range(shard["samples"])) == [packed(s) for s in first]
    reader.close()


def test_a_cached_copy_checked_again_and_found_intact_is_kept(tmp_path, downloads):
    folder = tmp_path / "ds"
    samples = write_dataset(folder)
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache")
    cache = reader._shard_cache()
    assert reader.get(0) == samples[0]
    reader.close()
    time.sleep(0.02)
    os.utime(cache.path(reader.shards[0]) + ".msgpack.keys")  # a change, same bytes: ctime
    os.chmod(cache.path(reader.shards[0]) + ".msgpack.keys", 0o600)
    assert reader.get(1) == samples[1]
    assert downloads.counts()[reader.shards[0]["name"] + ".msgpack"] == 1
    reader.close()


def _read_everything(url, cache_dir, barrier, expected):
    barrier.wait(10)
    reader = ShardedReader(url, cache_dir=cache_dir, window=2)
    got = []
    for start in range(0, len(reader), 10):
        got.extend(reader.read_batch(range(start, min(start + 10, len(reader)))))
    reader.close()
    sys.exit(0 if hashlib.sha256(b"".join(got)).hexdigest() == expected else 3)


def test_processes_sharing_a_cache_download_each_shard_once(tmp_path, downloads):
    folder = tmp_path / "ds"
    samples = write_dataset(folder)
    expected = hashlib.sha256(b"".join(packed(s) for s in samples)).hexdigest()
    downloads.delay = 0.01  # downloads overlap: the processes wait for each other
    barrier = FORK.Barrier(3)
    procs = [
        FORK.Process(
            target=_read_everything,
            args=(url_of(folder), tmp_path / "cache", barrier, expected),
        )
        for _ in range(3)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    names = [s["name"] + suffix for s in load_index(folder)["shards"] for suffix in READ_FILES]
    assert downloads.counts() == Counter(names)  # every file once, by one of the processes


def test_eviction_is_least_recently_used_and_never_of_a_held_shard(tmp_path):
    shards = uniform_dataset(tmp_path / "ds")
    size = sum(shards[0]["files"][s]["bytes"] for s in READ_FILES)
    cache = new_cache(tmp_path / "ds", tmp_path / "cache", limit=3 * size)

    def last_used(order):  # lock-file times: the first of `order` is the least recent
        for k, shard in enumerate(order):
            os.utime(lock_path(cache, shards[shard]), (1e9 + k, 1e9 + k))

    for k in (0, 1, 2):
        os.close(cache.acquire(shards[k]))
    last_used([1, 2, 0])
    os.close(cache.acquire(shards[3]))
    assert cached_set(cache, shards) == {0, 2, 3}  # 1 was the least recently used
    assert entry_files(cache, shards[1]) == [f".{cache.entry(shards[1])}.lock"]

    held = cache.acquire(shards[2])
    last_used([2, 3, 0])  # 2 is the least recently used, but held
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        os.close(cache.acquire(shards[4]))
    assert cached_set(cache, shards) == {0, 2, 4}

    # everything held: over the limit, with a warning, without waiting
    fds = [held, cache.acquire(shards[0]), cache.acquire(shards[4])]
    with deadline(10), pytest.warns(ResourceWarning, match=f"cache_limit={3 * size}"):
        fds.append(cache.acquire(shards[5]))
    assert cached_set(cache, shards) == {0, 2, 4, 5}
    for fd in fds:
        os.close(fd)
    cache.make_room(0)  # with nothing held, back under the limit
    assert len(cached_set(cache, shards)) == 3


def test_acquire_marks_the_shard_used(tmp_path):
    shards = uniform_dataset(tmp_path / "ds", shards=2)
    cache = new_cache(tmp_path / "ds", tmp_path / "cache")
    os.close(cache.acquire(shards[0]))
    os.utime(lock_path(cache, shards[0]), (1e9, 1e9))
    fd = cache.acquire(shards[0])
    assert os.path.getmtime(lock_path(cache, shards[0])) > time.time() - 60
    assert lock_held(cache, shards[0])
    os.close(fd)
    assert not lock_held(cache, shards[0])


def test_a_copy_completed_while_looking_is_used_without_waiting_for_its_readers(
    tmp_path, monkeypatch
):
    # The race of two fetchers: this one found the shard missing; meanwhile the other
    # fetched it and holds it shared until its batch is done (the loader's prefetcher,
    # until the plan passes the shard: if that batch is this one's, waiting is a deadlock).
    shards = uniform_dataset(tmp_path / "ds", shards=1)
    cache = new_cache(tmp_path / "ds", tmp_path / "cache")
    held = cache.acquire(shards[0])
    state, looks = ShardCache._state, []

    def missing_at_first_look(self, entry):
        looks.append(entry)
        return "missing" if len(looks) == 1 else state(self, entry)

    monkeypatch.setattr(ShardCache, "_state", missing_at_first_look)
    with deadline(5):
        fd = cache.acquire(shards[0])
    assert cache.cached(shards[0]) and lock_held(cache, shards[0])
    os.close(fd)
    os.close(held)


def test_a_changed_copy_is_checked_again_while_others_read_it(tmp_path):
    shards = uniform_dataset(tmp_path / "ds", shards=2)
    cache = new_cache(tmp_path / "ds", tmp_path / "cache")
    held = [cache.acquire(shards[0]), cache.acquire(shards[1])]  # others read them
    time.sleep(0.02)
    os.chmod(cache.path(shards[0]) + ".msgpack", 0o600)  # changed: its change time
    with deadline(5):
        os.close(cache.acquire(shards[0]))  # intact: kept
    flip_byte(cache.path(shards[1]) + ".msgpack")
    with deadline(5), pytest.raises(ValueError, match="changed after it was downloaded"):
        cache.acquire(shards[1])
    assert cached_set(cache, shards) == {0}
    for fd in held:
        os.close(fd)
    os.close(cache.acquire(shards[1]))  # fetched again
    assert cached_set(cache, shards) == {0, 1}


def test_a_reader_keeps_the_cache_within_its_limit(tmp_path):
    shards = uniform_dataset(tmp_path / "ds")
    size = sum(shards[0]["files"][s]["bytes"] for s in READ_FILES)
    reader = ShardedReader(
        url_of(tmp_path / "ds"), cache_dir=tmp_path / "cache", cache_limit=3 * size, window=1
    )
    cache = reader._shard_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ResourceWarning: nothing goes over the limit
        for k in range(len(shards)):
            time.sleep(0.01)  # distinct last-use times
            assert reader.get(10 * k + 3)["i"] == 10 * k + 3
            assert k in cached_set(cache, shards)
            assert len(cached_set(cache, shards)) <= 3
    assert cached_set(cache, shards) == {3, 4, 5}
    reader.close()


def test_sweep_removes_temporaries_of_downloads_nobody_runs(tmp_path):
    shards = uniform_dataset(tmp_path / "ds", shards=3)
    cache = new_cache(tmp_path / "ds", tmp_path / "cache")
    alive = os.getpid()  # a pid says nothing across containers: the shard's lock does
    names = {
        "dead data": f".{cache.entry(shards[0])}.msgpack.tmp-{dead_pid()}-0badc0de",
        "dead stamp": f".{cache.entry(shards[1])}.ok.tmp-{alive}-12345678",
        "running": f".{cache.entry(shards[2])}.msgpack.offsets.tmp-{dead_pid()}-abcdef02",
        "not a temporary": "notes.txt",
    }
    for name in names.values():
        with open(os.path.join(cache.dir, name), "wb") as f:
            f.write(b"partial")
    # a download of shard 2 under way (in any process, any container): its lock is held
    lock = os.open(
        os.path.join(cache.dir, f".{cache.entry(shards[2])}.lock"), os.O_CREAT | os.O_RDWR
    )
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        cache.sweep()
    finally:
        os.close(lock)
    left = set(os.listdir(cache.dir)) - {f".{cache.entry(shards[2])}.lock"}
    assert left == {names["running"], names["not a temporary"]}
    # a fetch removes any temporary of its shard: under its lock, nobody else writes it
    os.close(cache.acquire(shards[2]))
    left = set(os.listdir(cache.dir))
    assert names["running"] not in left and names["not a temporary"] in left


def test_a_reader_sweeps_before_its_first_fetch(tmp_path):
    folder = tmp_path / "ds"
    samples = write_dataset(folder)
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache")
    cache = new_cache(folder, tmp_path / "cache")
    temp = os.path.join(cache.dir, f".{cache.entry(reader.shards[4])}.msgpack.tmp-{dead_pid()}-aa")
    with open(temp, "wb") as f:
        f.write(b"partial")
    assert reader.get(0) == samples[0]
    assert not os.path.exists(temp)
    reader.close()


def test_a_copy_without_its_stamp_is_fetched_again(tmp_path):
    shards = uniform_dataset(tmp_path / "ds", shards=2)
    cache = new_cache(tmp_path / "ds", tmp_path / "cache")
    for suffix in READ_FILES:  # a killed fetch: files in place, no stamp
        with open(cache.path(shards[1]) + suffix, "wb") as f:
            f.write(b"garbage")
    fd = cache.acquire(shards[1])
    os.close(fd)
    for suffix in READ_FILES:
        with open(cache.path(shards[1]) + suffix, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == shards[1]["files"][suffix]["sha256"]
    with Reader(cache.path(shards[1]) + ".msgpack") as reader:
        assert reader.get(0)["i"] == 10


def test_a_stopped_download_leaves_nothing(tmp_path):
    shards = uniform_dataset(tmp_path / "ds", shards=2)
    cache = new_cache(tmp_path / "ds", tmp_path / "cache")
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError, match="stopped"):
        cache.acquire(shards[0], stop)
    assert entry_files(cache, shards[0]) == [f".{cache.entry(shards[0])}.lock"]
    assert not lock_held(cache, shards[0])
    os.close(cache.acquire(shards[0]))
    assert cache.cached(shards[0])


def test_datasets_at_other_urls_have_their_own_folders(tmp_path):
    a = write_dataset(tmp_path / "a", [record(i) for i in range(20)])
    b = write_dataset(tmp_path / "b", [record(i) | {"key": f"b{i}"} for i in range(20)])
    ra = ShardedReader(url_of(tmp_path / "a"), cache_dir=tmp_path / "cache")
    rb = ShardedReader(url_of(tmp_path / "b"), cache_dir=tmp_path / "cache")
    assert ra.read_batch(range(20)) == [packed(s) for s in a]
    assert rb.read_batch(range(20)) == [packed(s) for s in b]
    assert len(os.listdir(tmp_path / "cache")) == 2
    ra.close()
    rb.close()


def test_ranged_reads_fetch_adjacent_records_together(dataset, downloads):
    folder, samples = dataset
    with ShardedReader(url_of(folder)) as reader:
        first = reader.shard_sizes[0]
        for batch in ([3, 1, 2, first + 1], [4], [7, 5, 9, 7, 8]):
            assert reader.read_batch(batch) == [packed(samples[i]) for i in batch]
    name0, name1 = (reader.shards[k]["name"] + ".msgpack" for k in (0, 1))
    # each shard's offsets once; per batch, one call per shard, a range per run of
    # adjacent records (1..3; 4; 5, 7..9); never a whole data file
    assert downloads.counts() == Counter(
        {
            name0 + ".offsets": 1,
            name1 + ".offsets": 1,
            f"ranges:{name0}:1": 2,
            f"ranges:{name1}:1": 1,
            f"ranges:{name0}:2": 1,
        }
    )


def test_ranged_reads_refuse_a_corrupt_offsets_file(tmp_path):
    folder = tmp_path / "ds"
    write_dataset(folder)
    shard = load_index(folder)["shards"][0]
    flip_byte(folder / (shard["name"] + ".msgpack.offsets"), at=9)
    with ShardedReader(url_of(folder)) as reader:
        with pytest.raises(ValueError, match=rf"{shard['name']}\.msgpack\.offsets: SHA-256"):
            reader.get(0)


# ---------------------------------------------------------------- the loader


def run_loader(reader, epochs=2, nworkers=2, **kwargs):
    """Per epoch, its batches: (sample indices, noise draws)."""
    kwargs.setdefault("shuffle", True)
    loader = TurboDataLoader(
        reader, BATCH, IndexWorker(), nworkers, seed=SEED, stall_timeout=STALL, **kwargs
    )
    out = []
    with loader:
        for _ in range(epochs):
            out.append(
                [(mb["index"][:, 0].tolist(), mb["noise"][:, 0].tolist()) for _, (mb,) in loader]
            )
    return out, loader


def flat(batches):
    return [i for indices, _ in batches for i in indices]


@pytest.mark.parametrize("mode", MODES)
def test_loader_gives_every_sample_once_per_epoch_for_any_number_of_workers(
    mode, dataset, tmp_path
):
    folder, _ = dataset
    results = {}
    for nworkers in (1, 2):
        reader = open_reader(mode, folder, tmp_path / f"cache{nworkers}", window=2)
        results[nworkers], loader = run_loader(reader, nworkers=nworkers)
        assert loader.plan.shard_sizes == reader.shard_sizes and loader.plan.window == 2
        for p, epoch in enumerate(results[nworkers]):
            assert sorted(flat(epoch)) == list(range(N))
            assert flat(epoch) == loader.plan.order(p).tolist()
            # shard by shard: a batch reads from two windows at most
            shards = [set(reader.shard_of(indices).tolist()) for indices, _ in epoch]
            assert max(len(s) for s in shards) <= 2 * reader.window
        reader.close()
    assert results[1] == results[2]
    first, second = results[1]
    assert flat(first) != list(range(N)) and flat(first) != flat(second)


@pytest.mark.parametrize("mode", ["local", "cached"])
def test_loader_ranks_get_equal_batches_that_cover_the_epoch(mode, dataset, tmp_path):
    folder, _ = dataset
    orders, counts = [], []
    for rank in (0, 1):
        reader = open_reader(mode, folder, tmp_path / "cache", window=2)
        (epoch,), loader = run_loader(reader, epochs=1, nworkers=1, rank=rank, world_size=2)
        counts.append(len(epoch))
        orders.append(flat(epoch))
        assert orders[-1] == loader.plan.order(0).tolist()
        reader.close()
    assert counts[0] == counts[1] == -(-(N // 2) // BATCH)
    assert len(orders[0]) == len(orders[1]) == N // 2
    assert sorted(orders[0] + orders[1]) == list(range(N))


def test_loader_over_the_first_samples_of_a_sharded_dataset(dataset):
    folder, _ = dataset
    reader = ShardedReader(folder, window=2)
    (epoch,), loader = run_loader(reader, epochs=1, nworkers=1, length=100)
    assert sorted(flat(epoch)) == list(range(100))
    assert len(epoch) == loader.epoch_iterations == -(-100 // BATCH)
    reader.close()


@pytest.mark.parametrize("mode", MODES)
def test_loader_resumes_mid_epoch_with_exactly_the_rest(mode, dataset, tmp_path):
    folder, _ = dataset
    cache = tmp_path / "cache"
    full, _ = run_loader(open_reader(mode, folder, cache, window=2))
    full = [b for epoch in full for b in epoch]

    first = TurboDataLoader(
        open_reader(mode, folder, cache, window=2),
        BATCH,
        IndexWorker(),
        2,
        shuffle=True,
        seed=SEED,
        stall_timeout=STALL,
    )
    taken = []
    with first:
        for _, (mb,) in first:
            taken.append((mb["index"][:, 0].tolist(), mb["noise"][:, 0].tolist()))
            if len(taken) == 4:
                state = first.state_dict()
                break
    assert taken == full[:4]
    assert state["plan"]["window"] == 2 and state["plan"]["shards"].startswith(
        f"{len(first.iterable.shards)} shards"
    )
    reader = open_reader(mode, folder, cache, window=2)  # as a new process would
    resumed = TurboDataLoader(
        reader, BATCH, IndexWorker(), 1, shuffle=True, seed=SEED + 1, stall_timeout=STALL
    )
    resumed.load_state_dict(state)
    rest = []
    with resumed:
        for _ in range(2):
            rest.extend(
                (mb["index"][:, 0].tolist(), mb["noise"][:, 0].tolist()) for _, (mb,) in resumed
            )
    assert rest == full[4:]


def test_a_state_resumes_only_with_the_same_window(dataset):
    folder, _ = dataset
    loader = TurboDataLoader(ShardedReader(folder, window=2), BATCH, IndexWorker(), 1, shuffle=True)
    with loader:
        for iteration, _ in loader:
            if iteration == 1:
                state = loader.state_dict()
                break
    other = TurboDataLoader(ShardedReader(folder, window=3), BATCH, IndexWorker(), 1, shuffle=True)
    with pytest.raises(ValueError, match="window=2"):
        other.load_state_dict(state)


def test_loader_downloads_each_shard_once_and_lets_go_when_it_stops(dataset, tmp_path, downloads):
    folder, samples = dataset
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache", window=2, prefetch=2)
    cache = new_cache(folder, tmp_path / "cache")
    loader = TurboDataLoader(
        reader, BATCH, IndexWorker(), 2, shuffle=True, seed=SEED, stall_timeout=STALL
    )
    seen = []
    with loader:
        for _ in range(2):
            for _, (mb,) in loader:
                seen.extend(mb["index"][:, 0].tolist())
        for iteration, _ in loader:  # a third epoch, left in its middle
            if iteration == len(loader) * 2 + 2:
                threads = [t.name for t in threading.enumerate()]
                assert "crumpets-prefetch" in threads
                assert any(lock_held(cache, s) for s in reader.shards)  # scheduled, in use
                break
    assert sorted(seen) == sorted(list(range(N)) * 2)
    names = [s["name"] + suffix for s in reader.shards for suffix in READ_FILES]
    assert downloads.counts() == Counter(names)  # workers and prefetcher: each file once
    # stopped: no thread fetches, nothing is held, every shard can be evicted
    assert "crumpets-prefetch" not in [t.name for t in threading.enumerate()]
    assert reader._prefetcher is None
    assert not any(lock_held(cache, s) for s in reader.shards)
    assert cached_set(cache, reader.shards) == set(range(len(reader.shards)))
    cache.limit = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.make_room(1)
    assert cached_set(cache, reader.shards) == set()
    # and the reader fetches again where it is used next
    assert reader.read_batch(range(N)) == [packed(s) for s in samples]
    reader.close()


def test_loader_with_a_tight_cache_limit_evicts_and_still_gives_every_sample_once(
    dataset, tmp_path, downloads
):
    folder, _ = dataset
    sizes = [sum(s["files"][f]["bytes"] for f in READ_FILES) for s in load_index(folder)["shards"]]
    limit = sum(sorted(sizes)[-2:])  # the least a window of 2 may have
    reader = ShardedReader(
        url_of(folder), cache_dir=tmp_path / "cache", cache_limit=limit, window=2, prefetch=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # in use beyond the limit: allowed
        epochs, _ = run_loader(reader, epochs=2, nworkers=2)
    for epoch in epochs:
        assert sorted(flat(epoch)) == list(range(N))
    data_files = [s["name"] + ".msgpack" for s in reader.shards]
    assert sum(downloads.counts()[name] for name in data_files) > len(data_files)  # evicted
    cache = new_cache(folder, tmp_path / "cache")
    assert not any(lock_held(cache, s) for s in reader.shards)
    cache.limit = limit
    cache.make_room(0)  # nothing is held now: back within the limit
    held = sum(sizes[k] for k in cached_set(cache, reader.shards))
    assert held <= limit
    reader.close()


def test_loader_fetches_ahead_of_the_workers(dataset, tmp_path):
    folder, _ = dataset
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache", window=1, prefetch=3)
    cache = new_cache(folder, tmp_path / "cache")
    loader = TurboDataLoader(reader, BATCH, IndexWorker(), 1, shared_memory=2, stall_timeout=STALL)
    with loader:
        for iteration, _ in loader:
            if iteration == 0:
                # the workers read shard 0 or 1 (two batches in flight): the prefetcher
                # brings the next ones
                deadline_ = time.monotonic() + 10
                while not cache.cached(reader.shards[3]) and time.monotonic() < deadline_:
                    time.sleep(0.01)
                assert cache.cached(reader.shards[3])
                assert lock_held(cache, reader.shards[3])  # held: scheduled
                assert not cache.cached(reader.shards[6])
                break
    assert not lock_held(cache, reader.shards[3])
    reader.close()


def test_loader_over_a_corrupt_shard_raises_naming_it(tmp_path):
    folder = tmp_path / "ds"
    write_dataset(folder)
    shard = load_index(folder)["shards"][2]
    flip_byte(folder / (shard["name"] + ".msgpack"))
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache", window=2)
    loader = TurboDataLoader(reader, BATCH, IndexWorker(), 2, stall_timeout=STALL)
    with pytest.raises((WorkerError, ValueError), match=rf"{shard['name']}\.msgpack"):
        with loader:
            for _ in loader:
                pass
    assert "crumpets-prefetch" not in [t.name for t in threading.enumerate()]
    reader.close()


def test_loader_with_spawned_workers(dataset, tmp_path, monkeypatch):
    from crumpets.core import _platform

    monkeypatch.setattr(_platform, "START_METHOD", "spawn")
    folder, _ = dataset
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache", window=2)
    (epoch,), _ = run_loader(reader, epochs=1, nworkers=2)
    assert sorted(flat(epoch)) == list(range(N))
    reader.close()


def test_a_forked_child_lets_go_of_its_parents_shards(tmp_path):
    folder = tmp_path / "ds"
    samples = write_dataset(folder)
    reader = ShardedReader(url_of(folder), cache_dir=tmp_path / "cache")
    assert reader.get(0) == samples[0]  # shard 0 open and held in this process
    cache, shard = reader._shard_cache(), reader.shards[0]
    context = multiprocessing.get_context("fork")
    go = context.Event()
    child = context.Process(target=go.wait, args=(30,))
    child.start()
    try:
        reader.close()
        # the child shares the parent's descriptors: had it kept them, the shard would stay
        # locked (not evictable) as long as the child lives
        deadline = time.monotonic() + 10  # the child closes them as it starts
        while lock_held(cache, shard) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not lock_held(cache, shard)
    finally:
        go.set()
        child.join()
