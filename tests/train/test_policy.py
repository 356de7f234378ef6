"""crumpets.train.policy: the lr at (fractional) epochs against the reference's formulas,
computed here independently."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from _host_reads import count_host_reads
from torch.optim.lr_scheduler import LRScheduler

from crumpets.train.policy import (
    NoopPolicy,
    PolyPolicy,
    RampPolicy,
    ReduceLROnPlateau,
    SigmoidPolicy,
)

BASE_LRS = (0.1, 0.02)
# whole epochs, thirds, an iteration of a 7-iteration epoch, just before and at the end
EPOCHS = (0, 0.25, 1 / 3, 1, 1 + 1 / 7, 2.5, 3, 4.999, 5)


def make_optimizer():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [a], "lr": BASE_LRS[0]}, {"params": [b], "lr": BASE_LRS[1]}])


def lrs(optimizer):
    return [group["lr"] for group in optimizer.param_groups]


def assert_lrs_at(policy, optimizer, formula, epochs=EPOCHS):
    """step(e) for each epoch (in order, like the Trainer); the lrs must be the formula's."""
    for e in epochs:
        policy.step(e, torch.tensor(1.0))
        expected = [formula(base, e) for base in BASE_LRS]
        np.testing.assert_allclose(lrs(optimizer), expected, rtol=1e-12, atol=0, err_msg=f"{e}")
        assert policy.get_last_lr() == lrs(optimizer)


@pytest.mark.parametrize("power", [1, 2, 0.5])
def test_poly_policy_is_the_reference_formula_at_fractional_epochs(power):
    optimizer = make_optimizer()
    policy = PolyPolicy(optimizer, num_epochs=5, power=power)
    assert isinstance(policy, LRScheduler)
    assert_lrs_at(policy, optimizer, lambda base, e: base * (1 - e / 5) ** power)
    # past num_epochs the reference's base is negative; here the lr stays 0
    assert_lrs_at(policy, optimizer, lambda base, e: 0.0, epochs=(5.5, 6, 9))


def test_poly_policy_defaults_are_the_references():
    optimizer = make_optimizer()
    policy = PolyPolicy(optimizer)
    assert (policy.num_epochs, policy.power, policy.last_epoch) == (1, 0.5, -1)
    assert_lrs_at(policy, optimizer, lambda base, e: base * (1 - e) ** 0.5, (0, 0.25, 0.5, 1))


@pytest.mark.parametrize("ramp_epochs", [4, 2.5])
def test_ramp_policy_is_the_reference_formula_at_fractional_epochs(ramp_epochs):
    optimizer = make_optimizer()
    policy = RampPolicy(optimizer, ramp_epochs=ramp_epochs)
    assert lrs(optimizer) == [0.0, 0.0]  # epoch 0
    assert_lrs_at(policy, optimizer, lambda base, e: base * min(e, ramp_epochs) / ramp_epochs)
    assert policy.last_epoch == ramp_epochs  # the reference clamps the epoch in step
    policy.step()
    assert (policy.last_epoch, lrs(optimizer)) == (ramp_epochs, list(BASE_LRS))


def test_ramp_policy_increases_step_by_step_to_its_plateau():
    optimizer = make_optimizer()
    policy = RampPolicy(optimizer, ramp_epochs=4)
    seen = []
    for _ in range(7):
        policy.step()
        seen.append(lrs(optimizer)[0])
    assert seen == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_sigmoid_policy_is_the_documented_formula_at_fractional_epochs():
    optimizer = make_optimizer()
    policy = SigmoidPolicy(optimizer, num_epochs=10, q=6)
    # the reference documents x = last_epoch / num_epochs - 1
    formula = lambda base, e: base / (1 + math.exp(6 * (e / 10 - 1)))  # noqa: E731
    assert_lrs_at(policy, optimizer, formula, (0, 0.5, 2 + 1 / 3, 5, 7.25, 9.99, 10))
    policy.step(5)
    assert lrs(optimizer)[0] == pytest.approx(0.1 * 0.9526, abs=1e-5)  # 0.95 base_lr
    policy.step(10)
    assert lrs(optimizer)[0] == pytest.approx(0.05)  # never below base_lr / 2 in the schedule


