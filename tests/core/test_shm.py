"""Shared buffer sets: the pool, its memory files and the room check."""

from __future__ import annotations

import errno
import gc
import os
import pickle

import numpy as np
import pytest
from _leaks import dev_shm_entries as shm_segments_in_dev_shm
from _leaks import memory_files

from crumpets.core import _memory, shm
from crumpets.core.shm import DummyBufferManager, SharedBufferManager, shared_array

SPECS = {"image": ((3, 4, 5), np.uint8, (1, 2, 3)), "label": ((1,), np.int64)}


def test_shared_slots_are_views_and_return_when_views_die():
    manager = SharedBufferManager(2, 4, SPECS)
    try:
        slots = [manager.acquire(), manager.acquire()]
        assert sorted(slots) == [0, 1] and manager.acquire() is None
        buffers = manager.buffers(slots[0])
        assert buffers["image"].shape == (4, 3, 4, 5)
        manager.fill(buffers, 4)
        assert buffers["image"][2, 1].tolist() == [[2] * 5] * 4
        buffers["label"][:, 0] = [5, 6, 7, 8]
        message = manager.pack({"label": buffers["label"][:3], "meta": ["x"]})
        assert len(message) < 100  # a reference, not the data
        out = manager.unpack(message, manager.lease(slots[0]))
        assert out["label"][:, 0].tolist() == [5, 6, 7]
        buffers["label"][0, 0] = 42  # same memory: no copy was made
        assert out["label"][0, 0] == 42
        view = out["label"][1:]
        del out, buffers
        gc.collect()
        assert manager.acquire() is None  # a slice still holds the slot
        del view
        assert manager.acquire() == slots[0]
    finally:
        manager.close()


def test_pickled_manager_attaches_to_the_same_memory():
    manager = SharedBufferManager(1, 2, SPECS)
    try:
        clone = pickle.loads(pickle.dumps(manager))
        clone.buffers(0)["label"][:, 0] = [11, 12]
        assert manager.buffers(0)["label"][:, 0].tolist() == [11, 12]
        clone.close()  # not the owner: the segment stays
        assert manager.buffers(0)["label"][1, 0] == 12
    finally:
        manager.close()


def test_close_while_views_are_alive_keeps_them_valid():
    manager = SharedBufferManager(1, 2, SPECS)
    slot = manager.acquire()
    manager.buffers(slot)["label"][:, 0] = [1, 2]
    out = manager.unpack(manager.pack(manager.buffers(slot)), manager.lease(slot))
    manager.close()
    assert out["label"][:, 0].tolist() == [1, 2]


def test_dummy_manager_makes_filled_private_buffers():
    manager = DummyBufferManager(3, SPECS)
    a, b = manager.buffers(), manager.buffers()
    assert not np.shares_memory(a["image"], b["image"])
    assert a["image"][0, 2].min() == 3
    out = manager.unpack(manager.pack(a))
    np.testing.assert_array_equal(out["image"], a["image"])


# -- next(): crumpets 3's way to take a set ----------------------------------------------
def test_next_takes_a_free_set_until_its_arrays_are_gone():
    manager = SharedBufferManager(2, 4, SPECS)
    try:
        first, second = manager.next(), manager.next()
        assert first is not None and second is not None
        assert set(first) == set(SPECS) and first["image"].shape == (4, 3, 4, 5)
        assert not np.shares_memory(first["image"], second["image"])
        first["label"][:, 0] = [1, 2, 3, 4]  # writable, in the pool
        assert manager.free == 0 and manager.acquire() is None
        with pytest.raises(TimeoutError, match="no buffer set"):
            manager.next(timeout=0.05)
        view = first["label"][1:]
        del first
        assert manager.free == 0  # a view of one buffer holds the whole set
        del view
        assert manager.free == 1
        again = manager.next(timeout=0)
        assert again is not None and again["label"][:, 0].tolist() == [1, 2, 3, 4]
    finally:
        manager.close()


