"""Soak: a long run of small batches must not grow the main process or /dev/shm."""

from __future__ import annotations

import gc
import os
import time

import cv2
import numpy as np
import pytest
from _leaks import children, shm_segments
from _photos import encode, photo

from crumpets.augment import ImageWorker
from crumpets.augment.presets import AUGMENTATION_TRAIN
from crumpets.core import TurboDataLoader, pack

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size from /proc (psutil is not a test dependency)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def shm_bytes() -> int:
    """Bytes of /dev/shm that this process's segments occupy (tmpfs allocates lazily)."""
    total = 0
    for name in shm_segments():
        try:
            total += os.stat(f"/dev/shm/{name}").st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def soak_samples(n: int = 64) -> list[bytes]:
    samples = []
    for i in range(n):
        im = cv2.resize(photo(PHOTOS[i % 4]), (160, 120), interpolation=cv2.INTER_AREA)
        samples.append(pack({"image": encode(np.roll(im, 11 * i, axis=1)), "label": i % 4}))
    return samples


@pytest.mark.parametrize(
    "batches",
    [
        pytest.param(int(os.environ.get("CRUMPETS_SOAK_BATCHES", "2000")), id="short"),
        pytest.param(20_000, id="full", marks=pytest.mark.slow),
    ],
)
def test_rss_and_shm_stay_flat(batches):
    """ImageWorker (3x32x32, AUGMENTATION_TRAIN) on photo JPEGs, batch 8, 2 workers, for B
    batches: the main process's RSS and the buffer pool's resident bytes at the end are
    within 5% of what they were after warm-up (10% of the run); so is each worker's RSS.

    The short run (CI) is 2,000 batches, or CRUMPETS_SOAK_BATCHES; the full one, 20,000
    batches, is marked slow: ``pytest -m slow tests/integration/test_soak.py``.
    ``pytest -s`` shows the figures.
    """
    warm = max(1, batches // 10)
    worker = ImageWorker(((3, 32, 32), np.uint8), image_rng=AUGMENTATION_TRAIN)
    loader = TurboDataLoader(soak_samples(), 8, worker, 2, shuffle=True, seed=0, stall_timeout=60)
    figures = {}
    done = checksum = 0
    others = children()  # the session's S3 server, say: not the loader's workers
    start = time.monotonic()
    with loader:
        while done < batches:
            for _, (mb,) in loader:
                assert mb["image"].shape == (8, 3, 32, 32) and mb["image"].dtype == np.uint8
                checksum += int(mb["image"][:, :, 16, 16].sum())  # use the pixels
                del mb
                done += 1
                if done in (warm, batches):
                    gc.collect()
                    figures[done] = (
                        rss_bytes(),
                        shm_bytes(),
                        [rss_bytes(p) for p in sorted(children() - others)],
                    )
                if done == batches:
                    break
    seconds = time.monotonic() - start

    (rss0, shm0, workers0), (rss1, shm1, workers1) = figures[warm], figures[batches]
    mib = 2**20
    print(
        f"\nsoak: {batches} batches of 8 in {seconds:.1f} s "
        f"({batches * 8 / seconds:.0f} images/s); at {warm} -> {batches} batches: "
        f"main RSS {rss0 / mib:.1f} -> {rss1 / mib:.1f} MiB ({(rss1 - rss0) / rss0:+.2%}), "
        f"/dev/shm {shm0:,} -> {shm1:,} bytes, "
        f"worker RSS {[round(r / mib, 1) for r in workers0]} -> "
        f"{[round(r / mib, 1) for r in workers1]} MiB (checksum {checksum})"
    )
    assert shm0 > 0 and len(workers0) == len(workers1) == 2
    assert abs(rss1 - rss0) <= 0.05 * rss0
    assert abs(shm1 - shm0) <= 0.05 * shm0
    assert all(abs(b - a) <= 0.05 * a for a, b in zip(workers0, workers1))
