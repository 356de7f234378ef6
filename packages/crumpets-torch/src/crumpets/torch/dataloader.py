"""TorchTurboDataLoader: batches as torch tensors, on the CPU or moved to GPUs."""

from __future__ import annotations

import collections
import copy
from typing import Any

import torch
from crumpets.core.broker import workers_are_forked
from crumpets.core.dataloader import TurboDataLoader

from .decode import CPUDecoder, Decoder, NvjpegDecoder, decode_sample
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
        gpu_decode: the workers hand over their images' encoded bytes and each sample's
            parameters and matrix, and the loader decodes the images on ``device`` (nvJPEG
            on CUDA, through torchvision: ``pip install 'crumpets-torch[gpu-decode]'``;
            OpenCV on the CPU), warps each with its matrix in one batched sampling
            (:func:`crumpets.torch.warp.warp_images`) and applies every pixel operation
            there (it implies ``gpu_augmentation``). What nvJPEG refuses (PNG, CMYK,
            12-bit, corrupt files) is decoded on the CPU, per sample; a file no decoder
            takes is an error naming its sample. ``batch['augmentation']`` is what the CPU
            workers report. A :class:`crumpets.torch.decode.Decoder` instead of True
            decodes with it. Needs a worker that supports it (crumpets-augment's
            ImageWorker, ClassificationWorker, FCNWorker, SegmentationWorker, whose label
            maps stay with the workers) and encoded images. nvJPEG decodes on one CUDA
            device: with a list of CUDA devices, pass a Decoder that serves them.
        gpu_decode_bytes: under ``gpu_decode``, the most encoded bytes one image may have
            (default 1 MiB): each buffer set holds ``batch_size`` times this per image; a
            larger file is an error naming its sample and this option.
        others: see :class:`crumpets.core.dataloader.TurboDataLoader` (including the keyword-only
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
        gpu_decode: bool | Decoder = False,
        gpu_decode_bytes: int = 1 << 20,
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
        if not isinstance(gpu_decode, (bool, Decoder)):
            raise TypeError(
                "gpu_decode must be a bool or a crumpets.torch.decode.Decoder, "
                f"got {type(gpu_decode).__name__}"
            )
        self.gpu_decode = gpu_decode is not False
        # gpu_decode leaves every pixel operation to the device too
        self.gpu_augmentation = bool(gpu_augmentation) or self.gpu_decode
        self._decoded_specs: dict[str, Any] = {}
        if self.gpu_augmentation:
            worker_template = copy.copy(worker_template)
            worker_template.set_gpu_augmentation(True, GPU_OPS)
        self._decoder: Decoder | None = None
        self._fallback: Decoder | None = None
        if self.gpu_decode:
            set_gpu_decode = getattr(worker_template, "set_gpu_decode", None)
            if set_gpu_decode is None:
                raise TypeError(
                    f"{type(worker_template).__name__} cannot leave decoding to the loader "
                    "(gpu_decode)"
                )
            self._decoded_specs = set_gpu_decode(True, gpu_decode_bytes)
            self._fallback = CPUDecoder()
            if isinstance(gpu_decode, Decoder):
                self._decoder = gpu_decode
            elif self.devices[0].type == "cuda":
                if len(self.devices) > 1:
                    # torchvision keeps one nvJPEG decoder per process and makes a new one
                    # (leaking the old) whenever the device changes: every mini-batch
                    raise ValueError(
                        "gpu_decode=True decodes with nvJPEG on one CUDA device, got "
                        f"{[str(d) for d in self.devices]}: pass one device, or a "
                        "crumpets.torch.decode.Decoder that serves several"
                    )
                nvjpeg = NvjpegDecoder()
                # a missing torchvision, or one without nvJPEG, fails here, not later
                nvjpeg.load(self.devices[0])
                self._decoder = nvjpeg
            else:
                self._decoder = self._fallback
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
            if self._decoder is not None:
                mini = self._decode(mini, device)
            if device.type == "cuda":
                mini = self._to_device(mini, device)
            if self.gpu_augmentation:
                mini = randomize_sample(mini)  # every image the workers augment
            out.append(mini)
        return out

    def _decode(self, mini: dict, device: torch.device) -> dict:
        """Decode and warp the mini-batch's images on ``device`` (gpu_decode)."""
        assert self._decoder is not None
        # the CPU decoder is its own fallback: what it refused, it would refuse again
        fallback = None if self._decoder is self._fallback else self._fallback
        decoded = decode_sample(mini, self._decoded_specs, device, self._decoder, fallback=fallback)
        if device.type == "cuda":
            # the decoder reads the bytes from the host slot: it stays held until then
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self._transfers.append((event, mini))
        return decoded

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
