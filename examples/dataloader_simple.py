"""Simple dataloader example without a dataset file.

The example prepares the included tinyset dataset (``examples/tinyset``, in the form of
ImageNet's folder structure: one folder of JPEGs per class) as a list of msgpack packed
samples. Afterwards a crumpets TurboDataLoader with a ClassificationWorker and the
AUGMENTATION_TRAIN preset is created and run through for 3 epochs.

Each batch is shown in a window for ``wait_key`` ms (any key moves on). Without a display,
or with OpenCV built without GUI support (opencv-python-headless, what crumpets installs),
the example says so and writes every augmented image into one file instead, a row per
epoch; ``--no-show`` does that directly.

Run::

    python examples/dataloader_simple.py               # show the batches (or write the file)
    python examples/dataloader_simple.py --no-show --out batches.jpg
"""

from __future__ import annotations

import argparse
import io
import os
import os.path as pt
import sys
from itertools import cycle

import cv2
import msgpack
import numpy as np

from crumpets.augment.presets import AUGMENTATION_TRAIN
from crumpets.augment.workers import ClassificationWorker
from crumpets.core.dataloader import TurboDataLoader

ROOT = pt.dirname(pt.abspath(__file__))
TINYSET = pt.join(ROOT, "tinyset")


def prepare_dataset(dsdir):
    """We have to prepare our example dataset tinyset s.t. we have encoded images and
    labels. Crumpets' default workers expect msgpack packed dictionaries. Thus we have to
    create an iterable of packed elements, which unpacked are of form
    ``{'image': ..., 'label': ...}``.

    Args:
        dsdir: path to dataset directory (one subdirectory of images per class; classes
            are numbered in sorted order).

    Returns:
        list of msgpack packed dictionaries.
    """
    iterable = []
    # walk over all subdirectories containing the classes (sorted: os.walk's order is
    # the file system's, and the first entry is dsdir itself)
    for cls_id, (cls_dir, _, imgs) in enumerate(sorted(os.walk(dsdir))[1:]):
        # inside a subdirectory specifying a class, walk over all images
        for img_path in sorted(imgs):
            # read the image: the encoded file, the worker decodes it
            with io.FileIO(pt.join(cls_dir, img_path)) as f:
                img = f.read()
            # put it inside a dictionary together with some class id
            dic = {"image": img, "label": cls_id}
            # pack the dict using msgpack and append it to the result
            # (crumpets.core.pack does the same and also packs numpy arrays)
            iterable.append(msgpack.packb(dic, use_bin_type=True))
    return iterable


class BatchViewer:
    """Shows batches in a window, or collects their images and writes them to ``out``.

    Args:
        show: try to open a window; without a display or GUI support, write ``out``.
        wait_key: ms each batch is shown (0 waits for a key).
        out: image file for the collected images (any format cv2.imwrite knows).
        classes: class names by label, written on each image; None writes the label.
        per_epoch: at most this many images are kept per epoch (one row of the file).
    """

    def __init__(self, show, wait_key, out, classes, per_epoch=12):
        self.wait_key = wait_key
        self.out = out
        self.classes = classes
        self.per_epoch = per_epoch
        self.rows = []
        self.show = show and self._can_show()

    def _can_show(self):
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            reason = "there is no display (DISPLAY is not set)"
        else:
            try:
                cv2.namedWindow("crumpets")
                return True
            except cv2.error:
                reason = (
                    "this OpenCV has no GUI support (opencv-python-headless; "
                    "a build with GUI support, e.g. opencv-python, can open windows)"
                )
        print(f"cannot show the batches: {reason}; writing them to {self.out}", file=sys.stderr)
        return False

    def tiles(self, sample):
        """The batch's images as BGR HxWx3 copies (the batch's buffers are reused)."""
        tiles = []
        for image, label in zip(sample["image"], sample["label"]):
            tile = cv2.cvtColor(np.ascontiguousarray(image.transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)
            name = self.classes[int(label[0])] if self.classes else str(int(label[0]))
            cv2.putText(tile, name, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3)
            cv2.putText(tile, name, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1)
            tiles.append(tile)
        return tiles

    def add(self, epoch, sample):
        """Show one mini-batch, or keep its images for row ``epoch`` of the file."""
        tiles = self.tiles(sample)
        if self.show:
            cv2.imshow("crumpets", np.hstack(tiles))
            cv2.waitKey(self.wait_key)
            return
        while len(self.rows) <= epoch:
            self.rows.append([])
        row = self.rows[epoch]
        row.extend(tiles[: self.per_epoch - len(row)])

    def close(self):
        """Close the window, or write the file; returns the file's path (None if shown)."""
        if self.show:
            cv2.destroyAllWindows()
            return None
        width = max(len(row) for row in self.rows)
        blank = np.zeros_like(self.rows[0][0])
        grid = np.vstack([np.hstack(row + [blank] * (width - len(row))) for row in self.rows])
        if not cv2.imwrite(self.out, grid):
            raise OSError(f"could not write {self.out}")
        print(f"wrote {self.out}: {len(self.rows)} epochs (rows) of augmented images")
        return self.out


def main(show=True, wait_key=2000, out="dataloader_simple.jpg"):
    """Run a TurboDataLoader over tinyset for 3 epochs and show (or write) every batch.

    Args:
        show: show the batches in a window; if that is impossible, write ``out``.
        wait_key: ms each batch is shown.
        out: where the images go when they are not shown.

    Returns:
        The path of the written file, or None if the batches were shown.
    """
    batch_size = 2
    epochs = 3
    nworkers = 2
    sample_size = (3, 224, 224)

    # prepare iterable
    iterable = prepare_dataset(TINYSET)
    num_samples = len(iterable)
    cyclr = cycle(iterable)  # necessary for multiple epochs (a list works directly, too)

    # create loader
    loader = TurboDataLoader(
        cyclr,
        batch_size,
        ClassificationWorker(  # other workers are available, such as SaliencyWorker
            (sample_size, np.uint8),
            ((1,), np.int64),
            # the preset's random augmentations, drawn per sample
            image_rng=AUGMENTATION_TRAIN,
        ),
        nworkers,
        length=num_samples,
    )

    classes = sorted(d.name for d in os.scandir(TINYSET) if d.is_dir())
    viewer = BatchViewer(show, wait_key, out, classes)
    with loader:
        for epoch in range(epochs):
            for iteration, mini_batch in loader:
                for sample in mini_batch:
                    image = sample["image"]  # (batch_size, 3, 224, 224) uint8, RGB
                    label = sample["label"]  # (batch_size, 1) int64
                    print(f"epoch {epoch} iteration {iteration}: {image.shape}, {label[:, 0]}")
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
        "--out", default="dataloader_simple.jpg", help="image file written without a window"
    )
    args = parser.parse_args()
    main(args.show, args.wait_key, args.out)
