"""Decoding a batch of encoded images on a device, behind a small interface.

A :class:`Decoder` turns a list of encoded images into uint8 (C, H, W) tensors on a
device, or says per sample what it refused (an exception in that sample's place), so that
one file the decoder cannot take never fails its batch's neighbours:
:func:`decode_batch` decodes the refused samples with a fallback decoder (on the CPU) and
they join the batch.

- :class:`NvjpegDecoder`: nvJPEG through ``torchvision.io.decode_jpeg(list,
  device=...)``; torchvision is imported when it first decodes (the extra
  ``crumpets-torch[gpu-decode]``). It refuses what nvJPEG cannot decode before trying
  (not a JPEG, CMYK/YCCK, 12-bit, arithmetic-coded or lossless JPEGs, a file that does
  not end with its end-of-image marker), and a file the batched call fails on is retried
  alone, so only that file is refused.
- :class:`CPUDecoder`: OpenCV through crumpets-augment's public
  :func:`crumpets.augment.augmentation.decode_opencv` (imported when it first decodes),
  the same decoder and the same errors as the CPU workers. It is the fallback, and the
  decoder itself where the loader runs on CPU tensors (the tests).

nvImageCodec or torchcodec can stand in: subclass :class:`Decoder`.
"""

from __future__ import annotations

import importlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

import torch
from crumpets.core.params import AUGMENTED_IMAGES

from .warp import INTERPOLATIONS, warp_images

__all__ = [
    "CPUDecoder",
    "DecodeRefused",
    "Decoder",
    "NvjpegDecoder",
    "decode_batch",
    "decode_sample",
    "nvjpeg_refusal",
]

_JPEG = b"\xff\xd8"
# SOF markers nvJPEG decodes: baseline, extended and progressive Huffman.
_NVJPEG_FRAMES = (0xC0, 0xC1, 0xC2)


class DecodeRefused(ValueError):
    """A decoder does not take this image (its format or coding): another may."""


class Decoder(ABC):
    """Decodes a batch of encoded images onto a device."""

    @abstractmethod
    def decode(
        self, data: Sequence[Any], device: torch.device, color: bool
    ) -> list[torch.Tensor | Exception]:
        """Decode each of ``data`` (bytes-like: bytes, memoryview, uint8 numpy arrays).

        Args:
            data: the encoded images.
            device: where the tensors go.
            color: RGB (3, H, W) if True, gray (1, H, W) if False; a gray file comes back
                as RGB where RGB is asked for.

        Returns:
            One entry per image: a uint8 (C, H, W) tensor on ``device``, or the exception
            that says why that image was not decoded (:class:`DecodeRefused` where another
            decoder may succeed).
        """


def _jpeg_frame(data: bytes | memoryview) -> tuple[int, int, int, int | None] | None:
    """(SOF marker, sample precision, components, Adobe colour transform or None) from a
    JPEG's headers, else None."""
    if bytes(data[:2]) != _JPEG:
        return None
    i, n = 2, len(data)
    adobe = None
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker == 0xEE and bytes(data[i + 4 : i + 9]) == b"Adobe" and i + 15 < n:
            adobe = data[i + 15]  # APP14: 0 means the components are stored as RGB
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker, data[i + 4], data[i + 9], adobe
        i += 2 + (data[i + 2] << 8 | data[i + 3])
    return None


def nvjpeg_refusal(data: bytes | memoryview | np.ndarray) -> str | None:
    """Why nvJPEG would not decode ``data`` correctly, or None where it can.

    Refused: anything but a JPEG; CMYK or YCCK (4 components), 12-bit, arithmetic-coded
    and lossless JPEGs, JPEGs stored as RGB (Adobe's marker, transform 0); and a JPEG
    that does not end with its end-of-image marker (a truncated file: libjpeg and nvJPEG
    decode it into partly grey pixels without an error, so it goes to the CPU decoder,
    which names it, as the CPU workers do).
    """
    view = memoryview(cast(Any, data)).cast("B")
    frame = _jpeg_frame(view)
    if frame is None:
        return "not a JPEG" if bytes(view[:2]) != _JPEG else "no JPEG frame header"
    marker, precision, components, adobe = frame
    if marker not in _NVJPEG_FRAMES:
        return f"JPEG coding SOF{marker - 0xC0} (arithmetic or lossless)"
    if precision != 8:
        return f"{precision}-bit JPEG"
    if components not in (1, 3):
        return f"JPEG with {components} components (CMYK or YCCK)"
    if components == 3 and adobe == 0:
        # libjpeg honours Adobe's marker; nvJPEG would convert the RGB as if YCbCr
        return "JPEG stored as RGB (Adobe transform 0)"
    if bytes(view[-2:]) != b"\xff\xd9":
        return "JPEG without an end-of-image marker at its end"
    return None


