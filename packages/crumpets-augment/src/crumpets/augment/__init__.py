"""crumpets-augment: image decoding, CPU augmentation kernels, RNGs, presets and workers.

Works with numpy and OpenCV alone; torch is never imported.
"""

from ._version import __version__
from .augmentation import randomize_image
from .rng import RNG, MixtureRNG, NoRNG
from .workers import (
    ClassificationWorker,
    FCNWorker,
    ImageWorker,
    SaliencyWorker,
    SegmentationWorker,
)

__all__ = [
    "RNG",
    "ClassificationWorker",
    "FCNWorker",
    "ImageWorker",
    "MixtureRNG",
    "NoRNG",
    "SaliencyWorker",
    "SegmentationWorker",
    "__version__",
    "randomize_image",
]