def test_sigmoid_policy_centered_decays_from_base_to_about_zero():
    optimizer = make_optimizer()
    policy = SigmoidPolicy(optimizer, num_epochs=10, q=6, centered=True)
    formula = lambda base, e: base / (1 + math.exp(6 * (2 * e / 10 - 1)))  # noqa: E731
    assert_lrs_at(policy, optimizer, formula, (0, 0.5, 2 + 1 / 3, 5, 7.25, 9.99, 10))
    policy.step(0)
    first = lrs(optimizer)[0]
    policy.step(5)
    middle = lrs(optimizer)[0]
    policy.step(10)
    last = lrs(optimizer)[0]
    assert first > 0.99 * 0.1 and middle == pytest.approx(0.05) and last < 0.01 * 0.1
    policy.step(1e6)  # far past num_epochs: no overflow
    assert lrs(optimizer) == pytest.approx([0.0, 0.0], abs=1e-300)


@pytest.mark.parametrize(
    ("make", "formula"),
    [
        (lambda opt, **kw: PolyPolicy(opt, 10, 1, **kw), lambda b, e: b * (1 - e / 10)),
        (lambda opt, **kw: RampPolicy(opt, 10, **kw), lambda b, e: b * e / 10),
        (
            lambda opt, **kw: SigmoidPolicy(opt, 10, 6, **kw),
            lambda b, e: b / (1 + math.exp(6 * (e / 10 - 1))),
        ),
    ],
)
def test_step_counts_epochs_as_the_reference(make, formula):
    optimizer = make_optimizer()
    policy = make(optimizer)
    # a new policy sets epoch 0's lr and stays at last_epoch -1: the first step() is epoch 0
    assert policy.last_epoch == -1
    assert lrs(optimizer) == pytest.approx([formula(b, 0) for b in BASE_LRS])
    for e in (0, 1, 2):
        policy.step()
        assert policy.last_epoch == e
        assert lrs(optimizer) == pytest.approx([formula(b, e) for b in BASE_LRS])
    policy.step(epoch=6.5)
    policy.step(metrics={"loss": 1.0})  # ignored: the Trainer passes the loss
    assert policy.last_epoch == 7.5
    assert lrs(optimizer) == pytest.approx([formula(b, 7.5) for b in BASE_LRS])

    # last_epoch=k: the lr of epoch k + 1 at once, and step() goes there (initial_lr needed)
    resumed = make(optimizer, last_epoch=3)
    assert (resumed.last_epoch, resumed.base_lrs) == (3, list(BASE_LRS))
    assert lrs(optimizer) == pytest.approx([formula(b, 4) for b in BASE_LRS])
    resumed.step()
    assert resumed.last_epoch == 4
    with pytest.raises(KeyError, match="initial_lr"):
        make(make_optimizer(), last_epoch=3)


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: PolyPolicy(opt, num_epochs=6, power=2),
        lambda opt: RampPolicy(opt, ramp_epochs=5),
        lambda opt: SigmoidPolicy(opt, num_epochs=6, q=4),
        lambda opt: SigmoidPolicy(opt, num_epochs=6, q=4, centered=True),
    ],
)
def test_state_dict_round_trip_continues_mid_schedule(make):
    iterations = 4
    epochs = [e + i / iterations for e in range(6) for i in range(1, iterations + 1)]

    def run(policy, optimizer, part):
        seen = []
        for e in part:
            policy.step(e, torch.tensor(0.5))
            optimizer.step()
            seen.append(lrs(optimizer))
        return seen

    optimizer = make_optimizer()
    full = run(make(optimizer), optimizer, epochs)

    optimizer = make_optimizer()
    policy = make(optimizer)
    run(policy, optimizer, epochs[:10])  # stopped in the middle of epoch 2
    opt_state, policy_state = optimizer.state_dict(), policy.state_dict()
    assert policy_state["last_epoch"] == 2.5

    resumed_optimizer = make_optimizer()
    resumed = make(resumed_optimizer)
    resumed_optimizer.load_state_dict(opt_state)
    resumed.load_state_dict(policy_state)
    assert lrs(resumed_optimizer) == full[9]
    assert run(resumed, resumed_optimizer, epochs[10:]) == full[10:]


