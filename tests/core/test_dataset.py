from __future__ import annotations

import hashlib
import itertools
import math
import multiprocessing
import os
import pickle
import re
import struct
import sys
import tempfile
import types
import warnings

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crumpets.core.dataset import Reader, Writer, write_index

DATASET_FILES = [
    "ds.msgpack",
    "ds.msgpack.filter",
    "ds.msgpack.key_hashes",
    "ds.msgpack.keys",
    "ds.msgpack.md5",
    "ds.msgpack.offsets",
]


def write_dataset(path, records, **kwargs):
    with Writer(path, **kwargs) as writer:
        for record in records:
            writer.write(record)
    return str(path) + ("" if str(path).endswith(".msgpack") else ".msgpack")


def make_records(n):
    return [{"key": f"k{i}", "image": bytes([i % 256]) * (i + 1), "label": i % 3} for i in range(n)]


@pytest.fixture
def dataset(tmp_path):
    records = make_records(10)
    return write_dataset(tmp_path / "ds.msgpack", records), records


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=64),
    st.lists(st.integers(min_value=-1000, max_value=1000), max_size=5),
)
samples = st.dictionaries(
    keys=st.text(min_size=1, max_size=12),
    values=st.dictionaries(st.text(max_size=8).filter(lambda s: s != "key"), values, max_size=4),
    max_size=20,
)


@settings(max_examples=50, deadline=None)
@given(samples)
def test_round_trip(samples):
    records = [{"key": key, **fields} for key, fields in samples.items()]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dataset(os.path.join(tmp, "ds"), records)
        with Reader(path) as reader:
            assert len(reader) == len(records)
            assert reader.keys == [r["key"] for r in records]
            for i, record in enumerate(records):
                assert msgpack.unpackb(reader[i], raw=False) == record
                assert reader.get(i) == record
                assert reader.find(record["key"]) == i
            assert [bytes(b) for b in reader] == [
                msgpack.packb(r, use_bin_type=True) for r in records
            ]


def test_files_follow_datadings_layout(dataset):
    path, records = dataset
    packed = [msgpack.packb(r, use_bin_type=True) for r in records]
    with open(path, "rb") as f:
        assert f.read() == b"".join(packed)
    ends = np.cumsum([0] + [len(p) for p in packed]).tolist()
    with open(path + ".offsets", "rb") as f:
        assert f.read() == struct.pack(f">{len(ends)}Q", *ends)
    with open(path + ".keys", "rb") as f:
        assert msgpack.unpackb(f.read(), raw=False) == [r["key"] for r in records]


def test_reader_is_random_access_bytes(dataset):
    path, records = dataset
    reader = Reader(path)
    assert isinstance(reader[3], bytes)
    assert reader.get(9) == records[9]
    assert reader[np.int64(2)] == reader[2]
    assert "ds.msgpack" in repr(reader)


def test_path_without_suffix(tmp_path):
    write_dataset(tmp_path / "ds", make_records(3))
    assert (tmp_path / "ds.msgpack").exists()
    assert len(Reader(tmp_path / "ds")) == 3
    assert len(Reader(str(tmp_path / "ds.msgpack"))) == 3


def test_empty_dataset(tmp_path):
    path = write_dataset(tmp_path / "empty", [])
    with Reader(path) as reader:
        assert len(reader) == 0
        assert reader.keys == []
        assert list(reader) == []
        with pytest.raises(IndexError):
            reader[0]


@pytest.mark.parametrize("index", [-1, 10, 11, 2**40])
def test_index_out_of_range(dataset, index):
    path, _ = dataset
    with pytest.raises(IndexError, match=rf"index {index} .*length 10"):
        Reader(path)[index]


def test_find_missing_key(dataset):
    with pytest.raises(KeyError, match="nope"):
        Reader(dataset[0]).find("nope")


def test_closed_reader(dataset):
    reader = Reader(dataset[0])
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader[0]


