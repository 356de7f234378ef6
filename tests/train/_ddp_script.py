"""Run by test_distributed.py under torchrun: one epoch on digits, per-rank report."""

from __future__ import annotations

import json
import os
import sys

import torch
from _train_data import DigitWorker, TinyNet, digit_samples

from crumpets.torch import TorchTurboDataLoader
from crumpets.train import Trainer
from crumpets.train.loss import CrossEntropyLoss
from crumpets.train.metrics import AccuracyMetric


class IndexedDigitWorker(DigitWorker):
    def prepare(self, sample, batch, buffers):
        super().prepare(sample, batch, buffers)
        batch["index"].append(self.sample_index)


def main(outdir: str) -> None:
    torch.manual_seed(0)
    data = digit_samples(400)
    # rank and world_size come from torchrun's environment
    train = TorchTurboDataLoader(
        data[:320], 16, IndexedDigitWorker(), 1, device="cpu", shuffle=True, seed=3
    )
    val = TorchTurboDataLoader(data[320:], 20, IndexedDigitWorker(), 1, device="cpu", seed=3)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = Trainer(
        net,
        opt,
        CrossEntropyLoss(target_key="label"),
        AccuracyMetric(),
        None,
        None,
        train,
        val,
        outdir,
    )
    seen = {"train": {}, "val": {}}  # phase -> epoch -> sample indices

    def record(phase):
        def hook(state, sample):
            seen[phase].setdefault(str(state["epoch"]), []).extend(sample["index"])

        return hook

    trainer.add_hook("train_pre_forward", record("train"))
    trainer.add_hook("val_pre_forward", record("val"))
    with train, val:
        history = trainer.train(2)
    weights = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
    report = {
        "rank": trainer.rank,
        "world": trainer.world_size,
        "seen": seen,
        "val": history[-1]["val"],
        "weights_sum": float(weights.double().sum()),
    }
    with open(os.path.join(outdir, f"rank{trainer.rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
