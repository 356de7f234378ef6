"""Buffer specs, workers and the non-Linux (spawn + tcp) start path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from _core_workers import IndexWorker

from crumpets.core import TurboDataLoader, broker, pack
from crumpets.core.broker import make_buffer, make_bufferspec, make_fill_value
from crumpets.core.shm import SharedBufferManager


def test_make_fill_value_pads_channels():
    fill = make_fill_value((3, 224, 224), np.uint8, (1, 2, 3))
    assert fill.shape == (1, 3, 1, 1) and fill.dtype == np.uint8
    assert fill.ravel().tolist() == [1, 2, 3]
    assert make_fill_value((2, 2), np.float32, 0.5).shape == (1, 1, 1)


def test_make_buffer_and_bufferspec():
    buf = make_buffer(4, (3, 2), np.int16, (7, 8, 9))
    assert buf.shape == (4, 3, 2) and (buf[:, 1] == 8).all()
    assert make_bufferspec(np.zeros((2, 5), np.float32)) == ((2, 5), np.dtype(np.float32), 0)
    assert make_bufferspec(((1,), "int64")) == ((1,), np.dtype(np.int64), 0)
    with pytest.raises(TypeError, match="buffer spec"):
        make_bufferspec("image")


def test_worker_template_survives_pickling_with_a_shared_manager():
    manager = SharedBufferManager(1, 2, IndexWorker().buffer_specs)
    try:
        worker = IndexWorker()
        worker.set_buffer_manager(manager)
        clone = pickle.loads(pickle.dumps(worker))
        assert clone.buffer_specs == worker.buffer_specs
        clone.buffer_manager.buffers(0)["index"][:, 0] = [3, 4]
        assert manager.buffers(0)["index"][:, 0].tolist() == [3, 4]
    finally:
        manager.close()


def test_spawn_and_tcp_path_used_off_linux(monkeypatch):
    monkeypatch.setattr(broker, "START_METHOD", "spawn")
    data = [pack({"i": i}) for i in range(23)]
    with TurboDataLoader(data, 5, IndexWorker(), 2, shuffle=True, seed=2) as loader:
        seen = sorted(i for _, (mb,) in loader for i in mb["index"][:, 0])
    assert seen == list(range(23))
