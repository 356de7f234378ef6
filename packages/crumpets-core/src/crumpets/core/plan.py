"""The epoch plan: which samples each batch holds, as a pure function of the settings.

The loader sees the data as an endless stream of batches: pass ``p`` over the dataset
(``p`` is the epoch used for shuffling and per-sample seeds) contributes
``batches_per_pass`` batches, the last one partial unless ``drop_last``. Batch ``b`` of
the stream is batch ``b % batches_per_pass`` of pass ``b // batches_per_pass``. Nothing
here depends on workers, timing or what was read before, which is what makes batches
identical for any number of workers and lets a loader resume at any batch.

A sharded dataset (:class:`~crumpets.core.shards.ShardedReader`) gives the plan its shards'
sizes: the order then shuffles the shards and the samples within a window of a few
consecutive shards, and gives each rank a contiguous part of it, so that a worker reads few
shards at a time and a rank few shards of all (see :meth:`EpochPlan.order`).

Each sample's random numbers come from its own generator, a function of (seed, epoch,
sample index) alone (:func:`sample_rng`); workers make it with :class:`SampleRNG`.

Example:
    >>> plan = EpochPlan(length=10, batch_size=4, seed=0, shuffle=True)
    >>> [len(indices) for indices in plan.batches(epoch=0)]
    [4, 4, 2]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SETTINGS", "EpochPlan", "SampleRNG", "sample_rng", "shards_digest"]

# What a position in the stream of batches means besides the seed: a loader's state
# records them, and resumes only where they agree or the position does not depend on them.
# The rank is recorded but never compared: every rank has as many batches per pass, so a
# position means the same on each (snapshots are written by rank 0 and read by all).
# A sharded plan adds its shards (a digest of their sizes) and window: None otherwise.
_BASE = ("length", "batch_size", "shuffle", "drop_last", "rank", "world_size")
SETTINGS = (*_BASE, "shards", "window")
_COMPARED = tuple(name for name in SETTINGS if name != "rank")

# The stride between samples' streams: numpy's step for PCG64DXSM.jumped, 2**128 over
# the golden ratio, odd, so the samples' streams start distinct and far apart. Spelled out
# here, so the streams do not depend on numpy's version (tests/core/test_plan.py checks
# that they are numpy's jumped streams).
_JUMP = 0x9E3779B97F4A7C15F39CC0605CEDC835


def _pass_bits(seed: int, epoch: int) -> np.random.PCG64DXSM:
    # child 0 of the pass's SeedSequence: a stream apart from the shuffle's (seed, pass)
    return np.random.PCG64DXSM(np.random.SeedSequence((seed, epoch), spawn_key=(0,)))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample: what ``self.rng`` of a worker is while it prepares
    sample ``index`` in pass ``epoch`` of a loader seeded ``seed``.

    It is ``PCG64DXSM`` seeded by child 0 of ``SeedSequence((seed, epoch))``, jumped
    ``index`` times (``.jumped(index)``): every sample of a pass draws from its own stream
    of one generator (numpy recommends PCG64DXSM for many jumped streams), whatever worker
    draws from it.

    Args:
        seed: the loader's seed.
        epoch: the pass over the data.
        index: the sample's index in the dataset.

    Returns:
        A new generator: draw from it to replay a sample's random numbers anywhere.
    """
    bits = _pass_bits(seed, epoch)
    bits.advance(int(index) * _JUMP)
    return np.random.Generator(bits)


