"""Throughput of crumpets against limits and torch DataLoader baselines, on the same data.

In one run, on one ImageNet-like dataset file (N JPEGs of about 500x375, quality 90, cut
from the photos scikit-image ships), this measures, first at equal work (what
ClassificationWorker + AUGMENTATION_TRAIN does to every image):

- same-work limit: one process that, per image, decodes the JPEG (cv2.imdecode), converts
  it to RGBA (OpenCV's warpAffine has SIMD paths for 1 and 4 channels, not for 3), does
  one cv2.warpAffine to 224x224 with AUGMENTATION_TRAIN's random geometry (short side to
  224 times U(1, 1.25), aspect exp(N(0, 0.1)), rotation N(0, 10) degrees, shear
  U(-0.05, 0.05), shift within the slack, mirror with p 0.5), writes R, G and B into a
  3x224x224 array (cv2.mixChannels) and applies the preset's pixel operations per plane,
  each drawn with p 0.5 as the preset draws them: a gamma table (brightness
  4**-U(-0.3, 0.3), per-channel colour 4**-U(-0.2, 0.2) and contrast U(-0.3, 0.3); one
  cv2.LUT per plane when any is on), a Gaussian blur of sigma U(0, 0.5) pixels
  (cv2.GaussianBlur, skipped below 0.25, where it changes no pixel) and Gaussian noise of
  U(0.64, 6.4) grey levels (cv2.addWeighted with a window of a table of normal samples);
  single-threaded OpenCV in a process that keeps freed memory (as crumpets' workers do),
  written plainly, independent of crumpets' code; times the number of workers: what the
  workers could deliver if loading, handing over batches and every line of Python around
  the OpenCV calls cost nothing;
- same-work baseline: torch.utils.data.DataLoader (same workers, batch 64, persistent
  workers) over a Dataset reading the same file, cv2.imdecode and an albumentations
  pipeline of the same operations (RandomResizedCrop, HorizontalFlip, Affine with
  rotation and shear, and with p 0.5 each ColorJitter (brightness, contrast, saturation),
  RandomGamma, GaussNoise and GaussianBlur), collated to a uint8 NCHW tensor;
- crumpets: TurboDataLoader (numpy) and TorchTurboDataLoader(device='cpu') with
  ClassificationWorker + AUGMENTATION_TRAIN, 3x224x224 uint8, batch 64;

and, doing less than AUGMENTATION_TRAIN:

- ceiling: decode + one cv2.warpAffine of the BGR image to 224x224, nothing else, in one
  process set up as the same-work limit's, times the number of workers;
- baseline: the DataLoader + albumentations pipeline without RandomGamma, GaussNoise and
  GaussianBlur;
- with ``--gpu-split``, the TurboDataLoader whose workers leave gamma, noise and blur to a
  GPU Randomizer (gpu_augmentation=True), which this benchmark does not run: compare it
  with the ceiling.

For each: images/s (after a warm-up: median over groups of one batch per worker, mean
over all timed batches; and all images over the wall time from start-up), time to the
first batch after entering ``with`` (or creating the iterator), CPU time of the main
process alone per batch (the workers are not counted) and as a share of wall time, and
peak memory (main process RSS, sum of the children's RSS, growth of /dev/shm).

The rows are measured in rounds (``--rounds R``, default 3): each round measures every
row once, in the order above (the equal-work rows first), and the rounds run one after
another. A shared machine's CPU speed drifts (by a quarter, over tens of seconds), so
one measurement per row would favour whichever row ran in a fast spell; interleaved, each
row's measurements are spread over the whole run. Each figure in the table is the median
over rounds of that row's figures in each round (peaks: the largest of any round). Each
ratio of crumpets to another row is taken within each round, where both rows ran in the
same stretch of the run, and printed as the median over rounds with every round's value,
the equal-work ones first. ``--rounds 1`` measures each row once. The table is printed
and written as Markdown, with the machine, to benchmarks/results.md. ``--soak B`` then
runs B batches of the TurboDataLoader, once, and prints RSS and /dev/shm at the start,
middle and end.

Run (1.5 to 2 minutes on 2 cores, a third of that per round; part of ``nox -s bench``):
    python benchmarks/throughput.py
    python benchmarks/throughput.py --images 300 --batches 10 --rounds 1 --out /tmp/results.md
    python benchmarks/throughput.py --cache ~/.cache/crumpets-bench --soak 2000

Figures from a busy machine are noise: measure on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import functools
import gc
import importlib.metadata
import math
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import skimage.data
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from crumpets.augment import ClassificationWorker
from crumpets.augment.presets import AUGMENTATION_TRAIN, INPUT_PARAMS_TRAIN
from crumpets.core import Reader, TurboDataLoader, Writer, unpack
from crumpets.torch import TorchTurboDataLoader

# albumentations (imported where the baseline is built) asks PyPI for a newer version on
# import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

BATCH = 64
SIZE = 224
HEIGHT, WIDTH = 375, 500
QUALITY = 90
MB = 1024**2
# Colour photos bundled with scikit-image (no download); stereo_motorcycle gives two.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)


# -- the dataset ---------------------------------------------------------------------------
def load_photos() -> list[np.ndarray]:
    """The bundled colour photos, as BGR arrays for cv2.imencode."""
    photos = []
    for name in PHOTOS:
        try:
            loaded = getattr(skimage.data, name)()
        except Exception:  # a scikit-image version that would download this one: skip it
            continue
        for im in loaded if isinstance(loaded, tuple) else (loaded,):
            if im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8:
                photos.append(cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    if not photos:
        raise RuntimeError("scikit-image ships none of the photos " + ", ".join(PHOTOS))
    return photos


def make_image(rng: np.random.Generator, photo: np.ndarray) -> np.ndarray:
    """A random crop of ``photo``, rescaled to about 500x375 (1 in 5 portrait), maybe
    mirrored, so that no two images of the set are alike."""
    h, w = (HEIGHT, WIDTH) if rng.random() < 0.8 else (WIDTH, HEIGHT)
    ph, pw = photo.shape[:2]
    # at least large enough to cover the output; up to 1.6 times more varies the content
    zoom = max(h / ph, w / pw) * rng.uniform(1.0, 1.6)
    ch, cw = min(ph, round(h / zoom)), min(pw, round(w / zoom))
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = photo[y : y + ch, x : x + cw]
    interp = cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR
    im = cv2.resize(crop, (w, h), interpolation=interp)
    return im[:, ::-1] if rng.random() < 0.5 else im


def make_dataset(directory: str, n: int, seed: int = 0) -> str:
    """Write (once) ``n`` JPEGs with labels into a dataset file; return its path."""
    path = os.path.join(directory, f"photos-{n}-{HEIGHT}x{WIDTH}-q{QUALITY}-seed{seed}.msgpack")
    if os.path.exists(path):
        return path
    os.makedirs(directory, exist_ok=True)
    photos = load_photos()
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with Writer(path) as writer:
        for i in range(n):
            im = make_image(rng, photos[i % len(photos)])
            ok, jpg = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
            if not ok:
                raise RuntimeError("cv2.imencode failed")
            writer.write({"key": f"{i:06d}", "image": jpg.tobytes(), "label": i % 1000})
    print(
        f"wrote {n} JPEGs from {len(photos)} photos to {path} "
        f"({os.path.getsize(path) / MB:.0f} MB, {time.perf_counter() - start:.1f} s)",
        file=sys.stderr,
    )
    return path


# -- measuring -----------------------------------------------------------------------------
def shm_used() -> int:
    return shutil.disk_usage("/dev/shm").used


def memory_now(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of ``proc``, sum of the RSS of its children)."""
    children = 0
    for child in proc.children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.NoSuchProcess:  # a child that ended between listing and asking
            pass
    return proc.memory_info().rss, children


