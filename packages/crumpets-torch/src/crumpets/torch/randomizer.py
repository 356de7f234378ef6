"""The Randomizer: pixel augmentations on the GPU, from each sample's parameters."""

from __future__ import annotations

from typing import Any

import torch
from crumpets.core.params import AUGMENTED_IMAGES, PIXEL_OPS

from .augmentation_cuda import apply_pixel_ops

__all__ = ["GPU_OPS", "Randomizer", "randomize", "randomize_sample"]

# In the CPU workers' order. Workers leave these to the GPU when gpu_augmentation=True
# (TorchTurboDataLoader passes them: Worker.set_gpu_augmentation(True, GPU_OPS)) and list
# them in 'gpu_ops'.
GPU_OPS = tuple(PIXEL_OPS)


def randomize(image: torch.Tensor, augs: list[dict]) -> tuple[torch.Tensor, list[dict]]:
    """Apply the pixel operations each sample's parameters leave to the GPU.

    A sample's ``'gpu_ops'`` lists them (all of :data:`GPU_OPS` if absent). The whole
    batch goes through each operation at once (see
    :func:`crumpets.torch.augmentation_cuda.apply_pixel_ops`).

    Returns:
        The new images, and new parameter dicts whose ``'gpu_ops'`` are empty (``augs``
        is left as it was), so applying the result again changes nothing.

    Raises:
        KeyError: a sample lacks a parameter an operation needs (names both).
        ValueError: a parameter is invalid (names both), or there is not one dict per image.
    """
    if len(augs) != len(image):
        raise ValueError(f"{len(augs)} augmentation dicts for a batch of {len(image)} images")
    wanted = {op: [op in aug.get("gpu_ops", GPU_OPS) for aug in augs] for op in GPU_OPS}
    image = apply_pixel_ops(image, augs, wanted)  # sensor-like noise, as the CPU workers add
    return image, [{**aug, "gpu_ops": []} for aug in augs]


def randomize_sample(sample: dict) -> dict:
    """:func:`randomize` every image buffer a worker augments, with its own parameters:
    ``image`` with ``augmentation``, ``target_image`` with ``target_augmentation``
    (:data:`crumpets.core.params.AUGMENTED_IMAGES`), where the sample has both.

    A segmentation worker's label map lists no operation, so it is left alone.

    Returns:
        A new sample dict with the new images and parameter lists (the rest shared).
    """
    out = dict(sample)
    for key, params in AUGMENTED_IMAGES.items():
        if key in sample and params in sample:
            out[key], out[params] = randomize(sample[key], sample[params])
    return out


class Randomizer(torch.nn.Module):
    """Applies the pixel augmentations of ``sample['augmentation']`` to
    ``sample['image']`` on its device (and of ``sample['target_augmentation']`` to
    ``sample['target_image']``, where present), then forwards the sample through ``net``.

    It does not rotate or resize: geometry is done in the workers.

    Args:
        net: the module to wrap; None returns the randomized sample.
    """

    def __init__(self, net: torch.nn.Module | None = None):
        super().__init__()
        self.net = net

    def forward(self, sample: dict, *args: Any, **kwargs: Any) -> Any:
        for key in ("image", "augmentation"):
            if key not in sample:
                raise KeyError(
                    f"the Randomizer needs sample[{key!r}]; the sample has {sorted(sample)}"
                )
        sample = randomize_sample(sample)  # a new dict: the caller's is left as it was
        return sample if self.net is None else self.net(sample, *args, **kwargs)
