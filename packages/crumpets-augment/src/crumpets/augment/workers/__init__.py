"""Workers that decode and augment images into the loader's shared buffers.

Each sample's parameters come from the worker's RNG, drawn from the sample's own
generator (``self.rng``), overridden by the fixed ``*_params``; they are returned in
``batch['augmentation']`` with the 2x3 ``transform`` actually applied, so any sample can
be replayed and its keypoints and boxes follow the image exactly.

``crumpets.augment.workers.segmentation`` and ``crumpets.augment.workers.saliency`` hold the
segmentation and saliency workers, as ``crumpets.workers.segmentation`` and
``crumpets.workers.saliency`` did in crumpets 3.
"""

from ._image import COLORSPACES, ClassificationWorker, FCNWorker, ImageWorker, check_params
from .saliency import SaliencyWorker
from .segmentation import SegmentationWorker

__all__ = [
    "COLORSPACES",
    "ClassificationWorker",
    "FCNWorker",
    "ImageWorker",
    "SaliencyWorker",
    "SegmentationWorker",
    "check_params",
]
