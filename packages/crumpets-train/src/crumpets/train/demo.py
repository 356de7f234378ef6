"""The crumpets demo: train a small CNN on real handwritten digits, on the CPU.

Packs scikit-learn's 1,797 handwritten digit scans (8x8, shipped inside scikit-learn)
into train and validation dataset files, loads them through TorchTurboDataLoader with
ClassificationWorker (the training set augmented), trains with the Trainer, and writes
the log, snapshots, a plot of the loss and accuracy curves and an augmentation preview
to the output folder.

Needs the demo extra: ``pip install crumpets-train[demo]`` (crumpets-augment,
scikit-learn, matplotlib).

Run: ``crumpets demo --out demo-out`` or ``nox -s demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from crumpets.core.dataset import Reader, Writer
from crumpets.torch import TorchTurboDataLoader

from .trainer import Trainer

__all__ = ["DigitNet", "main", "pack_digits", "run", "setup"]

SIZE = 16  # digits are upscaled from 8x8 so that rotation and scale have room to act


class DigitNet(torch.nn.Module):
    """A small CNN for 16x16 gray digits, on sample dicts ('image' -> 'output')."""

    def __init__(self, classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int) -> list[torch.nn.Module]:
            return [
                torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(cout),
                torch.nn.ReLU(),
            ]

        self.body = torch.nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            torch.nn.MaxPool2d(2),
            *block(32, 64),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(64 * 4 * 4, classes),
        )

    def forward(self, sample: dict) -> dict:
        sample["output"] = self.body(sample["image"].float() / 255.0)
        return sample


def pack_digits(out: str, seed: int = 0, val_fraction: float = 0.2) -> tuple[str, str]:
    """Write train.msgpack and val.msgpack (a fixed random split) into ``out``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 grey levels
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(len(images) * val_fraction)
    paths = []
    for name, part in (("val", order[:n_val]), ("train", order[n_val:])):
        path = os.path.join(out, f"{name}.msgpack")
        with Writer(path, overwrite=True) as writer:
            for i in part.tolist():
                writer.write(
                    {"key": f"digit-{i:04d}", "image": images[i], "label": int(digits.target[i])}
                )
        paths.append(path)
    return paths[1], paths[0]


def _plot(history: list[dict], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h["epoch"] + 1 for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for phase in ("train", "val"):
        left.plot(epochs, [h[phase]["loss"] for h in history], marker="o", label=phase)
        right.plot(
            epochs, [100 * h[phase]["top1_accuracy"] for h in history], marker="o", label=phase
        )
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    right.set(xlabel="epoch", ylabel="accuracy (%)", title="top-1 accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run(out: str, epochs: int = 12, nworkers: int = 2, seed: int = 0, quiet: bool = False) -> dict:
    """Train the demo; returns {'val_accuracy', 'history', 'seconds', 'files'}."""
    from crumpets.augment import ClassificationWorker
    from crumpets.augment.preview import preview_grid
    from crumpets.augment.rng import MixtureRNG

    from .loss import CrossEntropyLoss
    from .metrics import AccuracyMetric
    from .policy import PolyPolicy

    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    train_path, val_path = pack_digits(out, seed)
    torch.manual_seed(seed)
    rng = MixtureRNG(
        scale_range=(0.9, 1.1), rotation_sigma=8, aspect_sigma=0.05, shear_range=(-0.1, 0.1)
    )
    image, label = ((1, SIZE, SIZE), np.uint8), ((1,), np.int64)
    with Reader(train_path) as train_set, Reader(val_path) as val_set:
        train = TorchTurboDataLoader(
            train_set,
            64,
            ClassificationWorker(image, label, image_rng=rng),
            nworkers,
            device="cpu",
            shuffle=True,
            seed=seed,
        )
        val = TorchTurboDataLoader(
            val_set, 120, ClassificationWorker(image, label), nworkers, device="cpu", seed=seed
        )
        network = DigitNet()
        optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
        trainer = Trainer(
            network,
            optimizer,
            CrossEntropyLoss(target_key="label"),
            AccuracyMetric(),
            PolyPolicy(optimizer, epochs, 1),
            None,
            train,
            val,
            out,
            quiet=quiet,
            snapshot_interval=epochs,
        )
        with train, val:
            history = trainer.train(epochs)
    seconds = time.perf_counter() - start
    files = {"log": os.path.join(out, "log.jsonl"), "snapshot": trainer.last_snapshot}
    if _plot(history, os.path.join(out, "curves.png")):
        files["curves"] = os.path.join(out, "curves.png")
    import cv2

    with Reader(train_path) as train_set:
        digit = cv2.resize(train_set.get(0)["image"], (64, 64), interpolation=cv2.INTER_NEAREST)
    # the guide's augmentations, then 10 draws of the augmentation this demo trains with
    png = cv2.imencode(".png", digit)[1].tobytes()
    grid = preview_grid(png, size=96, preset=rng, draws=10)
    files["preview"] = preview = os.path.join(out, "preview.png")
    cv2.imwrite(preview, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    result = {
        "val_accuracy": history[-1]["val"]["top1_accuracy"],
        "history": history,
        "seconds": seconds,
        "files": files,
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({k: v for k, v in result.items() if k != "history"}, f, indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="crumpets demo: handwritten digits, end to end")
    setup(parser)
    args = parser.parse_args(argv)
    return args.func(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        import sklearn  # noqa: F401

        import crumpets.augment  # noqa: F401
    except ImportError as exc:
        print(
            f"crumpets demo: the demo needs {exc.name}: pip install 'crumpets-train[demo]'",
            file=sys.stderr,
        )
        return 2
    result = run(args.out, args.epochs, args.nworkers, args.seed)
    h = result["history"][-1]
    print(
        f"\nvalidation accuracy {100 * result['val_accuracy']:.1f}% after {args.epochs} epochs; "
        f"training {h['train']['samples_per_s']:,.0f} samples/s "
        f"({h['train']['data_wait']:.0%} of the time waiting for data); "
        f"{result['seconds']:.0f} s in all"
    )
    print("wrote " + ", ".join(f"{k} {v}" for k, v in result["files"].items() if v))
    return 0


def setup(parser: argparse.ArgumentParser) -> None:
    """Train a small CNN on real handwritten digits (the crumpets demo)."""
    parser.add_argument("--out", default="crumpets-demo", help="output folder")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--nworkers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run_command)
