"""numpy-only workers for the torch tests: crumpets-torch must work without
crumpets-augment."""

from __future__ import annotations

import numpy as np

from crumpets.core import BufferWorker


class GradientWorker(BufferWorker):
    """A smooth 3x16x16 uint8 image per sample (brightness from 'i'), its label, and
    pixel parameters in batch['augmentation'] like crumpets.augment's workers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("image", ((3, 16, 16), np.uint8))
        self.add_buffer("label", ((1,), np.int64))

    def prepare(self, sample, batch, buffers):
        i = sample["i"]
        ramp = np.linspace(20, 230, 16, dtype=np.float64)
        buffers["image"][...] = (ramp[None, :] * 0.5 + ramp[:, None] * 0.5 + i) % 256
        buffers["label"][0] = i
        batch["augmentation"].append(
            {
                "gamma_gray": 0.5,
                "gamma_color": None,
                "contrast": None,
                "blur": None,
                "noise": None,
                "noise_seed": i,
                "gpu_ops": ["gamma"] if self.gpu_augmentation else [],
            }
        )
