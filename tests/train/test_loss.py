"""crumpets.train.loss against the plain torch losses on the same tensors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from crumpets.train.loss import (
    CrossEntropyLoss,
    L1Loss,
    LabelSmoothing,
    MSELoss,
    NLLLoss,
    NSSLoss,
)


@pytest.fixture
def scores():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g), torch.tensor([0, 4, 2, 2, 1, 3])


@pytest.mark.parametrize("shape", [(6,), (6, 1)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_cross_entropy_equals_torch_for_label_shapes_and_dtypes(scores, shape, dtype):
    output, label = scores
    sample = {"output": output, "label": label.view(shape).to(dtype)}
    expected = torch.nn.functional.cross_entropy(output, label)
    torch.testing.assert_close(CrossEntropyLoss()(sample), expected)


def test_cross_entropy_passes_torch_options(scores):
    output, label = scores
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    label = label.clone()
    label[1] = -1
    loss = CrossEntropyLoss("logits", "y", weight, "sum", -1, label_smoothing=0.2)
    expected = torch.nn.functional.cross_entropy(
        output, label, weight=weight, ignore_index=-1, reduction="sum", label_smoothing=0.2
    )
    torch.testing.assert_close(loss({"logits": output, "y": label[:, None]}), expected)


def test_cross_entropy_dense_targets_with_channel_dim():
    g = torch.Generator().manual_seed(1)
    output = torch.randn(2, 4, 3, 5, generator=g)
    target = torch.randint(4, (2, 3, 5), generator=g)
    sample = {"output": output, "label": target[:, None].to(torch.uint8)}
    torch.testing.assert_close(
        CrossEntropyLoss()(sample), torch.nn.functional.cross_entropy(output, target)
    )


def test_nll_equals_torch(scores):
    output, label = scores
    logp = torch.log_softmax(output, 1)
    weight = torch.linspace(0.5, 2.0, 5)
    loss = NLLLoss(weight=weight, reduction="none")
    expected = torch.nn.functional.nll_loss(logp, label, weight=weight, reduction="none")
    torch.testing.assert_close(loss({"output": logp, "label": label[:, None]}), expected)


@pytest.mark.parametrize(
    ("ours", "theirs"), [(L1Loss, torch.nn.L1Loss), (MSELoss, torch.nn.MSELoss)]
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_regression_losses_equal_torch(ours, theirs, reduction):
    g = torch.Generator().manual_seed(2)
    output = torch.randn(2, 1, 4, 4, generator=g)
    target = torch.rand(2, 1, 4, 4, generator=g)
    sample = {"output": output, "target_image": target}
    expected = theirs(reduction=reduction)(output, target)
    torch.testing.assert_close(ours(reduction=reduction)(sample), expected)


def test_regression_loss_converts_uint8_targets():
    output = torch.full((1, 1, 2, 2), 3.0)
    target = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8)
    loss = MSELoss()({"output": output, "target_image": target})
    assert loss.item() == pytest.approx((4 + 1 + 0 + 1) / 4)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_label_smoothing_equals_torch_cross_entropy_with_smoothing(scores, smoothing):
    output, label = scores
    loss = LabelSmoothing(smoothing)({"output": output, "label": label[:, None]})
    expected = torch.nn.functional.cross_entropy(output, label, label_smoothing=smoothing)
    torch.testing.assert_close(loss, expected)


def test_label_smoothing_rejects_bad_factor():
    with pytest.raises(ValueError, match="smoothing"):
        LabelSmoothing(1.5)


def numpy_nss(output, target):
    values = []
    for o, t in zip(output.reshape(len(output), -1), target.reshape(len(target), -1)):
        if t.sum() > 0:
            z = (o - o.mean()) / o.std()
            values.append((z * t).sum() / t.sum())
    return np.mean(values)


def test_nss_loss_is_minus_numpy_nss_and_skips_images_without_gaze():
    rng = np.random.default_rng(3)
    output = rng.normal(size=(3, 1, 6, 7))
    target = np.zeros((3, 1, 6, 7))
    target[0, 0, 1, 2] = 1
    target[0, 0, 4, 5] = 2  # two gaze points on one pixel
    target[2, 0, 3, 3] = 1  # image 1 has none
    sample = {"output": torch.tensor(output), "target_image": torch.tensor(target)}
    loss = NSSLoss()(sample)
    assert loss.item() == pytest.approx(-numpy_nss(output, target))


def test_nss_loss_has_gradients():
    output = torch.randn(2, 1, 5, 5, requires_grad=True)
    target = torch.zeros(2, 1, 5, 5)
    target[:, 0, 2, 2] = 1
    NSSLoss()({"output": output, "target_image": target}).backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("loss", "missing"),
    [
        (CrossEntropyLoss(), "label"),
        (NLLLoss(), "label"),
        (LabelSmoothing(), "label"),
        (MSELoss(), "target_image"),
        (L1Loss(), "target_image"),
        (NSSLoss(), "target_image"),
    ],
)
def test_missing_key_names_it_and_the_keys_present(loss, missing):
    sample = {"image": torch.zeros(1), "output": torch.zeros(2, 3)}
    expected = (
        f"{type(loss).__name__} needs sample['{missing}']; the sample has ['image', 'output']"
    )
    with pytest.raises(KeyError) as info:
        loss(sample)
    assert info.value.args[0] == expected


# the reference's constructor parameters, in its order (crumpets.torch.loss)
REFERENCE_PARAMETERS = {
    CrossEntropyLoss: ["output_key", "target_key", "weight", "reduction", "ignore_index"],
    NLLLoss: ["output_key", "target_key", "weight", "reduction", "ignore_index"],
    L1Loss: ["output_key", "target_key", "reduction"],
    MSELoss: ["output_key", "target_key", "reduction"],
    NSSLoss: ["output_key", "target_key"],
    LabelSmoothing: ["smoothing", "output_key", "target_key"],
}


@pytest.mark.parametrize("cls", list(REFERENCE_PARAMETERS))
def test_positional_parameters_are_the_references_and_extras_keyword_only(cls):
    parameters = list(inspect.signature(cls).parameters.values())
    positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == REFERENCE_PARAMETERS[cls]
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters[len(positional) :])


def test_cross_entropy_and_nll_take_the_references_positional_arguments(scores):
    output, label = scores
    label = label.clone()
    label[2] = 7
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    sample = {"out": output, "y": label[:, None]}
    loss = CrossEntropyLoss("out", "y", weight, "none", 7)
    assert (loss.weight, loss.reduction, loss.ignore_index) == (weight, "none", 7)
    expected = torch.nn.functional.cross_entropy(
        output, label, weight=weight, reduction="none", ignore_index=7
    )
    torch.testing.assert_close(loss(sample), expected)

    logp = torch.log_softmax(output, 1)
    loss = NLLLoss("out", "y", weight, "sum", 7)
    assert (loss.weight, loss.reduction, loss.ignore_index) == (weight, "sum", 7)
    expected = torch.nn.functional.nll_loss(
        logp, label, weight=weight, reduction="sum", ignore_index=7
    )
    torch.testing.assert_close(loss({"out": logp, "y": label[:, None]}), expected)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [(L1Loss, torch.nn.functional.l1_loss), (MSELoss, torch.nn.functional.mse_loss)],
)
def test_regression_losses_take_the_references_positional_arguments(ours, theirs):
    g = torch.Generator().manual_seed(4)
    output, target = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    loss = ours("out", "tgt", "sum")
    assert (loss.output_key, loss.target_key, loss.reduction) == ("out", "tgt", "sum")
    expected = theirs(output, target, reduction="sum")
    torch.testing.assert_close(loss({"out": output, "tgt": target}), expected)


def test_nss_and_label_smoothing_take_the_references_positional_arguments(scores):
    output, label = scores
    loss = LabelSmoothing(0.3, "out", "y")
    expected = torch.nn.functional.cross_entropy(output, label, label_smoothing=0.3)
    torch.testing.assert_close(loss({"out": output, "y": label[:, None]}), expected)

    maps = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    gaze = torch.zeros(2, 1, 4, 4)
    gaze[:, 0, 1, 2] = 1
    nss = NSSLoss("pred", "gaze")
    torch.testing.assert_close(
        nss({"pred": maps, "gaze": gaze}), NSSLoss()({"output": maps, "target_image": gaze})
    )
