"""Train a ResNet from crumpets.train.models on an ImageNet-style dataset.

More complete than ``pytorch_cifar10.py``: the images are photos of any size, decoded and
scaled to ``--size`` by the workers (``INPUT_PARAMS_TRAIN``: the shortest side fits, and
AUGMENTATION_TRAIN's random crops, rotations, mirrors and pixel operations); the network
normalizes them with ImageNet's mean and std before the ResNet; SGD with momentum and
weight decay starts at ``--lr``, and the learning rate is divided by 10 whenever the
validation loss stops improving (as in He et al., 2016).

The data are dataset files written by ``crumpets pack`` from folders of images, one folder
per class::

    crumpets pack imagenet/train train     # train.msgpack (+ .offsets, .keys, .classes)
    crumpets pack imagenet/val val
    python examples/pytorch_resnet.py --train train.msgpack --val val.msgpack \\
        --arch resnet50 --batch-size 256 --epochs 90 --lr 0.1 --outdir resnet50-out

The number of classes comes from the ``.classes`` file ``crumpets pack`` writes (or
``--classes``, for files written otherwise, e.g. by datadings).
Under torchrun (``torchrun --nproc-per-node 8 examples/pytorch_resnet.py ...``) each
process trains on its own GPU and reads its own shard of the data.

Without ``--train`` the example packs the included tinyset (12 photos, 4 classes) into a
temporary dataset file and trains and validates on it: a look at the whole pipeline in
a minute on a CPU, not a meaningful training (after so few steps of 4 images, batch norm's
running statistics are far off, and so is the validation loss). ``--quick`` makes that a
few seconds.
"""

from __future__ import annotations

import argparse
import os
import os.path as pt
import tempfile

import msgpack
import numpy as np
import torch
from torch.optim import SGD

from crumpets.augment.presets import (
    AUGMENTATION_TRAIN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_PARAMS_TRAIN,
    INPUT_PARAMS_VAL,
)
from crumpets.augment.workers import ClassificationWorker
from crumpets.core.cli import main as crumpets_command
from crumpets.core.dataset import Reader
from crumpets.torch import Normalize, TorchTurboDataLoader, Unpacker
from crumpets.train import models
from crumpets.train.loss import CrossEntropyLoss
from crumpets.train.metrics import AccuracyMetric
from crumpets.train.policy import ReduceLROnPlateau
from crumpets.train.trainer import Trainer

ROOT = pt.dirname(pt.abspath(__file__))
TINYSET = pt.join(ROOT, "tinyset")


def make_loader(file, batch_size, nworkers, size, train, device, gpu_augmentation):
    """A TorchTurboDataLoader of ``size`` x ``size`` RGB images and labels.

    Args:
        file: dataset file written by ``crumpets pack``.
        batch_size: samples per batch.
        nworkers: worker processes.
        size: side of the square images the network gets.
        train: augment and shuffle (training), or not (validation).
        device: where the batches go, e.g. 'cuda:0' or 'cpu'.
        gpu_augmentation: the loader applies the pixel operations on ``device``.
    """
    worker = ClassificationWorker(
        ((3, size, size), np.uint8),
        ((1,), np.int64),
        image_params=INPUT_PARAMS_TRAIN if train else INPUT_PARAMS_VAL,
        image_rng=AUGMENTATION_TRAIN if train else None,
    )
    return TorchTurboDataLoader(
        Reader(file),  # random access: the workers read the file, the loader shuffles it
        batch_size,
        worker,
        nworkers,
        device=device,
        gpu_augmentation=gpu_augmentation and train,
        shuffle=train,
        drop_last=train,  # batch norm needs more than one sample per batch
    )


def class_names(file):
    """The class names ``crumpets pack`` wrote beside ``file`` (NAME.msgpack.classes), or
    None if there are none."""
    with Reader(file) as reader:
        path = reader.path + ".classes"
    if not pt.exists(path):
        return None
    with open(path, "rb") as f:
        return msgpack.unpackb(f.read())


