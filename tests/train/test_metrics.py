"""crumpets.train.metrics against hand and numpy counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _host_reads import count_host_reads

from crumpets.train.metrics import (
    AccuracyMetric,
    AverageMetric,
    AverageValue,
    CombinedMetric,
    ConfusionMatrix,
    Metric,
    MSELossMetric,
    NoopMetric,
    NSSMetric,
)

# 4 samples, 6 classes; scores ranked by hand below
OUTPUT = torch.tensor(
    [
        [0.9, 0.5, 0.1, 0.0, 0.2, 0.3],  # ranking 0, 1, 5, 4, 2, 3
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # ranking 5, 4, 3, 2, 1, 0
        [0.6, 0.0, 0.9, 0.8, 0.1, 0.7],  # ranking 2, 3, 5, 0, 4, 1
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # ranking 5, 4, 3, 2, 1, 0
    ]
)
LABEL = torch.tensor([[0], [0], [3], [1]])  # top-1 hit; top-5 miss (rank 6); rank 2; rank 5


def test_accuracy_top1_and_top5_against_a_hand_count():
    top1, top5 = AccuracyMetric(), AccuracyMetric(top_k=5)
    sample = {"output": OUTPUT, "label": LABEL}
    assert top1(sample) == {"top1_accuracy": 1 / 4}
    assert top5(sample) == {"top5_accuracy": 3 / 4}
    # a second batch: the running value counts both
    assert top1({"output": OUTPUT[:2], "label": LABEL[:2, 0].int()}) == {"top1_accuracy": 2 / 6}
    assert top1.value() == {"top1_accuracy": 2 / 6}
    top1.reset()
    assert top1.value() == {"top1_accuracy": 0.0}


def test_accuracy_rejects_k_above_classes_and_k_below_one():
    with pytest.raises(ValueError, match="top_k"):
        AccuracyMetric(top_k=7)({"output": OUTPUT, "label": LABEL})
    with pytest.raises(ValueError, match="top_k"):
        AccuracyMetric(top_k=0)


def test_all_reduce_doubling_keeps_accuracy_and_doubles_counts():
    metric = AccuracyMetric(top_k=5)
    metric({"output": OUTPUT, "label": LABEL})
    metric.all_reduce(lambda t: t * 2)
    assert metric.value() == {"top5_accuracy": 3 / 4}
    assert metric.state_names == ["correct", "count"]
    assert (metric.correct.item(), metric.count.item()) == (6, 8)
    for name in metric.state_names:
        state = getattr(metric, name)
        assert state.dtype == torch.float64 and state.device.type == "cpu"


def test_all_reduce_rejects_a_function_that_changes_the_shape():
    with pytest.raises(ValueError, match="shape"):
        AccuracyMetric().all_reduce(lambda t: t.repeat(2))


def test_confusion_matrix_against_numpy_count():
    rng = np.random.default_rng(0)
    metric = ConfusionMatrix(nclasses=4, target_key="label")
    expected = np.zeros((4, 4), np.int64)
    for _ in range(3):
        scores = rng.normal(size=(20, 4))
        labels = rng.integers(0, 4, size=(20, 1))
        np.add.at(expected, (labels[:, 0], scores.argmax(1)), 1)
        result = metric({"output": torch.tensor(scores), "label": torch.tensor(labels)})
    np.testing.assert_array_equal(result["confusion_matrix"], expected)
    tp, fp, total = metric.get_true_false_positives().T
    np.testing.assert_array_equal(tp, np.diag(expected))
    np.testing.assert_array_equal(fp, expected.sum(0) - np.diag(expected))
    np.testing.assert_array_equal(total, expected.sum(1))
    metric.all_reduce(lambda t: t * 2)
    np.testing.assert_array_equal(metric.value()["confusion_matrix"], 2 * expected)


def test_confusion_matrix_counts_pixels_of_dense_outputs():
    scores = torch.zeros(1, 3, 2, 2)
    scores[0, 2] = 1  # predicts class 2 everywhere
    target = torch.tensor([[[[0, 2], [2, 1]]]], dtype=torch.uint8)
    matrix = ConfusionMatrix(3)({"output": scores, "target_image": target})["confusion_matrix"]
    np.testing.assert_array_equal(matrix, [[0, 0, 1], [0, 0, 1], [0, 0, 2]])


def test_confusion_matrix_rejects_out_of_range_targets():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ConfusionMatrix(3)({"output": torch.zeros(2, 3), "target_image": torch.tensor([0, 3])})


def numpy_nss(output, target):
    values = []
    for o, t in zip(output.reshape(len(output), -1), target.reshape(len(target), -1)):
        if t.sum() > 0:
            z = (o - o.mean()) / o.std()
            values.append((z * t).sum() / t.sum())
    return values


def test_nss_against_numpy_reference_over_batches():
    rng = np.random.default_rng(1)
    metric = NSSMetric()
    per_image = []
    for _ in range(2):
        output = rng.random((3, 1, 8, 9)).astype(np.float32)
        target = (rng.random((3, 1, 8, 9)) > 0.9).astype(np.float32)
        target[1] = 0  # no gaze: left out
        per_image += numpy_nss(output.astype(np.float64), target)
        result = metric({"output": torch.tensor(output), "target_image": torch.tensor(target)})
    assert len(per_image) == 4
    assert result["nss"] == pytest.approx(np.mean(per_image))


def test_mse_and_average_metric_running_means():
    mse, avg = MSELossMetric(), AverageMetric()
    mse({"output": torch.zeros(2, 2), "target_image": torch.ones(2, 2, dtype=torch.uint8)})
    result = mse({"output": torch.zeros(1, 2), "target_image": torch.full((1, 2), 4.0)})
    assert result == {"mse": pytest.approx((4 * 1 + 2 * 16) / 6)}
    avg({"output": torch.tensor([1.0, 2.0])})
    assert avg({"output": torch.tensor([6.0])}) == {"average_metric": 3.0}


def test_average_value_weights_by_n():
    av = AverageValue()
    assert av.value() == 0.0
    av.add(2.0, n=3)
    av.add(torch.tensor(6.0))
    assert av.value() == pytest.approx(3.0)
    av.all_reduce(lambda t: t * 2)
    assert (av.total.item(), av.count.item()) == (24.0, 8.0)
    av.reset()
    assert av.value() == 0.0


def test_combined_metric_merges_and_delegates():
    top1, top5 = AccuracyMetric(), AccuracyMetric(top_k=5)
    combined = CombinedMetric([top1, NoopMetric(), top5])
    result = combined({"output": OUTPUT, "label": LABEL})
    assert result == {"top1_accuracy": 0.25, "top5_accuracy": 0.75}
    combined.all_reduce(lambda t: t * 3)
    assert top5.count.item() == 12
    assert combined.value() == result
    combined.reset()
    assert top1.count.item() == 0 and top5.count.item() == 0


def test_combined_metric_rejects_duplicate_keys():
    combined = CombinedMetric([AccuracyMetric(), AccuracyMetric()])
    with pytest.raises(ValueError, match="top1_accuracy"):
        combined({"output": OUTPUT, "label": LABEL})


def test_values_are_json_floats():
    metrics = [AccuracyMetric(), NSSMetric(target_key="gaze"), MSELossMetric(target_key="o2")]
    sample = {"output": OUTPUT, "label": LABEL, "gaze": torch.ones(4, 6), "o2": OUTPUT * 2}
    for metric in metrics:
        value = metric(sample)
        assert all(type(v) is float for v in value.values())
        json.dumps(value)


def test_noop_metric_returns_empty_dicts():
    metric = NoopMetric()
    assert metric({}) == {} and metric.value() == {} and metric.state_names == []


@pytest.mark.parametrize(
    ("metric", "missing"),
    [
        (AccuracyMetric(), "label"),
        (ConfusionMatrix(), "target_image"),
        (MSELossMetric(), "target_image"),
        (NSSMetric(), "target_image"),
        (AverageMetric(output_key="loss"), "loss"),
    ],
)
def test_missing_key_names_it_and_the_keys_present(metric: Metric, missing):
    sample = {"image": torch.zeros(1), "output": torch.zeros(2, 10)}
    expected = (
        f"{type(metric).__name__} needs sample['{missing}']; the sample has ['image', 'output']"
    )
    with pytest.raises(KeyError) as info:
        metric(sample)
    assert info.value.args[0] == expected


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def every_metric():
    return [
        AccuracyMetric(top_k=2),
        AverageMetric(),
        ConfusionMatrix(6, target_key="label"),
        MSELossMetric(target_key="o2"),
        NSSMetric(target_key="gaze"),
    ]


def sample_on(device):
    sample = {"output": OUTPUT, "label": LABEL, "gaze": torch.ones(4, 6), "o2": OUTPUT * 2}
    return {key: value.to(device) for key, value in sample.items()}


# 'meta' stands in for an accelerator where there is none: no values, but a device
@pytest.mark.parametrize("device", ["cpu", "meta", pytest.param("cuda", marks=CUDA)])
def test_update_reads_nothing_and_keeps_the_sums_on_the_samples_device(device):
    metrics = every_metric()
    combined = CombinedMetric(metrics)
    sample = sample_on(device)
    with count_host_reads() as reads:
        combined.update(sample)
        combined.update(sample)
        AverageValue().add(sample["output"].mean(), n=4)
    assert not reads, reads.most_common()
    combined.reset()  # keeps the device, and so does all_reduce with an fn that does not
    combined.all_reduce(lambda t: torch.zeros(t.shape, dtype=torch.float32))
    for metric in metrics:
        assert metric.state_names
        for name in metric.state_names:
            state = getattr(metric, name)
            assert isinstance(state, torch.Tensor)
            assert state.device.type == device and state.dtype == torch.float64


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_value_reads_once_per_metric_and_matches_calling_the_metric(device):
    metrics, expected = every_metric(), every_metric()
    combined = CombinedMetric(metrics)
    for _ in range(2):
        combined.update(sample_on(device))
        values = [metric(sample_on("cpu")) for metric in expected]
    with count_host_reads() as reads:
        result = combined.value()
    assert sum(reads.values()) == len(metrics), reads.most_common()
    assert set(result) == {key for value in values for key in value}
    for value in values:
        for key, v in value.items():
            np.testing.assert_array_equal(result[key], v)
            assert type(result[key]) is type(v)


def test_confusion_matrix_update_defers_out_of_range_targets_to_value():
    metric = ConfusionMatrix(3)
    metric.update({"output": torch.zeros(3, 3), "target_image": torch.tensor([0, 3, -1])})
    assert metric.matrix.sum().item() == 1  # only the target in range is counted
    with pytest.raises(ValueError, match=r"\[0, 3\), got 2 outside"):
        metric.value()
    metric.reset()
    assert metric.value()["confusion_matrix"].sum() == 0
