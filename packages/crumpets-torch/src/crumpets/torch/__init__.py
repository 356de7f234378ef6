"""crumpets-torch: torch loader, shared and pinned tensors, GPU augmentation."""

from ._version import __version__

__all__ = ["__version__"]