def make_network(arch, num_classes):
    """ImageNet normalization, then the ResNet; both read and write sample dicts."""
    return torch.nn.Sequential(
        Unpacker(Normalize(IMAGENET_MEAN, IMAGENET_STD), output_key="image", input_key="image"),
        getattr(models, arch)(num_classes=num_classes),
    )


def main(
    train_file,
    val_file,
    outdir,
    arch="resnet18",
    size=224,
    batch_size=4,
    epochs=3,
    lr=0.01,
    cuda=True,
    nworkers=None,
    num_classes=None,
):
    """Train ``arch`` on ``train_file`` and validate on ``val_file`` after every epoch.

    Args:
        train_file: training dataset file; None packs tinyset and uses it for both.
        val_file: validation dataset file.
        outdir: the log (``log.jsonl``) and snapshots (``epoch_NNNN.pth``) go here.
        arch: a ResNet of crumpets.train.models: resnet18, resnet34, resnet50, ...
        size: image side in pixels.
        batch_size: samples per batch (on each GPU under torchrun).
        epochs: epochs to train.
        lr: initial learning rate.
        cuda: train on a GPU if torch sees one.
        nworkers: worker processes per loader; default: one per CPU core, at most 8.
        num_classes: default: the number of class names in ``train_file``'s .classes file.

    Returns:
        The training history: one dict per epoch with 'train' and 'val' results.
    """
    cuda = cuda and torch.cuda.is_available()
    # one GPU per process; torchrun tells each process which one
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    nworkers = nworkers or min(8, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        if train_file is None:
            train_file = val_file = pt.join(tmp, "tinyset.msgpack")
            if crumpets_command(["pack", TINYSET, train_file, "--quiet"]) != 0:
                raise RuntimeError(f"crumpets pack {TINYSET} failed")
        if num_classes is None:
            names = class_names(train_file)
            if names is None:
                raise ValueError(f"{train_file} has no .classes file: give num_classes")
            num_classes = len(names)

        train = make_loader(train_file, batch_size, nworkers, size, True, device, cuda)
        val = make_loader(val_file, batch_size, nworkers, size, False, device, cuda)
        network = make_network(arch, num_classes).to(device)
        optimizer = SGD(network.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        trainer = Trainer(
            network=network,
            optimizer=optimizer,
            loss=CrossEntropyLoss(target_key="label", output_key="output"),
            metric=AccuracyMetric(top_k=1),
            train_policy=None,
            val_policy=ReduceLROnPlateau(optimizer, factor=0.1, patience=5),
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
    parser.add_argument("--train", help="training dataset file (default: tinyset)")
    parser.add_argument("--val", help="validation dataset file")
    parser.add_argument("--outdir", default="resnet-out", help="log and snapshots go here")
    parser.add_argument("--arch", default="resnet18", help="resnet18, resnet34, resnet50, ...")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (224)")
    parser.add_argument("--batch-size", type=int, default=4, help="default 4")
    parser.add_argument("--epochs", type=int, default=3, help="default 3")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate, default 0.01")
    parser.add_argument("--no-cuda", dest="cuda", action="store_false", help="train on the CPU")
    parser.add_argument("--nworkers", type=int, help="worker processes per loader")
    parser.add_argument("--classes", type=int, help="number of classes (default: .classes file)")
    parser.add_argument(
        "--quick", action="store_true", help="2 epochs at 32x32 (a test of the example)"
    )
    args = parser.parse_args()
    if args.train and not args.val:
        parser.error("--train needs --val")
    if args.quick:
        args.size, args.epochs = 32, 2
    history = main(
        args.train,
        args.val,
        args.outdir,
        args.arch,
        args.size,
        args.batch_size,
        args.epochs,
        args.lr,
        args.cuda,
        args.nworkers,
        args.classes,
    )
    accuracy = history[-1]["val"]["top1_accuracy"]
    print(f"validation accuracy after {args.epochs} epochs: {accuracy:.1%}")
