"""Dataset files interoperate with the datadings package itself, both ways.

crumpets writes -> datadings' MsgpackReader opens the files without warnings and finds
samples by key (and crumpets writes the very bytes datadings writes for the same samples);
datadings writes -> crumpets' Reader reads every sample identically, checks datadings'
.md5 file, and the TurboDataLoader loads the samples. The samples are crops of real
photos (skimage.data), JPEG and PNG encoded, with a label and a numpy array field.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import warnings

import numpy as np
import pytest
from _photos import encode, photo
from datadings.reader import MsgpackReader
from datadings.writer import FileWriter

from crumpets.augment import ClassificationWorker
from crumpets.core import BufferWorker, TurboDataLoader, pack
from crumpets.core.dataset import Reader, Writer, write_index

EXTRA_SUFFIXES = (".key_hashes", ".filter", ".md5")
INDEX_SUFFIXES = (".offsets", ".keys", ".key_hashes", ".filter")


def photo_samples(n=23):
    """Crops of three photos, every fourth one a PNG; keys as an ImageNet-style tree."""
    names = ["astronaut", "chelsea", "coffee"]
    samples = []
    for i in range(n):
        name = names[i % 3]
        y, x = 9 * i, 13 * i
        ext = ".png" if i % 4 == 3 else ".jpg"
        samples.append(
            {
                "key": f"{name}/{i:03d}{'_café' if i == 5 else ''}{ext}",
                "image": encode(photo(name)[y : y + 90, x : x + 120], ext),
                "label": i % 5,
                "box": np.array([x, y, x + 120, y + 90], np.int32),
            }
        )
    return samples


def write_with_datadings(path, samples):
    with FileWriter(path, overwrite=True, disable=True) as writer:
        for sample in samples:
            writer.write(sample)


def write_with_crumpets(path, samples):
    with Writer(path, overwrite=True) as writer:
        for sample in samples:
            writer.write(sample)


def assert_same_sample(got, expected):
    assert list(got) == list(expected)
    for field, value in expected.items():
        if isinstance(value, np.ndarray):
            assert isinstance(got[field], np.ndarray), field
            assert got[field].dtype == value.dtype and got[field].shape == value.shape, field
            np.testing.assert_array_equal(got[field], value)
        else:
            assert got[field] == value, field
            assert type(got[field]) is type(value), field


@pytest.fixture(scope="module")
def samples():
    return photo_samples()


def test_crumpets_files_open_in_datadings_without_warnings(tmp_path, samples):
    path = str(tmp_path / "photos.msgpack")
    write_with_crumpets(path, samples)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with MsgpackReader(path) as reader:
            assert len(reader) == len(samples)
            for i, sample in enumerate(samples):
                assert sample["key"] in reader
                assert reader.find_index(sample["key"]) == i
                assert reader.find_key(i) == sample["key"]
                assert_same_sample(reader.get(i), sample)
            reader.seek_key("coffee/005_café.jpg")
            assert_same_sample(reader.next(), samples[5])
            assert "chelsea/999.jpg" not in reader
            with pytest.raises(KeyError):
                reader.find_index("chelsea/999.jpg")
            assert reader.verify_data()


def test_crumpets_writes_the_files_datadings_writes(tmp_path, samples):
    ours, theirs = str(tmp_path / "ours.msgpack"), str(tmp_path / "theirs.msgpack")
    write_with_crumpets(ours, samples)
    write_with_datadings(theirs, samples)
    for suffix in ("", *INDEX_SUFFIXES):
        with open(ours + suffix, "rb") as a, open(theirs + suffix, "rb") as b:
            assert a.read() == b.read(), suffix
    with open(ours + ".md5") as a, open(theirs + ".md5") as b:
        assert a.read().replace("ours.", "NAME.") == b.read().replace("theirs.", "NAME.")


def test_datadings_files_read_identically_in_crumpets(tmp_path, samples):
    path = str(tmp_path / "photos.msgpack")
    write_with_datadings(path, samples)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = Reader(path)
    with reader, MsgpackReader(path) as theirs:
        assert len(reader) == len(samples)
        assert reader.keys == [s["key"] for s in samples]
        for i, sample in enumerate(samples):
            assert reader[i] == theirs.get(i, raw=True)
            assert_same_sample(reader.get(i), sample)
            assert reader.find(sample["key"]) == i
        with pytest.raises(KeyError):
            reader.find("chelsea/999.jpg")
        reader.verify()  # against the .md5 file, key hashes and filter datadings wrote


class BoxWorker(BufferWorker):
    """Copies each sample's 'box' (a numpy array in the record) and 'label' to buffers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("box", ((4,), np.int32, -1))
        self.add_buffer("label", ((1,), np.int64, -1))

    def prepare(self, sample, batch, buffers):
        buffers["box"][...] = sample["box"]
        buffers["label"][0] = sample["label"]


def load_all(iterable, worker):
    loader = TurboDataLoader(iterable, 5, worker, 2, seed=1)
    with loader:
        return [
            {k: v.copy() for k, v in mb.items() if k in ("image", "box", "label")}
            for _, (mb,) in loader
        ]


