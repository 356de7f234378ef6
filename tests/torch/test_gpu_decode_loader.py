"""TorchTurboDataLoader(gpu_decode=...) wiring with numpy workers and a stand-in decoder
(crumpets-torch without crumpets-augment; the real workers: tests/integration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_decode import RawDecoder, gradient, raw

from crumpets.core import BufferWorker, pack
from crumpets.torch import TorchTurboDataLoader

SPEC = ((3, 8, 8), np.uint8, 0)


class RawWorker(BufferWorker):
    """Writes a RAW0 'file' of a 16x16 gradient per sample, and a matrix that halves it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_buffer("image", SPEC)
        self.add_buffer("label", ((1,), np.int64))
        self.encoded = False

    def set_gpu_decode(self, val, max_bytes=1 << 20):
        self.buffer_specs = dict(self.buffer_specs)
        spec = self.buffer_specs.pop("image")
        self.add_buffer("image_bytes", ((max_bytes,), np.uint8, 0))
        self.add_buffer("image_info", ((3,), np.int64, 0))
        self.encoded = True
        return {"image": spec}

    def prepare(self, sample, batch, buffers):
        i = sample["i"]
        item = np.frombuffer(raw(gradient(16, 16, shift=i)), np.uint8)
        buffers["image_bytes"][: item.size] = item
        buffers["image_info"][:] = (item.size, self.sample_index, self.epoch)
        buffers["label"][0] = i
        batch["augmentation"].append(
            {
                "transform": [[0.5, 0.0, -0.25], [0.0, 0.5, -0.25]],
                "gamma_gray": 0.5,
                "gamma_color": None,
                "contrast": None,
                "blur": None,
                "noise": None,
                "gpu_ops": ["gamma"],
            }
        )


def test_the_loader_decodes_warps_and_applies_the_pixel_operations():
    data = [pack({"i": i}) for i in range(8)]
    loader = TorchTurboDataLoader(data, 4, RawWorker(), 1, device="cpu", gpu_decode=RawDecoder())
    assert loader.gpu_augmentation  # implied: every pixel operation is the loader's
    with loader:
        batches = [b for _, (b,) in loader]
    assert len(batches) == 2
    for b in batches:
        assert set(b) == {"image", "label", "augmentation"}
        assert b["image"].shape == (4, 3, 8, 8) and b["image"].dtype == torch.uint8
        assert [a["gpu_ops"] for a in b["augmentation"]] == [[]] * 4
    # gamma 0.5 brightens: the halved gradient's mean, brighter
    plain = gradient(16, 16).reshape(8, 2, 8, 2, 3).mean((1, 3))
    assert batches[0]["image"][0].float().mean().item() > plain.mean() + 10


def test_a_worker_without_the_hook_is_refused():
    class Plain(BufferWorker):
        def __init__(self):
            super().__init__()
            self.add_buffer("image", SPEC)

        def prepare(self, sample, batch, buffers):
            pass

    with pytest.raises(TypeError, match="cannot leave decoding to the loader"):
        TorchTurboDataLoader([pack({})], 1, Plain(), 1, device="cpu", gpu_decode=True)
    with pytest.raises(TypeError, match="gpu_decode must be a bool or"):
        TorchTurboDataLoader([pack({})], 1, RawWorker(), 1, device="cpu", gpu_decode="yes")
