"""Where a worker's time goes: one ClassificationWorker + AUGMENTATION_TRAIN in this
process (single-threaded OpenCV, freed memory kept, as in a worker process) on 256 JPEGs of
about 500x375 cut from scikit-image's photos, in batches of 64 through
``BufferWorker.process`` and the packing of its result, as a worker process runs them.

It prints, in ms per image (medians of 5 runs):

- the worker, against the ceiling (decode + one warpAffine) and one warp of 3 against 4
  channels;
- the worker's time outside OpenCV's calls (Python and numpy: the worker's time less the
  time inside every OpenCV call, each timed), of which the time making each sample's
  generator (``crumpets.core.plan.SampleRNG``, which crumpets-core's ``process`` calls per
  sample); and the same batches through ``process`` and ``pack`` with a ``prepare`` that
  does nothing (crumpets-core's share, with warmer caches than between a worker's images);
- then cProfile's top entries (the profiler inflates the Python part).

Run: python benchmarks/profile_worker.py   (part of nox -s bench)
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import skimage.data

from crumpets.augment import ClassificationWorker
from crumpets.augment.presets import AUGMENTATION_TRAIN, INPUT_PARAMS_TRAIN
from crumpets.core import pack
from crumpets.core.broker import BufferWorker, Request, keep_freed_memory
from crumpets.core.plan import SampleRNG
from crumpets.core.shm import SharedBufferManager

BATCH = 64
IMAGES = 4 * BATCH
RUNS = 5
# the OpenCV functions a worker calls per image (decode, colour conversion, warp, planes,
# gamma, blur, noise), timed to tell their share from the Python and numpy around them
OPENCV_CALLS = (
    "imdecode",
    "cvtColor",
    "warpAffine",
    "resize",
    "mixChannels",
    "merge",
    "LUT",
    "getGaussianKernel",
    "sepFilter2D",
    "addWeighted",
)


def photos(n: int = IMAGES) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        im = getattr(skimage.data, ("astronaut", "chelsea", "coffee", "rocket")[i % 4])()
        y, x = rng.integers(0, 40, 2)
        crop = cv2.resize(im[y:, x:], (500, 375), interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


class NullWorker(BufferWorker):
    """The classification worker's buffers and per-sample result, without any work: what
    crumpets-core's process (generator, unpacking, buffer rows) and pack cost."""

    def __init__(self) -> None:
        super().__init__()
        self.add_buffer("image", ((3, 224, 224), np.uint8))
        self.add_buffer("label", ((1,), np.int64))
        self.written_in_full.add("image")

    def prepare(self, sample: dict, batch: dict, buffers: dict) -> None:
        batch["augmentation"].append({})


def batches(worker: BufferWorker, samples: list[bytes]) -> Callable[[], None]:
    """A function that runs every batch of ``samples`` through ``worker`` as a worker
    process does: process, then pack the result (shared buffers travel as references)."""
    manager = SharedBufferManager(1, BATCH, worker.buffer_specs)
    worker.set_buffer_manager(manager)
    requests = [
        Request(k, 0, 0, 0, list(range(i, i + BATCH)), samples[i : i + BATCH])
        for k, i in enumerate(range(0, len(samples), BATCH))
    ]

    def run() -> None:
        for request in requests:
            worker.pack(worker.process(request))

    run.manager = manager  # type: ignore[attr-defined]
    return run


def per_image(fun: Callable[[], Any], n: int) -> list[float]:
    fun()  # warm up
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fun()
        times.append((time.perf_counter() - start) / n * 1000)
    return times


