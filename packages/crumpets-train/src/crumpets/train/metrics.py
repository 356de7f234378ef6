"""Running metrics over crumpets' sample dicts.

Calling a metric with a sample adds the batch to its running state and returns
``{metric_key: value so far}``; ``update(sample)`` adds without returning anything,
``value()`` returns the value without adding anything and ``reset()`` starts over. Values
are plain Python floats (numpy arrays for :class:`ConfusionMatrix`).

Every metric keeps its running state as tensors named in ``state_names``, all of them sums.
They live on the device of the tensors they are updated from (they move there at the first
update) as float64, or float32 where the device has no float64 ('mps'). So ``update`` never
waits for the device: only ``value()`` (and calling the metric, which calls it) reads the
sums on the host, once per metric, the way torchmetrics' ``compute()`` does. For distributed
training ``all_reduce(fn)`` with an ``fn`` that sums a tensor over the ranks turns the local
state into the global one (with NCCL the states are already on the GPU, as it needs).

Example:
    >>> metric = AccuracyMetric(top_k=5)
    >>> for sample in loader:  # doctest: +SKIP
    ...     metric(sample)
    >>> metric.all_reduce(sum_over_ranks)  # doctest: +SKIP
    >>> metric.value()  # doctest: +SKIP
    {'top5_accuracy': 0.93}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._sample import class_targets, get, nss_per_image

__all__ = [
    "AccuracyMetric",
    "AverageMetric",
    "AverageValue",
    "CombinedMetric",
    "ConfusionMatrix",
    "MSELossMetric",
    "Metric",
    "NSSMetric",
    "NoopMetric",
]

ReduceFn = Callable[[torch.Tensor], torch.Tensor]


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of running sums on ``device``: float64, float32 on 'mps' (no float64 there).

    Shared within the package: the Trainer keeps its loss sums the way metrics keep theirs.
    """
    return torch.float32 if device.type == "mps" else torch.float64


class _RunningState:
    """Named tensors that hold sums, on the device they are updated from; reset, all_reduce."""

    def __init__(self) -> None:
        self.state_names: list[str] = []

    def _add_state(self, name: str, shape: tuple[int, ...] = ()) -> None:
        setattr(self, name, torch.zeros(shape, dtype=torch.float64))
        self.state_names.append(name)

    def _to(self, device: torch.device) -> torch.dtype:
        """Moves the states to ``device`` (a no-op where they are); returns their dtype there."""
        dtype = sum_dtype(device)
        for name in self.state_names:
            state = getattr(self, name)
            if state.device != device:
                setattr(self, name, state.to(device, dtype))
        return dtype

    def _add(self, **sums: torch.Tensor | int) -> None:
        """Adds each value to the state of its name, on the device of the first tensor value,
        without reading anything on the host."""
        device = next(v.device for v in sums.values() if isinstance(v, torch.Tensor))
        dtype = self._to(device)
        for name, value in sums.items():
            state = getattr(self, name)
            state += value.detach().to(dtype) if isinstance(value, torch.Tensor) else value

    def reset(self) -> None:
        """Forget everything seen so far (the states stay on their device)."""
        for name in self.state_names:
            setattr(self, name, torch.zeros_like(getattr(self, name)))

    def all_reduce(self, fn: ReduceFn) -> None:
        """Replace each state tensor ``t`` by ``fn(t)``, kept on ``t``'s device and dtype.

        Args:
            fn: returns the reduced tensor (e.g. the sum over all ranks), same shape.

        Raises:
            TypeError: if fn does not return a tensor.
            ValueError: if it returns one of another shape.
        """
        for name in self.state_names:
            old = getattr(self, name)
            new = fn(old)
            if not isinstance(new, torch.Tensor):
                raise TypeError(
                    f"all_reduce's fn must return a tensor, got {type(new).__name__} for "
                    f"{type(self).__name__}.{name}"
                )
            if new.shape != old.shape:
                raise ValueError(
                    f"all_reduce's fn changed the shape of {type(self).__name__}.{name} from "
                    f"{tuple(old.shape)} to {tuple(new.shape)}"
                )
            setattr(self, name, new.detach().to(old.device, old.dtype))