def _as_uint8_tensor(item: Any) -> torch.Tensor:
    array = np.frombuffer(item, np.uint8) if not isinstance(item, np.ndarray) else item
    if not array.flags.writeable:  # torch warns on read-only memory
        array = array.copy()
    return torch.from_numpy(array.reshape(-1))


class NvjpegDecoder(Decoder):
    """nvJPEG through ``torchvision.io.decode_jpeg`` on a CUDA device (torchvision >= 0.20,
    the extra ``crumpets-torch[gpu-decode]``), imported when it first decodes.

    Files it refuses (:func:`nvjpeg_refusal`) or fails on come back as
    :class:`DecodeRefused`, for :func:`decode_batch`'s fallback.
    """

    def __init__(self) -> None:
        self._io: Any = None
        # one stream per device that only nvJPEG's outputs are allocated on (see decode)
        self._streams: dict[torch.device, Any] = {}
        self._warned = False

    def load(self, device: torch.device | None = None) -> None:
        """Import torchvision now, and decode a small JPEG on ``device`` if given, so that
        a missing torchvision, or one built without nvJPEG, is an error before the first
        batch rather than every image decoded on the CPU.

        Raises:
            ImportError: naming the extra to install.
            RuntimeError: torchvision cannot decode on ``device``.
        """
        io = self._torchvision_io()
        if device is None:
            return
        probe = io.encode_jpeg(torch.full((3, 8, 8), 128, dtype=torch.uint8))
        try:
            io.decode_jpeg([probe], device=device)
        except Exception as exc:
            raise RuntimeError(
                f"torchvision cannot decode JPEGs on {device} (nvJPEG): {exc}; "
                "pass gpu_decode=False, or a crumpets.torch.decode.Decoder that can"
            ) from exc

    def _torchvision_io(self) -> Any:
        if self._io is None:
            try:
                self._io = importlib.import_module("torchvision.io")
            except Exception as exc:  # not installed, or a wheel that does not fit torch
                raise ImportError(
                    "gpu_decode on a CUDA device needs torchvision (pip install "
                    f"'crumpets-torch[gpu-decode]'), which cannot be imported: {exc}"
                ) from exc
        return self._io

    def decode(
        self, data: Sequence[Any], device: torch.device, color: bool
    ) -> list[torch.Tensor | Exception]:
        io = self._torchvision_io()
        mode = io.ImageReadMode.RGB if color else io.ImageReadMode.GRAY
        results: list[torch.Tensor | Exception] = []
        todo, inputs = [], []
        for i, item in enumerate(data):
            reason = nvjpeg_refusal(item)
            results.append(DecodeRefused(f"nvJPEG does not decode it: {reason}"))
            if reason is None:
                todo.append(i)
                inputs.append(_as_uint8_tensor(item))
        if not todo:
            return results
        if device.type != "cuda":
            decoded = self._decode_all(io, inputs, mode, device)
        else:
            # torchvision allocates the images on the current stream but writes them on a
            # stream of its own that does not wait for the current one: memory the
            # caller's queued kernels still read could be handed out and overwritten.
            # Here they are allocated on a stream that runs nothing else, and each image
            # is recorded on the caller's stream, so its memory returns to this stream's
            # pool only when the caller's work on it is done.
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = torch.cuda.Stream(device)
            current = torch.cuda.current_stream(device)
            with torch.cuda.stream(stream):
                decoded = self._decode_all(io, inputs, mode, device)
            current.wait_stream(stream)
            for out in decoded:
                if isinstance(out, torch.Tensor):
                    out.record_stream(current)
        for i, out in zip(todo, decoded):
            results[i] = out
        return results

    def _decode_all(
        self, io: Any, inputs: list[torch.Tensor], mode: Any, device: torch.device
    ) -> list[torch.Tensor | Exception]:
        try:
            return list(io.decode_jpeg(inputs, mode=mode, device=device))
        except Exception:  # torchvision raises RuntimeError, but any failure is one file's
            pass
        # the batched call fails as a whole: find the file, decode the others
        decoded: list[torch.Tensor | Exception] = []
        for tensor in inputs:
            try:
                decoded.append(io.decode_jpeg(tensor, mode=mode, device=device))
            except Exception as exc:
                decoded.append(DecodeRefused(f"nvJPEG failed: {exc}"))
        if len(inputs) > 1 and all(isinstance(d, Exception) for d in decoded) and not self._warned:
            self._warned = True  # once: every batch may do it (out of device memory, ...)
            warnings.warn(
                f"nvJPEG decoded none of a batch's {len(inputs)} JPEGs (first error: "
                f"{decoded[0]}); they are decoded on the CPU, in the main process",
                RuntimeWarning,
                stacklevel=2,
            )
        return decoded


