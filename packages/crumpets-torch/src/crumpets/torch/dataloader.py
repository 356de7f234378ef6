"""TorchTurboDataLoader: batches as torch tensors, on the CPU or moved to GPUs."""

from __future__ import annotations

import collections
import copy
from typing import Any

import torch
from crumpets.core.broker import workers_are_forked
from crumpets.core.dataloader import TurboDataLoader

from .randomizer import GPU_OPS, randomize_sample
from .shm import DummyTensorManager, SharedTensorManager

__all__ = ["TorchTurboDataLoader", "parse_devices"]


def parse_devices(device: Any) -> list[torch.device]:
    """One or several torch devices, checked: known, available, not mixing CPU and GPU.

    Raises:
        ValueError: naming the device that is wrong.
    """
    items = [device] if isinstance(device, (str, int, torch.device)) else list(device)
    if not items:
        raise ValueError("device must name at least one device")
    devices = []
    for item in items:
        try:
            dev = torch.device(item)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"device {item!r} is not a torch device: {exc}") from None
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device {item!r}: only 'cpu' and 'cuda' devices are supported")
        devices.append(dev)
    if len({d.type for d in devices}) > 1:
        raise ValueError(f"device list {items!r} mixes CPU and GPU devices")
    for item, dev in zip(items, devices):
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {item!r} needs CUDA, which this machine's torch cannot use; "
                "pass device='cpu'"
            )
        if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
            raise ValueError(
                f"device {item!r}: only {torch.cuda.device_count()} CUDA devices exist"
            )
    return devices


class TorchTurboDataLoader(TurboDataLoader):
    """TurboDataLoader that yields torch tensors, on ``device``.

    On the CPU the tensors are the shared buffers themselves (no copy). For a CUDA device
    the buffers are registered as pinned memory once and copied with non-blocking
    copies on a side stream, so a copy overlaps the computation on the previous batch.
    With a list of devices each batch is split into one mini-batch per device (see
    ``ParallelApply``).

    Args:
        device: a device ('cuda:0', 'cpu', torch.device, index) or a list of them.
        gpu_augmentation: workers leave gamma, blur and noise to the GPU; the loader
            applies them on ``device`` (see ``Randomizer``) to every image the workers
            augment (``image``, and an FCN worker's ``target_image``) before handing out
            the batch.
        others: see :class:`crumpets.core.TurboDataLoader` (including the keyword-only
            seed, shuffle, drop_last, rank, world_size, stall_timeout).
    """

    def __init__(
        self,
        iterable: Any,
        batch_size: int,
        worker_template: Any,
        nworkers: int,
        length: int | None = None,
        num_mini_batches: int = 1,
        start_iteration: int = 0,
        device: Any = "cuda:0",
        gpu_augmentation: bool = False,
        shared_memory: bool | int = True,
        **kwargs: Any,
    ):
        self.devices = parse_devices(device)
        if len(self.devices) > 1 and num_mini_batches == 1:
            num_mini_batches = len(self.devices)
        if num_mini_batches % len(self.devices):
            raise ValueError(
                f"num_mini_batches={num_mini_batches} must be a multiple of the "
                f"{len(self.devices)} devices"
            )
        self.gpu_augmentation = bool(gpu_augmentation)
        if self.gpu_augmentation:
            worker_template = copy.copy(worker_template)
            worker_template.set_gpu_augmentation(True, GPU_OPS)
        super().__init__(
            iterable,
            batch_size,
            worker_template,
            nworkers,
            length,
            num_mini_batches,
            start_iteration,
            shared_memory,
            **kwargs,
        )
        self.device = (
            self.devices[0] if isinstance(device, (str, int, torch.device)) else self.devices
        )
        self.cuda = self.devices[0].type == "cuda"
        self._streams: dict[torch.device, Any] = {}
        # (event, host tensors) of copies still running; their buffer sets stay held
        self._transfers: collections.deque = collections.deque()

    def make_buffer_manager(self, shared: bool, specs: dict) -> Any:
        if shared:
            return SharedTensorManager(
                self.num_buffers,
                self.batch_size,
                specs,
                self.devices[0],
                anonymous=workers_are_forked(),
            )
        return DummyTensorManager(self.batch_size, specs, self.devices[0])

    def _to_device(self, mini: dict, device: torch.device) -> dict:
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        # The host slot is safe: it is reused only after this copy's event (_transfers).
        current = torch.cuda.current_stream(device)
        with torch.cuda.stream(stream):
            moved = {
                k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in mini.items()
            }
            event = torch.cuda.Event()
            event.record(stream)
        current.wait_event(event)
        for v in moved.values():
            if isinstance(v, torch.Tensor):
                v.record_stream(current)  # allocated on `stream`, used on `current`
        self._transfers.append((event, mini))
        return moved

    def deliver(self, mini_batches: list[dict]) -> list:
        while self._transfers and self._transfers[0][0].query():
            self._transfers.popleft()  # copy done: release the host buffers
        out = []
        for i, mini in enumerate(mini_batches):
            device = self.devices[i % len(self.devices)]
            if device.type == "cuda":
                mini = self._to_device(mini, device)
            if self.gpu_augmentation:
                mini = randomize_sample(mini)  # every image the workers augment
            out.append(mini)
        return out

    def release_transfers(self) -> bool:
        if not self._transfers:
            return False
        event, _ = self._transfers.popleft()
        event.synchronize()
        return True

    def start(self) -> None:
        super().start()
        if isinstance(self.buffer_manager, SharedTensorManager):
            self.buffer_manager.pin()  # after the workers are forked

    def stop(self) -> None:
        try:
            while self._transfers:
                self.release_transfers()
        finally:
            super().stop()