def _ratio(total: torch.Tensor, count: torch.Tensor) -> float:
    t, n = torch.stack([total, count]).tolist()  # one read of the device
    # before the first batch there is nothing to average; 0.0 keeps logs valid JSON (no NaN)
    return t / n if n > 0 else 0.0


class Metric(_RunningState, ABC):
    """Base of all metrics: reads tensors from sample dicts and keeps running sums.

    Subclasses implement :meth:`update` and :meth:`value`, register their running sums
    with ``self._add_state(name, shape)`` and add to them with ``self._add(name=tensor)``,
    which keeps them on the tensor's device; ``update`` should read nothing on the host
    (no ``item()``, ``float()``, ``bool()`` of a tensor), so that it never waits for the device.

    Args:
        output_key: key of the output in the sample.
        target_key: key of the target in the sample.
        metric_key: key of the value in the returned dict.
    """

    def __init__(
        self,
        output_key: str = "output",
        target_key: str = "target_image",
        metric_key: str = "metric",
    ):
        super().__init__()
        self.output_key = output_key
        self.target_key = target_key
        self.metric_key = metric_key

    def __call__(self, sample: dict) -> dict:
        """Add the batch in ``sample`` to the running state.

        Reads the running state on the host (see :meth:`value`); :meth:`update` does not.

        Returns:
            ``{metric_key: value}`` over all batches since the last reset.

        Raises:
            KeyError: if the sample lacks a key the metric reads.
        """
        with torch.no_grad():
            self.update(sample)
        return self.value()

    @abstractmethod
    def update(self, sample: dict) -> None:
        """Add the batch in ``sample`` to the running state, without reading it on the host.

        Raises:
            KeyError: if the sample lacks a key the metric reads.
        """

    @abstractmethod
    def value(self) -> dict:
        """Returns ``{metric_key: value}`` over all batches since the last reset.

        This reads the running state on the host (once), so it waits for the device.
        """


class AccuracyMetric(Metric):
    """Top-k accuracy: the fraction of samples whose target is among the k highest scores.

    Works for classification (``output`` ``(N, C)``, ``label`` ``(N,)`` or ``(N, 1)``) and
    per pixel for dense outputs (``(N, C, H, W)`` with targets ``(N, H, W)`` or
    ``(N, 1, H, W)``).

    Args:
        top_k: k >= 1.
        output_key: key of the scores.
        target_key: key of the class indices.
        metric_key: defaults to ``f"top{top_k}_accuracy"``.

    Raises:
        ValueError: if top_k < 1.
    """

    # running sums, made by _add_state
    correct: torch.Tensor
    count: torch.Tensor

    def __init__(
        self,
        top_k: int = 1,
        output_key: str = "output",
        target_key: str = "label",
        metric_key: str | None = None,
    ):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        super().__init__(output_key, target_key, metric_key or f"top{top_k}_accuracy")
        self.top_k = top_k
        self._add_state("correct")
        self._add_state("count")

    def update(self, sample: dict) -> None:
        output = get(sample, self.output_key, self)
        target = class_targets(output, get(sample, self.target_key, self))
        if output.dim() != target.dim() + 1:
            raise ValueError(
                f"{self.metric_key}: output {tuple(output.shape)} must have one dim (classes) "
                f"more than target {tuple(target.shape)}"
            )
        if self.top_k > output.shape[1]:
            raise ValueError(f"top_k={self.top_k} but the output has {output.shape[1]} classes")
        top = output.topk(self.top_k, dim=1).indices
        hits = (top == target.unsqueeze(1)).any(dim=1)
        self._add(correct=hits.sum(), count=hits.numel())

    def value(self) -> dict:
        return {self.metric_key: _ratio(self.correct, self.count)}


