"""crumpets-augment: image decoding, CPU augmentation kernels, RNGs, presets and workers."""

from ._version import __version__

__all__ = ["__version__"]
