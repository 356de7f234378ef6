"""crumpets on a GPU, in one command: the CUDA tests, then what the GPU path delivers.

On a machine with a CUDA build of torch (sized for a minute or two on one GPU and 16
cores; it must stay under five), in this order:

1. tests: ``pytest tests/torch`` in a subprocess (where pytest is importable), so every
   device-parametrised test also runs on CUDA. tests/torch/test_install.py is left out:
   it checks the development install (one src/ per package, the pinned CPU torch), which
   a wheel install with a CUDA torch is not. A failure does not stop the benchmarks, but
   the script exits 1 at the end.
2. pixel ops: images/s of crumpets.torch.augmentation_cuda's add_gamma, add_blur and
   add_noise_rgb, each alone, the three in a row, and through ``randomize``, on uint8
   3x224x224 batches of 64 and 256 already on the GPU, every operation on for every
   sample with parameters drawn by a seeded loop (gamma_gray 0.5..2, gamma_color 0.7..1.4
   per channel, contrast -0.5..0.5, blur 0.002..0.01 of the width, noise 0.02..0.1).
   Median of 10 calls after 3 warm-up calls, each call between two
   ``torch.cuda.synchronize()``.
3. transfer: GB/s that TorchTurboDataLoader(device='cuda:0') delivers on the device,
   with a numpy worker that only fills each 3x224x224 uint8 image (batch 64), against
   the raw copy of a pinned tensor of that batch's size (``.to('cuda', non_blocking=True)``)
   and against the same loader on the CPU (no copy: what the workers hand over).
4. end-to-end: images/s of TorchTurboDataLoader(device='cuda:0') with ClassificationWorker
   + AUGMENTATION_TRAIN at 224x224, batch 64, with gpu_augmentation False and True, on
   the JPEGs of benchmarks/throughput.py (about 500x375, cut from scikit-image's photos).
   ``--data FILE`` names such a dataset file; without it, one is made with throughput.py's
   ``make_dataset`` if scikit-image can be imported, else this part is skipped with a
   message. The clock stops after ``torch.cuda.synchronize()``, so the images counted
   have been copied and augmented.
5. gpu decode: images/s and the main process's CPU % (its CPU time over wall time, all
   its threads; the workers are other processes) of TorchTurboDataLoader with
   ``gpu_decode=True`` (the workers send the JPEG bytes; nvJPEG decodes, one batched
   grid_sample warps, the pixel operations follow on the GPU) against the CPU workers
   with ``gpu_augmentation=True``, at equal work (the same dataset, worker, preset, batch
   and seed), for 1, 2 and 4 workers; and the device memory the decoder holds: what the
   first batched nvJPEG decode of a batch takes from the device (``cudaMemGetInfo``
   before and after, which sees nvJPEG's own buffers) and from torch's allocator. Where
   torchvision cannot be imported, the rows say so (benchmarks/README.md: how to carry its
   wheel). With ``--device cpu`` the same code runs with the CPU stand-in decoder.
6. trainer: ms per training step of crumpets.train.Trainer against the plain loop of
   benchmarks/trainer_overhead.py (forward, cross-entropy, backward, SGD step, accuracy
   read with ``.item()`` every step), the same DigitNet on the GPU and the same loader,
   epochs alternating after one warm-up epoch each. Data: scikit-learn's digits
   (``crumpets.train.demo.pack_digits``, as trainer_overhead.py); without scikit-learn,
   synthetic 16x16 digits from a numpy worker. Both loops read the same loader, so the
   comparison stays fair; the row says which data ran. Figures: synchronised epoch wall
   time per step, and the median time between backward passes (the host's view).

It prints the machine (GPU, torch, CUDA, CPUs) and a Markdown table. Without CUDA it says
so in one line and exits 0. ``--device cpu`` runs parts 2 to 5 on CPU tensors (the tests
and the raw pinned copy need CUDA), with ``--quick`` at small sizes: that exercises every
code path of this script where there is no GPU.

Run:
    python benchmarks/gpu.py
    python benchmarks/gpu.py --data photos-512-375x500-q90-seed0.msgpack
    python benchmarks/gpu.py --device cpu --quick

benchmarks/README.md says how to run it on a machine where pip cannot download.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import trainer_overhead  # benchmarks/, beside this file

from crumpets.augment import ClassificationWorker
from crumpets.augment.presets import AUGMENTATION_TRAIN, INPUT_PARAMS_TRAIN
from crumpets.core import BufferWorker, Reader, pack
from crumpets.torch import TorchTurboDataLoader
from crumpets.torch.augmentation_cuda import add_blur, add_gamma, add_noise_rgb
from crumpets.torch.decode import NvjpegDecoder
from crumpets.torch.randomizer import randomize
from crumpets.train.demo import pack_digits

REPO = Path(__file__).resolve().parents[1]
GB = 1e9
MB = 1e6
Row = tuple[str, str, str]  # section, what was measured, figure
CUDA_NAME = re.compile(r"(^|[\[_-])cuda($|[\]_-])")


@dataclass(frozen=True)
class Sizes:
    side: int  # images are 3 x side x side uint8
    op_batches: tuple[int, ...]
    op_warmup: int
    op_repeats: int
    batch: int  # loader batch size
    transfer_warmup: int
    transfer_batches: int
    e2e_warmup: int | None  # None: from the number of workers, as throughput.py
    e2e_batches: int | None
    trainer_epochs: int  # timed epochs of each loop, after one warm-up epoch each
    trainer_steps: int | None  # steps per epoch; None: the whole training set


FULL = Sizes(
    side=224,
    op_batches=(64, 256),
    op_warmup=3,
    op_repeats=10,
    batch=64,
    transfer_warmup=20,
    transfer_batches=300,
    e2e_warmup=None,
    e2e_batches=None,
    trainer_epochs=6,
    trainer_steps=None,
)
QUICK = Sizes(
    side=64,
    op_batches=(8, 16),
    op_warmup=1,
    op_repeats=3,
    batch=16,
    transfer_warmup=2,
    transfer_batches=10,
    e2e_warmup=2,
    e2e_batches=6,
    trainer_epochs=2,
    trainer_steps=6,
)


# -- timing --------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for the device's queued work; without this, CUDA timings measure launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    call: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> float:
    """Median wall time of ``call()`` between synchronisations."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loader_rate(
    loader: TorchTurboDataLoader,
    device: torch.device,
    warmup: int,
    timed: int,
    amount: Callable[[dict], int],
) -> float:
    """``amount`` per second over ``timed`` batches after ``warmup`` batches: the clock
    starts when the warm-up batches are done on the device, stops when the last is."""
    loader.set_epoch_iterations(warmup + timed)  # one "epoch" as long as the measurement
    total, start = 0, time.perf_counter()
    with loader:
        for done, (_, mini_batches) in enumerate(loader, 1):
            if done > warmup:
                total += sum(amount(mb) for mb in mini_batches)
            elif done == warmup:
                sync(device)
                start = time.perf_counter()
        sync(device)
        elapsed = time.perf_counter() - start
    return total / elapsed