class MemorySampler(threading.Thread):
    """Samples memory every ``interval`` s and keeps the peaks: main process RSS, sum of
    the children's RSS, and /dev/shm use above what it was when the sampler was made.

    It runs in the main process, so its own CPU time (``cpu``) is kept to be subtracted
    from the main process's.
    """

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval = interval
        self.proc = psutil.Process()
        self.shm0 = shm_used()
        self.peak_main = self.peak_children = self.peak_shm = 0
        self.cpu = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            main, children = memory_now(self.proc)
            self.peak_main = max(self.peak_main, main)
            self.peak_children = max(self.peak_children, children)
            self.peak_shm = max(self.peak_shm, shm_used() - self.shm0)
            self.cpu = time.thread_time()
            if self._done.wait(self.interval):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def main_cpu() -> float:
    """User + system CPU seconds of this process's threads; children are not included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Result:
    name: str
    workers: int
    median: float  # images/s, median over groups of one batch per worker
    mean: float  # images/s, the timed batches over their wall time
    overall: float | None = None  # images/s, every batch over the wall time from start
    first: float | None = None  # s to the first batch
    cpu_batch: float | None = None  # s of main-process CPU per batch
    cpu_share: float | None = None  # main-process CPU / wall time
    peak_main: int | None = None  # bytes
    peak_children: int | None = None
    peak_shm: int | None = None


def measure(
    name: str, workers: int, batches: Callable[[], Iterator[int]], warmup: int, timed: int
) -> Result:
    """Time ``warmup + timed`` batches from ``batches()``, which yields each batch's size.

    The generator starts its loader when first advanced, so that is when the clock starts;
    it is closed after the last batch, so shutting down is not timed.
    """
    print(f"{name}: {warmup} warm-up + {timed} timed batches ...", file=sys.stderr)
    sampler = MemorySampler()
    sampler.start()
    times: list[float] = []
    counts: list[int] = []
    cpu0 = sampler_cpu0 = 0.0
    gen = batches()
    start = time.perf_counter()
    try:
        for n in gen:
            times.append(time.perf_counter())
            counts.append(n)
            if len(times) == warmup:
                cpu0, sampler_cpu0 = main_cpu(), sampler.cpu
            if len(times) == warmup + timed:
                break
        cpu1, sampler_cpu1 = main_cpu(), sampler.cpu
    finally:
        sampler.stop()
        gen.close()
    if len(times) < warmup + timed:
        raise RuntimeError(f"{name}: got {len(times)} batches, wanted {warmup + timed}")
    # Workers run in lockstep, so their batches arrive together and single intervals swing
    # between ~0 and a whole group: the median is taken over groups of `workers` batches.
    step = min(workers, timed)
    rates = [
        sum(counts[i + 1 : i + 1 + step]) / (times[i + step] - times[i])
        for i in range(warmup - 1, warmup - 1 + timed - step + 1)
    ]
    window = times[-1] - times[warmup - 1]
    cpu = (cpu1 - cpu0) - (sampler_cpu1 - sampler_cpu0)
    return Result(
        name,
        workers,
        median=statistics.median(rates),
        mean=sum(counts[warmup:]) / window,
        overall=sum(counts) / (times[-1] - start),
        first=times[0] - start,
        cpu_batch=cpu / timed,
        cpu_share=cpu / window,
        peak_main=sampler.peak_main,
        peak_children=sampler.peak_children,
        peak_shm=sampler.peak_shm,
    )


# -- the ceiling and the same-work limit: one process, OpenCV calls only -------------------
def keep_freed_memory(limit: int = 32 << 20) -> None:
    """Let glibc's malloc keep up to ``limit`` bytes of freed memory (elsewhere: nothing),
    as crumpets' worker processes do: a process that frees an image's temporaries (the
    decoded pixels and their copies, several hundred KB each) otherwise hands them back to
    the kernel and faults them in again for the next image, which costs the same-work
    limit about a third of its speed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(-3, limit)  # M_MMAP_THRESHOLD
    mallopt(-1, limit)  # M_TRIM_THRESHOLD


