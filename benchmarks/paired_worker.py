"""A worker against the same-work limit, and against itself without two of its speed-ups,
paired in one process: the measurement a noisy machine gives reliably.

In this process (single-threaded OpenCV, freed memory kept, as in a worker process), on
256 of throughput.py's JPEGs (about 500x375, in batches of 64 through ``process`` and
``pack``, as a worker process runs them), it times in turn, round after round:

- the same-work limit's work on each JPEG (throughput.py's ``same_work``: decode, one
  warp and AUGMENTATION_TRAIN's gamma, noise and blur in plain OpenCV);
- ClassificationWorker + AUGMENTATION_TRAIN as it is (pixels deferred until every sample
  of a batch is prepared, each sample's generator from ``SampleRNG``);
- the same with ``defer_pixels = False``: each sample's pixels at once;
- the same with each sample's generator made by ``numpy.random.default_rng((seed, epoch,
  index))``, as in crumpets-core 0.1.0 (other random numbers, the same work).

Rows measured in the same round ran seconds apart, so a drift of the machine's speed
moves them alike: it prints each row's median ms per image, and, over rounds, the median
and quartiles of each worker's speed against the limit and of the two speed-ups, with the
number of rounds in which the faster side won.

Run: python benchmarks/paired_worker.py [--rounds 30] [--cache DIR]   (part of nox -s bench)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import cv2
import numpy as np
from profile_worker import batches
from throughput import crumpets_worker, make_dataset, same_work

from crumpets.core import Reader
from crumpets.core.broker import keep_freed_memory

IMAGES = 256


class DefaultRNG:
    """Each sample's generator as crumpets-core 0.1.0 made it."""

    def __call__(self, seed: int, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng((seed, epoch, index))


def spread(values: list[float]) -> str:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{q2:.3f} (quartiles {q1:.3f}-{q3:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cache", help="throughput.py's dataset folder (default: a temp dir)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("need --rounds >= 2")
    cv2.setNumThreads(1)
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        reader = Reader(make_dataset(args.cache or tmp, 2000))
        samples = [reader[i] for i in range(IMAGES)]
        jpegs = [reader.get(i)["image"] for i in range(IMAGES)]
    limit_one = same_work()

    def limit() -> None:
        for data in jpegs:
            limit_one(data)

    at_once = crumpets_worker()
    at_once.defer_pixels = False
    old_rng = crumpets_worker()
    old_rng._sample_rngs = DefaultRNG()  # type: ignore[assignment]
    rows: dict[str, Callable[[], None]] = {
        "same-work limit": limit,
        "worker": batches(crumpets_worker(), samples),
        "worker, pixels at once": batches(at_once, samples),
        "worker, default_rng per sample": batches(old_rng, samples),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    try:
        for run in rows.values():  # warm caches and OpenCV's lazy initialisation
            run()
        for _ in range(args.rounds):
            for name, run in rows.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    finally:
        for run in rows.values():
            manager = getattr(run, "manager", None)
            if manager is not None:
                manager.close()

    def ratios(slow: str, fast: str) -> list[float]:
        return [a / b for a, b in zip(times[slow], times[fast], strict=True)]

    print(f"{IMAGES} JPEGs of about 500x375 to 224x224, batches of 64, {args.rounds} rounds")
    for name, values in times.items():
        ms = statistics.median(values) / IMAGES * 1000
        line = f"{name}: {ms:.3f} ms per image"
        if name != "same-work limit":
            line += f", speed against the limit {spread(ratios('same-work limit', name))}"
        print(line)
    for what, slow in (
        ("deferring pixels", "worker, pixels at once"),
        ("SampleRNG instead of default_rng", "worker, default_rng per sample"),
    ):
        r = ratios(slow, "worker")
        wins = sum(x > 1 for x in r)
        print(f"speed-up of {what}: {spread(r)}, faster in {wins} of {len(r)} rounds")


if __name__ == "__main__":
    main()
