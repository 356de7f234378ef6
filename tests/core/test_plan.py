"""The epoch plan, without a process: exactly once, disjoint shards, equal batch counts
per rank, and resume positions; for sharded datasets also the windows of shards a pass
mixes, the contiguous part of the shard order each rank reads, and the recorded layout."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crumpets.core.plan import EpochPlan, SampleRNG, sample_rng, shards_digest

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


def assert_once_per_pass(settings: dict, epoch: int) -> None:
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
@given(plans(), st.integers(0, 3))
def test_every_sample_once_per_pass_over_all_ranks(settings, epoch):
    assert_once_per_pass(settings, epoch)


@settings_
@given(plans())
def test_shards_are_disjoint_and_as_long_as_each_other(settings):
    shards = [plan.order(0) for plan in ranks(settings)]
    assert len({len(s) for s in shards}) == 1
    assert len({len(list(plan.batches(0))) for plan in ranks(settings)}) == 1
    if settings["drop_last"] or settings["length"] % settings["world_size"] == 0:
        assert len(set(np.concatenate(shards).tolist())) == sum(len(s) for s in shards)


def assert_resumes_exactly(settings: dict, epoch: int, data: st.DataObject) -> None:
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


@settings_
@given(plans(), st.integers(0, 5), st.data())
def test_resuming_at_any_batch_gives_the_rest_of_the_stream(settings, epoch, data):
    assert_resumes_exactly(settings, epoch, data)


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
        (dict(length=5, batch_size=1, shard_sizes=()), "shard_sizes"),
        (dict(length=5, batch_size=1, shard_sizes=(3, -1, 4)), "shard_sizes"),
        (dict(length=8, batch_size=1, shard_sizes=(3, 4)), "length=8 exceeds the 7"),
        (dict(length=5, batch_size=1, shard_sizes=(5,), window=0), "window"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EpochPlan(**kwargs)


# -- sharded plans --------------------------------------------------------------------------
@st.composite
def sharded_plans(draw):
    sizes = draw(st.lists(st.integers(0, 15), min_size=1, max_size=12).filter(sum))
    total = sum(sizes)
    world_size = draw(st.integers(1, 5))
    batch_size = draw(st.integers(1, 9))
    # drop_last needs a complete batch per rank among the shards' samples
    drop_last = draw(st.booleans()) and world_size * batch_size <= total
    low = world_size * batch_size if drop_last else 1
    # all of the shards' samples, or sometimes fewer (part of a shard, whole shards unused)
    length = draw(st.one_of(st.just(total), st.integers(low, total)))
    return dict(
        length=length,
        batch_size=batch_size,
        seed=draw(st.integers(0, 2**32)),
        shuffle=draw(st.booleans()),
        drop_last=drop_last,
        world_size=world_size,
        shard_sizes=tuple(sizes),
        window=draw(st.integers(1, 5)),
    )


def shard_of(settings: dict) -> np.ndarray:
    """The shard of each of the pass's samples 0 .. length - 1."""
    sizes = settings["shard_sizes"]
    return np.repeat(np.arange(len(sizes)), sizes)[: settings["length"]]


def whole_shard_segments(order: np.ndarray, shard: np.ndarray) -> list[set[int]]:
    """The order cut into the shortest consecutive segments that each hold every used
    sample of their shards: each a union of the plan's windows or part of one."""
    left = Counter(shard.tolist())  # samples of each shard not yet seen
    segments: list[set[int]] = []
    current: set[int] = set()
    open_ = 0  # shards of the current segment with samples still to come
    for s in shard[order].tolist():
        if s not in current:
            current.add(s)
            open_ += 1
        left[s] -= 1
        if not left[s]:
            open_ -= 1
        if not open_:
            segments.append(current)
            current = set()
    assert not current, "the order ends inside a shard"
    return segments


@settings_
@given(sharded_plans(), st.integers(0, 3))
def test_sharded_every_sample_once_per_pass_over_all_ranks(settings, epoch):
    assert_once_per_pass(settings, epoch)