def in_process(name: str, reader: Reader, work: Callable[[bytes], None], nworkers: int) -> Result:
    """Time ``work`` on every JPEG of ``reader``, a batch at a time as one worker does, in
    one child process set up as a worker is (one OpenCV thread, freed memory kept; this
    process and the baseline's workers keep their defaults); return the rates times
    ``nworkers`` (the mean divided by ``nworkers`` is the one process's images/s)."""
    print(f"{name}: {len(reader)} JPEGs in one process ...", file=sys.stderr)
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()

    def child() -> None:
        cv2.setNumThreads(1)
        keep_freed_memory()
        jpegs = [reader.get(i)["image"] for i in range(len(reader))]
        for data in jpegs[:BATCH]:  # warm caches and OpenCV's lazy initialisation
            work(data)
        rates = []
        start = time.perf_counter()
        for i in range(0, len(jpegs) - BATCH + 1, BATCH):
            t = time.perf_counter()
            for data in jpegs[i : i + BATCH]:
                work(data)
            rates.append(BATCH / (time.perf_counter() - t))
        results.put((statistics.median(rates), len(rates) * BATCH / (time.perf_counter() - start)))

    process = context.Process(target=child)
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{name}: the measuring process exited with {process.exitcode}")
    median, one = results.get()
    return Result(name, nworkers, median * nworkers, one * nworkers)


