"""Modules that adapt networks to crumpets' sample dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["Normalize", "ParallelApply", "Unpacker", "merge"]


class Unpacker(torch.nn.Module):
    """Runs ``net`` on ``sample[input_key]`` and stores the result in ``sample[output_key]``.

    Args:
        net: a module taking and returning tensors.
        output_key: where the output goes.
        input_key: what the net gets.
    """

    def __init__(self, net: torch.nn.Module, output_key: str = "output", input_key: str = "image"):
        super().__init__()
        self.net = net
        self.output_key = output_key
        self.input_key = input_key

    def forward(self, sample: dict, *_: Any, **__: Any) -> dict:
        if self.input_key not in sample:
            raise KeyError(
                f"Unpacker needs sample[{self.input_key!r}]; the sample has {sorted(sample)}"
            )
        sample[self.output_key] = self.net(sample[self.input_key])
        return sample


class Normalize(torch.nn.Module):
    """``(x - mean) / std`` per channel of NCHW images, as float32.

    Args:
        mean: one value per channel (e.g. crumpets.augment.presets.IMAGENET_MEAN).
        std: one value per channel.
    """

    # buffers, registered in __init__ (Module.__getattr__ alone types them as Tensor | Module)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"Normalize has {self.mean.shape[1]} channels, images have {x.shape[1]}"
            )
        return (x.to(torch.float32) - self.mean) / self.std


def merge(samples: list[dict], device: torch.device | str) -> dict:
    """One dict from several mini-batch dicts: tensors concatenated on ``device``, lists
    concatenated, other values from the first."""
    out: dict = {}
    for key, first in samples[0].items():
        values = [s[key] for s in samples]
        if isinstance(first, torch.Tensor) and first.dim() > 0:
            out[key] = torch.cat([v.to(device) for v in values])
        elif isinstance(first, list):
            out[key] = [x for v in values for x in v]
        else:
            out[key] = first
    return out


class ParallelApply(torch.nn.Module):
    """Runs a module on the mini-batches of a multi-device loader, one per device, and
    merges the results on the first device.

    Args:
        module: a module taking and returning sample dicts.
        merge_results: merge the outputs into one dict (else return the list).
    """

    def __init__(self, module: torch.nn.Module, merge_results: bool = True):
        super().__init__()
        self.module = module
        self.merge_results = merge_results

    def forward(self, mini_batches: list[dict]) -> Any:
        devices = [_device_of(mb) for mb in mini_batches]
        if all(d.type == "cuda" for d in devices) and len(set(devices)) > 1:
            replicas = torch.nn.parallel.replicate(self.module, devices)
            outputs = torch.nn.parallel.parallel_apply(
                replicas, [(mb,) for mb in mini_batches], devices=devices
            )
        else:
            outputs = [self.module(mb) for mb in mini_batches]
        return merge(outputs, devices[0]) if self.merge_results else outputs


def _device_of(sample: dict) -> torch.device:
    for value in sample.values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
