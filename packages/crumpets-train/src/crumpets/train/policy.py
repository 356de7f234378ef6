"""Learning rate policies: the lr as a closed-form function of a (fractional) epoch.

PolyPolicy, RampPolicy and SigmoidPolicy are :class:`torch.optim.lr_scheduler.LRScheduler`
subclasses whose learning rate is ``f(base_lr, e)`` for each param group, where ``base_lr``
is the group's lr when the policy was made (its ``initial_lr``) and ``e`` is the epoch,
a float: the Trainer steps its ``train_policy`` after every iteration with the fractional
epoch ``epoch + iteration / epoch_iterations`` (see :class:`~crumpets.train.trainer.Trainer`).

``step(epoch=None, metrics=None)`` is the reference's signature for every policy:

- ``step(e)`` (or ``step(epoch=e)``) sets the lr to ``f(base_lr, e)``; ``e`` may be a float;
- ``step()`` goes to ``last_epoch + 1``. As in crumpets 3 (and torch's schedulers before
  1.1), a new policy sets the lr of epoch ``last_epoch + 1`` but keeps ``last_epoch``
  (-1 by default), so the first ``step()`` goes to epoch 0: call ``step()`` at the start of
  each epoch, or pass the epoch;
- ``metrics`` is ignored (ReduceLROnPlateau uses it) and never read, so passing the loss as a
  device tensor costs nothing.

Stepping never warns about its order relative to ``optimizer.step()``: the lr is a function of
the epoch it is given, whatever came before. The state round-trips through ``state_dict()`` /
``load_state_dict()`` for snapshots.

Example:
    >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1)  # doctest: +SKIP
    >>> policy = PolyPolicy(optimizer, num_epochs=90, power=1)  # doctest: +SKIP
    >>> for epoch in range(90):  # doctest: +SKIP
    ...     policy.step(epoch)
    ...     train_one_epoch()
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
        """Does nothing (and reads nothing)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Does nothing: there is no state."""


def _at_least(name: str, value: float, low: float, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")


class _EpochPolicy(LRScheduler):
    """An LRScheduler whose lr is ``self._lr(base_lr, epoch)`` at any (fractional) epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: float = -1):
        # torch's __init__ sets initial_lr/base_lrs and calls step(): epoch last_epoch + 1
        super().__init__(optimizer, last_epoch)  # type: ignore[arg-type]
        self.last_epoch = last_epoch  # type: ignore[assignment]  # as the reference

    def _lr(self, base_lr: float, epoch: float) -> float:
        raise NotImplementedError

    def _clamp(self, epoch: float) -> float:
        return epoch

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [self._lr(base_lr, self.last_epoch) for base_lr in self.base_lrs]  # type: ignore[arg-type]

    def step(self, epoch: float | None = None, metrics: Any = None) -> None:
        """Set the lrs to those of ``epoch`` (a float), or of ``last_epoch + 1`` if None.

        Args:
            epoch: the epoch, fractional within an epoch (the Trainer passes
                ``epoch + iteration / epoch_iterations``).
            metrics: ignored and not read (the Trainer passes the loss).
        """
        if epoch is None:
            epoch = self.last_epoch + 1
        self.last_epoch = self._clamp(epoch)  # type: ignore[assignment]
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class PolyPolicy(_EpochPolicy):
    """Polynomial decay: ``lr = base_lr * (1 - e / num_epochs) ** power``.

    At ``e = num_epochs`` the lr is 0. Past it the reference's formula has a negative base
    (a complex number for a fractional power, a rising lr for an even one); here the lr
    stays 0.

    Args:
        optimizer: the optimizer whose learning rates are set.
        num_epochs: epochs until the lr reaches 0, >= 1.
        power: exponent, > 0 (1 is a linear decay; the reference's default is 0.5).
        last_epoch: the epoch the policy is at: the lr is set to that of
            ``last_epoch + 1``; -1 for a new schedule. Other values need the optimizer's
            ``initial_lr`` (an optimizer state loaded from a snapshot has it).

    Raises:
        ValueError: for num_epochs < 1 or power <= 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        num_epochs: float = 1,
        power: float = 0.5,
        last_epoch: float = -1,
    ):
        _at_least("num_epochs", num_epochs, 1)
        _at_least("power", power, 0, strict=True)
        self.num_epochs = num_epochs
        self.power = power
        super().__init__(optimizer, last_epoch)

    def _lr(self, base_lr: float, epoch: float) -> float:
        return base_lr * max(0.0, 1.0 - epoch / self.num_epochs) ** self.power


class RampPolicy(_EpochPolicy):
    """Linear warm-up: ``lr = base_lr * min(e, ramp_epochs) / ramp_epochs``.

    The lr is 0 at epoch 0 and reaches base_lr, its plateau, at ``e = ramp_epochs``. As in
    the reference, ``step`` clamps the epoch: ``last_epoch`` stays at ``ramp_epochs`` once
    there.

    Args:
        optimizer: the optimizer whose learning rates are set.
        ramp_epochs: the epoch where the plateau is reached, > 0.
        last_epoch: the epoch the policy is at (see :class:`PolyPolicy`); -1 for new.

    Raises:
        ValueError: for ramp_epochs <= 0.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, ramp_epochs: float = 1, last_epoch: float = -1
    ):
        _at_least("ramp_epochs", ramp_epochs, 0, strict=True)
        self.ramp_epochs = ramp_epochs
        super().__init__(optimizer, last_epoch)

    def _clamp(self, epoch: float) -> float:
        return min(epoch, self.ramp_epochs)

    def _lr(self, base_lr: float, epoch: float) -> float:
        return base_lr * min(epoch, self.ramp_epochs) / self.ramp_epochs