def ceiling(reader: Reader, nworkers: int) -> Result:
    """Decode + one warp per image in one process, single-threaded; scaled by nworkers."""
    out = np.empty((SIZE, SIZE, 3), np.uint8)

    def decode_and_warp(data: bytes) -> None:
        im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = im.shape[:2]
        s = SIZE / min(h, w)  # shortest side to 224, centred: the preset's scale 1
        matrix = np.array(
            [[s, 0.0, (SIZE - 1 - s * (w - 1)) / 2], [0.0, s, (SIZE - 1 - s * (h - 1)) / 2]]
        )
        cv2.warpAffine(im, matrix, (SIZE, SIZE), dst=out, flags=cv2.INTER_LINEAR)

    name = "ceiling: decode + warpAffine only (1 process x workers)"
    return in_process(name, reader, decode_and_warp, nworkers)


def same_work_limit(reader: Reader, nworkers: int, seed: int = 0) -> Result:
    """What ClassificationWorker + AUGMENTATION_TRAIN does to an image, in plain OpenCV in
    one process, single-threaded; scaled by nworkers (see the module docstring)."""
    name = "same-work limit: decode, warp, gamma/noise/blur (1 process x workers)"
    return in_process(name, reader, same_work(seed), nworkers)


def same_work(seed: int = 0) -> Callable[[bytes], None]:
    """The same-work limit's work on one JPEG: what ClassificationWorker +
    AUGMENTATION_TRAIN does to it, in plain OpenCV.

    The strengths are AUGMENTATION_TRAIN's (crumpets.augment.presets), restated here: this
    is the bar, so it shares no code with crumpets. It takes OpenCV's fastest paths, so
    that nothing crumpets calls is faster than the bar: warpAffine has SIMD paths for 1
    and 4 channels, not for 3 (RGBA is about twice as fast as BGR), and cv2.LUT is faster
    per plane than with a 3-channel table.
    """
    rng = np.random.default_rng(seed)
    # Noise: a random window of a table of standard normal samples, scaled (drawing
    # 150,000 fresh samples per image would cost about as much as decoding it).
    normals = rng.standard_normal(4 * 3 * SIZE * SIZE, dtype=np.float32)
    plane_size = SIZE * SIZE
    levels = np.arange(256, dtype=np.float64) / 255.0
    out = np.empty((3, SIZE, SIZE), np.uint8)
    planes = list(out)

    def augment(data: bytes) -> None:
        im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = im.shape[:2]
        z = rng.standard_normal(2).tolist()
        u = rng.random(18).tolist()
        # geometry: scale (short side to SIZE, times U(1, 1.25)) and aspect, mirror, then
        # shear, then rotation; source centre to target centre, shifted within the slack
        scale = SIZE / min(h, w) * (1.0 + 0.25 * u[0])
        stretch = math.sqrt(math.exp(0.1 * z[0]))
        sx, sy = scale * stretch, scale / stretch
        if u[1] < 0.5:
            sx = -sx
        shear = -0.05 + 0.1 * u[2]
        angle = math.radians(10.0 * z[1])
        c, s = math.cos(angle), math.sin(angle)
        a, b = (c + s * shear) * sx, s * sy
        d, e = (c * shear - s) * sx, c * sy
        tx = (SIZE - 1) / 2 - (2 * u[3] - 1) * max(abs(w * sx) - SIZE, 0) / 2
        ty = (SIZE - 1) / 2 - (2 * u[4] - 1) * max(abs(h * sy) - SIZE, 0) / 2
        cx, cy = (w - 1) / 2, (h - 1) / 2
        matrix = np.array([[a, b, tx - a * cx - b * cy], [d, e, ty - d * cx - e * cy]])
        rgba = cv2.cvtColor(im, cv2.COLOR_BGR2RGBA)
        warped = cv2.warpAffine(rgba, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR)
        cv2.mixChannels([warped], planes, [0, 0, 1, 1, 2, 2])  # R, G, B planes
        # gamma table: brightness, per-channel colour and contrast, each with p 0.5
        brightness, color, contrast = u[5] < 0.5, u[6] < 0.5, u[7] < 0.5
        if brightness or color or contrast:
            gamma = np.full(3, 4.0 ** -(0.6 * u[8] - 0.3) if brightness else 1.0)
            if color:
                gamma *= 4.0 ** -(0.4 * np.array(u[9:12]) - 0.2)
            y = levels ** gamma[:, None]
            if contrast:
                y = 0.5 + (y - 0.5) * (1.0 + 0.6 * u[12] - 0.3)
            table = np.clip(np.rint(255.0 * y), 0, 255).astype(np.uint8)
            for plane, row in zip(planes, table):
                cv2.LUT(plane, row, dst=plane)
        sigma = 0.5 * u[14]  # blur, sigma U(0, 0.5) pixels
        if u[13] < 0.5 and sigma >= 0.25:  # below, no pixel changes: no work
            for plane in planes:
                cv2.GaussianBlur(plane, (0, 0), sigma, dst=plane)
        if u[15] < 0.5:  # noise, sigma U(0.64, 6.4) grey levels
            start = int(u[16] * (len(normals) - 3 * plane_size))
            sigma = 64.0 * (0.01 + 0.09 * u[17])
            for plane in planes:
                window = normals[start : start + plane_size].reshape(SIZE, SIZE)
                start += plane_size
                cv2.addWeighted(plane, 1.0, window, sigma, 0.0, dst=plane, dtype=cv2.CV_8U)

    return augment


