"""Shared buffers as torch tensors, pinned for fast GPU transfer."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

import torch
from crumpets.core.shm import DummyBufferManager, SharedBufferManager, shared_array

__all__ = ["DummyTensorManager", "SharedTensorManager", "shared_tensor", "to_torch"]


def to_torch(obj: Any) -> Any:
    """numpy arrays in (nested dicts and lists of) ``obj`` as tensors sharing their memory."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {k: to_torch(v) for k, v in obj.items()}
    if isinstance(obj, list) and obj and isinstance(obj[0], np.ndarray):
        return [to_torch(v) for v in obj]
    return obj


CUDA_HOST_REGISTER_PORTABLE = 1  # pinned for every CUDA context, i.e. every device


def pin(address: int, nbytes: int) -> None:
    """Page-lock host memory so CUDA copies from it run asynchronously (DMA)."""
    err = torch.cuda.cudart().cudaHostRegister(address, nbytes, CUDA_HOST_REGISTER_PORTABLE)
    if int(err) != 0:
        raise RuntimeError(
            f"cudaHostRegister of {nbytes:,} bytes failed with CUDA error {int(err)}"
        )


def unpin(address: int) -> None:
    torch.cuda.cudart().cudaHostUnregister(address)


def _wants_pinning(device: Any) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


class SharedTensorManager(SharedBufferManager):
    """SharedBufferManager whose batches are torch tensors on the shared memory.

    For a CUDA device the whole pool is registered as pinned memory once (:meth:`pin`,
    after the workers are forked: a driver may keep registered pages from forked children),
    so copies to the GPU need no staging copy and can overlap computation.

    Args:
        num_buffers, batch_size, buffer_specs, anonymous: see SharedBufferManager.
        device: where batches go; pinning only for CUDA.
    """

    def __init__(
        self,
        num_buffers: int,
        batch_size: int,
        buffer_specs: dict,
        device: Any = "cuda:0",
        *,
        anonymous: bool = True,
    ):
        super().__init__(num_buffers, batch_size, buffer_specs, anonymous=anonymous)
        self.device = device
        self.pinned = False

    def pin(self) -> None:
        """Register the pool as pinned memory, if batches go to a CUDA device."""
        if not self.pinned and _wants_pinning(self.device):
            pin(self.address, self.nbytes)
            self.pinned = True

    def unpack(self, data: Any, lease: Any = None) -> Any:
        return to_torch(super().unpack(data, lease))

    def close(self) -> None:
        if getattr(self, "pinned", False):
            torch.cuda.synchronize()  # no copy may still be reading the pages
            unpin(self.address)
            self.pinned = False
        super().close()


class DummyTensorManager(DummyBufferManager):
    """DummyBufferManager whose batches are torch tensors."""

    def __init__(self, batch_size: int, buffer_specs: dict, device: Any = "cuda:0"):
        super().__init__(batch_size, buffer_specs)
        self.device = device

    def unpack(self, data: Any, lease: Any = None) -> Any:
        return to_torch(super().unpack(data, lease))


def shared_tensor(shape: Any, dtype: Any = np.float32, device_type: str = "cuda") -> torch.Tensor:
    """A torch tensor in shared memory (inherited by forked children); pinned if
    ``device_type`` is 'cuda' and CUDA is available."""
    arr = shared_array(shape, dtype)
    if device_type == "cuda" and torch.cuda.is_available() and arr.nbytes:
        address = arr.__array_interface__["data"][0]
        pin(address, arr.nbytes)
        weakref.finalize(arr, unpin, address)
    return torch.from_numpy(arr)
