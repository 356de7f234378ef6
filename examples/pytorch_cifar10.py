"""Example usage of crumpets to train a custom model on CIFAR-10.

Less complex than the ResNet example (``pytorch_resnet.py``): fewer parameters are
considered, some are just left at their defaults to keep the example intuitive. The data
are two dataset files in DATADIR, ``train.msgpack`` and ``val.msgpack``, whose records
hold an ``'image'`` (encoded image bytes, or a 32x32x3 uint8 RGB array) and a
``'label'`` (the class index); datasets prepared with datadings, or packed with
``crumpets pack`` from image folders, load directly.

If no datadir is given, a default sample is used: the 12 photos of ``tinyset`` (4
classes), packed into a dataset file and scaled to 32x32 by the workers, while the
training loader is told that there are 2000 images to mimic a real dataset (it repeats
the file). Validation then runs on the same 12 photos, unaugmented: that shows the pipeline
works and the network learns, not that it generalizes.

The example uses one GPU, every GPU (one mini-batch per device, ``ParallelApply``), or
the CPU (``--no-cuda``, or when torch sees no GPU). The pixel operations of the
augmentation (gamma, color, contrast, blur, noise) are left to the loader, which applies
them to whole batches on the training device (``gpu_augmentation``; on the CPU too).

Run::

    python examples/pytorch_cifar10.py --outdir cifar10-out                # default sample
    python examples/pytorch_cifar10.py --datadir cifar10 --outdir out --epochs 30
    python examples/pytorch_cifar10.py --quick --outdir /tmp/out   # 2 epochs of 256 samples
"""

from __future__ import annotations

import argparse
import os
import os.path as pt
import tempfile
from itertools import cycle

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import SGD

from crumpets.augment.presets import AUGMENTATION_TRAIN
from crumpets.augment.workers import ClassificationWorker
from crumpets.core.cli import main as crumpets_command
from crumpets.core.dataset import Reader
from crumpets.torch import ParallelApply, TorchTurboDataLoader
from crumpets.train.loss import CrossEntropyLoss
from crumpets.train.metrics import AccuracyMetric
from crumpets.train.policy import PolyPolicy
from crumpets.train.trainer import Trainer

ROOT = pt.dirname(pt.abspath(__file__))
TINYSET = pt.join(ROOT, "tinyset")
SAMPLE_LENGTH = 2000  # what the loader is told the default sample holds


