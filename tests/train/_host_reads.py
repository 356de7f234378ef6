"""Counts host reads of tensor values: the calls that, on a GPU, wait for the device's queue.

On CPU tensors nothing waits, so the calls are counted instead: ``item``, ``tolist``,
``numpy``, ``cpu``, ``to`` a CPU device, and ``bool``/``float``/``int`` of a tensor.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

READS = ("item", "tolist", "numpy", "cpu", "to", "__bool__", "__float__", "__int__")


def _to_cpu(args: tuple, kwargs: dict) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    if isinstance(target, torch.Tensor):
        target = target.device
    return isinstance(target, str | torch.device) and torch.device(target).type == "cpu"


@contextlib.contextmanager
def count_host_reads() -> Iterator[Counter]:
    """Counts, while open, each host read by ``"name file:line"`` of its caller."""
    reads: Counter = Counter()

    def counting(name: str, original):
        def wrapper(self, *args, **kwargs):
            if name != "to" or _to_cpu(args, kwargs):
                caller = sys._getframe(1)
                where = f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}"
                reads[f"{name} {where}"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        for name in READS:
            patch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        yield reads
