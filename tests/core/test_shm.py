"""Shared buffer sets and the msgpack codec."""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis.extra import numpy as hnp

from crumpets.core.shm import DummyBufferManager, SharedBufferManager, pack, shared_array, unpack

SPECS = {"image": ((3, 4, 5), np.uint8, (1, 2, 3)), "label": ((1,), np.int64)}


@given(
    hnp.arrays(
        hnp.scalar_dtypes(),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )
)
def test_codec_round_trips_arrays(arr):
    out = unpack(pack({"a": arr, "nested": [arr, 1, "x"]}))
    np.testing.assert_array_equal(out["a"], arr)
    assert out["a"].dtype == arr.dtype and out["a"].shape == arr.shape
    assert out["a"].flags.writeable
    assert out["nested"][1:] == [1, "x"]


def test_codec_reads_msgpack_numpy_layout():
    import msgpack

    arr = np.arange(6, dtype="<i2").reshape(2, 3)
    legacy = {b"nd": True, b"type": "<i2", b"kind": b"", b"shape": [2, 3], b"data": arr.tobytes()}
    out = unpack(msgpack.packb({"image": legacy, "label": 4}, use_bin_type=True))
    np.testing.assert_array_equal(out["image"], arr)
    assert out["label"] == 4


def test_codec_rejects_objects():
    with pytest.raises(TypeError, match="object"):
        pack(np.array([object()]))
    with pytest.raises(TypeError, match="set"):
        pack({1, 2})


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


def test_shared_array_is_shared_with_forked_children():
    import multiprocessing as mp

    arr = shared_array((4,), np.int32)
    proc = mp.get_context("fork").Process(target=arr.__setitem__, args=(slice(None), 9))
    proc.start()
    proc.join()
    assert arr.tolist() == [9, 9, 9, 9]
