"""crumpets demo: real handwritten digits through the TurboDataLoader.

Packs scikit-learn's handwritten digits (1,797 real 8x8 scans) into a dataset file,
loads them in shuffled batches through worker processes and shared memory, checks that
every digit arrived exactly once per epoch, and draws the first batch's digits.

Until crumpets-train lands this stops at loading; it will grow into training a CNN.

Run: nox -s demo   (or: python examples/demo.py [--out DIR])
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from crumpets.core import BufferWorker, TurboDataLoader
from crumpets.core.dataset import Reader, Writer


class DigitWorker(BufferWorker):
    """Scales a digit's 0..16 grey levels to 0..1 and passes its label."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("image", ((1, 8, 8), np.float32))
        self.add_buffer("label", ((1,), np.int64))

    def prepare(self, sample, batch, buffers):
        buffers["image"][0] = sample["image"] / 16.0
        buffers["label"][0] = sample["label"]
        batch["key"].append(sample["key"])


def pack_digits(path: str) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    with Writer(path, overwrite=True) as writer:
        for i, (image, label) in enumerate(zip(digits.images, digits.target)):
            writer.write(
                {"key": f"digit-{i:04d}", "image": image.astype(np.uint8), "label": int(label)}
            )
    return len(digits.target)


def ascii_digit(image: np.ndarray) -> list[str]:
    shades = " .:-=+*#%@"
    return ["".join(shades[min(int(v * 9.99), 9)] * 2 for v in row) for row in image]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the dataset file")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--nworkers", type=int, default=2)
    args = parser.parse_args()

    if args.out is None:  # nothing is left behind unless asked for
        with tempfile.TemporaryDirectory(prefix="crumpets-demo-") as out:
            run(out, args)
    else:
        os.makedirs(args.out, exist_ok=True)
        run(args.out, args)


def run(out: str, args: argparse.Namespace) -> None:
    path = os.path.join(out, "digits.msgpack")
    n = pack_digits(path)
    print(f"packed {n} handwritten digits into {path}")

    with Reader(path) as reader:
        loader = TurboDataLoader(
            reader, 64, DigitWorker(), nworkers=args.nworkers, shuffle=True, seed=0
        )
        start = time.perf_counter()
        with loader:
            first_batch = time.perf_counter() - start
            for epoch in range(args.epochs):
                t0 = time.perf_counter()
                labels, keys = [], []
                for iteration, (batch,) in loader:
                    labels.append(batch["label"][:, 0].copy())
                    keys += batch["key"]
                    if iteration == 0:
                        shown = batch["image"][:6, 0].copy(), batch["label"][:6, 0].copy()
                elapsed = time.perf_counter() - t0
                assert sorted(keys) == sorted(reader.keys), "every digit exactly once"
                counts = np.bincount(np.concatenate(labels), minlength=10)
                print(
                    f"epoch {epoch}: {len(keys)} digits in {len(loader)} batches, "
                    f"{len(keys) / elapsed:,.0f} samples/s, per class {counts.tolist()}"
                )
    print(f"first batch {first_batch * 1000:.0f} ms after entering `with`")
    images, labels = shown
    print("first batch, first six digits (label above):")
    print("   ".join(f"{int(label):^16d}" for label in labels))
    rows = [ascii_digit(img) for img in images]
    for r in range(8):
        print("   ".join(row[r] for row in rows))


if __name__ == "__main__":
    main()
