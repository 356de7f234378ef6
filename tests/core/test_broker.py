"""Buffer specs, workers and the non-Linux (spawn + tcp) start path."""

from __future__ import annotations

import os
import pickle
import platform
import subprocess
import sys

import numpy as np
import pytest
from _core_workers import IndexWorker, MemoryChurnWorker

from crumpets.core import TurboDataLoader, _platform, broker, pack
from crumpets.core.broker import make_buffer, make_bufferspec, make_fill_value
from crumpets.core.shm import SharedBufferManager

# the C library, not the platform: Linux with musl (Alpine) has no mallopt to tune
GLIBC = platform.libc_ver()[0] == "glibc"


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
    monkeypatch.setattr(_platform, "START_METHOD", "spawn")
    data = [pack({"i": i}) for i in range(23)]
    with TurboDataLoader(data, 5, IndexWorker(), 2, shuffle=True, seed=2) as loader:
        seen = sorted(i for _, (mb,) in loader for i in mb["index"][:, 0])
    assert seen == list(range(23))


CHURN = """
import resource, sys
sys.path.insert(0, {tests!r})
import numpy as np
from _core_workers import churn_memory
from crumpets.core.broker import keep_freed_memory
if {keep}:
    keep_freed_memory()
np.ones(800_000, np.uint8)
churn_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn_memory()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc is what is tuned")
def test_keep_freed_memory_stops_page_faults_per_sample():
    def faults(keep: bool) -> float:
        code = CHURN.format(tests=os.path.dirname(__file__), keep=keep)
        return float(subprocess.check_output([sys.executable, "-c", code], text=True))

    # glibc's default: every round faults its ~2.8 MB in again (~700 pages)
    assert faults(keep=False) > 300
    assert faults(keep=True) < 10


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc is what is tuned")
def test_workers_keep_freed_memory(monkeypatch):
    # spawned, so the worker starts with a fresh malloc, not a copy of this process's
    monkeypatch.setattr(_platform, "START_METHOD", "spawn")
    data = [pack({"i": i}) for i in range(40)]
    with TurboDataLoader(data, 10, MemoryChurnWorker(), 1) as loader:
        faults = [f for _, (mb,) in loader for f in mb["faults"]]
    assert len(faults) == 40
    assert sorted(faults)[20] < 10


class PartialWorker(broker.BufferWorker):
    """Writes only the first element of 'part' and nothing of 'whole' (which it declares
    written in full): what process leaves in each shows whether it reset them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("part", ((3,), np.int32, 7))
        self.add_buffer("whole", ((2,), np.uint8, 9))
        self.written_in_full.add("whole")

    def prepare(self, sample, batch, buffers):
        buffers["part"][0] = sample["i"]


def test_process_resets_buffers_except_those_written_in_full():
    worker = PartialWorker()
    manager = SharedBufferManager(1, 2, worker.buffer_specs)
    try:
        worker.set_buffer_manager(manager)
        slot = manager.buffers(0)
        slot["part"][:] = -1  # what a previous batch left in this slot
        slot["whole"][:] = 5
        request = broker.Request(0, 0, 0, 0, [3, 4], [pack({"i": 3}), pack({"i": 4})])
        out = worker.process(request)
        assert out["part"].tolist() == [[3, 7, 7], [4, 7, 7]]
        assert out["whole"].tolist() == [[5, 5], [5, 5]]  # left as it was: not reset
    finally:
        manager.close()


class DeferringWorker(broker.BufferWorker):
    """Writes 'value' in the second phase, and records what each phase saw."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("value", ((1,), np.int64, -1))
        self.log: list = []

    def prepare(self, sample, batch, buffers):
        out = buffers["value"]
        self.log.append(("prepare", self.sample_index))

        def write():
            if sample["i"] < 0:
                raise ValueError("negative")
            self.log.append(("write", self.sample_index))
            out[0] = sample["i"] * 10

        batch["seen"].append(int(out[0]))  # not written yet: the fill value
        batch.defer(self.sample_index, write)


def test_process_prepares_every_sample_then_runs_the_deferred_writes():
    worker = DeferringWorker()
    manager = SharedBufferManager(1, 3, worker.buffer_specs)
    try:
        worker.set_buffer_manager(manager)
        items = [pack({"i": i}) for i in (1, 2, 3)]
        out = worker.process(broker.Request(0, 0, 0, 0, [5, 6, 7], items))
        assert worker.log == [("prepare", 5), ("prepare", 6), ("prepare", 7)] + [
            ("write", 5),
            ("write", 6),
            ("write", 7),
        ]
        assert out["value"].ravel().tolist() == [10, 20, 30]
        assert out["seen"] == [-1, -1, -1]
        assert type(out) is dict  # the batch's deferred writes do not travel
        assert worker.sample_index is None
        bad = [pack({"i": 1}), pack({"i": -1})]
        with pytest.raises(ValueError, match="negative"):
            worker.process(broker.Request(0, 0, 0, 0, [8, 9], bad))
        assert worker.sample_index == 9  # the worker loop names the sample that failed
    finally:
        manager.close()


def test_batch_is_a_defaultdict_of_lists():
    batch = broker.Batch()
    batch["a"].append(1)
    assert dict(batch) == {"a": [1]} and batch.deferred == []
