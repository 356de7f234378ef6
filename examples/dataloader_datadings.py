"""Dataloader example with a dataset file in the datadings layout.

The same as ``dataloader_simple.py``, but the samples come from a dataset file: the
example writes the included tinyset dataset into one with crumpets.core's ``Writer``
(``crumpets pack examples/tinyset tinyset`` does the same from the shell), reads it with a
``Reader`` and gives that to the TurboDataLoader. A Reader has random access: the loader
shuffles it every epoch and the workers read the records from their own memory map of the
file, so only indices travel to them. Files written by datadings (``NAME.msgpack`` with
its ``.offsets`` and ``.keys``) load the same way: pass one with ``--file``.

Each batch is shown in a window, or written into one image file, as in
``dataloader_simple.py``.

Run::

    python examples/dataloader_datadings.py --no-show --out batches.jpg
    python examples/dataloader_datadings.py --file imagenet/val.msgpack --no-show
"""

from __future__ import annotations

import argparse
import io
import os
import os.path as pt
import tempfile

import msgpack
import numpy as np
from dataloader_simple import TINYSET, BatchViewer

from crumpets.augment.presets import AUGMENTATION_TRAIN
from crumpets.augment.workers import ClassificationWorker
from crumpets.core.dataloader import TurboDataLoader
from crumpets.core.dataset import Reader, Writer


def prepare_dataset(dsdir, path):
    """Write the ImageNet-style folder ``dsdir`` into the dataset file ``path``.

    Every record is a dict ``{'key': 'CLASS/FILE', 'image': <the file's bytes>,
    'label': <class index>}``, which is what ``crumpets pack`` writes and the workers read;
    the class names go to ``path + '.classes'`` (a msgpack list), as ``crumpets pack`` does.

    Args:
        dsdir: path to dataset directory (one subdirectory of images per class; classes
            are numbered in sorted order).
        path: the dataset file to write, ``NAME.msgpack``.

    Returns:
        The class names, in label order.
    """
    classes = sorted(d.name for d in os.scandir(dsdir) if d.is_dir())
    with Writer(path, overwrite=True) as writer:
        for cls_id, cls in enumerate(classes):
            for img_path in sorted(os.listdir(pt.join(dsdir, cls))):
                with io.FileIO(pt.join(dsdir, cls, img_path)) as f:
                    img = f.read()
                writer.write({"key": f"{cls}/{img_path}", "image": img, "label": cls_id})
    with open(writer.path + ".classes", "wb") as f:
        f.write(msgpack.packb(classes))
    return classes


def class_names(reader):
    """The class names ``crumpets pack`` writes beside a dataset file, or None."""
    names = reader.path + ".classes"
    if not pt.exists(names):
        return None
    with open(names, "rb") as f:
        return msgpack.unpackb(f.read())


def main(show=True, wait_key=2000, out="dataloader_datadings.jpg", file=None, epochs=3):
    """Run a TurboDataLoader over a dataset file and show (or write) every batch.

    Args:
        show: show the batches in a window; if that is impossible, write ``out``.
        wait_key: ms each batch is shown.
        out: where the images go when they are not shown.
        file: a dataset file of {'image', 'label'} records; None writes tinyset into a
            temporary one.
        epochs: how many times to go through the dataset.

    Returns:
        The path of the written file, or None if the batches were shown.
    """
    batch_size = 2
    nworkers = 2
    sample_size = (3, 224, 224)

    with tempfile.TemporaryDirectory() as tmp:
        if file is None:
            file = pt.join(tmp, "tinyset.msgpack")
            prepare_dataset(TINYSET, file)

        with Reader(file) as reader:
            loader = TurboDataLoader(
                reader,  # the length is len(reader); no cycle needed
                batch_size,
                ClassificationWorker(
                    (sample_size, np.uint8), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN
                ),
                nworkers,
                shuffle=True,  # a new order every epoch, from the seed
                seed=0,
            )
            viewer = BatchViewer(show, wait_key, out, class_names(reader))
            with loader:
                for epoch in range(epochs):
                    for iteration, mini_batch in loader:
                        for sample in mini_batch:
                            label = sample["label"]
                            print(f"epoch {epoch} iteration {iteration}: labels {label[:, 0]}")
                            viewer.add(epoch, sample)
            return viewer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--no-show", dest="show", action="store_false", help="write the batches to --out"
    )
    parser.add_argument("--wait-key", type=int, default=2000, help="ms per batch shown (2000)")
    parser.add_argument(
        "--out", default="dataloader_datadings.jpg", help="image file written without a window"
    )
    parser.add_argument("--file", help="a dataset file to load (default: tinyset, written now)")
    parser.add_argument("--epochs", type=int, default=3, help="default 3")
    args = parser.parse_args()
    main(args.show, args.wait_key, args.out, args.file, args.epochs)
