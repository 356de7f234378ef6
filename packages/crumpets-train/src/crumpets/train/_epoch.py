"""What the Trainer keeps and shows of an epoch: its loss sums on the device (read on the
host only when asked), the metric's values for hooks (computed when a hook reads them),
and the progress bar's and summary's text."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, cast

import torch

from .metrics import sum_dtype

__all__ = ["LazyValues", "LossWatch", "postfix", "summary"]


class LossWatch:
    """An epoch's sum of batch losses and its first non-finite loss, kept on the device.

    :meth:`add` reads nothing on the host; :meth:`read` reads everything at once.
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None  # made on the device of the first loss
        self.bad_iteration: torch.Tensor  # -1 until a loss is not finite
        self.bad_loss: torch.Tensor

    def add(self, losses: list[torch.Tensor], iteration: int) -> torch.Tensor:
        """Adds a batch: the mean of its parts' ``losses``; returns that mean (0-dim)."""
        if self.total is None:
            device = losses[0].device
            self.total = torch.zeros((), dtype=sum_dtype(device), device=device)
            self.bad_iteration = torch.full_like(self.total, -1.0)
            self.bad_loss = torch.zeros_like(self.total)
        # a tensor, not sum()'s start value 0: losses is never empty
        loss = cast(torch.Tensor, sum(part.to(self.total.dtype) / len(losses) for part in losses))
        self.total += loss
        first = ~torch.isfinite(loss) & (self.bad_iteration < 0)
        self.bad_iteration = torch.where(first, float(iteration), self.bad_iteration)
        self.bad_loss = torch.where(first, loss, self.bad_loss)
        return loss

    def read(self) -> tuple[float, int | None, float]:
        """(loss sum, first iteration with a non-finite loss or None, that loss)."""
        if self.total is None:
            return 0.0, None, math.nan
        total, iteration, loss = torch.stack(
            [self.total, self.bad_iteration, self.bad_loss]
        ).tolist()
        return total, int(iteration) if iteration >= 0 else None, loss


class LazyValues(Mapping):
    """``metric.value()``, computed when a hook first reads it (reading waits for the device)."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._values: dict | None = None

    def _get(self) -> dict:
        if self._values is None:
            self._values = self._metric.value()
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


def postfix(bar: Any, loss: float, waited: float, computed: float, values: Mapping) -> None:
    wait = waited / max(waited + computed, 1e-9)
    bar.set_postfix(loss=f"{loss:.4f}", data_wait=f"{wait:.0%}", **_short(values), refresh=False)


def _short(values: Mapping) -> dict:
    return {k: f"{v:.4f}" for k, v in values.items() if isinstance(v, float) and math.isfinite(v)}


def summary(record: dict) -> str:
    parts = [f"epoch {record['epoch']}"]
    for phase in ("train", "val"):
        if phase in record:
            r = record[phase]
            skip = ("loss", "data_wait", "samples_per_s", "epoch")
            extra = " ".join(f"{k} {v}" for k, v in _short(r).items() if k not in skip)
            parts.append(
                f"{phase}: loss {r['loss']:.4f} {extra} ({r['samples_per_s']:,.0f} samples/s, "
                f"{r['data_wait']:.0%} waiting for data)"
            )
    return " | ".join(parts)