# -- the baseline: torch DataLoader + albumentations ---------------------------------------
def albumentations_pipeline(same_work: bool) -> Callable:
    """The baselines' albumentations pipeline; ``same_work`` adds the gamma, noise and blur
    that AUGMENTATION_TRAIN also applies, each with p 0.5."""
    import albumentations as A

    # Strengths close to AUGMENTATION_TRAIN: scale 1-1.25 of the short side keeps 48-75 % of
    # a 500x375 image; rotation sigma 10 degrees ~ uniform +-17; shear 0.05 ~ 3 degrees;
    # pixel operations with probability 0.5.
    ops = [
        A.RandomResizedCrop(size=(SIZE, SIZE), scale=(0.48, 0.75), ratio=(0.8, 1.25)),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-17, 17), shear=(-3, 3), p=1.0),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.0, p=0.5),
    ]
    if same_work:
        ops += [
            # brightness as gamma 4**-U(-0.3, 0.3): 0.66 to 1.52
            A.RandomGamma(gamma_limit=(66, 152), p=0.5),
            # noise sigma 0.64-6.4 grey levels (U(0.01, 0.1) * 64); blur sigma < 0.5 px
            A.GaussNoise(std_range=(0.0025, 0.025), p=0.5),
            A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 0.5), p=0.5),
        ]
    return A.Compose(ops)


class JpegDataset(Dataset):
    """The crumpets dataset file, decoded with OpenCV and augmented with albumentations."""

    def __init__(self, path: str, transform: Callable):
        self.reader = Reader(path)  # memory-mapped; survives fork and pickling
        self.transform = transform

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        sample = unpack(self.reader[index])
        im = cv2.imdecode(np.frombuffer(sample["image"], np.uint8), cv2.IMREAD_COLOR)
        im = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)  # crumpets delivers RGB too
        im = self.transform(image=im)["image"]
        return np.ascontiguousarray(im.transpose(2, 0, 1)), sample["label"]


def collate(samples: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([s[0] for s in samples]))  # uint8 NCHW
    labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    return images, labels


def single_threaded_opencv(worker_id: int) -> None:
    # one thread per worker process, as crumpets' workers use
    cv2.setNumThreads(1)


def torch_batches(loader: DataLoader) -> Iterator[int]:
    for images, _labels in loader:  # iter(loader) starts the workers
        yield len(images)


def baseline(path: str, nworkers: int, warmup: int, timed: int, same_work: bool) -> Result:
    dataset = JpegDataset(path, albumentations_pipeline(same_work))
    # One "epoch" as long as the measurement: no epoch boundary stalls the workers.
    sampler = RandomSampler(
        dataset,
        num_samples=(warmup + timed) * BATCH,
        generator=torch.Generator().manual_seed(0),
    )
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        sampler=sampler,
        num_workers=nworkers,
        collate_fn=collate,
        worker_init_fn=single_threaded_opencv,
        persistent_workers=True,
        drop_last=True,
    )

    name = "torch DataLoader + albumentations" + (
        ", same work (+gamma, noise, blur)" if same_work else ", no gamma/noise/blur"
    )
    result = measure(name, nworkers, functools.partial(torch_batches, loader), warmup, timed)
    # Persistent workers live as long as the loader's iterator: end them before the next
    # loader competes with them for the cores.
    del loader
    gc.collect()
    return result


