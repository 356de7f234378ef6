"""``crumpets bench``: images per second of the torch loader with a worker and a preset.

Needs crumpets-augment for the workers and presets (``pip install crumpets-torch[bench]``);
says so if it is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from crumpets.core import pack
from crumpets.core.logging import make_printer
from crumpets.core.plugins import PluginNotFound, load_entry_point

from .dataloader import TorchTurboDataLoader

__all__ = ["run", "setup", "synthetic_set"]


# The output buffers each worker takes besides the image, for an output side s.
TARGETS = {
    "image": lambda s: (),
    "classification": lambda s: (((1,), np.int64),),
    "fcn": lambda s: (((3, s, s), np.uint8),),
    "segmentation": lambda s: (((1, s, s), np.uint8, 255),),
}


def synthetic_set(
    n: int, height: int = 375, width: int = 500, seed: int = 0, target: str | None = None
) -> list[bytes]:
    """``n`` JPEGs (quality 90) of smooth shapes and gradients: closer to how photos decode
    than random noise, which no real dataset contains. ``target`` 'image' adds the same
    JPEG as ``target_image`` (for FCN workers), 'labels' a PNG label map of 8 grey-level
    classes (for segmentation)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    samples = []
    for i in range(n):
        im: np.ndarray = np.empty((height, width, 3), np.float32)
        for c in range(3):
            fx, fy, phase = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
            im[:, :, c] = 127 + 100 * np.sin(xx * fx + yy * fy + phase)
        for _ in range(8):
            centre = (int(rng.integers(width)), int(rng.integers(height)))
            colour = rng.integers(0, 256, 3).tolist()
            cv2.circle(im, centre, int(rng.integers(10, 80)), colour, -1, cv2.LINE_AA)
        im = cv2.GaussianBlur(im, (0, 0), 1.2) + rng.normal(0, 4, im.shape)
        ok, jpg = cv2.imencode(
            ".jpg", np.clip(im, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        sample = {"image": jpg.tobytes(), "label": i % 10}
        if target == "image":
            sample["target_image"] = jpg.tobytes()
        elif target == "labels":
            decoded = cv2.imdecode(jpg, 1)
            assert decoded is not None  # the JPEG made above
            classes = cv2.cvtColor(decoded, cv2.COLOR_BGR2GRAY) // 32
            sample["target_image"] = cv2.imencode(".png", classes)[1].tobytes()
        samples.append(pack(sample))
    return samples


def run(args: argparse.Namespace) -> int:
    if args.worker not in TARGETS:
        print(
            f"crumpets bench: measures the workers {sorted(TARGETS)}, not {args.worker!r}",
            file=sys.stderr,
        )
        return 2
    try:
        worker_class = load_entry_point("crumpets.workers", args.worker)
        presets = __import__("crumpets.augment.presets", fromlist=["presets"])
    except (PluginNotFound, ImportError) as exc:
        print(
            f"crumpets bench: {exc}; it needs crumpets-augment: "
            "pip install 'crumpets-torch[bench]'",
            file=sys.stderr,
        )
        return 2
    if not hasattr(presets, args.preset):
        names = sorted(n for n in dir(presets) if n.isupper() and n.startswith(("AUG", "NO_")))
        print(
            f"crumpets bench: unknown preset {args.preset!r}; choose from {names}", file=sys.stderr
        )
        return 2
    if args.data:
        from crumpets.core.dataset import Reader

        data: Reader | list[bytes] = Reader(args.data)
    else:
        target = {"fcn": "image", "segmentation": "labels"}.get(args.worker)
        data = synthetic_set(args.samples, target=target)
    image = ((3, args.size, args.size), np.uint8)
    worker = worker_class(
        image, *TARGETS[args.worker](args.size), image_rng=getattr(presets, args.preset)
    )
    try:
        loader = TorchTurboDataLoader(
            data,
            args.batch_size,
            worker,
            args.nworkers,
            device=args.device,
            gpu_augmentation=args.gpu_augmentation,
            shuffle=True,
            seed=0,
        )
    except ValueError as exc:
        print(f"crumpets bench: {exc}", file=sys.stderr)
        return 2
    rates = []
    start = last = first = time.perf_counter()
    with loader:
        bar = make_printer(total=args.batches, desc="bench", file=sys.stderr)
        done = 0
        while done < args.batches:
            for _, mini_batches in loader:
                t = time.perf_counter()
                n = sum(len(mb["image"]) for mb in mini_batches)
                if done:  # the first batch includes start-up
                    rates.append(n / (t - last))
                else:
                    first = t - start
                last = t
                done += 1
                bar.update(1)
                if done == args.batches:
                    break
        bar.close()
    where = f"device {args.device}" + (", gpu_augmentation" if args.gpu_augmentation else "")
    print(
        f"{args.worker} + {args.preset}, {args.size}x{args.size}, batch {args.batch_size}, "
        f"{args.nworkers} workers, {where}: median {statistics.median(rates):,.0f} "
        f"images/s over {len(rates)} batches; first batch {first * 1000:.0f} ms after start"
    )
    return 0


def setup(parser: argparse.ArgumentParser) -> None:
    """Measure images/s of the torch loader with a worker and an augmentation preset."""
    parser.add_argument("--data", help="dataset file (default: a built-in synthetic set)")
    parser.add_argument("--samples", type=int, default=512, help="size of the synthetic set")
    parser.add_argument(
        "--worker", default="classification", choices=sorted(TARGETS), help="which worker"
    )
    parser.add_argument(
        "--preset", default="AUGMENTATION_TRAIN", help="crumpets.augment.presets name"
    )
    parser.add_argument("--size", type=int, default=224, help="output side in pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--nworkers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--gpu-augmentation",
        action="store_true",
        help="workers leave gamma, blur and noise to the loader, which applies them on --device",
    )
    parser.set_defaults(func=run)