# -- 1. the CUDA tests ---------------------------------------------------------------------
def run_tests(timeout: float = 180.0) -> tuple[Row, bool]:
    """pytest tests/torch in a subprocess; (row, passed)."""
    if importlib.util.find_spec("pytest") is None:
        return ("tests", "pytest tests/torch", "skipped: pytest is not installed"), True
    if not (REPO / "tests" / "torch").is_dir():
        return ("tests", "pytest tests/torch", f"skipped: no tests/torch in {REPO}"), True
    print("tests: pytest tests/torch ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "junit.xml")
        command = [
            sys.executable,
            "-m",
            "pytest",
            "tests/torch",
            "-q",
            "-p",
            "no:cacheprovider",
            "--ignore=tests/torch/test_install.py",
            f"--junitxml={report}",
        ]
        try:
            proc = subprocess.run(
                command, cwd=REPO, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return ("tests", "pytest tests/torch", f"FAILED: no result in {timeout:.0f} s"), False
        counts = junit_counts(report) if os.path.exists(report) else None
    passed = proc.returncode == 0
    if not passed:
        print(proc.stdout[-6000:] + proc.stderr[-3000:], file=sys.stderr)
    if counts is None:
        figure = f"pytest exit code {proc.returncode}"
    else:
        figure = (
            f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
            f"(CUDA: {counts['cuda passed']} passed, {counts['cuda failed']} failed, "
            f"{counts['cuda skipped']} skipped)"
        )
    return ("tests", "pytest tests/torch", figure if passed else "FAILED: " + figure), passed


def junit_counts(path: str) -> dict[str, int]:
    """Passed/failed/skipped test cases in a JUnit XML report, also for those named for
    CUDA: the 'cuda' parameter of tests/torch/conftest.py's device fixture (``[cuda-...]``)
    or 'cuda' as a word of the test function's name."""
    counts = dict.fromkeys(
        ["passed", "failed", "skipped", "cuda passed", "cuda failed", "cuda skipped"], 0
    )
    for case in ET.parse(path).iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            outcome = "failed"
        elif "skipped" in tags:
            outcome = "skipped"
        else:
            outcome = "passed"
        counts[outcome] += 1
        if CUDA_NAME.search(case.get("name", "")):
            counts[f"cuda {outcome}"] += 1
    return counts


# -- 2. pixel operations -------------------------------------------------------------------
def pixel_params(n: int, seed: int = 0) -> list[dict]:
    """Every pixel operation on for every sample, with realistic strengths."""
    rng = random.Random(seed)
    return [
        {
            "gamma_gray": rng.uniform(0.5, 2.0),
            "gamma_color": [rng.uniform(0.7, 1.4) for _ in range(3)],
            "contrast": rng.uniform(-0.5, 0.5),
            "blur": rng.uniform(0.002, 0.01),
            "noise": rng.uniform(0.02, 0.1),
            "noise_seed": rng.randrange(2**31),
        }
        for _ in range(n)
    ]


def gamma_blur_noise(images: torch.Tensor, augs: list[dict]) -> torch.Tensor:
    return add_noise_rgb(add_blur(add_gamma(images, augs), augs), augs)


def ops_rates(device: torch.device, sizes: Sizes, n: int) -> dict[str, float]:
    """Images/s of each operation on a batch of ``n`` images already on ``device``."""
    side = sizes.side
    print(f"pixel ops: batch {n} of 3x{side}x{side} ...", file=sys.stderr)
    generator = torch.Generator(device).manual_seed(0)
    images = torch.randint(
        0, 256, (n, 3, side, side), dtype=torch.uint8, device=device, generator=generator
    )
    augs = pixel_params(n)
    ops = {
        "add_gamma": add_gamma,
        "add_blur": add_blur,
        "add_noise_rgb": add_noise_rgb,
        "gamma + blur + noise": gamma_blur_noise,
    }
    rates = {}
    for name, op in ops.items():
        seconds = median_seconds(
            lambda op=op: op(images, augs), device, sizes.op_warmup, sizes.op_repeats
        )
        rates[name] = n / seconds
    # randomize leaves the given dicts as they are: every call does all the work
    seconds = median_seconds(
        lambda: randomize(images, augs), device, sizes.op_warmup, sizes.op_repeats
    )
    rates["randomize"] = n / seconds
    return rates


def bench_pixel_ops(device: torch.device, sizes: Sizes) -> list[Row]:
    by_batch = {n: ops_rates(device, sizes, n) for n in sizes.op_batches}
    what = f"3x{sizes.side}x{sizes.side} uint8 on {device}, batch"
    rows = []
    for name in by_batch[sizes.op_batches[0]]:
        figure = "; ".join(f"{n}: {rates[name]:,.0f}" for n, rates in by_batch.items())
        rows.append(("pixel ops", f"{name}, {what}", f"{figure} img/s"))
    return rows


# -- 3. host-to-device transfer ------------------------------------------------------------
class FillWorker(BufferWorker):
    """Fills each sample's 3 x side x side uint8 image with one value: a numpy worker that
    does next to nothing, so the loader's hand-over and copy are what is measured."""

    def __init__(self, side: int, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("image", ((3, side, side), np.uint8))
        self.add_buffer("label", ((1,), np.int64))
        self.written_in_full.add("image")  # prepare writes all of it: no reset pass first

    def prepare(self, sample, batch, buffers):
        buffers["image"].fill(sample["i"] % 256)
        buffers["label"][0] = sample["i"]


def batch_bytes(mini_batch: dict) -> int:
    return sum(
        v.numel() * v.element_size() for v in mini_batch.values() if isinstance(v, torch.Tensor)
    )


def loader_gbps(device: torch.device, sizes: Sizes, workers: int) -> float:
    samples = [pack({"i": i}) for i in range(8 * sizes.batch)]
    loader = TorchTurboDataLoader(
        samples, sizes.batch, FillWorker(sizes.side), workers, device=device, seed=0
    )
    rate = loader_rate(loader, device, sizes.transfer_warmup, sizes.transfer_batches, batch_bytes)
    return rate / GB


def pinned_copy_gbps(device: torch.device, sizes: Sizes) -> float:
    """The same batch's image bytes, from one pinned tensor, with plain torch."""
    host = torch.zeros((sizes.batch, 3, sizes.side, sizes.side), dtype=torch.uint8)
    host = host.pin_memory()
    count = sizes.transfer_batches

    def copies() -> None:
        for _ in range(count):
            host.to(device, non_blocking=True)

    seconds = median_seconds(copies, device, 1, 3)
    return count * host.numel() / seconds / GB


def bench_transfer(device: torch.device, sizes: Sizes, workers: int) -> list[Row]:
    side, batch = sizes.side, sizes.batch
    nbytes = batch * 3 * side * side
    what = f"batch {batch} of 3x{side}x{side} uint8 ({nbytes / MB:.1f} MB)"
    rows = []
    print(f"transfer: loader to {device}, {workers} workers ...", file=sys.stderr)
    on_device = loader_gbps(device, sizes, workers)
    if device.type == "cuda":
        print("transfer: pinned tensor .to() and the loader on the CPU ...", file=sys.stderr)
        raw = pinned_copy_gbps(device, sizes)
        on_cpu = loader_gbps(torch.device("cpu"), sizes, workers)
        rows.append(
            (
                "transfer",
                f"pinned tensor .to('{device}', non_blocking=True), {what}",
                f"{raw:.1f} GB/s",
            )
        )
        rows.append(
            (
                "transfer",
                f"TorchTurboDataLoader(device='{device}'), numpy worker, {workers} workers",
                f"{on_device:.1f} GB/s ({on_device / raw:.0%} of the pinned copy)",
            )
        )
        rows.append(
            (
                "transfer",
                "the same loader with device='cpu' (no copy: what the workers hand over)",
                f"{on_cpu:.1f} GB/s",
            )
        )
    else:
        rows.append(
            (
                "transfer",
                f"TorchTurboDataLoader(device='cpu'), numpy worker, {workers} workers, {what}",
                f"{on_device:.2f} GB/s (no copy; the pinned copy needs CUDA)",
            )
        )
    return rows


# -- 4. end to end -------------------------------------------------------------------------
def dataset(args: argparse.Namespace, tmp: str) -> tuple[str | None, str]:
    """(dataset file or None, what it is or why there is none)."""
    if args.data:
        return args.data, Path(args.data).name
    try:
        import throughput  # benchmarks/throughput.py: needs scikit-image (and psutil)
    except ImportError as exc:
        return None, (
            f"skipped: no --data FILE, and throughput.py cannot make one here ({exc}); "
            "pass --data with a dataset file made where scikit-image is installed "
            "(benchmarks/README.md says how)"
        )
    path = throughput.make_dataset(args.cache or tmp, args.images)
    return path, f"{args.images} JPEGs of throughput.py"


def loader_speed(
    path: str,
    device: torch.device,
    sizes: Sizes,
    workers: int,
    *,
    gpu_augmentation: bool,
    gpu_decode: bool = False,
) -> tuple[float, float]:
    """(images/s, main-process CPU %) of TorchTurboDataLoader + ClassificationWorker +
    AUGMENTATION_TRAIN, both measured after the warm-up."""
    worker = ClassificationWorker(
        ((3, sizes.side, sizes.side), np.uint8),
        ((1,), np.int64),
        image_params=INPUT_PARAMS_TRAIN,
        image_rng=AUGMENTATION_TRAIN,
    )
    warmup = sizes.e2e_warmup or max(5, 2 * workers)
    timed = sizes.e2e_batches or max(60, 10 * workers)
    with Reader(path) as reader:
        if len(reader) < sizes.batch:
            raise ValueError(f"{path} holds {len(reader)} samples, fewer than a batch")
        loader = TorchTurboDataLoader(
            reader,
            sizes.batch,
            worker,
            workers,
            device=device,
            gpu_augmentation=gpu_augmentation,
            gpu_decode=gpu_decode,
            shuffle=True,
            seed=0,
            drop_last=True,
        )
        cpu = []

        def images(mini_batch: dict) -> int:
            if not cpu:  # the first timed batch: the clocks start after the warm-up
                cpu.append((time.process_time(), time.perf_counter()))
            return len(mini_batch["image"])

        rate = loader_rate(loader, device, warmup, timed, images)
        cpu_time, wall = time.process_time() - cpu[0][0], time.perf_counter() - cpu[0][1]
    return rate, 100 * cpu_time / wall


def bench_end_to_end(
    args: argparse.Namespace, device: torch.device, sizes: Sizes, workers: int
) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="crumpets-gpu-") as tmp:
        path, data = dataset(args, tmp)
        if path is None:
            return [("end-to-end", "TorchTurboDataLoader + ClassificationWorker", data)]
        rates = {}
        for gpu_augmentation in (False, True):
            print(f"end-to-end: gpu_augmentation={gpu_augmentation} ...", file=sys.stderr)
            rates[gpu_augmentation], _ = loader_speed(
                path, device, sizes, workers, gpu_augmentation=gpu_augmentation
            )
    what = (
        f"TorchTurboDataLoader(device='{device}') + ClassificationWorker + AUGMENTATION_TRAIN, "
        f"3x{sizes.side}x{sizes.side}, batch {sizes.batch}, {workers} workers, {data}"
    )
    return [
        ("end-to-end", f"{what}, gpu_augmentation=False", f"{rates[False]:,.0f} img/s"),
        (
            "end-to-end",
            f"{what}, gpu_augmentation=True",
            f"{rates[True]:,.0f} img/s ({rates[True] / rates[False]:.2f}x)",
        ),
    ]


# -- 5. gpu decode --------------------------------------------------------------------------
def decoder_memory(path: str, device: torch.device, batch: int) -> str:
    """Device memory the first nvJPEG decode of ``batch`` files takes."""
    with Reader(path) as reader:
        files = [reader.get(i)["image"] for i in range(batch)]
    decoder = NvjpegDecoder()
    decoder.load()
    torch.cuda.synchronize(device)
    free_before, _ = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    images = decoder.decode(files, device, True)
    torch.cuda.synchronize(device)
    free_after, _ = torch.cuda.mem_get_info(device)
    held = (free_before - free_after) / MB
    outputs = sum(t.numel() for t in images if isinstance(t, torch.Tensor)) / MB
    torch_held = (torch.cuda.memory_allocated(device) - allocated) / MB
    del images
    return (
        f"{held:,.0f} MB from the device ({torch_held:,.0f} MB torch's allocator, of which "
        f"{outputs:,.0f} MB the decoded images)"
    )


def bench_gpu_decode(args: argparse.Namespace, device: torch.device, sizes: Sizes) -> list[Row]:
    section = "gpu decode"
    with tempfile.TemporaryDirectory(prefix="crumpets-gpu-") as tmp:
        path, data = dataset(args, tmp)
        if path is None:
            return [(section, "TorchTurboDataLoader(gpu_decode=True)", data)]
        if device.type == "cuda":
            try:
                NvjpegDecoder().load()
            except ImportError as exc:
                return [(section, "TorchTurboDataLoader(gpu_decode=True)", f"skipped: {exc}")]
        what = (
            f"TorchTurboDataLoader(device='{device}') + ClassificationWorker + "
            f"AUGMENTATION_TRAIN, 3x{sizes.side}x{sizes.side}, batch {sizes.batch}, {data}"
        )
        rows = []
        for workers in (1, 2, 4):
            rates = {}
            for gpu_decode in (False, True):
                print(
                    f"gpu decode: {workers} workers, gpu_decode={gpu_decode} ...", file=sys.stderr
                )
                rates[gpu_decode] = loader_speed(
                    path, device, sizes, workers, gpu_augmentation=True, gpu_decode=gpu_decode
                )
            (cpu_rate, cpu_pct), (gpu_rate, gpu_pct) = rates[False], rates[True]
            rows.append(
                (
                    section,
                    f"{what}, {workers} workers: CPU workers (gpu_augmentation) / gpu_decode",
                    f"{cpu_rate:,.0f} / {gpu_rate:,.0f} img/s ({gpu_rate / cpu_rate:.2f}x); "
                    f"main process CPU {cpu_pct:.0f}% / {gpu_pct:.0f}%",
                )
            )
        if device.type == "cuda":
            rows.append(
                (
                    section,
                    f"decoder memory, nvJPEG, batch {sizes.batch}",
                    decoder_memory(path, device, sizes.batch),
                )
            )
        else:
            rows.append((section, "decoder memory", "skipped: nvJPEG needs CUDA"))
    return rows


# -- 6. the Trainer's overhead -------------------------------------------------------------
class SyntheticDigitWorker(BufferWorker):
    """16x16 grey 'digits' for machines without scikit-learn: a bright bar whose row is
    the class, on a noisy background."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("image", ((1, 16, 16), np.uint8))
        self.add_buffer("label", ((1,), np.int64))

    def prepare(self, sample, batch, buffers):
        label = sample["i"] % 10
        image = buffers["image"][0]
        image[...] = self.rng.integers(0, 60, image.shape, dtype=np.uint8)
        image[3 + label, 2:14] = 255
        buffers["label"][0] = label


def trainer_data(tmp: str, stack: contextlib.ExitStack) -> tuple[object, BufferWorker, str]:
    """(samples, worker, description): the digits as trainer_overhead.py, or synthetic."""
    if importlib.util.find_spec("sklearn") is not None:
        train_path, _ = pack_digits(tmp)
        worker = ClassificationWorker(((1, 16, 16), np.uint8), ((1,), np.int64))
        return stack.enter_context(Reader(train_path)), worker, "scikit-learn's digits"
    samples = [pack({"i": i}) for i in range(1440)]
    return samples, SyntheticDigitWorker(), "synthetic digits (no scikit-learn)"


def bench_trainer(device: torch.device, sizes: Sizes, workers: int) -> list[Row]:
    with (
        tempfile.TemporaryDirectory(prefix="crumpets-gpu-") as out,
        contextlib.ExitStack() as stack,
    ):
        data, worker, described = trainer_data(out, stack)
        loader = TorchTurboDataLoader(data, 64, worker, workers, device=device, seed=0)
        if sizes.trainer_steps:
            loader.set_epoch_iterations(sizes.trainer_steps)
        net, optimizer, trainer = trainer_overhead.make_trainer(loader, out, device)
        stamps: list[float] = []
        trainer.add_hook("train_backward", lambda state, **_: stamps.append(time.perf_counter()))
        walls: dict[str, list[float]] = {"plain": [], "Trainer": []}
        gaps: dict[str, list[float]] = {"plain": [], "Trainer": []}
        print(f"trainer: {sizes.trainer_epochs} epochs of each on {device} ...", file=sys.stderr)
        with loader:
            for epoch in range(1 + sizes.trainer_epochs):  # epoch 0 warms up both
                sync(device)
                start = time.perf_counter()
                plain = trainer_overhead.plain_epoch(net, optimizer, loader)
                sync(device)
                middle = time.perf_counter()
                stamps.clear()
                trainer.train_epoch()
                sync(device)
                end = time.perf_counter()
                if epoch:
                    walls["plain"].append((middle - start) / len(loader))
                    walls["Trainer"].append((end - middle) / len(loader))
                    gaps["plain"] += plain
                    gaps["Trainer"] += [b - a for a, b in zip(stamps, stamps[1:])]
    wall = {k: statistics.median(v) * 1000 for k, v in walls.items()}
    gap = {k: statistics.median(v) * 1000 for k, v in gaps.items()}
    what = (
        f"DigitNet on {device}, batch 64, {len(loader)} steps/epoch, {described}, "
        f"{sizes.trainer_epochs} alternating epochs"
    )
    return [
        (
            "trainer",
            f"plain loop (trainer_overhead.plain_epoch) / Trainer, {what}: epoch wall time "
            "per step, synchronised",
            f"{wall['plain']:.3f} / {wall['Trainer']:.3f} ms/step "
            f"(overhead {wall['Trainer'] - wall['plain']:+.3f} ms, "
            f"{wall['Trainer'] / wall['plain'] - 1:+.1%})",
        ),
        (
            "trainer",
            "the same: median time between backward passes (host clock)",
            f"{gap['plain']:.3f} / {gap['Trainer']:.3f} ms/step "
            f"(overhead {gap['Trainer'] - gap['plain']:+.3f} ms)",
        ),
    ]


# -- reporting -----------------------------------------------------------------------------
def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine(device: torch.device) -> list[str]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name}, {props.total_memory / 1024**3:.0f} GiB"
    else:
        gpu = "none used (--device cpu)"
    crumpets = ", ".join(
        f"{name} {version(name)}"
        for name in ("crumpets-core", "crumpets-augment", "crumpets-torch", "crumpets-train")
    )
    return [
        f"- GPU: {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores ({usable_cpus()} usable), "
        f"{platform.machine()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, OpenCV {cv2.__version__}",
        f"- {crumpets}",
    ]


def table(rows: list[Row]) -> list[str]:
    lines = ["| section | measurement | figure |", "|---|---|---|"]
    lines += [f"| {section} | {what} | {figure} |" for section, what, figure in rows]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda:0", help="cuda[:N] (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--data", help="dataset file for the end-to-end part (throughput.py's)")
    parser.add_argument("--images", type=int, default=512, help="JPEGs if a dataset is made")
    parser.add_argument("--cache", help="folder to keep a dataset made here (default: temp)")
    parser.add_argument(
        "--workers", type=int, default=usable_cpus(), help="loader workers (default: cores)"
    )
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device {args.device!r}: {exc}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cuda[:N] or cpu, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"no CUDA: torch {torch.__version__} sees no GPU here, nothing measured: the GPU "
            "rows (gpu_decode's too) did not run (--device cpu --quick runs the "
            "measurements on CPU tensors)"
        )
        return 0
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} GPUs")
    if args.data and not os.path.exists(args.data):
        parser.error(f"--data {args.data}: no such file")
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    else:
        # the workers have the cores: torch's threads in this process would only fight them
        torch.set_num_threads(1)
    sizes = QUICK if args.quick else FULL
    workers = max(1, args.workers)

    start = time.perf_counter()
    ok = True
    if device.type == "cuda":
        test_row, ok = run_tests()
    else:
        test_row = ("tests", "pytest tests/torch", "skipped: the CUDA tests need CUDA")
    rows = [test_row]
    sections = [
        ("pixel ops", lambda: bench_pixel_ops(device, sizes)),
        ("transfer", lambda: bench_transfer(device, sizes, workers)),
        ("end-to-end", lambda: bench_end_to_end(args, device, sizes, workers)),
        ("gpu decode", lambda: bench_gpu_decode(args, device, sizes)),
        ("trainer", lambda: bench_trainer(device, sizes, workers)),
    ]
    for name, run in sections:
        try:
            rows += run()
        except Exception as exc:  # a broken part must not cost the others their figures
            traceback.print_exc()
            rows.append((name, "error", f"FAILED: {type(exc).__name__}: {exc}"))
            ok = False

    command = " ".join(["python benchmarks/gpu.py", *sys.argv[1:]])
    report = [
        "# crumpets on a GPU",
        "",
        f"`{command}`: {time.perf_counter() - start:.0f} s",
        "",
        *machine(device),
        "",
        *table(rows),
    ]
    print("\n".join(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
