"""The epoch plan: which samples each batch holds, as a pure function of the settings.

The loader sees the data as an endless stream of batches: pass ``p`` over the dataset
(``p`` is the epoch used for shuffling and per-sample seeds) contributes
``batches_per_pass`` batches, the last one partial unless ``drop_last``. Batch ``b`` of
the stream is batch ``b % batches_per_pass`` of pass ``b // batches_per_pass``. Nothing
here depends on workers, timing or what was read before, which is what makes batches
identical for any number of workers and lets a loader resume at any batch.

Example:
    >>> plan = EpochPlan(length=10, batch_size=4, seed=0, shuffle=True)
    >>> [len(indices) for indices in plan.batches(epoch=0)]
    [4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EpochPlan"]


@dataclass(frozen=True)
class EpochPlan:
    """Sample indices of every batch of one rank, pass after pass.

    Args:
        length: samples per pass (the dataset's length, or fewer).
        batch_size: samples per batch.
        seed: seed of the per-pass shuffle.
        shuffle: a new order every pass, from (seed, pass); else 0 .. length - 1.
        drop_last: drop each pass's last partial batch (and, with several ranks, the
            samples that would not divide evenly among them).
        rank: this shard, in [0, world_size).
        world_size: number of shards. Every rank gets the same number of batches:
            without drop_last the shards are padded by repeating samples from the start
            of the pass's order.

    Raises:
        ValueError: for sizes below 1, a rank outside [0, world_size), or settings that
            leave a rank without a complete batch under drop_last.
    """

    length: int
    batch_size: int
    seed: int = 0
    shuffle: bool = False
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    # the orders of the last two passes asked for (the current and the next one)
    _orders: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("length", "batch_size", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")
        if self.batches_per_pass < 1:
            raise ValueError(
                f"length={self.length} gives no complete batch of batch_size={self.batch_size} "
                f"per rank (world_size={self.world_size}) with drop_last=True"
            )

    @property
    def shard_length(self) -> int:
        """Samples of one rank per pass (padding included)."""
        if self.world_size == 1:
            return self.length
        if self.drop_last:
            return self.length // self.world_size
        return -(-self.length // self.world_size)

    @property
    def batches_per_pass(self) -> int:
        """Batches of one rank per pass: the same for every rank."""
        if self.drop_last:
            return self.shard_length // self.batch_size
        return -(-self.shard_length // self.batch_size)

    def order(self, p: int) -> np.ndarray:
        """This rank's sample indices for pass ``p``, in batch order (read-only)."""
        if p in self._orders:
            return self._orders[p]
        if self.shuffle:
            order = np.random.default_rng((self.seed, p)).permutation(self.length)
        else:
            order = np.arange(self.length)
        if self.world_size > 1:
            total = self.shard_length * self.world_size
            order = order[:total] if total <= self.length else np.resize(order, total)
            order = order[self.rank :: self.world_size]
        order.flags.writeable = False
        if len(self._orders) >= 2:
            self._orders.pop(next(iter(self._orders)))
        self._orders[p] = order
        return order

    def batch(self, b: int) -> tuple[int, np.ndarray]:
        """(pass, sample indices) of batch ``b`` of the stream."""
        p, j = divmod(b, self.batches_per_pass)
        start = j * self.batch_size
        return p, self.order(p)[start : start + self.batch_size]

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """The sample indices of pass ``epoch``'s batches, from its batch ``start`` on
        (where a loader resumes)."""
        for j in range(start, self.batches_per_pass):
            yield self.batch(epoch * self.batches_per_pass + j)[1]
