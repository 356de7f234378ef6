"""crumpets demo: a small CNN trained on real handwritten digits, on the CPU.

Packs scikit-learn's handwritten digits into dataset files, loads them through
TorchTurboDataLoader + ClassificationWorker (augmented) and trains with the Trainer.
Prints throughput and validation accuracy; writes the log, a snapshot, loss/accuracy
curves (curves.png) and an augmentation preview (preview.png) to --out.

Run: nox -s demo   (or: python examples/demo.py --out demo-out)
"""

from __future__ import annotations

import sys

from crumpets.train.demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
