"""Where a worker's time goes: one ClassificationWorker + AUGMENTATION_TRAIN in this
process (single-threaded OpenCV) on 200 JPEGs of about 500x375 cut from scikit-image's
photos, against the ceiling (decode + one warpAffine), one warp of 3 against 4 channels,
then cProfile's top entries.

Run: python benchmarks/profile_worker.py   (part of nox -s bench)
"""

from __future__ import annotations

import collections
import cProfile
import pstats
import time

import cv2
import numpy as np
import skimage.data

from crumpets.augment import ClassificationWorker
from crumpets.augment.presets import AUGMENTATION_TRAIN, INPUT_PARAMS_TRAIN
from crumpets.core.broker import keep_freed_memory


def photos(n: int = 200) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        im = getattr(skimage.data, ("astronaut", "chelsea", "coffee", "rocket")[i % 4])()
        y, x = rng.integers(0, 40, 2)
        crop = cv2.resize(im[y:, x:], (500, 375), interpolation=cv2.INTER_AREA)
        out.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def main() -> None:
    # as in a worker process: one OpenCV thread, freed memory kept for the next image
    cv2.setNumThreads(1)
    keep_freed_memory()
    jpgs = photos()
    worker = ClassificationWorker(
        ((3, 224, 224), np.uint8),
        ((1,), np.int64),
        image_rng=AUGMENTATION_TRAIN,
        image_params=INPUT_PARAMS_TRAIN,
    )
    buffers = {"image": np.zeros((3, 224, 224), np.uint8), "label": np.zeros(1, np.int64)}

    def augment() -> None:
        for i, data in enumerate(jpgs):
            worker.rng, worker.sample_index = np.random.default_rng((0, 0, i)), i
            worker.prepare({"image": data, "label": 1}, collections.defaultdict(list), buffers)

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

    runs = (
        ("crumpets worker", augment),
        ("ceiling", ceiling),
        # why workers warp RGBA: OpenCV has SIMD paths for 1 and 4 channels, not for 3
        ("warpAffine of the decoded BGR", lambda: warp(decoded)),
        ("warpAffine of the same as RGBA", lambda: warp(rgba)),
    )
    for name, fun in runs:
        fun()  # warm up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fun()
            times.append((time.perf_counter() - start) / len(jpgs) * 1000)
        print(f"{name}: median {np.median(times):.3f} ms per image over 5 runs")
    profile = cProfile.Profile()
    profile.runcall(augment)
    stats = pstats.Stats(profile)
    stats.sort_stats("tottime").print_stats(10)
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