def test_policies_read_nothing_and_do_not_warn_before_the_optimizer_steps():
    optimizer = make_optimizer()
    policies = [
        NoopPolicy(),
        PolyPolicy(optimizer, 4, 1),
        RampPolicy(optimizer, 2),
        SigmoidPolicy(optimizer, 4),
        ReduceLROnPlateau(optimizer),
    ]
    loss = torch.tensor(0.25)
    with warnings.catch_warnings(), count_host_reads() as reads:
        warnings.simplefilter("error")  # the Trainer steps its policy before optimizer.step
        for policy in policies:
            for i in range(1, 4):
                policy.step(i / 4, loss)  # ReduceLROnPlateau: fractional epochs are skipped
    assert sum(reads.values()) == 0, reads.most_common()


def plateau(**kwargs):
    optimizer = make_optimizer()
    return optimizer, ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1, **kwargs)


@pytest.mark.parametrize("call", ["positional", "keywords", "metrics_only"])
def test_reduce_lr_on_plateau_reduces_with_the_references_argument_order(call):
    optimizer, policy = plateau()
    losses = [1.0, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7]  # improves, then a plateau
    seen = []
    for epoch, loss in enumerate(losses, start=1):
        if call == "positional":
            policy.step(epoch, loss)  # as the Trainer calls it
        elif call == "keywords":
            policy.step(epoch=epoch, metrics=torch.tensor(loss))
        else:
            policy.step(metrics=loss)  # one more epoch
        seen.append(lrs(optimizer)[0])
    # patience 1: the second epoch without improvement halves the lr, then counting restarts
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert policy.best == pytest.approx(0.7) and policy.last_epoch == 7


def test_reduce_lr_on_plateau_as_a_train_policy_acts_once_per_epoch_on_the_epochs_mean():
    optimizer, policy = plateau()
    iterations = 4
    for epoch in range(4):
        for i in range(1, iterations + 1):
            # the Trainer's running mean: the epoch's loss stops improving after epoch 0
            policy.step(epoch + i / iterations, torch.tensor(2.0 if epoch == 0 else 1.0))
    assert policy.last_epoch == 4 and policy.best == 1.0
    assert lrs(optimizer)[0] == pytest.approx(0.05)  # epochs 3 and 4 did not improve


def test_reduce_lr_on_plateau_takes_one_value_dicts_and_round_trips():
    optimizer = make_optimizer()
    policy = ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)
    policy.step(1, {"top1_accuracy": 0.5})
    policy.step(2, {"top1_accuracy": 0.5})
    assert lrs(optimizer) == pytest.approx(BASE_LRS)
    policy.step(metrics={"top1_accuracy": torch.tensor(0.4)})
    assert lrs(optimizer) == pytest.approx([0.05, 0.01])

    resumed = ReduceLROnPlateau(make_optimizer(), mode="max", factor=0.5, patience=1)
    resumed.load_state_dict(policy.state_dict())
    assert (resumed.best, resumed.last_epoch) == (0.5, 3)


def test_reduce_lr_on_plateau_rejects_missing_or_ambiguous_metrics():
    _, policy = plateau()
    with pytest.raises(ValueError, match="needs metrics"):
        policy.step()
    with pytest.raises(ValueError, match="the value as the epoch"):
        policy.step(0.5)  # torch's order: would silently be a mid-epoch step
    with pytest.raises(ValueError, match=r"\['a', 'b'\]"):
        policy.step(metrics={"a": 1.0, "b": 2.0})


def test_noop_policy_changes_nothing():
    optimizer = make_optimizer()
    policy = NoopPolicy()
    policy.step()
    policy.step(3, metrics={"loss": 1.0})
    assert lrs(optimizer) == list(BASE_LRS)
    assert policy.state_dict() == {}
    policy.load_state_dict({})


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda opt: PolyPolicy(opt, num_epochs=0), "num_epochs"),
        (lambda opt: PolyPolicy(opt, num_epochs=3, power=0), "power"),
        (lambda opt: RampPolicy(opt, ramp_epochs=0), "ramp_epochs"),
        (lambda opt: SigmoidPolicy(opt, num_epochs=0), "num_epochs"),
        (lambda opt: SigmoidPolicy(opt, num_epochs=3, q=-1), "q"),
    ],
)
def test_bad_arguments_name_themselves(make, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make(make_optimizer())
