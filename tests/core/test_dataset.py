from __future__ import annotations

import multiprocessing
import os
import pickle
import struct
import sys
import tempfile

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crumpets.core.dataset import Reader, Writer


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
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ds.msgpack",
        "ds.msgpack.keys",
        "ds.msgpack.offsets",
    ]


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
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ds.msgpack",
        "ds.msgpack.keys",
        "ds.msgpack.offsets",
    ]
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