def test_a_set_from_next_belongs_to_the_message_then_to_the_receiver():
    manager = SharedBufferManager(2, 4, SPECS)
    try:
        buffers = manager.next()
        assert buffers is not None
        buffers["label"][:, 0] = [5, 6, 7, 8]
        message = manager.pack({"batch": buffers, "meta": 1})
        assert len(message) < 200  # references, not the data
        del buffers
        assert manager.free == 1  # the message, not yet unpacked, holds the set
        out = manager.unpack(message)
        assert out["batch"]["label"][:, 0].tolist() == [5, 6, 7, 8] and out["meta"] == 1
        assert out["batch"]["label"].base is not None  # a view of the pool, not a copy
        image = out["batch"]["image"]
        del out
        assert manager.free == 1  # the receiver still holds one of its arrays
        del image
        assert manager.free == 2
    finally:
        manager.close()


def test_a_set_from_next_that_is_never_sent_returns_with_its_arrays():
    manager = SharedBufferManager(1, 4, SPECS)
    try:
        buffers = manager.next()
        assert manager.free == 0
        del buffers
        assert manager.free == 1
        cycle: list = [manager.next()]
        cycle.append(cycle)  # only a garbage collection frees it
        del cycle
        assert manager.next(timeout=1) is not None  # next collects before it waits
    finally:
        manager.close()


def test_next_blocks_until_another_thread_drops_a_set():
    import threading
    import time

    manager = SharedBufferManager(1, 2, SPECS)
    try:
        held = [manager.next()]
        dropper = threading.Timer(0.2, held.clear)
        start = time.monotonic()
        dropper.start()
        buffers = manager.next(timeout=10)
        assert buffers is not None and time.monotonic() - start >= 0.15
        dropper.join()
    finally:
        manager.close()


def test_close_wakes_a_thread_waiting_in_next():
    import threading

    manager = SharedBufferManager(1, 2, SPECS)
    held = manager.next()
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(manager.next()))
    waiter.start()
    waiter.join(0.1)
    assert waiter.is_alive()  # blocked: the only set is held
    manager.close()
    waiter.join(5)
    assert not waiter.is_alive() and got == [None]
    assert manager.next() is None
    assert held is not None and held["label"].shape == (2, 1)  # still valid after close


def _next_in_child(manager: SharedBufferManager) -> None:
    try:
        manager.next(timeout=0)
    except RuntimeError:
        os._exit(3)
    os._exit(0)


def test_next_is_refused_outside_the_process_that_owns_the_free_sets():
    import multiprocessing as mp

    manager = SharedBufferManager(2, 2, SPECS)
    try:
        with pytest.raises(RuntimeError, match="buffers\\(slot\\)"):
            pickle.loads(pickle.dumps(manager)).next(timeout=0)
        proc = mp.get_context("fork").Process(target=_next_in_child, args=(manager,))
        proc.start()
        proc.join()
        assert proc.exitcode == 3
        assert manager.free == 2  # the child took nothing from this pool
    finally:
        manager.close()


def test_dummy_manager_does_not_support_next():
    with pytest.raises(NotImplementedError, match="buffers"):
        DummyBufferManager(2, SPECS).next()


def test_shared_array_is_shared_with_forked_children():
    import multiprocessing as mp

    arr = shared_array((4,), np.int32)
    proc = mp.get_context("fork").Process(target=arr.__setitem__, args=(slice(None), 9))
    proc.start()
    proc.join()
    assert arr.tolist() == [9, 9, 9, 9]


# -- where the pool lives ------------------------------------------------------------------
linux_memfd = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="anonymous memory files are Linux's memfd_create"
)


