"""Writer and Reader under crashes and concurrent rewrites.

A Writer is killed (SIGKILL, so nothing of it runs afterwards) before each file-system
step it takes, one step further each time; another process rewrites a dataset while this
one opens it in a loop. Whatever happens, a Reader sees the old or the new dataset in
full (every record's key is the one ``.keys`` gives for it), or a clear error; never a mix.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import resource
import signal

import msgpack
import numpy as np
import pytest
from test_dataset import DATASET_FILES

from crumpets.core import _replace
from crumpets.core.dataset import Reader, Writer

# The file-system calls a Writer makes between its records and a finished dataset.
STEPS = ("replace", "rename", "link", "unlink", "fsync")
FORK = multiprocessing.get_context("fork")


def make_version(name, n, size=100):
    """Records of one version of a dataset: keys and contents say which version they are."""
    return [{"key": f"{name}{i:04d}", "image": name.encode() * size, "label": i} for i in range(n)]


def write(path, records, **kwargs):
    with Writer(path, **kwargs) as writer:
        for record in records:
            writer.write(record)


def read_all(path):
    """(keys, records) of the dataset at ``path``; every record's key must match ``.keys``."""
    with Reader(path) as reader:
        keys = list(reader.keys)
        records = [reader.get(i) for i in range(len(reader))]
    assert [r["key"] for r in records] == keys, "records disagree with .keys: a mixed dataset"
    return keys, records


