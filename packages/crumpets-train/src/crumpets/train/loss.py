"""Losses that read their inputs from crumpets' sample dicts.

Each loss takes the keys of its output and target in the sample and returns the loss tensor
from ``forward(sample)``. A missing key is a KeyError that lists the keys the sample has.
The constructors take the reference's parameters in the reference's order (e.g.
``CrossEntropyLoss(output_key, target_key, weight, reduction, ignore_index)``); options the
reference does not have are keyword-only after them.

Example:
    >>> loss = CrossEntropyLoss()
    >>> sample = {"output": torch.randn(4, 10), "label": torch.randint(10, (4, 1))}
    >>> loss(sample).shape
    torch.Size([])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from ._sample import class_targets, get, nss_per_image

__all__ = ["CrossEntropyLoss", "L1Loss", "LabelSmoothing", "MSELoss", "NLLLoss", "NSSLoss"]


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """:class:`torch.nn.CrossEntropyLoss` on ``sample[output_key]`` and ``sample[target_key]``.

    Class-index targets may carry crumpets' channel dimension (``(N, 1)``, ``(N, 1, H, W)``)
    and any integer type; class-probability targets have the output's shape.

    Args:
        output_key: key of the scores ``(N, C, ...)``.
        target_key: key of the targets.
        weight: rescaling weight per class, a tensor of size C.
        reduction: 'none' | 'mean' | 'sum'.
        ignore_index: target value that does not contribute to the loss.
        label_smoothing: amount of smoothing in [0, 1] (keyword only: not in the reference).
    """

    def __init__(
        self,
        output_key: str = "output",
        target_key: str = "label",
        weight: torch.Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
        *,
        label_smoothing: float = 0.0,
    ):
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
        self.output_key = output_key
        self.target_key = target_key

    # takes the sample dict instead of torch's (input, target): the point of this class
    def forward(self, sample: dict) -> torch.Tensor:  # type: ignore[override]
        output = get(sample, self.output_key, self)
        target = class_targets(output, get(sample, self.target_key, self))
        return super().forward(output, target)


class NLLLoss(torch.nn.NLLLoss):
    """:class:`torch.nn.NLLLoss` on ``sample[output_key]`` (log-probabilities) and
    ``sample[target_key]`` (class indices, optionally with crumpets' channel dimension).

    Args:
        output_key: key of the log-probabilities ``(N, C, ...)``.
        target_key: key of the class indices.
        weight: rescaling weight per class, a tensor of size C.
        reduction: 'none' | 'mean' | 'sum'.
        ignore_index: target value that does not contribute to the loss.
    """

    def __init__(
        self,
        output_key: str = "output",
        target_key: str = "label",
        weight: torch.Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
    ):
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction)
        self.output_key = output_key
        self.target_key = target_key

    # takes the sample dict instead of torch's (input, target): the point of this class
    def forward(self, sample: dict) -> torch.Tensor:  # type: ignore[override]
        output = get(sample, self.output_key, self)
        target = class_targets(output, get(sample, self.target_key, self))
        return super().forward(output, target)


def _like_output(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # target images are often uint8 while outputs are float; torch's losses reject the mix
    return target if target.dtype == output.dtype else target.to(output.dtype)


class _PairLoss(_Loss):
    """forward(sample): the torch loss between ``sample[output_key]`` and
    ``sample[target_key]`` (converted to the output's dtype).

    Mixed in before a torch loss (``class L1Loss(_PairLoss, torch.nn.L1Loss)``), whose
    ``__init__`` and ``forward`` the ``super()`` calls reach; its base ``_Loss`` is the one
    every torch loss shares, so the MRO stays the same.
    """

    def __init__(
        self,
        output_key: str = "output",
        target_key: str = "target_image",
        reduction: str = "mean",
    ):
        super().__init__(reduction=reduction)  # the torch loss this is mixed into
        self.output_key = output_key
        self.target_key = target_key

    def forward(self, sample: dict) -> torch.Tensor:
        output = get(sample, self.output_key, self)
        target = get(sample, self.target_key, self)
        return super().forward(output, _like_output(output, target))


# forward(sample) replaces torch's forward(input, target) on purpose (see _PairLoss)
class L1Loss(_PairLoss, torch.nn.L1Loss):  # type: ignore[misc]
    """:class:`torch.nn.L1Loss` between ``sample[output_key]`` and ``sample[target_key]``
    (converted to the output's dtype).

    Args:
        output_key: key of the output tensor.
        target_key: key of the target tensor.
        reduction: 'none' | 'mean' | 'sum'.
    """


# forward(sample) replaces torch's forward(input, target) on purpose (see _PairLoss)
class MSELoss(_PairLoss, torch.nn.MSELoss):  # type: ignore[misc]
    """:class:`torch.nn.MSELoss` between ``sample[output_key]`` and ``sample[target_key]``
    (converted to the output's dtype).

    Args:
        output_key: key of the output tensor.
        target_key: key of the target tensor.
        reduction: 'none' | 'mean' | 'sum'.
    """


class LabelSmoothing(torch.nn.Module):
    """Label smoothing loss based on the NLL of ``log_softmax(output)``:
    ``(1 - smoothing) * nll(target) + smoothing * mean over classes of -log p``,
    averaged over the batch (the same value as ``torch.nn.CrossEntropyLoss(label_smoothing=
    smoothing)``).

    Args:
        smoothing: label smoothing factor in [0, 1].
        output_key: key of the scores ``(N, C, ...)``.
        target_key: key of the class indices (optionally with crumpets' channel dimension).

    Raises:
        ValueError: if smoothing is not in [0, 1].
    """

    def __init__(
        self, smoothing: float = 0.1, output_key: str = "output", target_key: str = "label"
    ):
        super().__init__()
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {smoothing!r}")
        self.smoothing = smoothing
        self.output_key = output_key
        self.target_key = target_key

    def forward(self, sample: dict) -> torch.Tensor:
        output = get(sample, self.output_key, self)
        target = class_targets(output, get(sample, self.target_key, self))
        logp = F.log_softmax(output, dim=1)
        nll = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
        smooth = -logp.mean(dim=1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * smooth).mean()


class NSSLoss(torch.nn.Module):
    """Negative normalized scanpath saliency (NSS), for saliency prediction.

    Each predicted map is normalized to zero mean and unit standard deviation; the loss is
    minus the mean of its values at the gaze locations of ``sample[target_key]`` (weighted by
    the target's values), averaged over the images that have gaze locations. NSS has no upper
    bound, so the loss becomes negative once the network learns.

    Args:
        output_key: key of the predicted maps ``(N, ...)``.
        target_key: key of the gaze maps (> 0 at gaze locations), same size per image.
    """

    def __init__(self, output_key: str = "output", target_key: str = "target_image"):
        super().__init__()
        self.output_key = output_key
        self.target_key = target_key

    def forward(self, sample: dict) -> torch.Tensor:
        output = get(sample, self.output_key, self)
        nss, valid = nss_per_image(output, get(sample, self.target_key, self))
        # invalid images contribute 0 to the sum; dividing by the valid count averages the rest
        return -nss.sum() / valid.sum().clamp_min(1)