@linux_memfd
def test_pool_is_an_anonymous_memory_file_without_a_name():
    import fcntl

    manager = SharedBufferManager(2, 4, SPECS)
    try:
        assert manager.anonymous and manager.name is None
        assert not shm_segments_in_dev_shm()
        # held twice: the manager's descriptor, and the duplicate Python's mmap keeps
        fds = [int(path.rsplit("/", 1)[1]) for path in memory_files()]
        assert len({os.fstat(fd).st_ino for fd in fds}) == 1
        fd = fds[0]
        assert os.fstat(fd).st_size == manager.nbytes
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW  # no SIGBUS
        buffers = manager.buffers(1)
        buffers["label"][:] = 3
        assert buffers["label"].__array_interface__["data"][0] >= manager.address
        assert manager.address + manager.nbytes > buffers["label"].__array_interface__["data"][0]
        manager.unlink()  # nothing to remove, and harmless
        assert manager.buffers(1)["label"][0, 0] == 3
    finally:
        manager.close()
    assert memory_files()  # an array of the pool is alive: so is the pool
    del buffers
    assert not memory_files()  # the last array is gone: so is the pool


@linux_memfd
def test_anonymous_pool_is_shared_with_forked_children_and_freed_with_them():
    import multiprocessing as mp

    manager = SharedBufferManager(1, 2, SPECS)
    proc = mp.get_context("fork").Process(
        target=manager.buffers(0)["label"].__setitem__, args=(slice(None), 9)
    )
    proc.start()
    proc.join()
    proc.close()
    assert manager.buffers(0)["label"].tolist() == [[9], [9]]
    manager.close()


@linux_memfd
def test_pickled_anonymous_pool_attaches_in_another_process():
    import subprocess
    import sys

    manager = SharedBufferManager(1, 2, SPECS)
    try:
        code = (
            "import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()); "
            "m.buffers(0)['label'][:, 0] = [21, 22]; m.close()"
        )
        subprocess.run([sys.executable, "-c", code], input=pickle.dumps(manager), check=True)
        assert manager.buffers(0)["label"][:, 0].tolist() == [21, 22]
    finally:
        manager.close()


@linux_memfd
def test_pickled_anonymous_pool_cannot_attach_once_closed():
    manager = SharedBufferManager(1, 2, SPECS)
    state = pickle.dumps(manager)
    manager.close()
    with pytest.raises(OSError, match="shared memory pool"):
        pickle.loads(state)


def test_named_pool_lives_in_dev_shm_until_unlinked():
    manager = SharedBufferManager(1, 2, SPECS, anonymous=False)
    try:
        assert not manager.anonymous
        assert shm_segments_in_dev_shm() == {manager.name}
        clone = pickle.loads(pickle.dumps(manager))  # what a spawned worker does
        manager.unlink()  # every worker has mapped it: the name goes, the memory stays
        assert not shm_segments_in_dev_shm()
        clone.buffers(0)["label"][:, 0] = [5, 6]
        assert manager.buffers(0)["label"][:, 0].tolist() == [5, 6]
        clone.close()
        with pytest.raises(FileNotFoundError):
            pickle.loads(pickle.dumps(manager))  # nobody can attach any more
    finally:
        manager.close()  # the name is gone already: nothing to complain about


@linux_memfd
@pytest.mark.parametrize("errno_", [errno.ENOSYS, errno.EPERM])
def test_without_memory_files_the_pool_is_named(monkeypatch, errno_):
    def refuse(name, flags=0):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, "memfd_create", refuse)
    manager = SharedBufferManager(1, 2, SPECS)
    try:
        assert not manager.anonymous and shm_segments_in_dev_shm() == {manager.name}
    finally:
        manager.close()
    assert not shm_segments_in_dev_shm()


@linux_memfd
def test_kernel_without_noexec_seal_gets_a_memory_file_all_the_same(monkeypatch):
    create, tried = os.memfd_create, []

    def old_kernel(name, flags=os.MFD_CLOEXEC):
        tried.append(flags)
        if flags & 0x0008:  # MFD_NOEXEC_SEAL, Linux 6.3
            raise OSError(errno.EINVAL, "Invalid argument")
        return create(name, flags)

    monkeypatch.setattr(os, "memfd_create", old_kernel)
    manager = SharedBufferManager(1, 2, SPECS)
    try:
        assert manager.anonymous and len(tried) == 2
    finally:
        manager.close()


# -- room before allocating ------------------------------------------------------------------
def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def mountinfo(*mounts):
    return "".join(
        f"{30 + i} 23 0:{40 + i} {root} {point} rw,relatime - {fstype} cgroup {opts}\n"
        for i, (root, point, fstype, opts) in enumerate(mounts)
    )


