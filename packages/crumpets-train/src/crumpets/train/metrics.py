"""Running metrics over crumpets' sample dicts.

Calling a metric with a sample adds the batch to its running state and returns
``{metric_key: value so far}``; ``value()`` returns the same without adding anything and
``reset()`` starts over. Values are plain Python floats (numpy arrays for
:class:`ConfusionMatrix`).

For distributed training every metric keeps its running state as float64 CPU tensors named
in ``state_names``, all of them sums, so ``all_reduce(fn)`` with an ``fn`` that sums a
tensor over the ranks turns the local state into the global one.

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


def _cpu64(x: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


class _RunningState:
    """Named float64 CPU tensors that hold sums, with reset and all_reduce."""

    def __init__(self) -> None:
        self.state_names: list[str] = []

    def _add_state(self, name: str, shape: tuple[int, ...] = ()) -> None:
        setattr(self, name, torch.zeros(shape, dtype=torch.float64))
        self.state_names.append(name)

    def reset(self) -> None:
        """Forget everything seen so far."""
        for name in self.state_names:
            setattr(self, name, torch.zeros_like(getattr(self, name)))

    def all_reduce(self, fn: ReduceFn) -> None:
        """Replace each state tensor ``t`` by ``fn(t)``.

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
            setattr(self, name, _cpu64(new))


def _ratio(total: torch.Tensor, count: torch.Tensor) -> float:
    # before the first batch there is nothing to average; 0.0 keeps logs valid JSON (no NaN)
    return float(total / count) if count > 0 else 0.0


class Metric(_RunningState, ABC):
    """Base of all metrics: reads tensors from sample dicts and keeps running sums.

    Subclasses implement :meth:`update` and :meth:`value`, and register their running sums
    with ``self._add_state(name, shape)``.

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
        """Add the batch in ``sample`` to the running state."""

    @abstractmethod
    def value(self) -> dict:
        """Returns ``{metric_key: value}`` over all batches since the last reset."""


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
        self.correct += _cpu64(hits.sum())
        self.count += hits.numel()

    def value(self) -> dict:
        return {self.metric_key: _ratio(self.correct, self.count)}


class AverageMetric(Metric):
    """The mean of all values of ``sample[output_key]`` seen so far.

    Args:
        output_key: key of the values (a tensor of any shape, or a number).
        metric_key: key of the mean in the returned dict.
    """

    def __init__(self, output_key: str = "output", metric_key: str = "average_metric"):
        super().__init__(output_key, metric_key=metric_key)
        self._add_state("total")
        self._add_state("count")

    def update(self, sample: dict) -> None:
        values = torch.as_tensor(get(sample, self.output_key, self))
        self.total += _cpu64(values.sum())
        self.count += values.numel()

    def value(self) -> dict:
        return {self.metric_key: _ratio(self.total, self.count)}


class AverageValue(_RunningState):
    """A plain running mean: ``add(value, n)`` adds the mean ``value`` of ``n`` observations.

    Like the metrics it has ``state_names``, ``reset()`` and ``all_reduce(fn)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._add_state("total")
        self._add_state("count")

    def add(self, value: float | torch.Tensor, n: int = 1) -> None:
        """Add ``n`` observations whose mean is ``value``."""
        self.total += _cpu64(value) * n
        self.count += n

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
        return self._merge([child(sample) for child in self.children])

    def value(self) -> dict:
        return self._merge([child.value() for child in self.children])

    def reset(self) -> None:
        for child in self.children:
            child.reset()

    def all_reduce(self, fn: ReduceFn) -> None:
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
    """

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
        if target.numel() and (target.min() < 0 or target.max() >= self.nclasses):
            raise ValueError(
                f"ConfusionMatrix targets must be in [0, {self.nclasses}), got values from "
                f"{int(target.min())} to {int(target.max())}"
            )
        pred = output.argmax(dim=1).flatten()
        counts = torch.bincount(target * self.nclasses + pred, minlength=self.nclasses**2)
        self.matrix += _cpu64(counts).view(self.nclasses, self.nclasses)

    def value(self) -> dict:
        return {self.metric_key: self.matrix.numpy().astype(np.int64)}

    def get_true_false_positives(self) -> np.ndarray:
        """Per class counts from the matrix so far.

        Returns:
            C x 3 int64 array: true positives (predicted c, target c), false positives
            (predicted c, target not c) and the number of samples whose target is c.
        """
        m = self.matrix.numpy().astype(np.int64)
        tp = np.diag(m)
        return np.stack([tp, m.sum(axis=0) - tp, m.sum(axis=1)], axis=1)


class MSELossMetric(Metric):
    """Mean squared error over all values seen so far.

    Args:
        output_key: key of the output.
        target_key: key of the target, same shape as the output.
        metric_key: key of the value in the returned dict.
    """

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
        self.total += _cpu64(((output.double() - target.double()) ** 2).sum())
        self.count += output.numel()

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

    def __init__(
        self, output_key: str = "output", target_key: str = "target_image", metric_key: str = "nss"
    ):
        super().__init__(output_key, target_key, metric_key)
        self._add_state("total")
        self._add_state("count")

    def update(self, sample: dict) -> None:
        output = get(sample, self.output_key, self)
        target = get(sample, self.target_key, self)
        nss, valid = nss_per_image(output.double(), target.double())
        self.total += _cpu64(nss.sum())
        self.count += _cpu64(valid.sum())

    def value(self) -> dict:
        return {self.metric_key: _ratio(self.total, self.count)}


class NoopMetric(Metric):
    """A metric that computes nothing and returns ``{}``, where a metric is required."""

    def update(self, sample: dict) -> None:
        pass

    def value(self) -> dict:
        return {}
