"""The loader's input: msgpack bytes of samples, from a sequence read by index or from a
plain iterator read in order.

A sequence (a list, a dataset :class:`~crumpets.core.dataset.Reader`) can be shuffled,
sharded and resumed anywhere; an iterator only moves forward, item ``p * length + i``
being sample ``i`` of pass ``p``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Items", "random_access"]


def random_access(iterable: Any) -> bool:
    """True for a sequence the loader can read by index."""
    return (
        hasattr(iterable, "__len__")
        and hasattr(iterable, "__getitem__")
        and not isinstance(iterable, (Mapping, str, bytes))
    )


class Items:
    """Reads the items of batches from the loader's iterable.

    Args:
        iterable: a sequence, or any iterable (read once, in order).

    Raises:
        TypeError: if ``iterable`` is not iterable.
    """

    def __init__(self, iterable: Any):
        self.iterable = iterable
        self.random_access = random_access(iterable)
        if not self.random_access and not hasattr(iterable, "__iter__"):
            raise TypeError(f"iterable must be iterable, got {type(iterable).__name__}")
        self._iterator = None if self.random_access else iter(iterable)
        self._read_pos = 0  # items taken from a plain iterator

    def read(self, p: int, indices: np.ndarray, length: int) -> list:
        """The msgpack bytes of samples ``indices`` of pass ``p`` over ``length`` samples.

        Raises:
            TypeError: for an item that is not bytes, naming its index.
            ValueError: if a plain iterator would have to go back, or runs out.
        """
        if self.random_access:
            items = [self.iterable[i] for i in indices.tolist()]
        else:
            pos = p * length + int(indices[0])
            if pos < self._read_pos:
                raise ValueError(
                    f"a plain iterator cannot go back to item {pos} (item {self._read_pos} "
                    "was read already); load a state into a new loader with a new iterator"
                )
            while self._read_pos < pos:  # skip what an abandoned epoch or a resume passed
                self._next(p, length)
            items = [self._next(p, length) for _ in indices]
        for item, index in zip(items, indices.tolist()):
            if not isinstance(item, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"iterable item {index} is a {type(item).__name__}, not msgpack bytes; "
                    "pack samples with msgpack.packb(sample, use_bin_type=True)"
                )
        return items

    def _next(self, p: int, length: int) -> Any:
        assert self._iterator is not None  # a plain iterator, not random access
        try:
            item = next(self._iterator)
        except StopIteration:
            raise ValueError(
                f"iterable ran out after {self._read_pos} items, in epoch {p} of "
                f"length={length}; pass a list or Reader, or itertools.cycle it"
            ) from None
        self._read_pos += 1
        return item
