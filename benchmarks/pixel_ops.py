"""What the GPU pixel operations ask of a device: torch ops per batch and images/s.

For gamma + blur + noise with every operation on for every image (parameters drawn like
AUGMENTATION_TRAIN's ranges), on uint8 3x224x224 batches of 64 and 256 photos, it prints:

- ops/batch: aten ops with no parent op, from torch's profiler, for one batch. On a GPU
  each is at least one kernel launch (about 5-10 us each before any work is done);
- img/s: median over repeats of the whole batch (with torch.cuda.synchronize on CUDA);

for the kernels of crumpets-torch 0.1.0, which loop over the samples in Python
(benchmarks/_loop_kernels.py), and for today's batched kernels, called one after the other
(add_gamma, add_blur, add_noise_rgb) and through ``randomize`` (what the loader and the
Randomizer call: one copy of the parameters for all three).

Run: python benchmarks/pixel_ops.py [--device cuda] [--batches 64 256]   (nox -s bench)
On CPU tensors the ops count what a GPU would be asked to do; the img/s are the CPU's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from crumpets.torch import augmentation_cuda as batched
from crumpets.torch.randomizer import randomize

sys.path.insert(0, str(Path(__file__).parent))
import _loop_kernels as loop  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def photos(n: int, size: int) -> torch.Tensor:
    """n uint8 CHW crops of scikit-image's photos (smooth gradients if it is missing)."""
    try:
        import cv2
        import skimage.data

        ims = [cv2.resize(getattr(skimage.data, p)(), (size, size)) for p in PHOTOS]
    except ImportError:
        yy, xx = np.mgrid[0:size, 0:size]
        ims = [
            np.stack([128 + 100 * np.sin(xx / (9 + k) + yy / (13 + c)) for c in range(3)], -1)
            for k in range(len(PHOTOS))
        ]
    batch = np.stack([np.roll(ims[i % len(ims)], 7 * i, axis=1) for i in range(n)])
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.uint8))


def parameters(n: int, seed: int = 0) -> list[dict]:
    """Every operation on, values spread over AUGMENTATION_TRAIN-like ranges."""
    rng = np.random.default_rng(seed)
    return [
        {
            "gamma_gray": float(4 ** -rng.uniform(-0.25, 0.25)),
            "gamma_color": (4 ** -rng.uniform(-0.1, 0.1, 3)).tolist(),
            "contrast": float(rng.uniform(-0.5, 0.5)),
            "blur": float(rng.uniform(0.001, 0.005)),
            "noise": float(rng.uniform(0.01, 0.05)),
            "noise_seed": int(rng.integers(2**31)),
            "gpu_ops": ["gamma", "blur", "noise"],
        }
        for _ in range(n)
    ]


def chain(kernels) -> Callable[[torch.Tensor, list[dict]], torch.Tensor]:
    def run(im: torch.Tensor, augs: list[dict]) -> torch.Tensor:
        return kernels.add_noise_rgb(kernels.add_blur(kernels.add_gamma(im, augs), augs), augs)

    return run


def through_randomize(im: torch.Tensor, augs: list[dict]) -> torch.Tensor:
    return randomize(im, augs)[0]


def ops_per_batch(fn: Callable, im: torch.Tensor, augs: list[dict]) -> int:
    fn(im, augs)  # tables and constants are made once per device, not per batch
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(im, augs)
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def images_per_s(fn: Callable, im: torch.Tensor, augs: list[dict], repeats: int) -> float:
    sync = torch.cuda.synchronize if im.is_cuda else (lambda: None)
    fn(im, augs)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(im, augs)
        sync()
        times.append(time.perf_counter() - start)
    return len(im) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    kinds = [
        ("0.1.0, loop over samples", chain(loop)),
        ("batched, add_* one by one", chain(batched)),
        ("batched, randomize", through_randomize),
    ]
    print(
        f"gamma + blur + noise on uint8 3x{args.size}x{args.size}, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| kernels | batch | ops/batch | img/s |\n|---|---:|---:|---:|")
    for n in args.batches:
        im, augs = photos(n, args.size).to(device), parameters(n)
        for name, fn in kinds:
            ops = ops_per_batch(fn, im, augs)
            rate = images_per_s(fn, im, augs, args.repeats)
            print(f"| {name} | {n} | {ops:,} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
