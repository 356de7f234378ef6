"""Helpers shared by losses and metrics: reading sample dicts, shaping targets, NSS."""

from __future__ import annotations

import torch

__all__ = ["class_targets", "get", "nss_per_image"]


def get(sample: dict, key: str, owner: object) -> torch.Tensor:
    """``sample[key]``, or a KeyError that names the key and the keys the sample has."""
    try:
        return sample[key]
    except KeyError:
        raise KeyError(
            f"{type(owner).__name__} needs sample[{key!r}]; the sample has {sorted(sample)}"
        ) from None


def class_targets(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-index targets shaped like ``output`` without its class dimension (dim 1).

    crumpets' workers give labels a channel dimension: ``(N, 1)`` for classification,
    ``(N, 1, H, W)`` for segmentation, while torch's class-index losses want ``(N,)`` and
    ``(N, H, W)``. Such a dimension is dropped and the indices are made int64 (label
    buffers may be any integer or even float type). Targets with as many dims as ``output``
    and more than one value along dim 1 are class probabilities and stay as they are.
    """
    if target.dim() == output.dim() and target.dim() >= 2 and target.shape[1] == 1:
        target = target.squeeze(1)
    if target.dim() == output.dim() - 1 and target.dtype != torch.long:
        target = target.long()
    return target


def nss_per_image(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized scanpath saliency of each image in a batch.

    Each predicted map is normalized to zero mean and unit standard deviation (population
    std, as in Bylinskii et al.'s reference code); its NSS is the mean of the normalized
    values at the gaze locations, weighted by the target (crumpets' saliency maps count
    the gaze points that fell on each pixel, so this is the mean over all points).

    Args:
        output: predicted maps ``(N, ...)``.
        target: gaze maps with the same number of values per image; > 0 at gaze locations.

    Returns:
        ``(nss, valid)``: per-image NSS ``(N,)`` (0 where invalid) and a bool mask of the
        images that have at least one gaze location (NSS is undefined for the others).
    """
    n = output.shape[0]
    out = output.reshape(n, -1)
    tgt = target.reshape(target.shape[0], -1).to(out.dtype)
    if tgt.shape != out.shape:
        raise ValueError(
            f"output {tuple(output.shape)} and target {tuple(target.shape)} must have the same "
            "number of values per image"
        )
    out = out - out.mean(dim=1, keepdim=True)
    # a constant map has no salient region: clamp std so it scores 0 rather than NaN
    out = out / out.std(dim=1, correction=0, keepdim=True).clamp_min(1e-12)
    weight = tgt.sum(dim=1)
    valid = weight > 0
    nss = (out * tgt).sum(dim=1) / weight.clamp_min(1e-12)
    return torch.where(valid, nss, torch.zeros_like(nss)), valid
