"""The epoch plan, without a process: exactly once, disjoint shards, equal batch counts
per rank, and resume positions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crumpets.core.plan import EpochPlan, SampleRNG, sample_rng

settings_ = settings(max_examples=200, deadline=None)


@st.composite
def plans(draw):
    world_size = draw(st.integers(1, 5))
    batch_size = draw(st.integers(1, 9))
    drop_last = draw(st.booleans())
    low = world_size * batch_size if drop_last else 1  # at least one batch per rank
    length = draw(st.integers(low, 120))
    return dict(
        length=length,
        batch_size=batch_size,
        seed=draw(st.integers(0, 2**32)),
        shuffle=draw(st.booleans()),
        drop_last=drop_last,
        world_size=world_size,
    )


def ranks(settings: dict) -> list[EpochPlan]:
    return [EpochPlan(**settings, rank=r) for r in range(settings["world_size"])]


@settings_
@given(plans(), st.integers(0, 3))
def test_every_sample_once_per_pass_over_all_ranks(settings, epoch):
    shards = [np.concatenate(list(plan.batches(epoch))) for plan in ranks(settings)]
    counts = Counter(np.concatenate(shards).tolist())
    length, world = settings["length"], settings["world_size"]
    if settings["drop_last"]:
        # the samples that do not divide evenly among ranks are dropped; none repeats
        assert set(counts.values()) == {1} and len(counts) <= length
        assert len(counts) >= length - (world - 1) - world * (settings["batch_size"] - 1)
    else:
        assert set(counts) == set(range(length))  # every sample...
        # ...once, but for the padding that gives every rank as many samples
        assert sum(counts.values()) - length == -(-length // world) * world - length


@settings_
@given(plans())
def test_shards_are_disjoint_and_as_long_as_each_other(settings):
    shards = [plan.order(0) for plan in ranks(settings)]
    assert len({len(s) for s in shards}) == 1
    assert len({len(list(plan.batches(0))) for plan in ranks(settings)}) == 1
    if settings["drop_last"] or settings["length"] % settings["world_size"] == 0:
        assert len(set(np.concatenate(shards).tolist())) == sum(len(s) for s in shards)


@settings_
@given(plans(), st.integers(0, 5), st.data())
def test_resuming_at_any_batch_gives_the_rest_of_the_stream(settings, epoch, data):
    plan = EpochPlan(**settings)
    full = list(plan.batches(epoch))
    start = data.draw(st.integers(0, len(full)))
    again = EpochPlan(**settings)  # a new loader, as after a restart
    resumed = list(again.batches(epoch, start))
    assert len(resumed) == len(full) - start
    assert all(np.array_equal(a, b) for a, b in zip(resumed, full[start:]))
    b = epoch * plan.batches_per_pass + start
    if start < len(full):
        assert again.batch(b)[0] == epoch and np.array_equal(again.batch(b)[1], full[start])


def test_passes_shuffle_differently_from_the_seed():
    plan = EpochPlan(50, 10, seed=3, shuffle=True)
    assert not np.array_equal(plan.order(0), plan.order(1))
    assert np.array_equal(plan.order(1), EpochPlan(50, 10, seed=3, shuffle=True).order(1))
    assert not np.array_equal(plan.order(0), EpochPlan(50, 10, seed=4, shuffle=True).order(0))
    assert np.array_equal(EpochPlan(50, 10).order(7), np.arange(50))
    with pytest.raises(ValueError):
        plan.order(0)[0] = 1  # shared between calls: read-only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(length=0, batch_size=1), "length"),
        (dict(length=5, batch_size=0), "batch_size"),
        (dict(length=5, batch_size=1, rank=2, world_size=2), "rank=2"),
        (dict(length=5, batch_size=3, drop_last=True, world_size=2), "no complete batch"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpochPlan(**kwargs)


# -- each sample's generator ----------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    epoch=st.integers(0, 10**6),
    indices=st.lists(st.integers(0, 2**48), min_size=1, max_size=8),
)
def test_sample_rng_is_the_jumped_stream_of_the_pass(seed, epoch, indices):
    # numpy's own construction, spelled out: child 0 of the pass's SeedSequence seeds a
    # PCG64DXSM, and sample i draws from its i-th jumped stream
    child = np.random.SeedSequence((seed, epoch)).spawn(1)[0]
    for index in indices:
        expected = np.random.Generator(np.random.PCG64DXSM(child).jumped(index)).random(4)
        assert np.array_equal(sample_rng(seed, epoch, index).random(4), expected)


def test_sample_rngs_reused_generator_gives_sample_rngs_numbers():
    rngs = SampleRNG()
    # passes interleaved (a worker may get batches of two passes in turn), numpy ints too
    calls = [(1, 0, 5), (1, 0, 6), (1, 1, 5), (1, 0, 5), (2, 0, 5), (1, 0, np.int64(9))]
    for seed, epoch, index in calls:
        got = rngs(seed, epoch, index)
        draws = (got.random(3), got.standard_normal(2), got.integers(0, 2**31))
        want = sample_rng(seed, epoch, int(index))
        assert np.array_equal(draws[0], want.random(3))
        assert np.array_equal(draws[1], want.standard_normal(2))
        assert draws[2] == want.integers(0, 2**31)


def test_sample_streams_differ_between_samples_passes_and_seeds():
    first = lambda s, e, i: sample_rng(s, e, i).random()  # noqa: E731
    values = {first(s, e, i) for s in (0, 1) for e in (0, 1) for i in range(50)}
    assert len(values) == 200
    # and from the pass's shuffle, which seeds numpy's default generator with (seed, pass)
    assert first(0, 0, 0) != np.random.default_rng((0, 0)).random()