def test_pickle_round_trip(dataset):
    path, records = dataset
    reader = Reader(path)
    data = pickle.dumps(reader)
    # Only the path travels, not the mapped records.
    assert len(data) < 500
    clone = pickle.loads(data)
    assert len(clone) == len(records)
    assert [clone.get(i) for i in range(len(clone))] == records


def _read_in_child(reader, queue):
    queue.put([reader.get(i)["key"] for i in range(len(reader))])


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_survives_fork(dataset):
    path, records = dataset
    reader = Reader(path)
    reader[0]  # mapped and used before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(reader, queue))
    child.start()
    keys = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert keys == [r["key"] for r in records]
    assert reader.get(5) == records[5]


def test_missing_keys_file_reads_keys_from_records(dataset):
    path, records = dataset
    os.unlink(path + ".keys")
    reader = Reader(path)
    assert reader.keys == [r["key"] for r in records]
    assert reader.find("k4") == 4


# ---------------------------------------------------------------- validation at open


def test_truncated_data_file(dataset):
    path, _ = dataset
    size = os.path.getsize(path)
    os.truncate(path, size - 3)
    with pytest.raises(ValueError, match=rf"\.offsets.*{size}.*{size - 3} bytes"):
        Reader(path)


def test_data_file_with_extra_bytes(dataset):
    path, _ = dataset
    with open(path, "ab") as f:
        f.write(b"junk")
    with pytest.raises(ValueError, match="last offset"):
        Reader(path)


def test_offsets_decreasing(dataset):
    path, _ = dataset
    offsets = np.fromfile(path + ".offsets", dtype=">u8")
    offsets[3], offsets[4] = offsets[4], offsets[3]
    offsets.tofile(path + ".offsets")
    with pytest.raises(ValueError, match=r"\.offsets.*must not decrease.*offset 4"):
        Reader(path)


def test_offsets_not_starting_at_zero(dataset):
    path, _ = dataset
    offsets = np.fromfile(path + ".offsets", dtype=">u8")
    offsets[0] = 1
    offsets.tofile(path + ".offsets")
    with pytest.raises(ValueError, match=r"first offset is 1, expected 0"):
        Reader(path)


def test_offsets_little_endian_is_detected(dataset):
    path, _ = dataset
    offsets = np.fromfile(path + ".offsets", dtype=">u8")
    offsets.astype("<u8").tofile(path + ".offsets")
    with pytest.raises(ValueError, match=r"\.offsets"):
        Reader(path)


@pytest.mark.parametrize("cut", [1, 7, 8])
def test_offsets_file_of_wrong_size(dataset, cut):
    path, _ = dataset
    size = os.path.getsize(path + ".offsets")
    os.truncate(path + ".offsets", size - cut)
    with pytest.raises(ValueError, match=r"\.offsets"):
        Reader(path)


def test_offsets_file_missing(dataset):
    path, _ = dataset
    os.unlink(path + ".offsets")
    with pytest.raises(ValueError, match=r"ds\.msgpack\.offsets is missing"):
        Reader(path)


def test_keys_count_mismatch(dataset):
    path, _ = dataset
    with open(path + ".keys", "wb") as f:
        f.write(msgpack.packb(["a", "b"]))
    with pytest.raises(ValueError, match=r"\.keys: holds 2 keys, expected 10"):
        Reader(path)


def test_data_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        Reader(tmp_path / "nothing")


# ---------------------------------------------------------------- writer


def test_duplicate_key_names_it(tmp_path):
    with Writer(tmp_path / "ds") as writer:
        writer.write({"key": "cat/1.jpg", "label": 0})
        with pytest.raises(ValueError, match="'cat/1.jpg'"):
            writer.write({"key": "cat/1.jpg", "label": 1})
    # The rejected sample was not written; the rest is a valid dataset.
    assert Reader(tmp_path / "ds").keys == ["cat/1.jpg"]


def test_sample_needs_a_str_key(tmp_path):
    with Writer(tmp_path / "ds") as writer:
        with pytest.raises(ValueError, match="no 'key'"):
            writer.write({"label": 0})
        with pytest.raises(TypeError, match="str"):
            writer.write({"key": 3})