class CPUDecoder(Decoder):
    """OpenCV on the CPU: crumpets-augment's :func:`decode_opencv`, so the pixels and the
    errors (``ValueError: cannot decode image ...``, ``truncated JPEG ...``) are the CPU
    workers'. Tensors go to ``device`` afterwards.

    Args:
        max_pixels: refuse images whose header claims more pixels (None: any size; the
            workers checked the header already).
        refuse: a function of the bytes that returns why this decoder should refuse them
            (None: decode them), e.g. :func:`nvjpeg_refusal`, to run the fallback path of
            :func:`decode_batch` on the CPU as it runs on a GPU.
    """

    def __init__(self, max_pixels: int | None = None, refuse: Any = None) -> None:
        self.max_pixels = max_pixels
        self.refuse = refuse
        self._decode: Any = None

    def _decoder(self) -> Any:
        if self._decode is None:
            try:
                module = importlib.import_module("crumpets.augment.augmentation")
            except ImportError as exc:
                raise ImportError(
                    "the CPU image decoder needs crumpets-augment (pip install crumpets-augment)"
                ) from exc
            self._decode = module.decode_opencv
        return self._decode

    def decode(
        self, data: Sequence[Any], device: torch.device, color: bool
    ) -> list[torch.Tensor | Exception]:
        decode_opencv = self._decoder()
        results: list[torch.Tensor | Exception] = []
        for item in data:
            reason = None if self.refuse is None else self.refuse(item)
            if reason is not None:
                results.append(DecodeRefused(reason))
                continue
            try:
                im = decode_opencv(bytes(item), color, max_pixels=self.max_pixels)
            except (ValueError, MemoryError) as exc:
                results.append(exc)
                continue
            # HxWxC -> CxHxW in numpy: torch.from_numpy records no torch call
            tensor = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))
            if device.type != "cpu":  # pinned, so the copy does not wait for the device
                tensor = tensor.pin_memory().to(device, non_blocking=True)
            results.append(tensor)
        return results


