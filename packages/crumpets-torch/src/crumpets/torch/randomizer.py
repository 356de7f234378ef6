"""The Randomizer: pixel augmentations on the GPU, from each sample's parameters."""

from __future__ import annotations

from typing import Any

import torch

from .augmentation_cuda import add_blur, add_gamma, add_noise_other, add_noise_rgb

__all__ = ["GPU_OPS", "Randomizer", "randomize"]

# In the CPU workers' order. Workers leave these to the GPU when gpu_augmentation=True
# (registered as the crumpets.gpu_ops entry points) and list them in 'gpu_ops'.
GPU_OPS = ("gamma", "blur", "noise")
_NEUTRAL = {
    "gamma": {"gamma_gray": None, "gamma_color": None, "contrast": None},
    "blur": {"blur": None},
    "noise": {"noise": None, "noise_seed": 0},
}


def randomize(image: torch.Tensor, augs: list[dict]) -> torch.Tensor:
    """Apply the pixel operations each sample's parameters leave to the GPU.

    A sample's ``'gpu_ops'`` lists them (all of :data:`GPU_OPS` if absent); it is emptied
    afterwards, so applying twice changes nothing.

    Raises:
        KeyError: a sample lacks a parameter an operation needs (names both).
    """
    if len(augs) != len(image):
        raise ValueError(f"{len(augs)} augmentation dicts for a batch of {len(image)} images")
    for op in GPU_OPS:
        wanted = [op in aug.get("gpu_ops", GPU_OPS) for aug in augs]
        if not any(wanted):
            continue
        params = [aug if w else _NEUTRAL[op] for aug, w in zip(augs, wanted)]
        if op == "gamma":
            image = add_gamma(image, params)
        elif op == "blur":
            image = add_blur(image, params)
        else:
            image = (add_noise_rgb if image.shape[1] == 3 else add_noise_other)(image, params)
    for aug in augs:
        aug["gpu_ops"] = []
    return image


class Randomizer(torch.nn.Module):
    """Applies the pixel augmentations of ``sample['augmentation']`` to
    ``sample['image']`` on its device, then forwards the sample through ``net``.

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
        sample["image"] = randomize(sample["image"], sample["augmentation"])
        return sample if self.net is None else self.net(sample, *args, **kwargs)
