"""Workers used by the core tests (importable, so spawned processes find them)."""

from __future__ import annotations

import os
import resource
import signal
import time

import numpy as np

from crumpets.core import BufferWorker


class IndexWorker(BufferWorker):
    """Writes each sample's 'i' and a draw from its own RNG; records the worker pid."""

    def __init__(self, shape=(1,), **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("index", ((1,), np.int64, -1))
        self.add_buffer("noise", ((1,), np.float64))
        self.add_buffer("pad", (shape, np.uint8, 7))

    def prepare(self, sample, batch, buffers):
        buffers["index"][0] = sample["i"]
        buffers["noise"][0] = self.rng.random()
        batch["pid"].append(os.getpid())
        batch["sample_index"].append(self.sample_index)


class FailingWorker(IndexWorker):
    """Raises ValueError on sample index ``fail_at``."""

    def __init__(self, fail_at, **kwargs):
        super().__init__(**kwargs)
        self.fail_at = fail_at

    def prepare(self, sample, batch, buffers):
        if sample["i"] == self.fail_at:
            raise ValueError(f"cannot handle value {sample['i']}")
        super().prepare(sample, batch, buffers)


class SlowWorker(IndexWorker):
    def prepare(self, sample, batch, buffers):
        time.sleep(0.01)
        super().prepare(sample, batch, buffers)


class SuicideWorker(IndexWorker):
    """Kills its own process with SIGKILL on sample index ``die_at``."""

    def __init__(self, die_at, **kwargs):
        super().__init__(**kwargs)
        self.die_at = die_at

    def prepare(self, sample, batch, buffers):
        if sample["i"] == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        super().prepare(sample, batch, buffers)


class StuckWorker(IndexWorker):
    """Never finishes sample index ``stuck_at`` (or only after ``seconds``)."""

    def __init__(self, stuck_at, seconds=3600, **kwargs):
        super().__init__(**kwargs)
        self.stuck_at = stuck_at
        self.seconds = seconds

    def prepare(self, sample, batch, buffers):
        if sample["i"] == self.stuck_at:
            time.sleep(self.seconds)
        super().prepare(sample, batch, buffers)


class EpochZeroFailures(IndexWorker):
    """Raises ValueError on the given sample indices, in epoch 0 only."""

    def __init__(self, fail_at, **kwargs):
        super().__init__(**kwargs)
        self.fail_at = set(fail_at)

    def prepare(self, sample, batch, buffers):
        if self.epoch == 0 and sample["i"] in self.fail_at:
            raise ValueError(f"bad sample {sample['i']}")
        super().prepare(sample, batch, buffers)


def churn_memory() -> None:
    """What an image worker does to malloc per sample: a few MB of short-lived blocks of
    some hundred KB each (after one larger block set glibc's adaptive threshold)."""
    blocks = [np.ones(700_000, np.uint8) for _ in range(4)]
    del blocks


class MemoryChurnWorker(IndexWorker):
    """Churns memory for each sample and records the page faults that cost."""

    def init(self):
        np.ones(800_000, np.uint8)
        churn_memory()

    def prepare(self, sample, batch, buffers):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        churn_memory()
        batch["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        super().prepare(sample, batch, buffers)
