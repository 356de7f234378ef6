"""Throughput of crumpets against a ceiling and a torch DataLoader baseline, on the same data.

In one run, on one ImageNet-like dataset file (N JPEGs of about 500x375, quality 90, cut
from the photos scikit-image ships), this measures:

- ceiling: one process decoding each JPEG (cv2.imdecode) and doing one cv2.warpAffine to
  224x224 with single-threaded OpenCV, times the number of workers: what the workers could
  deliver if loading, augmenting and handing over batches cost nothing;
- baseline: torch.utils.data.DataLoader (same workers, batch 64, persistent workers) over a
  Dataset reading the same file, cv2.imdecode and an albumentations pipeline of the same
  kind of operations (RandomResizedCrop, HorizontalFlip, Affine with rotation and shear,
  ColorJitter), collated to a uint8 NCHW tensor;
- crumpets: TurboDataLoader (numpy) and TorchTurboDataLoader(device='cpu') with
  ClassificationWorker + AUGMENTATION_TRAIN, 3x224x224 uint8, batch 64; with
  ``--gpu-split`` also the TurboDataLoader whose workers leave gamma, noise and blur to a
  GPU Randomizer (gpu_augmentation=True), which this benchmark does not run.

For each: images/s (after a warm-up: median over rounds of one batch per worker, mean
over all timed batches; and all images over the wall time from start-up), time to the
first batch after entering ``with`` (or creating the iterator), CPU time of the main
process alone per batch (the workers are not counted) and as a share of wall time, and
peak memory (main process RSS, sum of the children's RSS, growth of /dev/shm). Ratios
crumpets/baseline and crumpets/ceiling come from the same run. The table is printed and
written as Markdown, with the machine, to benchmarks/results.md. ``--soak B`` then runs B
batches of the TurboDataLoader and prints RSS and /dev/shm at the start, middle and end.

Run (about a minute on 2 cores; part of ``nox -s bench``):
    python benchmarks/throughput.py
    python benchmarks/throughput.py --images 300 --batches 10 --out /tmp/results.md
    python benchmarks/throughput.py --cache ~/.cache/crumpets-bench --soak 2000

Figures from a busy machine are noise: measure on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import importlib.metadata
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
    median: float  # images/s, median over rounds of one batch per worker
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
    # between ~0 and a whole round: the median is taken over rounds of `workers` batches.
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


# -- the ceiling ---------------------------------------------------------------------------
def ceiling(reader: Reader, nworkers: int) -> tuple[Result, float]:
    """Decode + one warp per image in this process, single-threaded; scaled by nworkers."""
    # One thread, as in every loader's workers. It stays so for the rest of the run, which
    # also keeps the baseline's fork from inheriting a busy OpenCV thread pool.
    cv2.setNumThreads(1)
    jpegs = [reader.get(i)["image"] for i in range(len(reader))]
    out = np.empty((SIZE, SIZE, 3), np.uint8)

    def decode_and_warp(data: bytes) -> None:
        im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        h, w = im.shape[:2]
        s = SIZE / min(h, w)  # shortest side to 224, centred: the preset's scale 1
        matrix = np.array(
            [[s, 0.0, (SIZE - 1 - s * (w - 1)) / 2], [0.0, s, (SIZE - 1 - s * (h - 1)) / 2]]
        )
        cv2.warpAffine(im, matrix, (SIZE, SIZE), dst=out, flags=cv2.INTER_LINEAR)

    print(f"ceiling: decode + warpAffine of {len(jpegs)} JPEGs in one process ...", file=sys.stderr)
    for data in jpegs[:BATCH]:  # warm caches and OpenCV's lazy initialisation
        decode_and_warp(data)
    rates = []
    start = time.perf_counter()
    for i in range(0, len(jpegs) - BATCH + 1, BATCH):  # a batch per group, as one worker does
        t = time.perf_counter()
        for data in jpegs[i : i + BATCH]:
            decode_and_warp(data)
        rates.append(BATCH / (time.perf_counter() - t))
    one = len(rates) * BATCH / (time.perf_counter() - start)
    median = statistics.median(rates)
    return Result("ceiling (1 process x workers)", nworkers, median * nworkers, one * nworkers), one


# -- the baseline: torch DataLoader + albumentations ---------------------------------------
def albumentations_pipeline(noise_blur: bool) -> Callable:
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
    if noise_blur:  # what AUGMENTATION_TRAIN also does: noise sigma 0.6-6 levels, blur <0.5 px
        ops += [
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


def baseline(path: str, nworkers: int, warmup: int, timed: int, noise_blur: bool) -> Result:
    dataset = JpegDataset(path, albumentations_pipeline(noise_blur))
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

    name = "torch DataLoader + albumentations" + (" (+noise, blur)" if noise_blur else "")
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


def ratios(results: dict[str, Result]) -> list[str]:
    lines = []
    for key in ("numpy", "torch", "gpu split"):
        if key not in results:
            continue
        r = results[key]
        for other in ("baseline", "ceiling"):
            o = results[other]
            lines.append(
                f"- {r.name} / {o.name}: {r.median / o.median:.2f}x (median), "
                f"{r.mean / o.mean:.2f}x (mean)"
            )
    return lines


def main() -> None:
    default_workers = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the dataset")
    parser.add_argument(
        "--batches", type=int, help="timed batches per loader (default: max(60, 10 x workers))"
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed batches first (default: max(5, 2 x workers))"
    )
    parser.add_argument("--workers", type=int, default=default_workers, help="default: cores")
    parser.add_argument("--cache", help="keep the dataset in this folder (default: a temp dir)")
    parser.add_argument(
        "--noise-blur",
        action="store_true",
        help="also add GaussNoise and GaussianBlur to the baseline, as AUGMENTATION_TRAIN has",
    )
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
    if args.warmup < 1 or args.batches < 1 or args.images < BATCH:
        parser.error(f"need --warmup >= 1, --batches >= 1 and --images >= {BATCH}")

    directory = args.cache or tempfile.mkdtemp(prefix="crumpets-bench-")
    try:
        path = make_dataset(directory, args.images)
        n = args.workers
        reader = Reader(path)
        ceil, one = ceiling(reader, n)
        results = {
            "ceiling": ceil,
            "baseline": baseline(path, n, args.warmup, args.batches, args.noise_blur),
            "numpy": crumpets(path, n, args.warmup, args.batches, use_torch=False),
            "torch": crumpets(path, n, args.warmup, args.batches, use_torch=True),
        }
        if args.gpu_split:
            results["gpu split"] = crumpets(
                path, n, args.warmup, args.batches, use_torch=False, gpu_split=True
            )
        soak_lines = soak(path, n, args.soak) if args.soak else []
    finally:
        if not args.cache:
            shutil.rmtree(directory, ignore_errors=True)

    report = [
        "# crumpets throughput",
        "",
        "`" + " ".join(["python benchmarks/throughput.py", *sys.argv[1:]]) + "`",
        "",
        *machine(),
        "",
        f"{args.images} JPEGs of about {WIDTH}x{HEIGHT} (quality {QUALITY}, cut from "
        f"scikit-image's photos) to {SIZE}x{SIZE} RGB uint8, batch {BATCH}, {n} workers; "
        f"{args.batches} timed batches after {args.warmup} warm-up batches per loader. "
        f"Ceiling: one process decodes and warps at {one:,.0f} images/s, times {n}.",
        "",
        *table(list(results.values())),
        "",
        *ratios(results),
        "",
        "img/s median: over rounds of one batch per worker (sliding), since workers hand in "
        "batches together; mean: all timed batches over their wall time. "
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