def decode_batch(
    decoder: Decoder,
    data: Sequence[Any],
    device: torch.device,
    color: bool,
    *,
    fallback: Decoder | None = None,
    names: Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Decode ``data`` with ``decoder``; what it refuses, with ``fallback``.

    Args:
        decoder: the first decoder to try.
        data: the encoded images.
        device: where the tensors go.
        color: RGB if True, else gray.
        fallback: decodes each image ``decoder`` refused (None: none).
        names: how an error names each image, e.g. 'sample 7 (epoch 0)'.
        indices: each image's sample index, for the error's ``sample_index``.

    Returns:
        uint8 (C, H, W) tensors on ``device``, one per image, in order.

    Raises:
        ValueError: (or the type the decoder gave) for the first image no decoder decoded,
            e.g. a corrupt file: its message followed by the image's name, with a
            ``sample_index`` attribute (from ``indices``, else None) as the loader's
            errors from workers have.
    """
    results = decoder.decode(data, device, color)
    if len(results) != len(data):
        raise RuntimeError(f"{type(decoder).__name__} returned {len(results)} of {len(data)}")
    refused = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    if refused and fallback is not None:
        again = fallback.decode([data[i] for i in refused], device, color)
        for i, r in zip(refused, again):
            results[i] = r
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            name = names[i] if names is not None else f"image {i} of the batch"
            # the format of the errors workers raise (crumpets.core), the same first line
            message = (
                f"{type(r).__name__}: {r}\n  raised in the main process (gpu_decode) on {name}"
            )
            try:
                error = type(r)(message)
            except Exception:
                error = RuntimeError(message)
            error.sample_index = None if indices is None else indices[i]  # type: ignore[attr-defined]
            raise error from r
    return results  # type: ignore[return-value]


def _fill(background: Any, channels: int) -> list[float]:
    """A background (a number, or one per channel) as one value per channel."""
    values = list(background) if isinstance(background, (list, tuple, np.ndarray)) else [background]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ValueError(f"background needs 1 or {channels} values, got {background!r}")
    return [float(v) for v in values]


def decode_sample(
    sample: dict,
    specs: dict[str, Any],
    device: torch.device,
    decoder: Decoder,
    *,
    fallback: Decoder | None = None,
    antialias: bool = True,
) -> dict:
    """Turn a batch of encoded images, as workers write them under ``gpu_decode``, into the
    images the CPU workers would have written: decode (:func:`decode_batch`), then warp
    each with its sample's ``transform`` (:func:`crumpets.torch.warp.warp_images`, the
    workers' border rule, their background). Pixel operations are left to
    :func:`crumpets.torch.randomizer.randomize_sample`.

    Args:
        sample: a batch (or mini-batch) with ``NAME_bytes`` (n, max_bytes) uint8,
            ``NAME_info`` (n, 3) int64 (byte count, sample index, epoch), on the CPU, and
            the parameter list of each image (``augmentation``, ``target_augmentation``).
        specs: ``NAME`` -> the image buffer's ``(shape, dtype, fill)`` (what
            ``Worker.set_gpu_decode`` returned).
        device: where the images are made.
        decoder: decodes first; ``fallback`` takes what it refuses.
        antialias: see :func:`~crumpets.torch.warp.warp_images`.

    Returns:
        A new dict: each ``NAME`` an (n, C, H, W) tensor on ``device``, without the byte
        buffers; the rest shared with ``sample``.

    Raises:
        ValueError (or what the decoder raised) naming the sample no decoder decoded.
    """
    out = dict(sample)
    for key, (shape, dtype, fill) in specs.items():
        data = out.pop(f"{key}_bytes")
        info = out.pop(f"{key}_info")
        augs = sample[AUGMENTED_IMAGES.get(key, "augmentation")]
        data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        info = (info.numpy() if isinstance(info, torch.Tensor) else np.asarray(info)).tolist()
        items = [data[i, :n] for i, (n, _, _) in enumerate(info)]  # views: no torch call
        names = [f"sample {index} (epoch {epoch})" for _, index, epoch in info]
        channels, height, width = shape
        images = decode_batch(
            decoder,
            items,
            device,
            channels == 3,
            fallback=fallback,
            names=names,
            indices=[index for _, index, _ in info],
        )
        fills = [_fill(a.get("background", fill), channels) for a in augs]
        methods = [a.get("interp_method") for a in augs]
        modes = [INTERPOLATIONS.get(1 if m is None else int(m), "bilinear") for m in methods]
        warped = warp_images(
            images,
            [a["transform"] for a in augs],
            (height, width),
            border="background",
            fill=fills,
            interpolation=modes,
            antialias=antialias,
        )
        if np.dtype(dtype) != np.uint8:
            warped = warped.to(torch.from_numpy(np.zeros(0, dtype)).dtype)
        out[key] = warped
    return out