class AverageMetric(Metric):
    """The mean of all values of ``sample[output_key]`` seen so far.

    Args:
        output_key: key of the values (a tensor of any shape, or a number).
        metric_key: key of the mean in the returned dict.
    """

    # running sums, made by _add_state
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, output_key: str = "output", metric_key: str = "average_metric"):
        super().__init__(output_key, metric_key=metric_key)
        self._add_state("total")
        self._add_state("count")

    def update(self, sample: dict) -> None:
        values = torch.as_tensor(get(sample, self.output_key, self))
        self._add(total=values.sum(), count=values.numel())

    def value(self) -> dict:
        return {self.metric_key: _ratio(self.total, self.count)}


class AverageValue(_RunningState):
    """A plain running mean: ``add(value, n)`` adds the mean ``value`` of ``n`` observations.

    Like the metrics it has ``state_names``, ``reset()`` and ``all_reduce(fn)``.
    """

    # running sums, made by _add_state
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self._add_state("total")
        self._add_state("count")

    def add(self, value: float | torch.Tensor, n: int = 1) -> None:
        """Add ``n`` observations whose mean is ``value`` (a tensor stays on its device)."""
        value = torch.as_tensor(value).detach()
        dtype = self._to(value.device)
        self._add(total=value.to(dtype) * n, count=n)

    def value(self) -> float:
        """The mean of all observations so far (0.0 before the first)."""
        return _ratio(self.total, self.count)


class CombinedMetric:
    """Several metrics as one: calling it calls each and merges their dicts.

    Args:
        children: metric instances (their metric keys must differ).
    """

    def __init__(self, children: Sequence[Metric | CombinedMetric]):
        self.children = list(children)

    def __call__(self, sample: dict) -> dict:
        """Add the batch to every child; returns their merged values (reads each once)."""
        return self._merge([child(sample) for child in self.children])

    def update(self, sample: dict) -> None:
        """Add the batch to every child, without reading anything on the host."""
        for child in self.children:
            child.update(sample)

    def value(self) -> dict:
        """The children's merged values (one read of the device per child)."""
        return self._merge([child.value() for child in self.children])

    def reset(self) -> None:
        """Reset every child."""
        for child in self.children:
            child.reset()

    def all_reduce(self, fn: ReduceFn) -> None:
        """``all_reduce(fn)`` of every child."""
        for child in self.children:
            child.all_reduce(fn)

    @staticmethod
    def _merge(results: list[dict]) -> dict:
        merged: dict = {}
        for result in results:
            for key in result:
                if key in merged:
                    raise ValueError(f"two metrics of a CombinedMetric return {key!r}")
            merged.update(result)
        return merged


class ConfusionMatrix(Metric):
    """Counts of (target class, predicted class) pairs; the prediction is the argmax over
    dim 1 of the output. Dense outputs are counted per pixel.

    Args:
        nclasses: number of classes C; targets must be in [0, C).
        output_key: key of the scores ``(N, C, ...)``.
        target_key: key of the class indices.
        metric_key: key of the matrix in the returned dict.

    The value is a C x C int64 numpy array: rows are targets, columns predictions.
    :meth:`update` does not read the device, so targets outside [0, C) are not counted
    there but in the state ``out_of_range``, and :meth:`value` raises ValueError for them
    (calling the metric does both, so it raises at once).
    """

    # running sums, made by _add_state
    matrix: torch.Tensor
    out_of_range: torch.Tensor

    def __init__(
        self,
        nclasses: int = 10,
        output_key: str = "output",
        target_key: str = "target_image",
        metric_key: str = "confusion_matrix",
    ):
        if nclasses < 1:
            raise ValueError(f"nclasses must be >= 1, got {nclasses!r}")
        super().__init__(output_key, target_key, metric_key)
        self.nclasses = nclasses
        self._add_state("matrix", (nclasses, nclasses))
        self._add_state("out_of_range")

    def update(self, sample: dict) -> None:
        output = get(sample, self.output_key, self)
        target = class_targets(output, get(sample, self.target_key, self))
        if output.shape[1] != self.nclasses or output.dim() != target.dim() + 1:
            raise ValueError(
                f"ConfusionMatrix(nclasses={self.nclasses}) needs output (N, {self.nclasses}, "
                f"...) and one dim less in target, got {tuple(output.shape)} and "
                f"{tuple(target.shape)}"
            )
        target = target.flatten()
        valid = (target >= 0) & (target < self.nclasses)
        pairs = torch.where(valid, target * self.nclasses + output.argmax(dim=1).flatten(), 0)
        # scatter_add_, not bincount: on CUDA bincount reads the maximum on the host
        counts = torch.zeros(self.nclasses**2, dtype=torch.int64, device=pairs.device)
        counts.scatter_add_(0, pairs, valid.long())
        self._add(matrix=counts.view(self.nclasses, self.nclasses), out_of_range=(~valid).sum())

    def value(self) -> dict:
        """Returns ``{metric_key: C x C int64 array}``.

        Raises:
            ValueError: if targets outside [0, C) were seen since the last reset.
        """
        flat = torch.cat([self.out_of_range.view(1), self.matrix.flatten()])
        counts = flat.numpy(force=True).astype(np.int64)  # one read of the device
        if counts[0]:
            raise ValueError(
                f"ConfusionMatrix targets must be in [0, {self.nclasses}), got {counts[0]} "
                "outside since the last reset"
            )
        return {self.metric_key: counts[1:].reshape(self.nclasses, self.nclasses)}

    def get_true_false_positives(self) -> np.ndarray:
        """Per class counts from the matrix so far.

        Returns:
            C x 3 int64 array: true positives (predicted c, target c), false positives
            (predicted c, target not c) and the number of samples whose target is c.
        """
        m = self.value()[self.metric_key]
        tp = np.diag(m)
        return np.stack([tp, m.sum(axis=0) - tp, m.sum(axis=1)], axis=1)