@pytest.mark.parametrize("name", ["buffer", "classification"])
def test_datadings_files_feed_the_turbo_data_loader(tmp_path, samples, name):
    path = str(tmp_path / "photos.msgpack")
    write_with_datadings(path, samples)
    if name == "buffer":
        worker = BoxWorker()
    else:
        worker = ClassificationWorker(((3, 48, 64), np.uint8), ((1,), np.int64))
    with Reader(path) as reader:
        from_file = load_all(reader, worker)
    # The same samples, packed by crumpets and handed to the loader as bytes.
    from_memory = load_all([pack(s) for s in samples], worker)
    assert len(from_file) == len(from_memory) == 5
    for got, expected in zip(from_file, from_memory):
        assert got.keys() == expected.keys()
        for field in got:
            np.testing.assert_array_equal(got[field], expected[field])
    labels = np.concatenate([batch["label"][:, 0] for batch in from_file])
    assert labels.tolist() == [s["label"] for s in samples]  # every sample once, in order
    if name == "buffer":
        boxes = np.concatenate([batch["box"] for batch in from_file])
        np.testing.assert_array_equal(boxes, np.stack([s["box"] for s in samples]))
    else:
        images = np.concatenate([batch["image"] for batch in from_file])
        assert images.std(axis=(1, 2, 3)).min() > 20  # photos, not blank buffers


def test_write_index_makes_old_crumpets_files_lookup_ready(tmp_path, samples):
    path = str(tmp_path / "old.msgpack")
    write_with_crumpets(path, samples)
    for suffix in EXTRA_SUFFIXES:  # as crumpets-core 0.1 wrote datasets
        os.unlink(path + suffix)
    with pytest.warns(UserWarning, match="not found") as caught:
        MsgpackReader(path)
    assert {str(w.message).split()[0].rsplit(".", 1)[1] for w in caught} == {
        "key_hashes",
        "filter",
    }
    write_index(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with MsgpackReader(path) as reader:
            assert reader.find_index(samples[7]["key"]) == 7
            assert samples[7]["key"] in reader
            assert reader.verify_data()


def test_legacy_index_reads_as_datadings_reads_it(tmp_path, samples):
    """Older datadings versions wrote NAME.msgpack.index (a map of key to offset) in place
    of .offsets and .keys; datadings still reads those, and so does crumpets."""
    import msgpack

    path = str(tmp_path / "legacy.msgpack")
    write_with_datadings(path, samples)
    offsets = np.fromfile(path + ".offsets", dtype=">u8")
    with open(path + ".index", "wb") as f:
        f.write(msgpack.packb(dict(zip([s["key"] for s in samples], offsets[:-1].tolist()))))
    for suffix in (*INDEX_SUFFIXES, ".md5"):
        os.unlink(path + suffix)
    with pytest.warns(UserWarning, match="not found"):
        theirs = MsgpackReader(path)
    with theirs, Reader(path) as reader:
        assert len(reader) == len(theirs) == len(samples)
        assert reader.keys == [theirs.find_key(i) for i in range(len(samples))]
        for i, sample in enumerate(samples):
            assert reader[i] == theirs.get(i, raw=True)
            assert_same_sample(reader.get(i), sample)
    write_index(path)
    os.unlink(path + ".index")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with MsgpackReader(path) as reader:
            assert reader.find_index(samples[11]["key"]) == 11
            assert reader.verify_data()


def read_in_datadings(path, samples):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with MsgpackReader(path) as reader:
            assert len(reader) == len(samples)
            for i, sample in enumerate(samples):
                assert reader.find_index(sample["key"]) == i
                assert_same_sample(reader.get(i), sample)
            assert reader.verify_data()


def test_a_rewritten_dataset_reads_in_datadings(tmp_path, samples):
    path = str(tmp_path / "photos.msgpack")
    write_with_crumpets(path, samples[:4])
    write_with_crumpets(path, samples)
    # The datadings layout and nothing else once the Writer is done.
    suffixes = ["", ".filter", ".key_hashes", ".keys", ".md5", ".offsets"]
    assert sorted(os.listdir(tmp_path)) == ["photos.msgpack" + s for s in suffixes]
    read_in_datadings(path, samples)


def _rewrite_and_die_half_way(path, samples):
    """Rewrite the dataset; SIGKILL this process once two of its files are in place."""
    real_replace, moved = os.replace, []

    def replace(source, target):
        if not str(target).endswith(".journal"):
            moved.append(target)
            if len(moved) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(source, target)

    os.replace = replace
    write_with_crumpets(path, samples)


def test_a_killed_rewrite_reads_in_datadings_once_crumpets_opened_it(tmp_path, samples):
    path = str(tmp_path / "photos.msgpack")
    write_with_crumpets(path, samples[:4])
    child = multiprocessing.get_context("fork").Process(
        target=_rewrite_and_die_half_way, args=(path, samples)
    )
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    # Past the commit point: crumpets reads the new dataset, and moves the rest into place.
    with Reader(path) as reader:
        assert reader.keys == [s["key"] for s in samples]
    read_in_datadings(path, samples)