def test_numpy_values_round_trip(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with Writer(tmp_path / "ds") as writer:
        writer.write({"key": "a", "label": np.int64(3), "weight": np.float32(0.5)})
        writer.write({"key": "b", "pixels": pixels})
        with pytest.raises(TypeError, match="set"):
            writer.write({"key": "c", "tags": {1, 2}})
    reader = Reader(tmp_path / "ds")
    assert reader.get(0) == {"key": "a", "label": 3, "weight": 0.5}
    np.testing.assert_array_equal(reader.get(1)["pixels"], pixels)
    assert len(reader) == 2  # the rejected sample was not written


def test_write_returns_index_and_len_counts(tmp_path):
    with Writer(tmp_path / "ds") as writer:
        assert writer.write({"key": "a"}) == 0
        assert writer.write({"key": "b"}) == 1
        assert len(writer) == 2


def test_existing_dataset_needs_overwrite(tmp_path):
    write_dataset(tmp_path / "ds", make_records(2))
    with pytest.raises(FileExistsError, match="ds.msgpack"):
        Writer(tmp_path / "ds")
    write_dataset(tmp_path / "ds", make_records(5), overwrite=True)
    assert len(Reader(tmp_path / "ds")) == 5


def test_nothing_under_final_names_until_closed(tmp_path):
    writer = Writer(tmp_path / "ds")
    writer.write({"key": "a", "image": b"x" * 100})
    # A crash now must not leave a half dataset under the final names.
    assert not any(p.name.startswith("ds.msgpack") for p in tmp_path.iterdir())
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == DATASET_FILES


def test_exception_in_with_leaves_no_files(tmp_path):
    with pytest.raises(RuntimeError):
        with Writer(tmp_path / "ds") as writer:
            writer.write({"key": "a"})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        writer.write({"key": "b"})


def test_exception_keeps_the_previous_dataset(tmp_path):
    path = write_dataset(tmp_path / "ds", make_records(4))
    with pytest.raises(RuntimeError):
        with Writer(path, overwrite=True) as writer:
            writer.write({"key": "new"})
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == DATASET_FILES
    assert Reader(path).get(0) == make_records(4)[0]


def test_abandoned_writer_removes_temporaries(tmp_path):
    writer = Writer(tmp_path / "ds")
    writer.write({"key": "a"})
    assert list(tmp_path.iterdir())  # the temporary data file
    del writer
    assert list(tmp_path.iterdir()) == []


def test_reader_feeds_the_loader(tmp_path):
    from _core_workers import IndexWorker

    from crumpets.core import TurboDataLoader

    path = write_dataset(tmp_path / "ds", [{"key": f"k{i}", "i": i} for i in range(23)])
    reader = Reader(path)
    loader = TurboDataLoader(reader, 5, IndexWorker(), 2, shuffle=True, seed=3)
    epochs = []
    with loader:
        for _ in range(2):
            epochs.append([i for _, (mb,) in loader for i in mb["index"][:, 0].tolist()])
    for order in epochs:
        assert sorted(order) == list(range(23))  # every record exactly once
    assert epochs[0] != epochs[1]  # shuffled per epoch by the loader


# ---------------------------------------------------------------- datadings' index files
# Reference implementations of the layouts the module documents, written the plain way
# (a loop per key, Python integers): the Writer's vectorised files must equal these.


def ref_key_hashes(keys):
    for attempt in itertools.count():
        salt = hashlib.blake2s(str(attempt).encode()).digest()[:8]
        hashes = [hashlib.blake2s(k.encode("utf-8"), salt=salt).digest()[:8] for k in keys]
        if len(set(hashes)) == len(hashes):
            return salt + b"".join(hashes)


def ref_filter(keys):
    n = max(2, len(keys))
    p = 1.0 / n
    m = math.ceil(n * math.log(p) / math.log(1 / 2 ** math.log(2)) / 8) * 8
    k = round(m / n * math.log(2))
    bits = bytearray(m // 8)
    for key in keys:
        digest = hashlib.blake2s(key.encode("utf-8")).digest()
        h1, h2 = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big")
        for j in range(k):
            b = (h1 + j * h2) % 2**64 % m
            bits[b // 8] |= 1 << (b % 8)
    return struct.pack(">8sQQd", b"SIMPBLOO", 32 + len(bits), n, p) + bytes(bits)


def md5_of(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 500])
def test_index_files_follow_the_documented_layout(tmp_path, n):
    records = [{"key": f"n{i:05d}/Bild_ä{i}.jpg", "label": i} for i in range(n)]
    path = write_dataset(tmp_path / "ds", records)
    keys = [r["key"] for r in records]
    with open(path + ".key_hashes", "rb") as f:
        assert f.read() == ref_key_hashes(keys)
    with open(path + ".filter", "rb") as f:
        assert f.read() == ref_filter(keys)
    names = ["ds.msgpack"] + [f"ds.msgpack{s}" for s in (".offsets", ".keys", ".key_hashes")]
    names.append("ds.msgpack.filter")
    with open(path + ".md5", encoding="utf-8") as f:
        assert f.read() == "".join(f"{md5_of(tmp_path / name)}  {name}\n" for name in names)


def test_key_hashes_change_salt_on_a_collision(monkeypatch):
    from crumpets.core import _index_files

    real = hashlib.blake2s
    first_salt = real(b"0").digest()[:8]

    def weak_under_the_first_salt(data, salt=b""):
        digest = real(data, salt=salt)
        if salt != first_salt:
            return digest
        return types.SimpleNamespace(digest=lambda: digest.digest()[:1] + bytes(31))

    keys = [f"k{i}" for i in range(100)]  # 100 keys in 256 one-byte hashes collide
    monkeypatch.setattr(_index_files.hashlib, "blake2s", weak_under_the_first_salt)
    hashes = _index_files._key_hashes(keys)
    monkeypatch.undo()
    second_salt = real(b"1").digest()[:8]
    assert hashes == second_salt + b"".join(
        real(k.encode(), salt=second_salt).digest()[:8] for k in keys
    )


def test_numpy_arrays_are_written_as_msgpack_numpy_writes_them(tmp_path):
    pixels = np.arange(24, dtype="<u2").reshape(2, 3, 4)[:, ::2]  # not contiguous
    path = write_dataset(tmp_path / "ds", [{"key": "a", "pixels": pixels, "n": np.int32(7)}])
    with open(path, "rb") as f:
        record = msgpack.unpackb(f.read(), raw=False)
    assert record == {
        "key": "a",
        "pixels": {
            b"nd": True,
            b"type": "<u2",
            b"kind": b"",
            b"shape": [2, 2, 4],
            b"data": np.ascontiguousarray(pixels).tobytes(),
        },
        "n": 7,
    }
    np.testing.assert_array_equal(Reader(path).get(0)["pixels"], pixels)


@pytest.mark.parametrize("dtype", [object, [("a", "<i4"), ("b", "<f8")]])
def test_arrays_without_a_numeric_dtype_are_refused(tmp_path, dtype):
    with Writer(tmp_path / "ds") as writer:
        with pytest.raises(TypeError, match="dtype"):
            writer.write({"key": "a", "x": np.zeros(2, dtype=dtype)})
    assert len(Reader(tmp_path / "ds")) == 0


def write_old_crumpets_dataset(path, records):
    """The files crumpets-core 0.1 wrote: data (numpy arrays as its msgpack extension
    type), offsets and keys; no key_hashes, filter or md5."""
    from crumpets.core.shm import pack

    packed = [pack(r) for r in records]
    with open(path, "wb") as f:
        f.write(b"".join(packed))
    ends = np.cumsum([0] + [len(p) for p in packed]).astype(">u8")
    ends.tofile(path + ".offsets")
    with open(path + ".keys", "wb") as f:
        f.write(msgpack.packb([r["key"] for r in records]))


def test_old_dataset_without_the_extra_files_loads_without_warnings(tmp_path):
    path = str(tmp_path / "old.msgpack")
    records = [{"key": f"k{i}", "pixels": np.full((2, 2), i, np.uint8)} for i in range(5)]
    write_old_crumpets_dataset(path, records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = Reader(path)
        assert reader.find("k3") == 3
        np.testing.assert_array_equal(reader.get(3)["pixels"], records[3]["pixels"])


def test_write_index_completes_an_old_dataset(tmp_path):
    records = make_records(12)
    old = str(tmp_path / "old.msgpack")
    write_old_crumpets_dataset(old, records)  # no arrays: the same record bytes as today's
    new = write_dataset(tmp_path / "new", records)
    write_index(old)
    for suffix in (".offsets", ".keys", ".key_hashes", ".filter"):
        with open(old + suffix, "rb") as a, open(new + suffix, "rb") as b:
            assert a.read() == b.read(), suffix
    with open(old + ".md5") as a, open(new + ".md5") as b:
        assert a.read().replace("old.msgpack", "X") == b.read().replace("new.msgpack", "X")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    Reader(old).verify()


def test_write_index_with_keys_only_in_the_records(tmp_path):
    path = write_dataset(tmp_path / "ds", make_records(4))
    for suffix in (".keys", ".key_hashes", ".filter", ".md5"):
        os.unlink(path + suffix)
    write_index(path)
    assert sorted(os.listdir(tmp_path)) == DATASET_FILES
    reader = Reader(path)
    reader.verify()
    assert reader.keys == ["k0", "k1", "k2", "k3"]


# ---------------------------------------------------------------- damaged index files


def damage(path, suffix):
    if suffix == ".key_hashes":
        os.truncate(path + suffix, os.path.getsize(path + suffix) - 8)
    elif suffix == ".filter":
        with open(path + suffix, "r+b") as f:
            f.write(b"NOTBLOOM")
    elif suffix == ".md5":
        with open(path + suffix, "w") as f:
            f.write("not an md5 line\n")


@pytest.mark.parametrize(
    ("suffix", "problem"),
    [
        (".key_hashes", "size 80 bytes, expected 88"),
        (".filter", "not a simplebloom filter"),
        (".md5", "line 1 is not 'MD5  FILENAME'"),
    ],
)
def test_malformed_extra_file_warns_and_the_data_still_reads(dataset, suffix, problem):
    path, records = dataset
    damage(path, suffix)
    with pytest.warns(UserWarning, match=re.escape(problem)) as caught:
        reader = Reader(path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"ds.msgpack{suffix}:" in message and "write_index" in message
    assert caught[0].filename == __file__  # points at the caller's line
    assert [reader.get(i) for i in range(len(reader))] == records
    assert reader.find("k7") == 7
    # Workers unpickle the Reader: warned once, when it was opened, not in every worker.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickle.loads(pickle.dumps(reader))
    write_index(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Reader(path).verify()


def test_filter_for_another_dataset_warns(tmp_path, dataset):
    path, _ = dataset
    other = write_dataset(tmp_path / "other", make_records(3))
    os.replace(other + ".filter", path + ".filter")
    with pytest.warns(UserWarning, match="a filter for 3 keys, but the dataset has 10"):
        Reader(path)


def test_md5_file_without_the_data_file_warns(dataset):
    path, _ = dataset
    with open(path + ".md5", "w") as f:
        f.write(f"{md5_of(path)}  other.msgpack\n")
    with pytest.warns(UserWarning, match="has no MD5 of ds.msgpack"):
        Reader(path)


def test_verify_passes_on_what_the_writer_wrote(dataset):
    Reader(dataset[0]).verify()


def test_verify_names_a_changed_data_file(dataset):
    path, _ = dataset
    with open(path, "r+b") as f:  # the same size: the offsets still agree
        f.seek(30)
        byte = f.read(1)
        f.seek(30)
        f.write(bytes([byte[0] ^ 1]))
    reader = Reader(path)  # opening does not hash the data
    with pytest.raises(ValueError, match=r"ds\.msgpack: MD5 is [0-9a-f]{32}, but .* records"):
        reader.verify()


def test_verify_names_a_changed_index_file(dataset):
    path, _ = dataset
    with open(path + ".key_hashes", "r+b") as f:
        f.seek(20)
        f.write(b"\x00")
    with pytest.raises(ValueError, match=r"ds\.msgpack\.key_hashes: MD5"):
        Reader(path).verify()


@pytest.mark.parametrize("suffix", [".key_hashes", ".filter"])
def test_verify_checks_hashes_and_filter_against_the_keys(tmp_path, dataset, suffix):
    # Files of the right size and consistent with the .md5 file, but of other keys.
    path, records = dataset
    other = write_dataset(tmp_path / "other", [{**r, "key": r["key"] + "x"} for r in records])
    os.replace(other + suffix, path + suffix)
    lines = open(path + ".md5").read().splitlines()
    with open(path + ".md5", "w") as f:
        for line in lines:
            name = line.split("  ")[1]
            f.write(f"{md5_of(tmp_path / name)}  {name}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = Reader(path)  # nothing to see from sizes and headers
    with pytest.raises(ValueError, match=rf"ds\.msgpack\{suffix}: .* the keys"):
        reader.verify()


def test_verify_without_an_md5_file(dataset):
    path, _ = dataset
    os.unlink(path + ".md5")
    with pytest.raises(FileNotFoundError, match=r"ds\.msgpack\.md5"):
        Reader(path).verify()


def test_verify_names_a_missing_listed_file(dataset):
    path, _ = dataset
    os.unlink(path + ".filter")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = Reader(path)  # a missing extra file is not a problem for crumpets
    with pytest.raises(ValueError, match=r"ds\.msgpack\.filter is missing \(listed in"):
        reader.verify()


def test_writer_refuses_to_replace_a_stray_index_file(tmp_path):
    (tmp_path / "ds.msgpack.md5").write_text("")
    with pytest.raises(FileExistsError, match=r"ds\.msgpack\.md5"):
        Writer(tmp_path / "ds")


# ---------------------------------------------------------------- older datadings versions


def write_legacy_dataset(path, records):
    """A dataset as datadings versions before .offsets/.keys wrote it: NAME.msgpack and
    NAME.msgpack.index, a msgpack map of key to the record's offset."""
    packed = [msgpack.packb(r, use_bin_type=True) for r in records]
    with open(path, "wb") as f:
        f.write(b"".join(packed))
    starts = np.cumsum([0] + [len(p) for p in packed])[:-1].tolist()
    with open(path + ".index", "wb") as f:
        f.write(msgpack.packb(dict(zip([r["key"] for r in records], starts))))


def test_legacy_index(tmp_path):
    path = str(tmp_path / "legacy.msgpack")
    records = make_records(9)
    write_legacy_dataset(path, records)
    reader = Reader(path)
    assert len(reader) == 9
    assert reader.keys == [r["key"] for r in records]
    assert [reader.get(i) for i in range(9)] == records
    assert reader.find("k5") == 5
    write_index(path)  # as datadings' convert_index does, and more
    os.unlink(path + ".index")
    Reader(path).verify()
    assert [Reader(path).get(i) for i in range(9)] == records


def test_legacy_index_empty_dataset(tmp_path):
    path = str(tmp_path / "legacy.msgpack")
    write_legacy_dataset(path, [])
    assert len(Reader(path)) == 0


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (msgpack.packb(["k0", "k1"]), "map of keys to integer offsets"),
        (msgpack.packb({"k0": 0, "k1": "x"}), "map of keys to integer offsets"),
        (msgpack.packb({"k0": 5, "k1": 9}), "first offset is 5"),
        (msgpack.packb({"k0": 0, "k1": -1}), "offset is negative"),
        (b"\xc1", "not a msgpack map"),
    ],
)
def test_malformed_legacy_index(tmp_path, index, match):
    path = str(tmp_path / "legacy.msgpack")
    write_legacy_dataset(path, make_records(2))
    with open(path + ".index", "wb") as f:
        f.write(index)
    with pytest.raises(ValueError, match=rf"legacy\.msgpack\.index: .*{match}"):
        Reader(path)