class MSELossMetric(Metric):
    """Mean squared error over all values seen so far.

    Args:
        output_key: key of the output.
        target_key: key of the target, same shape as the output.
        metric_key: key of the value in the returned dict.
    """

    # running sums, made by _add_state
    total: torch.Tensor
    count: torch.Tensor

    def __init__(
        self, output_key: str = "output", target_key: str = "target_image", metric_key: str = "mse"
    ):
        super().__init__(output_key, target_key, metric_key)
        self._add_state("total")
        self._add_state("count")

    def update(self, sample: dict) -> None:
        output = get(sample, self.output_key, self)
        target = get(sample, self.target_key, self)
        if output.shape != target.shape:
            # broadcasting would silently average over the wrong pairs
            raise ValueError(
                f"MSELossMetric: output {tuple(output.shape)} and target "
                f"{tuple(target.shape)} differ in shape"
            )
        dtype = self._to(output.device)
        self._add(total=((output.to(dtype) - target.to(dtype)) ** 2).sum(), count=output.numel())

    def value(self) -> dict:
        return {self.metric_key: _ratio(self.total, self.count)}


class NSSMetric(Metric):
    """Normalized Scanpath Saliency (Bylinskii et al., https://arxiv.org/abs/1604.03605).

    Each predicted map is normalized to zero mean and unit (population) standard deviation;
    an image's NSS is the mean normalized value at its gaze locations (target > 0, weighted
    by the target's values). The metric is the mean over all images with gaze locations.

    Args:
        output_key: key of the predicted maps ``(N, ...)``.
        target_key: key of the gaze maps, same number of values per image.
        metric_key: key of the value in the returned dict.
    """

    # running sums, made by _add_state
    total: torch.Tensor
    count: torch.Tensor

    def __init__(
        self, output_key: str = "output", target_key: str = "target_image", metric_key: str = "nss"
    ):
        super().__init__(output_key, target_key, metric_key)
        self._add_state("total")
        self._add_state("count")

    def update(self, sample: dict) -> None:
        output = get(sample, self.output_key, self)
        target = get(sample, self.target_key, self)
        dtype = self._to(output.device)
        nss, valid = nss_per_image(output.to(dtype), target.to(dtype))
        self._add(total=nss.sum(), count=valid.sum())

    def value(self) -> dict:
        return {self.metric_key: _ratio(self.total, self.count)}


class NoopMetric(Metric):
    """A metric that computes nothing and returns ``{}``, where a metric is required."""

    def update(self, sample: dict) -> None:
        pass

    def value(self) -> dict:
        return {}
