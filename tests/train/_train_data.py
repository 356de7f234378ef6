"""Real handwritten digits (scikit-learn) as loader samples, and a numpy-only worker."""

from __future__ import annotations

import functools

import numpy as np
import torch

from crumpets.core import BufferWorker, pack


@functools.cache
def digit_samples(n: int | None = None) -> list[bytes]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    out = [pack({"image": im, "label": int(t)}) for im, t in zip(images, digits.target)]
    return out[:n]


class DigitWorker(BufferWorker):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("image", ((1, 8, 8), np.float32))
        self.add_buffer("label", ((1,), np.int64))

    def prepare(self, sample, batch, buffers):
        buffers["image"][0] = sample["image"] / 255.0
        buffers["label"][0] = sample["label"]


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(64, 32),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(32, 10),
        )

    def forward(self, sample):
        sample["output"] = self.body(sample["image"])
        return sample