# -- crumpets ------------------------------------------------------------------------------
def crumpets_worker(gpu_augmentation: bool = False) -> ClassificationWorker:
    return ClassificationWorker(
        ((3, SIZE, SIZE), np.uint8),
        ((1,), np.int64),
        image_params=INPUT_PARAMS_TRAIN,
        image_rng=AUGMENTATION_TRAIN,
        gpu_augmentation=gpu_augmentation,
    )


def crumpets_loader(
    path: str, nworkers: int, batches: int, use_torch: bool, gpu_augmentation: bool = False
) -> TurboDataLoader:
    reader = Reader(path)
    options = dict(shuffle=True, seed=0, drop_last=True)
    worker = crumpets_worker(gpu_augmentation)
    if use_torch:
        loader = TorchTurboDataLoader(reader, BATCH, worker, nworkers, device="cpu", **options)
    else:
        loader = TurboDataLoader(reader, BATCH, worker, nworkers, **options)
    # One "epoch" as long as the measurement, like the baseline's sampler.
    loader.set_epoch_iterations(batches)
    return loader


def crumpets(
    path: str, nworkers: int, warmup: int, timed: int, use_torch: bool, gpu_split: bool = False
) -> Result:
    loader = crumpets_loader(path, nworkers, warmup + timed, use_torch, gpu_split)

    def batches() -> Iterator[int]:
        with loader:
            for _, mini_batches in loader:
                yield sum(len(mb["label"]) for mb in mini_batches)

    name = "crumpets TorchTurboDataLoader (cpu)" if use_torch else "crumpets TurboDataLoader"
    if gpu_split:
        name += ", gamma/noise/blur left to a GPU"
    return measure(name, nworkers, batches, warmup, timed)