def _write_and_die_at(path, records, step):
    """Overwrite the dataset, SIGKILLing this process just before its ``step``-th
    file-system call (counted over STEPS)."""
    calls = 0

    def killing(real):
        def call(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    for name in STEPS:
        setattr(os, name, killing(getattr(os, name)))
    write(path, records, overwrite=True)


def run_in_child(target, *args):
    process = FORK.Process(target=target, args=args)
    process.start()
    process.join()
    return process.exitcode


def stray_files(folder):
    return {p.name for p in folder.iterdir()} - set(DATASET_FILES)


@pytest.mark.parametrize("before", ["old dataset", "no dataset"])
def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_dataset(tmp_path, before):
    path = str(tmp_path / "ds.msgpack")
    old, new = make_version("old", 7), make_version("new", 12, size=300)
    seen = set()
    for step in range(1, 200):
        for p in tmp_path.iterdir():
            os.unlink(p)
        if before == "old dataset":
            write(path, old)
        exitcode = run_in_child(_write_and_die_at, path, new, step)
        if before == "no dataset" and not os.path.exists(path):
            # Killed before the data file was published: a Reader finds nothing, or the
            # new dataset through a journal of a publish that had begun.
            try:
                keys, records = read_all(path)
            except FileNotFoundError:
                seen.add("none")
                continue
        else:
            keys, records = read_all(path)
        version = "old" if records == old else "new" if records == new else None
        assert version is not None, f"killed at step {step}: neither version ({keys})"
        seen.add(version)
        # The next write finishes or discards what the killed one left, whatever it was.
        write(path, make_version("next", 3), overwrite=True)
        assert stray_files(tmp_path) == set(), f"killed at step {step}"
        assert read_all(path)[0] == [r["key"] for r in make_version("next", 3)]
        if exitcode == 0:
            break
        assert exitcode == -signal.SIGKILL
    else:
        pytest.fail("the writer never finished")
    assert "new" in seen and ({"old", "none"} & seen), seen


def test_a_reader_finishes_a_killed_writers_publish(tmp_path, monkeypatch):
    """Killed after its commit point, a writer's dataset is the new one; the next Reader
    with write access finishes moving it into place, so datadings reads it too."""
    path = str(tmp_path / "ds.msgpack")
    old, new = make_version("old", 5), make_version("new", 9)
    for step in range(1, 200):
        for p in tmp_path.iterdir():
            os.unlink(p)
        write(path, old)
        old_size = os.path.getsize(path)
        exitcode = run_in_child(_write_and_die_at, path, new, step)
        if exitcode == 0:
            pytest.fail("no step left a publish half done")
        # Killed between its commit point and its last rename: half moved into place.
        if os.path.exists(path + ".journal") and os.path.getsize(path) != old_size:
            break
    with monkeypatch.context() as patch:
        # A Reader that may not write the folder reads the new files where they are.
        patch.setattr(_replace, "locked", raise_permission_error)
        assert read_all(path)[1] == new
        assert os.path.exists(path + ".journal")
    assert read_all(path)[1] == new
    assert not os.path.exists(path + ".journal")
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
    # Under their own names, where datadings reads them.
    with open(path + ".keys", "rb") as f:
        assert msgpack.unpackb(f.read()) == [r["key"] for r in new]
    offsets = np.fromfile(path + ".offsets", dtype=">u8")
    assert len(offsets) == len(new) + 1 and offsets[-1] == os.path.getsize(path)


def raise_permission_error(path, wait=True):
    raise PermissionError(13, "Permission denied", path)


def _rewrite(path, versions, times):
    for i in range(times):
        write(path, versions[i % len(versions)], overwrite=True)


def test_a_reader_never_sees_a_mix_while_another_process_rewrites(tmp_path):
    # Both versions have records of the same sizes, so their offsets agree and only the
    # keys tell them apart: a Reader that mixes files of the two cannot notice by size.
    path = str(tmp_path / "ds.msgpack")
    versions = [make_version("a", 40), make_version("b", 40)]
    write(path, versions[0])
    writer = FORK.Process(target=_rewrite, args=(path, versions, 100))
    writer.start()
    opened, busy, mixed = {"a": 0, "b": 0}, 0, []
    try:
        while writer.is_alive():
            try:
                with Reader(path) as reader:
                    keys = list(reader.keys)
                    record_keys = [reader.get(i)["key"] for i in range(len(reader))]
            except OSError as e:
                assert "changed while" in str(e), e  # the clear error, and only that one
                busy += 1
                continue
            if record_keys != keys or len({k[0] for k in keys}) != 1:
                mixed.append((keys[0], record_keys[0]))
            else:
                opened[keys[0][0]] += 1
    finally:
        writer.join()
    assert writer.exitcode == 0
    assert mixed == [], f"{len(mixed)} mixed datasets, e.g. keys {mixed[0]}"
    assert opened["a"] and opened["b"], opened  # it did read during the rewrites
    assert stray_files(tmp_path) == set()


def _write_much_and_die(path):
    writer = Writer(path, overwrite=True)
    for i in range(50):
        writer.write({"key": str(i), "image": os.urandom(100_000)})
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_next_write_removes_a_killed_writers_temporary_file(tmp_path):
    path = str(tmp_path / "ds.msgpack")
    assert run_in_child(_write_much_and_die, path) == -signal.SIGKILL
    (temp,) = os.listdir(tmp_path)
    assert os.path.getsize(tmp_path / temp) > 4_000_000
    write(path, make_version("a", 3))
    assert stray_files(tmp_path) == set()


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    path = str(tmp_path / "ds.msgpack")
    first = Writer(path, overwrite=True)
    first.write({"key": "first"})
    write(path, make_version("a", 3), overwrite=True)  # a second writer of the same dataset
    first.close()
    assert read_all(path)[0] == ["first"]
    assert stray_files(tmp_path) == set()


def _abort_on_a_full_disk(path, queue):
    writer = Writer(path)
    writer.write({"key": "a", "image": b"x" * 3000})  # held in the file's buffer
    # Writing past RLIMIT_FSIZE fails (EFBIG) as a full disk does (ENOSPC): here, when
    # abort() closes the file and the buffer is flushed.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    try:
        writer.abort()
    except OSError as e:
        queue.put(f"abort raised {e}")
    queue.put(sorted(os.listdir(os.path.dirname(path))))


def test_abort_removes_its_temporary_file_even_if_closing_it_fails(tmp_path):
    queue = FORK.SimpleQueue()
    assert run_in_child(_abort_on_a_full_disk, str(tmp_path / "ds.msgpack"), queue) == 0
    results = [queue.get()]
    if isinstance(results[0], str):
        results.append(queue.get())
    assert results == [[]]


def test_a_reader_that_never_sees_the_files_hold_still_says_so(tmp_path, monkeypatch):
    path = str(tmp_path / "ds.msgpack")
    write(path, make_version("a", 3))
    real_stat = os.stat
    # Every check after opening finds another inode, as if each open raced a rewrite.
    monkeypatch.setattr(
        os,
        "stat",
        lambda p, *a, **k: os.stat_result((0, -1, *real_stat(p, *a, **k)[2:])),
    )
    with pytest.raises(OSError, match="changed while") as caught:
        Reader(path)
    assert path in str(caught.value)
    assert caught.value.errno == errno.EBUSY


@pytest.mark.parametrize("error", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_file_system_without_locks_still_takes_a_dataset(tmp_path, monkeypatch, error):
    # Lustre without -o flock, some FUSE and CIFS mounts: flock fails; writing goes on
    # without locks, as on a system without fcntl
    def no_locks(fd, operation):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(_replace.fcntl, "flock", no_locks)
    for contents in ("old", "new"):
        path = str(tmp_path / "ds.msgpack")
        with Writer(path, overwrite=True) as writer:
            for i in range(5):
                writer.write({"key": f"{contents}{i}", "x": i})
        with Reader(path) as reader:
            assert reader.keys == [f"{contents}{i}" for i in range(5)]
    assert sorted(os.listdir(tmp_path)) == sorted(DATASET_FILES)


def test_a_reader_sent_after_its_dataset_was_replaced_refuses_to_read_the_new_one(tmp_path):
    # a spawned worker unpickles the Reader by path: it must not mix the main process's
    # length and keys with another version's records
    import pickle

    path = str(tmp_path / "ds.msgpack")
    write(path, make_version("a", 5))
    with Reader(path) as reader:
        sent = pickle.dumps(reader)
        write(path, make_version("b", 7), overwrite=True)
        with pytest.raises(ValueError, match="replaced since it was opened"):
            pickle.loads(sent)
    with pickle.loads(pickle.dumps(Reader(path))) as again:  # the new version, whole
        assert len(again) == 7
