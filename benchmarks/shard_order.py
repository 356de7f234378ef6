"""Shuffle quality of a sharded EpochPlan's order, against the full shuffle of an unsharded
plan: how much a window of ``w`` shards (the shards in a random order, the samples of each
``w`` consecutive shards of it in a random order) mixes a pass, for ``w`` in 1 .. 64.

For a dataset of ``--shards`` shards of ``--samples-per-shard`` samples (each pair of values
a dataset; by default 1,000 x 1,000 and 10,000 x 100), one rank (world_size 1), figures of
pass 0's order, each the median over ``--seeds`` seeds:

- shards/batch: distinct shards a batch of ``--batch-size`` reads, median and max over the
  pass's batches (a full shuffle reads about as many shards as the batch has samples);
- P(same shard): the chance that two neighbours in the order come from one shard (about
  1 / window; 1 / shards for a full shuffle);
- neighbour spread: how far apart two samples that are neighbours in a shard end up,
  |pos(i) - pos(i + 1)| as a fraction of the pass, median and 99th percentile (for a
  window about 0.29 and 0.9 times its share of the pass, window / shards; 0.29 and 0.9
  for a full shuffle: two random positions).

Run: python benchmarks/shard_order.py   (about 16 s on 2 cores; --seeds, --batch-size)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from crumpets.core.plan import EpochPlan

WINDOWS = (1, 2, 4, 8, 16, 64)


def figures(order: np.ndarray, samples_per_shard: int, batch_size: int) -> np.ndarray:
    """(shards/batch median, max, P(same shard), spread median, spread p99) of one order."""
    n = len(order)
    shard = order // samples_per_shard  # every shard the same size
    whole = n // batch_size * batch_size  # whole batches only
    batches = np.sort(shard[:whole].reshape(-1, batch_size), axis=1)
    per_batch = 1 + np.count_nonzero(np.diff(batches, axis=1), axis=1)
    same = float(np.mean(shard[1:] == shard[:-1]))
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    pairs = np.arange(n - 1)
    pairs = pairs[(pairs + 1) % samples_per_shard != 0]  # i and i + 1 in one shard
    spread = np.abs(pos[pairs + 1] - pos[pairs]) / n
    return np.array(
        [
            np.median(per_batch),
            per_batch.max(),
            same,
            np.median(spread),
            np.quantile(spread, 0.99),
        ]
    )


def plan(n_shards: int, k: int, batch_size: int, seed: int, window: int | None) -> EpochPlan:
    """A sharded plan with this window, or (None) the unsharded plan's full shuffle."""
    if window is None:
        return EpochPlan(n_shards * k, batch_size, seed=seed, shuffle=True)
    sizes = (k,) * n_shards
    return EpochPlan(
        n_shards * k, batch_size, seed=seed, shuffle=True, shard_sizes=sizes, window=window
    )


def row(name: str, values: np.ndarray) -> str:
    med, top, same, spread, p99 = values
    return f"{name:<14} {med:>6.0f} {top:>5.0f}   {same:>12.4f}   {spread:>9.5f} {p99:>9.5f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--samples-per-shard", type=int, nargs="+", default=[1000, 100])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    shards, per_shard = args.shards, args.samples_per_shard
    if len(shards) != len(per_shard):
        if 1 not in (len(shards), len(per_shard)):
            parser.error("give as many --shards as --samples-per-shard (or one of either)")
        shards, per_shard = np.broadcast_arrays(shards, per_shard)

    print(
        f"Columns (median over {args.seeds} seeds of pass 0, one rank): shards/batch = distinct "
        f"shards a batch of {args.batch_size} reads (median, max over batches); P(same shard) = "
        "chance two neighbours in the order share a shard; spread = |pos(i) - pos(i+1)| / pass "
        "length for samples i, i+1 neighbours in a shard (median, 99th percentile)."
    )
    started = time.perf_counter()
    for n_shards, k in zip(shards, per_shard):
        n_shards, k = int(n_shards), int(k)
        length = n_shards * k
        print(f"\n{n_shards:,} shards x {k:,} samples ({length:,} samples)")
        print(
            f"{'order':<14} {'shards/batch':>12}   {'P(same shard)':>12}   {'spread':>9} {'p99':>9}"
        )
        print(f"{'':<14} {'median':>6} {'max':>5}")
        windows = [w for w in WINDOWS if w <= n_shards] + [None]
        for w in windows:
            values = [
                figures(plan(n_shards, k, args.batch_size, seed, w).order(0), k, args.batch_size)
                for seed in range(args.seeds)
            ]
            print(row("full shuffle" if w is None else f"window {w}", np.median(values, axis=0)))
    print(f"\n({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