class Net(nn.Module):
    """A small CNN for 32x32 RGB images (PyTorch's CIFAR-10 tutorial net) on sample dicts."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, sample):
        # the loader returns dicts; the images are uint8, scaled to [-1, 1] here
        x = sample["image"].float() / 127.5 - 1
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        sample["output"] = self.fc3(x)
        return sample


def make_loader(
    file,
    batch_size,
    num_mini_batches,
    nworkers,
    image_rng=None,
    image_params=None,
    use_cuda=True,
    gpu_augmentation=True,
    length=None,
):
    """A TorchTurboDataLoader of 32x32 images and labels from the dataset file ``file``.

    Args:
        file: dataset file (``NAME.msgpack``) of {'image', 'label'} records.
        batch_size: samples per batch.
        num_mini_batches: mini-batches each batch is split into.
        nworkers: worker processes.
        image_rng: random augmentation, e.g. AUGMENTATION_TRAIN; None for none.
        image_params: fixed augmentation parameters.
        use_cuda: batches on the GPU (on every GPU, if there are several); else the CPU.
        gpu_augmentation: the loader applies the pixel operations on the batches' device.
        length: samples per epoch, default the file's; more repeats the file (the reference
            had no such parameter: its loader read a cycled iterator).
    """
    reader = Reader(file)
    if length is None or length <= len(reader):
        # random access: shuffled every epoch, each worker reads the file itself
        iterable, shuffle = reader, True
    else:
        # a plain iterator is read in order; the loader takes `length` items per epoch
        iterable, shuffle = cycle(reader), False
    worker = ClassificationWorker(
        ((3, 32, 32), np.uint8),
        ((1,), np.int64),
        image_params=image_params,
        image_rng=image_rng,
    )
    if not use_cuda:
        device = "cpu"
    elif torch.cuda.device_count() > 1:
        device = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        device = "cuda:0"
    return TorchTurboDataLoader(
        iterable,
        batch_size,
        worker,
        nworkers,
        length=length or len(reader),
        num_mini_batches=num_mini_batches,
        device=device,
        gpu_augmentation=gpu_augmentation,
        shuffle=shuffle,
    )


def make_policy(epochs, network, lr, momentum):
    """SGD with momentum and weight decay, and a linear decay of the learning rate to 0.

    Returns:
        (optimizer, policy)
    """
    optimizer = SGD(
        [{"params": network.parameters(), "lr": lr}], momentum=momentum, weight_decay=1e-4
    )
    policy = PolyPolicy(optimizer, epochs, 1)
    return optimizer, policy


def main(datadir, outdir, batch_size, epochs, lr, cuda=True):
    """Train ``Net`` on the dataset files in ``datadir`` (None: the default sample).

    Snapshots (``epoch_NNNN.pth``) and the log (``log.jsonl``) go to ``outdir``.

    Returns:
        The training history: one dict per epoch with 'train' and 'val' results.
    """
    cuda = cuda and torch.cuda.is_available()
    nworkers = min(4, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        if datadir:
            train_file = pt.join(datadir, "train.msgpack")
            val_file = pt.join(datadir, "val.msgpack")
            length = None
        else:
            # the default sample: tinyset in a dataset file (`crumpets pack DIR OUT`)
            train_file = val_file = pt.join(tmp, "sample.msgpack")
            if crumpets_command(["pack", TINYSET, train_file, "--quiet"]) != 0:
                raise RuntimeError(f"crumpets pack {TINYSET} failed")
            length = SAMPLE_LENGTH
        train = make_loader(
            train_file,
            batch_size,
            1,
            nworkers,
            image_rng=AUGMENTATION_TRAIN,
            use_cuda=cuda,
            length=length,
        )
        val = make_loader(val_file, batch_size, 1, nworkers, use_cuda=cuda)

        network = Net()
        if cuda:
            network = network.cuda()
            if torch.cuda.device_count() > 1:
                network = ParallelApply(network)  # the loader gives one mini-batch per GPU
        optimizer, policy = make_policy(epochs, network, lr, momentum=0.9)
        loss = CrossEntropyLoss(target_key="label", output_key="output")
        if cuda:
            loss = loss.cuda()
        metric = AccuracyMetric(target_key="label", output_key="output")

        trainer = Trainer(
            network=network,
            optimizer=optimizer,
            loss=loss,
            metric=metric,
            train_policy=policy,
            val_policy=None,
            train_iter=train,
            val_iter=val,
            outdir=outdir,
        )
        with train, val:
            return trainer.train(epochs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datadir", help="folder with train.msgpack and val.msgpack")
    parser.add_argument("--outdir", default="cifar10-out", help="log and snapshots go here")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")
    parser.add_argument("--epochs", type=int, default=10, help="default 10")
    parser.add_argument("--lr", type=float, default=0.02, help="learning rate, default 0.02")
    parser.add_argument("--no-cuda", dest="cuda", action="store_false", help="train on the CPU")
    parser.add_argument(
        "--quick", action="store_true", help="2 short epochs (a test of the example)"
    )
    args = parser.parse_args()
    if args.quick:
        SAMPLE_LENGTH = 256
        args.epochs = 2
    history = main(args.datadir, args.outdir, args.batch_size, args.epochs, args.lr, args.cuda)
    accuracy = history[-1]["val"]["top1_accuracy"]
    print(f"validation accuracy after {args.epochs} epochs: {accuracy:.1%}")