@settings_
@given(sharded_plans())
def test_sharded_ranks_have_as_many_batches_as_each_other(settings):
    plans_ = ranks(settings)
    assert len({len(plan.order(0)) for plan in plans_}) == 1
    assert {len(list(plan.batches(1))) for plan in plans_} == {plans_[0].batches_per_pass}
    if settings["drop_last"]:
        assert all(len(b) == settings["batch_size"] for p in plans_ for b in p.batches(0))


@settings_
@given(sharded_plans(), st.lists(st.integers(0, 4), min_size=1, max_size=6))
def test_sharded_plan_is_a_pure_function_of_its_settings(settings, passes):
    one, other = EpochPlan(**settings), EpochPlan(**settings)
    for p in passes:  # asked in any sequence, past the cache of two passes
        assert np.array_equal(one.order(p), EpochPlan(**settings).order(p))
    for p in reversed(passes):
        assert np.array_equal(one.order(p), other.order(p))
    assert one == other and one.settings() == other.settings()


@settings_
@given(sharded_plans(), st.integers(0, 3))
def test_sharded_order_mixes_samples_within_windows_of_shards(settings, epoch):
    settings = {**settings, "world_size": 1}
    plan = EpochPlan(**settings)
    order, shard = plan.order(epoch), shard_of(settings)
    if not settings["shuffle"]:
        assert np.array_equal(order, np.arange(settings["length"]))
        return
    window, batch_size = settings["window"], settings["batch_size"]
    # consecutive segments, each every sample of at most `window` shards
    segments = whole_shard_segments(order, shard)
    assert all(len(segment) <= window for segment in segments)
    # a batch spans the windows it overlaps: two, and more only where a window holds fewer
    # samples than a batch (each window that is not empty holds a shard's samples)
    smallest = Counter(shard.tolist()).most_common()[-1][1]
    spanned = 1 if batch_size == 1 else 2 + (batch_size - 2) // smallest
    for batch in plan.batches(epoch):
        assert len(set(shard[batch].tolist())) <= window * spanned
        if smallest >= batch_size - 1:
            assert len(set(shard[batch].tolist())) <= 2 * window


@settings_
@given(sharded_plans(), st.integers(0, 3))
def test_sharded_ranks_read_contiguous_parts_of_the_shard_order(settings, epoch):
    length, world = settings["length"], settings["world_size"]
    whole = EpochPlan(**{**settings, "world_size": 1}).order(epoch)
    plans_ = ranks(settings)
    n = plans_[0].shard_length
    # rank r: the r-th part of the pass's order, which wraps to its start as padding
    padded = np.resize(whole, n * world)
    for r, plan in enumerate(plans_):
        assert np.array_equal(plan.order(epoch), padded[r * n : (r + 1) * n])
    # the shards of each rank, padding left out, meet only in the windows cut by a rank's
    # first sample
    shard = shard_of(settings)
    read = [set(shard[padded[r * n : min((r + 1) * n, length)]].tolist()) for r in range(world)]
    cut = {}  # the shards of the segment the cut before rank k's first sample runs through
    position = 0
    for segment in whole_shard_segments(whole, shard):
        size = int(np.isin(shard, list(segment)).sum())
        for k in range(1, world):
            if position < k * n < position + size:
                cut[k] = segment
        position += size
    assert all(
        len(segment) <= settings["window"] or not settings["shuffle"] for segment in cut.values()
    )
    for r in range(world):
        for q in range(r + 1, world):
            boundary = set().union(*(cut.get(k, set()) for k in range(r + 1, q + 1)))
            assert read[r] & read[q] <= boundary
    # so the ranks together read each shard once, but for at most `window` per cut
    window = settings["window"] if settings["shuffle"] else 1
    assert sum(map(len, read)) <= len(set(shard.tolist())) + (world - 1) * window


@settings_
@given(sharded_plans(), st.integers(0, 5), st.data())
def test_sharded_resuming_at_any_batch_gives_the_rest_of_the_stream(settings, epoch, data):
    assert_resumes_exactly(settings, epoch, data)


