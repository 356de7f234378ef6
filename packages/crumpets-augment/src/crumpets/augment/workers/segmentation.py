"""The segmentation worker: an image and its label map, with the same geometry."""

from __future__ import annotations

from typing import Any

from ..rng import INTERP_NEAREST, RNG
from ._image import FCNWorker

__all__ = ["SegmentationWorker"]


class SegmentationWorker(FCNWorker):
    """Worker for segmentation: the target (a label map: single-channel PNG or uint8
    array) uses nearest-neighbour interpolation, no supersampling and no pixel
    augmentation; its buffer's fill value marks pixels outside the image (use your
    loss's ignore index)."""

    # Under gpu_decode the workers still decode and warp the label map (a PNG, which nvJPEG
    # does not decode; nearest, no pixel operations): only the photo goes to the device.
    gpu_decode_keys: tuple[str, ...] = ("image",)

    TARGET_DEFAULTS = {
        "interp_method": INTERP_NEAREST,
        "supersampling": 1,
        "gamma_gray": None,
        "gamma_color": None,
        "contrast": None,
        "noise": None,
        "blur": None,
    }

    def __init__(
        self,
        image: Any,
        target_image: Any,
        image_params: dict | None = None,
        target_image_params: dict | None = None,
        image_rng: RNG | None = None,
        **kwargs: Any,
    ):
        params = {**self.TARGET_DEFAULTS, **(target_image_params or {})}
        super().__init__(image, target_image, image_params, params, image_rng, **kwargs)