def soak(path: str, nworkers: int, total: int) -> list[str]:
    """RSS and /dev/shm at the start, middle and end of ``total`` batches."""
    print(f"soak: {total} batches of TurboDataLoader ...", file=sys.stderr)
    proc = psutil.Process()
    shm0 = shm_used()
    loader = crumpets_loader(path, nworkers, total, use_torch=False)
    # "start" once every buffer set has been written: /dev/shm pages count when first touched
    first = min(total, 2 * nworkers + 1)
    marks = {first: "start", max(first, total // 2): "middle", total: "end"}
    lines = [
        f"Soak: {total} batches of {BATCH}, {nworkers} workers, TurboDataLoader "
        "(/dev/shm: growth since before the loader started)",
        "",
        "| point | batch | main RSS (MB) | children RSS (MB) | /dev/shm (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    start = time.perf_counter()
    with loader:
        for done, (_, mini_batches) in enumerate(loader, 1):
            del mini_batches  # hold no buffer set while sampling
            if done in marks:
                main, children = memory_now(proc)
                shm = (shm_used() - shm0) / MB
                lines.append(
                    f"| {marks[done]} | {done} | {main / MB:.0f} | {children / MB:.0f} "
                    f"| {shm:.1f} |"
                )
    lines += ["", f"{total * BATCH / (time.perf_counter() - start):,.0f} images/s overall."]
    return lines


# -- reporting -----------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores ({usable} usable), {platform.machine()}",
        f"- memory: {psutil.virtual_memory().total / 1024**3:.0f} GiB, "
        f"/dev/shm {shutil.disk_usage('/dev/shm').total / 1024**3:.0f} GiB",
        f"- Python {platform.python_version()}, numpy {np.__version__}, "
        f"OpenCV {cv2.__version__}, torch {torch.__version__}, "
        f"albumentations {version('albumentations')}",
        f"- crumpets-core {version('crumpets-core')}, "
        f"crumpets-augment {version('crumpets-augment')}, "
        f"crumpets-torch {version('crumpets-torch')}",
    ]


def fmt(value: float | None, pattern: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value / scale, pattern)


def table(results: list[Result]) -> list[str]:
    lines = [
        "| loader | workers | img/s median | img/s mean | img/s from start | first batch (s) "
        "| main CPU/batch (ms) | main CPU % | peak main RSS (MB) | peak children RSS (MB) "
        "| peak /dev/shm (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cells = [
            r.name,
            str(r.workers),
            fmt(r.median, ",.0f"),
            fmt(r.mean, ",.0f"),
            fmt(r.overall, ",.0f"),
            fmt(r.first, ".2f"),
            fmt(r.cpu_batch, ".1f", 1e-3),
            fmt(r.cpu_share, ".1%"),
            fmt(r.peak_main, ".0f", MB),
            fmt(r.peak_children, ".0f", MB),
            fmt(r.peak_shm, ".1f", MB),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# (crumpets row, other row) pairs of ratios: at equal work first, then the comparisons where
# one side does less (the gpu-split workers leave the pixel operations to a GPU, so the
# ceiling is their equal-work bar).
EQUAL_WORK = (
    ("numpy", "same-work baseline"),
    ("numpy", "same-work limit"),
    ("torch", "same-work baseline"),
    ("torch", "same-work limit"),
    ("gpu split", "ceiling"),
)
LESS_WORK = (
    ("numpy", "baseline"),
    ("numpy", "ceiling"),
    ("torch", "baseline"),
    ("torch", "ceiling"),
    ("gpu split", "baseline"),
)
# rows of the table, and the order in which each round measures them: the equal-work rows
# first, so that those compared at equal work run close together in time
ORDER = (
    "same-work limit",
    "same-work baseline",
    "numpy",
    "torch",
    "ceiling",
    "baseline",
    "gpu split",
)


def over_rounds(rounds: list[Result]) -> Result:
    """One row's figures from its rounds: the median of each, the max of the peaks."""
    figures: dict[str, Any] = {}
    for field in dataclasses.fields(Result)[2:]:  # after name and workers
        values = [getattr(r, field.name) for r in rounds]
        if None in values:  # not measured for this row (the in-process ones)
            figures[field.name] = None
        elif field.name.startswith("peak_"):
            figures[field.name] = max(values)
        else:
            figures[field.name] = statistics.median(values)
    return Result(rounds[0].name, rounds[0].workers, **figures)


def ratios(rounds: list[dict[str, Result]]) -> list[str]:
    """Each pair's ratios within each round, where both rows ran close in time, so that a
    drift in CPU speed over the run moves both sides alike; then the median over rounds."""
    lines = []
    for title, pairs in (
        ("Equal work (what ClassificationWorker + AUGMENTATION_TRAIN does):", EQUAL_WORK),
        ("Where one side does less:", LESS_WORK),
    ):
        lines += ["", title, ""]
        for key, other in pairs:
            if key not in rounds[0] or other not in rounds[0]:
                continue
            by_median = [r[key].median / r[other].median for r in rounds]
            by_mean = [r[key].mean / r[other].mean for r in rounds]
            pair = f"{rounds[0][key].name} / {rounds[0][other].name}"
            if len(rounds) == 1:
                lines.append(f"- {pair}: {by_median[0]:.2f}x (median), {by_mean[0]:.2f}x (mean)")
                continue
            each = ", ".join(f"{x:.2f}" for x in by_median)
            lines.append(
                f"- {pair}: {statistics.median(by_median):.2f}x (median of {len(rounds)} "
                f"rounds: {each}), mean-based {statistics.median(by_mean):.2f}x"
            )
    return lines[1:]


def main() -> None:
    default_workers = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the dataset")
    parser.add_argument(
        "--batches",
        type=int,
        help="timed batches per loader and round (default: max(60, 10 x workers))",
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed batches first (default: max(5, 2 x workers))"
    )
    parser.add_argument("--workers", type=int, default=default_workers, help="default: cores")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure every row once per round, rounds one after another; figures are the "
        "medians over rounds (default: 3)",
    )
    parser.add_argument("--cache", help="keep the dataset in this folder (default: a temp dir)")
    parser.add_argument(
        "--gpu-split",
        action="store_true",
        help="also time the TurboDataLoader's workers with gpu_augmentation=True: what they "
        "deliver on a machine whose GPU Randomizer applies gamma, noise and blur",
    )
    parser.add_argument("--soak", type=int, default=0, metavar="B", help="then run B batches")
    parser.add_argument(
        "--out", default=str(Path(__file__).with_name("results.md")), help="Markdown file"
    )
    args = parser.parse_args()
    # Workers start together, so their first batches come in a burst (and the loaders queue
    # 2 per worker): skip those, and time enough rounds that the mean is not one burst.
    if args.warmup is None:
        args.warmup = max(5, 2 * args.workers)
    if args.batches is None:
        args.batches = max(60, 10 * args.workers)
    if args.warmup < 1 or args.batches < 1 or args.rounds < 1 or args.images < BATCH:
        parser.error(f"need --warmup, --batches and --rounds >= 1, and --images >= {BATCH}")

    directory = args.cache or tempfile.mkdtemp(prefix="crumpets-bench-")
    try:
        path = make_dataset(directory, args.images)
        # One OpenCV thread, as in every loader's workers, from here on: it also keeps the
        # forked processes (the baseline's workers, the in-process measurements) from
        # inheriting a busy OpenCV thread pool.
        cv2.setNumThreads(1)
        n = args.workers
        reader = Reader(path)
        warmup, timed = args.warmup, args.batches
        rows: dict[str, Callable[[], Result]] = {
            "same-work limit": lambda: same_work_limit(reader, n),
            "same-work baseline": lambda: baseline(path, n, warmup, timed, same_work=True),
            "numpy": lambda: crumpets(path, n, warmup, timed, use_torch=False),
            "torch": lambda: crumpets(path, n, warmup, timed, use_torch=True),
            "ceiling": lambda: ceiling(reader, n),
            "baseline": lambda: baseline(path, n, warmup, timed, same_work=False),
        }
        if args.gpu_split:
            rows["gpu split"] = lambda: crumpets(
                path, n, warmup, timed, use_torch=False, gpu_split=True
            )
        order = [key for key in ORDER if key in rows]
        # Round-robin: every row once per round, so each row's measurements are spread
        # over the whole run rather than bunched in one stretch of it.
        rounds = []
        for i in range(args.rounds):
            print(f"round {i + 1} of {args.rounds}", file=sys.stderr)
            rounds.append({key: rows[key]() for key in order})
        results = {key: over_rounds([r[key] for r in rounds]) for key in order}
        one_limit = results["same-work limit"].mean / n
        one = results["ceiling"].mean / n
        soak_lines = soak(path, n, args.soak) if args.soak else []
    finally:
        if not args.cache:
            shutil.rmtree(directory, ignore_errors=True)

    rounds_text = (
        "each row measured once"
        if args.rounds == 1
        else f"{args.rounds} rounds, each measuring every row once in the order of the table"
    )
    medians = (
        ""
        if args.rounds == 1
        else f"Every figure in the table is the median over the {args.rounds} rounds of that "
        "row's figure in each round, the peaks the largest in any round; each ratio is the "
        "median over rounds of the ratio within each round (each round's in brackets, in "
        "the order run; mean-based: of img/s mean), so it can differ from the ratio of the "
        "table's figures. "
    )
    report = [
        "# crumpets throughput",
        "",
        "`" + " ".join(["python benchmarks/throughput.py", *sys.argv[1:]]) + "`",
        "",
        *machine(),
        "",
        f"{args.images} JPEGs of about {WIDTH}x{HEIGHT} (quality {QUALITY}, cut from "
        f"scikit-image's photos) to {SIZE}x{SIZE} RGB uint8, batch {BATCH}, {n} workers; "
        f"{args.batches} timed batches after {args.warmup} warm-up batches per loader; "
        f"{rounds_text}. Same-work limit: one process decodes, warps and applies the pixel "
        f"operations at {one_limit:,.0f} images/s, times {n}; ceiling: one process decodes "
        f"and warps at {one:,.0f} images/s, times {n}.",
        "",
        *table(list(results.values())),
        "",
        *ratios(rounds),
        "",
        medians + "img/s median: over groups of one batch per worker (sliding), since "
        "workers hand in batches together; mean: all timed batches over their wall time. "
        "Main CPU: user + system time of the main process only (not its workers). RSS of "
        "children counts pages they share (libraries, the mapped dataset) once per child. "
        "/dev/shm: growth over its use before the loader started.",
    ]
    if soak_lines:
        report += ["", *soak_lines]
    text = "\n".join(report) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