@settings_
@given(
    st.lists(st.integers(0, 15), min_size=1, max_size=12).filter(sum),
    st.lists(st.integers(0, 15), min_size=1, max_size=12).filter(sum),
)
def test_settings_record_the_layout_of_the_shards(sizes, others):
    length = min(sum(sizes), sum(others))
    plan = EpochPlan(length, 1, shard_sizes=sizes, window=3)
    other = EpochPlan(length, 1, shard_sizes=others, window=3)
    assert plan.settings()["shards"] == shards_digest(sizes)
    assert (plan.settings() == other.settings()) == (tuple(sizes) == tuple(others))
    assert plan.settings()["window"] == 3
    unsharded = EpochPlan(length, 1, window=3).settings()
    assert unsharded["shards"] is None and unsharded["window"] is None


@settings_
@given(sharded_plans(), st.integers(0, 3), st.data())
def test_sharded_resume_at_refuses_other_shards_or_window_only_mid_epoch(settings, p, data):
    before = EpochPlan(**settings)
    saved = before.settings()
    j = data.draw(st.integers(0, before.batches_per_pass - 1))
    cursor = p * before.batches_per_pass + j
    sizes = settings["shard_sizes"]
    changes = {
        "window": dict(window=settings["window"] + data.draw(st.integers(1, 3))),
        # the same samples, laid out in one more shard (an empty one): another digest
        "shards": dict(shard_sizes=(*sizes, 0)),
        "shards, window": dict(shard_sizes=sizes[::-1] + (1,), window=settings["window"] + 1),
    }
    assert EpochPlan(**settings).resume_at(saved, cursor, mid_epoch=j > 0) == cursor
    for names, change in changes.items():
        after = EpochPlan(**{**settings, **change})
        for mid_epoch in (True, False) if j else (True,):
            with pytest.raises(ValueError, match="mid-epoch" if mid_epoch else "pass's start") as e:
                after.resume_at(saved, cursor, mid_epoch)
            for name in names.split(", "):
                assert f"{name}={saved[name]!r}" in str(e.value)
                assert f"{name}={after.settings()[name]!r}" in str(e.value)
        if not j:  # at a pass's start: the same pass, from its start, in the new layout
            assert after.resume_at(saved, cursor, mid_epoch=False) == p * after.batches_per_pass
    # from an unsharded plan's state (or to one): mid-epoch refused, at a pass's start allowed
    flat = EpochPlan(**{k: v for k, v in settings.items() if k not in ("shard_sizes", "window")})
    for a, b in ((flat, before), (before, flat)):
        if j:
            with pytest.raises(ValueError, match="shards=.*window="):
                b.resume_at(a.settings(), cursor, mid_epoch=True)
        else:
            assert b.resume_at(a.settings(), cursor, mid_epoch=False) == p * b.batches_per_pass


def test_sharded_order_stream_is_pinned():
    # an accidental change of the stream would reshuffle every resumed run: these are the
    # orders of the plan as written (numpy's default_rng((seed, pass, 1)) draws the shards'
    # order of the shards that hold samples, then one key per sample). Shards: 0-4, 5-7,
    # none, 8-13, 14-17, 18-19 (of a shard of 3; the last shard unused).
    settings = dict(
        length=20, batch_size=4, seed=7, shuffle=True, shard_sizes=(5, 3, 0, 6, 4, 3, 3), window=2
    )
    plan = EpochPlan(**settings)
    first = [13, 17, 15, 8, 14, 12, 10, 9, 16, 11, 6, 7, 18, 5, 19, 2, 0, 3, 4, 1]
    assert plan.order(0).tolist() == first
    assert plan.order(1).tolist()[:10] == [6, 7, 19, 5, 18, 1, 0, 14, 3, 15]
    assert EpochPlan(**settings, rank=1, world_size=3).order(1).tolist() == [
        14,
        3,
        15,
        17,
        2,
        16,
        4,
    ]
    unshuffled = EpochPlan(**{**settings, "shuffle": False})
    assert [b.tolist() for b in unshuffled.batches(3)][1] == [4, 5, 6, 7]


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
