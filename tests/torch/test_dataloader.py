"""TorchTurboDataLoader: tensors on the shared buffers, devices, GPU augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _torch_workers import GradientWorker

from crumpets.core import pack
from crumpets.torch import (
    Normalize,
    ParallelApply,
    TorchTurboDataLoader,
    Unpacker,
    is_cpu_only,
    is_single_torch_device,
)
from crumpets.torch.shm import shared_tensor

SAMPLES = [pack({"i": i}) for i in range(50)]


def test_cpu_tensors_are_the_shared_buffers_without_copy():
    loader = TorchTurboDataLoader(SAMPLES, 8, GradientWorker(), 2, device="cpu")
    with loader:
        manager = loader.buffer_manager
        lo, hi = manager.address, manager.address + manager.nbytes
        labels = []
        for _, (batch,) in loader:
            assert isinstance(batch["image"], torch.Tensor) and batch["image"].dtype == torch.uint8
            assert lo <= batch["image"].data_ptr() < hi  # a view of shared memory
            assert lo <= batch["label"].data_ptr() < hi
            labels += batch["label"][:, 0].tolist()
    assert sorted(labels) == list(range(50))


def test_holding_every_batch_raises_instead_of_deadlocking():
    loader = TorchTurboDataLoader(SAMPLES, 8, GradientWorker(), 2, device="cpu", shared_memory=2)
    kept = []
    with loader, pytest.raises(RuntimeError, match="shared buffer sets are still referenced"):
        for _, (batch,) in loader:
            kept.append(batch["image"])


def test_copies_release_their_buffers():
    loader = TorchTurboDataLoader(SAMPLES, 8, GradientWorker(), 2, device="cpu", shared_memory=2)
    with loader:
        kept = [batch["image"].clone() for _ in range(3) for _, (batch,) in loader]
    assert len(kept) == 21


def test_without_shared_memory():
    loader = TorchTurboDataLoader(
        SAMPLES, 8, GradientWorker(), 2, device="cpu", shared_memory=False
    )
    with loader:
        labels = [int(v) for _, (b,) in loader for v in b["label"][:, 0]]
    assert sorted(labels) == list(range(50))


def test_device_list_gives_one_mini_batch_per_device_and_parallel_apply_merges():
    net = ParallelApply(Unpacker(torch.nn.Flatten(), output_key="flat"))
    loader = TorchTurboDataLoader(SAMPLES, 10, GradientWorker(), 2, device=["cpu", "cpu"])
    assert loader.num_mini_batches == 2
    with loader:
        for _, minis in loader:
            assert len(minis) == 2 and len(minis[0]["image"]) == 5
            out = net(minis)
            assert out["flat"].shape == (10, 3 * 16 * 16)
            assert len(out["augmentation"]) == 10
            break


def test_gpu_augmentation_is_applied_by_the_loader(device):
    plain = TorchTurboDataLoader(SAMPLES, 10, GradientWorker(), 1, device=device)
    augmented = TorchTurboDataLoader(
        SAMPLES, 10, GradientWorker(), 1, device=device, gpu_augmentation=True
    )
    with plain, augmented:
        for (_, (a,)), (_, (b,)) in zip(plain, augmented):
            assert b["image"].device.type == device.type
            assert (b["image"].float().mean() > a["image"].float().mean() + 20).item()
            assert all(aug["gpu_ops"] == [] for aug in b["augmentation"])


@pytest.mark.parametrize(
    ("device", "text"),
    [
        ("tpu:0", "not a torch device|only 'cpu' and 'cuda'"),
        ("banana", "not a torch device"),
        (["cpu", "cuda:0"], "mixes CPU and GPU"),
        ([], "at least one"),
    ],
)
def test_bad_devices_are_named(device, text):
    with pytest.raises(ValueError, match=text):
        TorchTurboDataLoader(SAMPLES, 8, GradientWorker(), 1, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only torch")
def test_cuda_without_cuda_says_so():
    with pytest.raises(ValueError, match="needs CUDA.*device='cpu'"):
        TorchTurboDataLoader(SAMPLES, 8, GradientWorker(), 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu_batches_and_buffers_are_pinned():
    cpu = TorchTurboDataLoader(SAMPLES, 8, GradientWorker(), 2, device="cpu", seed=1, shuffle=True)
    gpu = TorchTurboDataLoader(
        SAMPLES, 8, GradientWorker(), 2, device="cuda:0", seed=1, shuffle=True
    )
    with cpu, gpu:
        assert gpu.buffer_manager.pinned
        for _ in range(3):
            for (_, (a,)), (_, (b,)) in zip(cpu, gpu):
                assert b["image"].is_cuda
                assert torch.equal(a["image"], b["image"].cpu())


def test_helpers():
    assert is_cpu_only("cpu") and is_cpu_only(["cpu", torch.device("cpu")])
    assert not is_cpu_only("cuda:0")
    assert is_single_torch_device("cuda:1") and not is_single_torch_device(["cpu", "cpu"])
    norm = Normalize((10.0, 20.0, 30.0), (2.0, 4.0, 5.0))
    x = torch.full((1, 3, 2, 2), 30, dtype=torch.uint8)
    assert norm(x)[0, :, 0, 0].tolist() == [10.0, 2.5, 0.0]
    with pytest.raises(ValueError, match="std"):
        Normalize((1.0,), (0.0,))
    with pytest.raises(KeyError, match="'pixels'"):
        Unpacker(torch.nn.Identity(), input_key="pixels")({"image": x})
    t = shared_tensor((4,), np.int32, device_type="cpu")
    assert t.shape == (4,) and t.dtype == torch.int32
