"""Learning rate policies, stepped once per epoch.

PolyPolicy, RampPolicy and SigmoidPolicy are :class:`torch.optim.lr_scheduler.LRScheduler`
subclasses whose learning rate is a closed-form function of the epoch ``e``
(``last_epoch``: 0 after construction, +1 per ``step()``) and each param group's ``base_lr``
(its lr when the policy was made). Every policy's ``step()`` takes the optional keywords
``epoch`` (go to that epoch) and ``metrics`` (used by ReduceLROnPlateau only). Their state
round-trips through ``state_dict()`` / ``load_state_dict()`` for snapshots.

Example:
    >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1)  # doctest: +SKIP
    >>> policy = PolyPolicy(optimizer, num_epochs=90)  # doctest: +SKIP
    >>> for epoch in range(90):  # doctest: +SKIP
    ...     train_one_epoch()
    ...     policy.step()
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["NoopPolicy", "PolyPolicy", "RampPolicy", "ReduceLROnPlateau", "SigmoidPolicy"]


class NoopPolicy:
    """A policy that leaves the learning rate alone."""

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Does nothing."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Does nothing: there is no state."""


def _at_least(name: str, value: float, low: float, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")


class _EpochPolicy(LRScheduler):
    """An LRScheduler whose lr is ``self._lr(base_lr, epoch)``."""

    def _lr(self, base_lr: float, epoch: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        return [self._lr(base_lr, self.last_epoch) for base_lr in self.base_lrs]

    def step(self, epoch: int | None = None, metrics: Any = None) -> None:
        """Advance one epoch, or go to ``epoch``. ``metrics`` is ignored."""
        if epoch is not None:
            # torch deprecates step(epoch); the lr is closed-form, so setting the
            # counter one before and stepping gives the same result without the warning
            self.last_epoch = epoch - 1
        super().step()


class PolyPolicy(_EpochPolicy):
    """Polynomial decay: ``lr = base_lr * max(0, 1 - e / num_epochs) ** power``.

    Args:
        optimizer: the optimizer whose learning rates are set.
        num_epochs: epochs until the lr reaches 0 (it stays 0 afterwards), >= 1.
        power: exponent, > 0 (1 is a linear decay).
        last_epoch: the epoch to resume from; -1 starts at epoch 0.

    Raises:
        ValueError: for num_epochs < 1 or power <= 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        num_epochs: int,
        power: float = 1,
        last_epoch: int = -1,
    ):
        _at_least("num_epochs", num_epochs, 1)
        _at_least("power", power, 0, strict=True)
        self.num_epochs = num_epochs
        self.power = power
        super().__init__(optimizer, last_epoch)

    def _lr(self, base_lr: float, epoch: int) -> float:
        return base_lr * max(0.0, 1.0 - epoch / self.num_epochs) ** self.power


class RampPolicy(_EpochPolicy):
    """Linear warm-up: ``lr = base_lr * min(1, (e + 1) / ramp_epochs)``, i.e.
    ``base_lr / ramp_epochs`` in epoch 0, ``base_lr`` from epoch ``ramp_epochs - 1`` on.

    Args:
        optimizer: the optimizer whose learning rates are set.
        ramp_epochs: epochs until the lr reaches base_lr, >= 1.
        last_epoch: the epoch to resume from; -1 starts at epoch 0.

    Raises:
        ValueError: for ramp_epochs < 1.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, ramp_epochs: int, last_epoch: int = -1):
        _at_least("ramp_epochs", ramp_epochs, 1)
        self.ramp_epochs = ramp_epochs
        super().__init__(optimizer, last_epoch)

    def _lr(self, base_lr: float, epoch: int) -> float:
        return base_lr * min(1.0, (epoch + 1) / self.ramp_epochs)


class SigmoidPolicy(_EpochPolicy):
    """Sigmoid decay: ``lr = base_lr / (1 + exp(q * (2 * e / num_epochs - 1)))``.

    The lr falls from about base_lr (``base_lr / (1 + exp(-q))``) at epoch 0 through
    base_lr / 2 at ``num_epochs / 2`` to about 0 (``base_lr / (1 + exp(q))``) at
    ``num_epochs``; larger q makes the drop steeper (q=6: 0.9975 and 0.0025 of base_lr).
    The reference used ``x = e / num_epochs - 1`` in place of ``2 * e / num_epochs - 1``,
    which only reaches base_lr / 2.

    Args:
        optimizer: the optimizer whose learning rates are set.
        num_epochs: length of the decay, >= 1.
        q: steepness, > 0.
        last_epoch: the epoch to resume from; -1 starts at epoch 0.

    Raises:
        ValueError: for num_epochs < 1 or q <= 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        num_epochs: int,
        q: float = 6.0,
        last_epoch: int = -1,
    ):
        _at_least("num_epochs", num_epochs, 1)
        _at_least("q", q, 0, strict=True)
        self.num_epochs = num_epochs
        self.q = q
        super().__init__(optimizer, last_epoch)

    def _lr(self, base_lr: float, epoch: int) -> float:
        x = 2.0 * epoch / self.num_epochs - 1.0
        # exp overflows far past num_epochs; the lr is 0 there anyway
        return base_lr / (1.0 + math.exp(min(self.q * x, 700.0)))


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau (same constructor) whose ``step`` also takes the metrics
    as a dict of one value, as the metrics of this package return them.

    ``step`` keeps torch's parameter order ``(metrics, epoch)``, so ``step(val_loss)``
    works as with torch's class; the reference documents ``step(epoch=None, metrics=None)``,
    which keyword calls match too.
    """

    def step(self, metrics: Any = None, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record one epoch's metric and reduce the lr if it has stopped improving.

        Args:
            metrics: the monitored value: a number, a 0-dim tensor or ``{name: value}``.
            epoch: sets the epoch counter; None adds one.

        Raises:
            ValueError: if metrics is missing or a dict with other than one value.
        """
        if metrics is None:
            raise ValueError("ReduceLROnPlateau.step needs metrics (the monitored value)")
        if isinstance(metrics, dict):
            if len(metrics) != 1:
                raise ValueError(
                    f"ReduceLROnPlateau.step needs one metric, got a dict with {sorted(metrics)}"
                )
            (metrics,) = metrics.values()
        if epoch is not None:
            self.last_epoch = epoch - 1  # torch deprecates step(epoch); same effect
        super().step(metrics)
