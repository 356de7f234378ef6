"""crumpets-torch: torch loader, shared and pinned tensors, GPU augmentation."""

from __future__ import annotations

from typing import Any

import torch

from ._version import __version__
from .dataloader import TorchTurboDataLoader
from .randomizer import Randomizer
from .utils import Normalize, ParallelApply, Unpacker

__all__ = [
    "Normalize",
    "ParallelApply",
    "Randomizer",
    "TorchTurboDataLoader",
    "Unpacker",
    "__version__",
    "is_cpu_only",
    "is_single_torch_device",
]


def _items(val: Any) -> list:
    return [val] if isinstance(val, (str, int, torch.device)) else list(val)


def is_cpu_only(val: Any) -> bool:
    """True if ``val`` (a device or a list of devices) names only CPU devices."""
    return all(torch.device(v).type == "cpu" for v in _items(val))


def is_single_torch_device(val: Any) -> bool:
    """True if ``val`` names exactly one device."""
    return len(_items(val)) == 1
