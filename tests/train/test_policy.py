"""crumpets.train.policy: lr per epoch against the documented formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from crumpets.train.policy import (
    NoopPolicy,
    PolyPolicy,
    RampPolicy,
    ReduceLROnPlateau,
    SigmoidPolicy,
)

BASE_LRS = (0.1, 0.02)


def make_optimizer():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [a], "lr": BASE_LRS[0]}, {"params": [b], "lr": BASE_LRS[1]}])


def lrs(optimizer):
    return [group["lr"] for group in optimizer.param_groups]


def run(policy, optimizer, epochs):
    """The lrs of epochs 0 .. epochs-1, stepping once per epoch as the Trainer does."""
    history = [lrs(optimizer)]
    for _ in range(epochs - 1):
        optimizer.step()  # torch warns if a scheduler steps before its optimizer ever did
        policy.step()
        history.append(lrs(optimizer))
    return history


def assert_lrs(actual, expected):
    np.testing.assert_allclose(np.array(actual), np.array(expected), rtol=1e-12, atol=0)


def expected(formula, epochs):
    return [[formula(base, e) for base in BASE_LRS] for e in range(epochs)]


@pytest.mark.parametrize("power", [1, 2, 0.5])
def test_poly_policy(power):
    optimizer = make_optimizer()
    policy = PolyPolicy(optimizer, num_epochs=5, power=power)
    assert isinstance(policy, LRScheduler)
    formula = lambda base, e: base * max(0.0, 1 - e / 5) ** power  # noqa: E731
    assert_lrs(run(policy, optimizer, 8), expected(formula, 8))


def test_ramp_policy():
    optimizer = make_optimizer()
    history = run(RampPolicy(optimizer, ramp_epochs=4), optimizer, 7)
    assert [h[0] for h in history] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1])
    assert_lrs(history, expected(lambda b, e: b * min(1, (e + 1) / 4), 7))


def test_sigmoid_policy_decays_from_base_to_about_zero():
    optimizer = make_optimizer()
    history = run(SigmoidPolicy(optimizer, num_epochs=10, q=6), optimizer, 11)
    formula = lambda base, e: base / (1 + math.exp(6 * (2 * e / 10 - 1)))  # noqa: E731
    assert_lrs(history, expected(formula, 11))
    first, middle, last = history[0][0], history[5][0], history[10][0]
    assert first > 0.99 * 0.1 and middle == pytest.approx(0.05) and last < 0.01 * 0.1
    assert all(a[0] > b[0] for a, b in zip(history, history[1:]))


def test_step_with_epoch_jumps_there():
    optimizer = make_optimizer()
    policy = PolyPolicy(optimizer, num_epochs=10)
    optimizer.step()
    policy.step(epoch=6)
    assert lrs(optimizer) == pytest.approx([0.04, 0.008])
    policy.step(metrics={"loss": 1.0})  # ignored, like the Trainer may pass it
    assert policy.last_epoch == 7


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: PolyPolicy(opt, num_epochs=6, power=2),
        lambda opt: RampPolicy(opt, ramp_epochs=5),
        lambda opt: SigmoidPolicy(opt, num_epochs=6, q=4),
    ],
)
def test_state_dict_round_trip_continues_the_schedule(make):
    optimizer = make_optimizer()
    policy = make(optimizer)
    full = run(policy, optimizer, 7)

    optimizer = make_optimizer()
    policy = make(optimizer)
    run(policy, optimizer, 3)
    opt_state, policy_state = optimizer.state_dict(), policy.state_dict()

    resumed_optimizer = make_optimizer()
    resumed = make(resumed_optimizer)
    resumed_optimizer.load_state_dict(opt_state)
    resumed.load_state_dict(policy_state)
    assert_lrs(run(resumed, resumed_optimizer, 5), full[2:])


def test_reduce_lr_on_plateau_takes_numbers_and_one_value_dicts():
    optimizer = make_optimizer()
    policy = ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)
    policy.step(metrics={"top1_accuracy": 0.5})
    policy.step(0.5)  # torch's positional form
    assert lrs(optimizer) == pytest.approx(BASE_LRS)
    policy.step(metrics=torch.tensor(0.4))
    assert lrs(optimizer) == pytest.approx([0.05, 0.01])

    state = policy.state_dict()
    resumed = ReduceLROnPlateau(make_optimizer(), mode="max", factor=0.5, patience=1)
    resumed.load_state_dict(state)
    assert (resumed.best, resumed.last_epoch) == (0.5, 3)


def test_reduce_lr_on_plateau_rejects_missing_or_ambiguous_metrics():
    policy = ReduceLROnPlateau(make_optimizer())
    with pytest.raises(ValueError, match="needs metrics"):
        policy.step()
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
