"""The Trainer's per-step overhead against a plain PyTorch loop, on the same model, the
same loader and the same data (scikit-learn's handwritten digits through
TorchTurboDataLoader + ClassificationWorker, 16x16, batch 64, CPU).

Both do the same work per step: forward, cross-entropy, backward, optimizer step and a
top-1 accuracy. Epochs alternate between the two (plain, Trainer, plain, ...), so drift
of a shared machine hits both alike; per-step times are medians over all their steps.

Run: python benchmarks/trainer_overhead.py   (part of nox -s bench)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from crumpets.augment import ClassificationWorker
from crumpets.core.dataset import Reader
from crumpets.torch import TorchTurboDataLoader
from crumpets.train import Trainer
from crumpets.train.demo import DigitNet, pack_digits
from crumpets.train.loss import CrossEntropyLoss
from crumpets.train.metrics import AccuracyMetric


def plain_epoch(net, optimizer, loader) -> list[float]:
    """The loop a user writes by hand; returns the seconds between consecutive steps,
    stamped right after backward (where the Trainer's train_backward hook stamps)."""
    net.train()
    criterion = torch.nn.CrossEntropyLoss()
    correct = total = 0
    stamps = []
    for _, (sample,) in loader:
        out = net(sample)
        target = sample["label"][:, 0]
        loss = criterion(out["output"], target)
        loss.backward()
        stamps.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        correct += (out["output"].argmax(1) == target).sum().item()
        total += len(target)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def make_trainer(loader, out: str, device: str = "cpu") -> tuple:
    """(net, optimizer, Trainer): the demo's CNN with SGD, trained by a quiet Trainer
    without policies or snapshots on ``loader``; the plain loop uses the same net."""
    torch.manual_seed(0)
    net = DigitNet().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(
        net,
        optimizer,
        CrossEntropyLoss(target_key="label"),
        AccuracyMetric(),
        None,
        None,
        loader,
        None,
        out,
        quiet=True,
        snapshot_interval=0,
    )
    return net, optimizer, trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each, alternating")
    args = parser.parse_args()
    torch.set_num_threads(1)  # two worker processes use the other core
    with tempfile.TemporaryDirectory() as out:
        train_path, _ = pack_digits(out)
        image, label = ((1, 16, 16), np.uint8), ((1,), np.int64)
        with Reader(train_path) as data:
            loader = TorchTurboDataLoader(
                data, 64, ClassificationWorker(image, label), 2, device="cpu", seed=0
            )
            net, optimizer, trainer = make_trainer(loader, out)
            stamps: list[float] = []

            def stamp(state, **_):
                stamps.append(time.perf_counter())

            trainer.add_hook("train_backward", stamp)
            plain, framed = [], []
            with loader:
                for _ in range(args.epochs):
                    plain += plain_epoch(net, optimizer, loader)
                    stamps.clear()
                    trainer.train_epoch()
                    framed += [b - a for a, b in zip(stamps, stamps[1:])]
    p, t = statistics.median(plain) * 1000, statistics.median(framed) * 1000
    print(
        f"DigitNet on 16x16 digits, batch 64, CPU, {args.epochs} alternating epochs of "
        f"{len(loader)} steps each (median per step):"
    )
    print(f"plain PyTorch loop: {p:.3f} ms")
    print(f"Trainer:            {t:.3f} ms")
    print(f"overhead:           {t - p:+.3f} ms per step ({t / p - 1:+.1%})")


if __name__ == "__main__":
    main()