def test_cgroup_v2_limits_of_the_cgroup_and_its_parents(tmp_path):
    fs = tmp_path / "cgroup"
    write(fs / "job/memory.max", "max\n")  # the job itself: no limit of its own
    write(fs / "job/memory.current", "5000\n")
    write(fs / "memory.max", "100000\n")  # its parent (a systemd slice): a limit
    write(fs / "memory.current", "70000\n")
    write(fs / "memory.stat", "anon 40000\nfile 30000\nactive_file 10000\ninactive_file 20000\n")
    write(tmp_path / "cgroup.txt", "0::/job\n")
    write(tmp_path / "mountinfo", mountinfo(("/", fs, "cgroup2", "rw")))
    found = _memory._cgroup_limits(str(tmp_path / "cgroup.txt"), str(tmp_path / "mountinfo"))
    # page cache is reclaimable: 100,000 - (70,000 - 30,000) bytes left
    assert found == [
        (60000, f"the cgroup memory limit {fs}/memory.max (100,000 bytes, 40,000 in use)")
    ]


def test_cgroup_v1_memory_controller_and_a_mount_of_a_subtree(tmp_path):
    # a container without a cgroup namespace: its mount shows /docker/abc as the root
    fs = tmp_path / "memory"
    write(fs / "memory.limit_in_bytes", "67108864\n")
    write(fs / "memory.usage_in_bytes", "60000000\n")
    write(fs / "memory.stat", "cache 1\ntotal_active_file 1000000\ntotal_inactive_file 0\n")
    write(tmp_path / "cgroup.txt", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    write(
        tmp_path / "mountinfo",
        mountinfo(
            ("/docker/abc", tmp_path / "cpu", "cgroup", "rw,cpu,cpuacct"),
            ("/docker/abc", fs, "cgroup", "rw,memory"),
            ("/", tmp_path / "unified", "cgroup2", "rw"),  # no memory files there
        ),
    )
    found = _memory._cgroup_limits(str(tmp_path / "cgroup.txt"), str(tmp_path / "mountinfo"))
    assert found == [
        (
            8108864,
            f"the cgroup memory limit {fs}/memory.limit_in_bytes "
            "(67,108,864 bytes, 59,000,000 in use)",
        )
    ]


def test_cgroup_v1_without_a_limit_and_without_cgroups(tmp_path):
    fs = tmp_path / "memory"
    write(fs / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    write(fs / "memory.usage_in_bytes", "60000000\n")
    write(tmp_path / "cgroup.txt", "4:memory:/\n")
    write(tmp_path / "mountinfo", mountinfo(("/", fs, "cgroup", "rw,memory")))
    assert _memory._cgroup_limits(str(tmp_path / "cgroup.txt"), str(tmp_path / "mountinfo")) == []
    assert _memory._cgroup_limits(str(tmp_path / "none"), str(tmp_path / "mountinfo")) == []


def test_pool_that_exceeds_a_memory_limit_is_refused_naming_the_limit(monkeypatch):
    limit = "the cgroup memory limit /sys/fs/cgroup/job/memory.max (1,000,000 bytes, 0 in use)"
    monkeypatch.setattr(_memory, "_cgroup_limits", lambda: [(1_000_000, limit)])
    assert shm.available_memory() == (1_000_000, limit)
    for anonymous in (True, False):
        with pytest.raises(OSError, match="buffers") as info:
            SharedBufferManager(2, 1000, {"x": ((1000,), np.uint8)}, anonymous=anonymous)
        assert info.value.errno == errno.ENOMEM
        text = str(info.value)
        assert "shared memory pool (2 buffer sets of 1,000,000 bytes) needs 2,000,000" in text
        assert limit in text and "leaves 1,000,000" in text
        assert "shared_memory=N, batch_size" in text
    assert not shm_segments_in_dev_shm() and not memory_files()
    SharedBufferManager(1, 1000, {"x": ((1000,), np.uint8)}).close()  # what fits is fine