class SampleRNG:
    """:func:`sample_rng` for one sample after another, as a worker needs it: one
    generator whose state is reset to the pass's and advanced to the sample's stream: the
    same numbers, for a fraction of the cost of making a generator per sample.

    Calling it with (seed, epoch, index) returns the sample's generator. That is the same
    object every call, so it is valid until the next call; keep :func:`sample_rng`'s.
    """

    def __init__(self) -> None:
        self._bits = np.random.PCG64DXSM()
        self._generator = np.random.Generator(self._bits)
        self._pass: tuple[int, int] | None = None
        self._state = self._bits.state  # the pass's, once one is set

    def __call__(self, seed: int, epoch: int, index: int) -> np.random.Generator:
        if self._pass != (seed, epoch):
            self._state = _pass_bits(seed, epoch).state
            self._pass = (seed, epoch)
        self._bits.state = self._state
        self._bits.advance(int(index) * _JUMP)
        return self._generator


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
        shard_sizes: the samples of each shard of a sharded dataset, in its order (the
            first ``length`` samples are used); None for a dataset read by index anywhere.
        window: for a sharded dataset, how many consecutive shards of the shuffled shard
            order a pass mixes samples from.

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
    shard_sizes: tuple[int, ...] | None = None
    window: int = 4
    # the orders of the last two passes asked for (the current and the next one)
    _orders: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("length", "batch_size", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")
        if self.shard_sizes is not None:
            object.__setattr__(self, "shard_sizes", tuple(int(n) for n in self.shard_sizes))
            if not self.shard_sizes or min(self.shard_sizes) < 0:
                raise ValueError(f"shard_sizes must be counts >= 0, got {self.shard_sizes}")
            if sum(self.shard_sizes) < self.length:
                raise ValueError(
                    f"length={self.length} exceeds the {sum(self.shard_sizes)} samples of the "
                    "shards"
                )
            if self.window < 1:
                raise ValueError(f"window must be >= 1, got {self.window}")
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
        """This rank's sample indices for pass ``p``, in batch order (read-only).

        Without shards: a permutation of the pass (or 0 .. length - 1), every
        ``world_size``-th sample from ``rank`` on.

        With shards: the shards in an order drawn from (seed, pass); consecutive groups of
        ``window`` shards of it, each group's samples in a random order (without shuffle,
        0 .. length - 1); rank ``r`` gets the ``r``-th of ``world_size`` contiguous equal
        parts, so each rank reads about ``1 / world_size`` of the shards.
        """
        if p in self._orders:
            return self._orders[p]
        if self.shard_sizes is not None:
            order = self._sharded_order(p)
        elif self.shuffle:
            order = np.random.default_rng((self.seed, p)).permutation(self.length)
        else:
            order = np.arange(self.length)
        if self.world_size > 1:
            total = self.shard_length * self.world_size
            order = order[:total] if total <= self.length else np.resize(order, total)
            if self.shard_sizes is None:
                order = order[self.rank :: self.world_size]
            else:
                n = self.shard_length
                order = order[self.rank * n : (self.rank + 1) * n]
        order.flags.writeable = False
        if len(self._orders) >= 2:
            self._orders.pop(next(iter(self._orders)))
        self._orders[p] = order
        return order

    def _sharded_order(self, p: int) -> np.ndarray:
        assert self.shard_sizes is not None
        if not self.shuffle:
            return np.arange(self.length)
        # the first `length` samples: whole shards, then part of one
        starts = np.cumsum((0, *self.shard_sizes[:-1]))
        sizes = np.clip(self.length - starts, 0, self.shard_sizes)
        # a stream apart from the unsharded shuffle's (seed, pass)
        rng = np.random.default_rng((self.seed, p, 1))
        used = np.flatnonzero(sizes)  # a window of `window` shards that hold samples
        shards = used[rng.permutation(len(used))]
        order = np.concatenate([np.arange(starts[s], starts[s] + sizes[s]) for s in shards])
        group = np.repeat(np.arange(len(shards)) // self.window, sizes[shards])
        # within each group a random order: sort by (group, random key)
        return order[np.lexsort((rng.random(len(order)), group))]

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

    def settings(self) -> dict[str, Any]:
        """The :data:`SETTINGS` of this plan, as a loader's state records them."""
        settings = {name: getattr(self, name) for name in _BASE}
        sizes = self.shard_sizes
        settings["shards"] = None if sizes is None else shards_digest(sizes)
        settings["window"] = None if sizes is None else self.window
        return settings

    def resume_at(self, saved: Mapping[str, Any], cursor: int, mid_epoch: bool) -> int:
        """Where this plan's stream continues a stream of a plan with the ``saved``
        settings (and this seed) that stood at batch ``cursor``.

        With the same settings (the rank aside: every rank has as many batches), that is
        ``cursor``. At the start of a pass (between epochs), nothing of the pass was seen,
        so batching may change: this plan continues
        at the start of the same pass, and every sample still comes once per pass (also
        with other shards or another window). In the middle of a pass, or with another
        length, no position gives each sample once.

        Args:
            saved: the other plan's :data:`SETTINGS`.
            cursor: its position: the stream index of its next batch.
            mid_epoch: the position lies inside an epoch the loader had begun.

        Raises:
            ValueError: naming every setting that differs, where the position cannot move.
        """
        mine = self.settings()
        differ = [name for name in _COMPARED if saved.get(name) != mine[name]]
        if not differ:
            return cursor
        was = ", ".join(f"{name}={saved.get(name)!r}" for name in differ)
        now = ", ".join(f"{name}={mine[name]!r}" for name in differ)
        if "length" in differ:
            raise ValueError(
                f"the loader state was taken with {was}; this loader has {now}. A state "
                "resumes only over data of the same length."
            )
        before = EpochPlan(seed=self.seed, **{name: saved[name] for name in _BASE})
        p, j = divmod(cursor, before.batches_per_pass)
        if j or mid_epoch:
            where = "mid-epoch" if mid_epoch else "between epochs but not at a pass's start"
            raise ValueError(
                f"the loader state was taken {where} (batch {j} of "
                f"{before.batches_per_pass} of pass {p}) with {was}; this loader has {now}. "
                "Inside a pass, a loader resumes only with the settings the state was taken "
                "with; at a pass's start, batch_size, shuffle, drop_last, world_size, shards "
                "and window may change."
            )
        return p * self.batches_per_pass


def shards_digest(sizes: Sequence[int]) -> str:
    """A short name of a list of shard sizes, as a loader's state records it: their number
    and a hash, so two layouts of the same samples differ."""
    digest = hashlib.sha256(np.asarray(sizes, dtype="<i8").tobytes()).hexdigest()[:16]
    return f"{len(sizes)} shards {digest}"