class SigmoidPolicy(_EpochPolicy):
    """Sigmoid decay: ``lr = base_lr / (1 + exp(q * x))``.

    By default ``x = e / num_epochs - 1``, the formula the reference documents: the lr
    falls from ``base_lr / (1 + exp(-q))`` at epoch 0 (0.9975 base_lr for q=6) through
    0.95 base_lr at ``num_epochs / 2`` to only base_lr / 2 at ``num_epochs``. With
    ``centered=True``, ``x = 2 * e / num_epochs - 1``: the sigmoid is centred on
    ``num_epochs / 2`` and the lr falls from about base_lr through base_lr / 2
    to about 0 (``base_lr / (1 + exp(q))``, 0.0025 base_lr for q=6) at ``num_epochs``.

    Args:
        optimizer: the optimizer whose learning rates are set.
        num_epochs: length of the schedule, >= 1.
        q: steepness, > 0.
        last_epoch: the epoch the policy is at (see :class:`PolyPolicy`); -1 for new.
        centered: use ``x = 2 * e / num_epochs - 1`` (a full decay over num_epochs).

    Raises:
        ValueError: for num_epochs < 1 or q <= 0.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        num_epochs: float = 1,
        q: float = 6,
        last_epoch: float = -1,
        *,
        centered: bool = False,
    ):
        _at_least("num_epochs", num_epochs, 1)
        _at_least("q", q, 0, strict=True)
        self.num_epochs = num_epochs
        self.q = q
        self.centered = centered
        super().__init__(optimizer, last_epoch)

    def _lr(self, base_lr: float, epoch: float) -> float:
        x = (2.0 if self.centered else 1.0) * epoch / self.num_epochs - 1.0
        # exp overflows far past num_epochs; the lr is 0 there anyway
        return base_lr / (1.0 + math.exp(min(self.q * x, 700.0)))


class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau (same constructor) with the reference's
    ``step(epoch=None, metrics=None)``.

    The order is the reference's, not torch's ``step(metrics, epoch=None)``: the Trainer calls
    ``step(epoch, loss)``; call ``step(metrics=value)`` to count one more epoch. As in the
    reference, a fractional epoch (the Trainer's ``train_policy`` gets one per iteration) is
    ignored, and its metrics are not read: used as a ``train_policy``, the policy acts at the
    last iteration of each epoch, on the epoch's mean training loss (the Trainer passes the
    running mean), and reads that device tensor on the host then, once per epoch.

    ``metrics`` may also be a dict of one value, as this package's metrics return them.
    """

    def step(self, epoch: float | None = None, metrics: Any = None) -> None:  # type: ignore[override]
        """Record one epoch's metric and reduce the lr if it has stopped improving.

        Args:
            epoch: the epoch; None adds one to ``last_epoch``. A fractional epoch is ignored.
            metrics: the monitored value: a number, a 0-dim tensor or ``{name: value}``.

        Raises:
            ValueError: if metrics is missing (also for a fractional epoch, so that torch's
                ``step(value)`` cannot pass unnoticed) or a dict with other than one value.
        """
        if metrics is None:
            raise ValueError(
                "ReduceLROnPlateau.step needs metrics (the monitored value): "
                "step(epoch, metrics) or step(metrics=value); torch's step(value) would pass "
                "the value as the epoch"
            )
        if epoch is None:
            epoch = self.last_epoch + 1
        if epoch % 1 != 0:
            return  # mid-epoch, as the reference: not a step, and metrics are not read
        if isinstance(metrics, dict):
            if len(metrics) != 1:
                raise ValueError(
                    f"ReduceLROnPlateau.step needs one metric, got a dict with {sorted(metrics)}"
                )
            (metrics,) = metrics.values()
        self.last_epoch = int(epoch) - 1  # torch deprecates step(metrics, epoch); same effect
        super().step(metrics)