def split_time(fun: Callable[[], Any], n: int) -> tuple[float, float, float]:
    """Median ms per image of ``fun``, of its time outside the OpenCV calls, and of its
    time making each sample's generator (SampleRNG, which BufferWorker.process calls)."""
    spent = {"opencv": 0.0, "rng": 0.0}
    originals = [(cv2, name, "opencv") for name in OPENCV_CALLS]
    originals.append((SampleRNG, "__call__", "rng"))

    def timed(call: Callable, group: str) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[group] += time.perf_counter() - start

        return wrapper

    saved = [(module, name, getattr(module, name)) for module, name, _ in originals]
    for (module, name, group), (_, _, call) in zip(originals, saved):
        setattr(module, name, timed(call, group))
    try:
        fun()
        totals, outside, rng = [], [], []
        for _ in range(RUNS):
            spent.update(opencv=0.0, rng=0.0)
            start = time.perf_counter()
            fun()
            total = time.perf_counter() - start
            totals.append(total / n * 1000)
            outside.append((total - spent["opencv"]) / n * 1000)
            rng.append(spent["rng"] / n * 1000)
    finally:
        for module, name, call in saved:
            setattr(module, name, call)
    return statistics.median(totals), statistics.median(outside), statistics.median(rng)


def main() -> None:
    # as in a worker process: one OpenCV thread, freed memory kept for the next image
    cv2.setNumThreads(1)
    keep_freed_memory()
    jpgs = photos()
    samples = [pack({"image": data, "label": i % 1000}) for i, data in enumerate(jpgs)]
    worker = ClassificationWorker(
        ((3, 224, 224), np.uint8),
        ((1,), np.int64),
        image_rng=AUGMENTATION_TRAIN,
        image_params=INPUT_PARAMS_TRAIN,
    )
    augment = batches(worker, samples)
    null = batches(NullWorker(), samples)

    def ceiling() -> None:
        matrix = np.array([[0.6, 0.0, 0.0], [0.0, 0.6, 0.0]])
        for data in jpgs:
            cv2.warpAffine(cv2.imdecode(np.frombuffer(data, np.uint8), 1), matrix, (224, 224))

    decoded = [cv2.imdecode(np.frombuffer(data, np.uint8), 1) for data in jpgs]
    rgba = [cv2.cvtColor(im, cv2.COLOR_BGR2RGBA) for im in decoded]

    def warp(images: list[np.ndarray]) -> None:
        matrix = np.array([[0.6, 0.0, 0.0], [0.0, 0.6, 0.0]])
        for im in images:
            cv2.warpAffine(im, matrix, (224, 224))

    try:
        runs = (
            ("crumpets worker (process + pack)", augment),
            ("ceiling: decode + warpAffine", ceiling),
            # why workers warp RGBA: OpenCV has SIMD paths for 1 and 4 channels, not for 3
            ("warpAffine of the decoded BGR", lambda: warp(decoded)),
            ("warpAffine of the same as RGBA", lambda: warp(rgba)),
        )
        for name, fun in runs:
            print(f"{name}: median {statistics.median(per_image(fun, len(jpgs))):.3f} ms per image")
        total, outside, rng = split_time(augment, len(jpgs))
        core = statistics.median(per_image(null, len(jpgs)))
        print(
            f"outside OpenCV's calls: {outside:.3f} ms of the worker's {total:.3f} ms per image "
            f"(Python and numpy), of which each sample's generator (SampleRNG): {rng:.3f} ms; "
            f"process + pack with a prepare that does nothing: {core:.3f} ms"
        )
        profile = cProfile.Profile()
        profile.runcall(augment)
    finally:
        augment.manager.close()  # type: ignore[attr-defined]
        null.manager.close()  # type: ignore[attr-defined]
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(15)
    # C functions are listed as ('~', 0, '<name>'); OpenCV's are those cv2 has
    opencv = sum(
        row[2]
        for (file, _, name), row in stats.stats.items()  # type: ignore[attr-defined]
        if file == "~" and hasattr(cv2, name.strip("<>"))
    )
    total = stats.total_tt  # type: ignore[attr-defined]
    print(
        f"OpenCV calls: {opencv / len(jpgs) * 1000:.3f} ms of {total / len(jpgs) * 1000:.3f} ms "
        f"per image profiled ({opencv / total:.0%}); the rest is Python and numpy, which the "
        "profiler inflates"
    )


if __name__ == "__main__":
    main()
