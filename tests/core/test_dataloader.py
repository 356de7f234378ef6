"""TurboDataLoader: exactly-once delivery, deterministic order, sharding, resuming."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _core_workers import IndexWorker

from crumpets.core import Reader, TurboDataLoader, Writer, pack
from crumpets.core.plan import sample_rng

N = 103  # not a multiple of any batch size used here: every epoch ends in a partial batch


def samples(n=N):
    return [pack({"i": i}) for i in range(n)]


def run_epochs(loader, epochs):
    """Per epoch: list of batches, each (indices, noise draws)."""
    out = []
    with loader:
        for _ in range(epochs):
            batches = []
            for _, (mb,) in loader:
                batches.append((mb["index"][:, 0].tolist(), mb["noise"][:, 0].tolist()))
            out.append(batches)
    return out


@pytest.mark.parametrize("shared_memory", [True, False])
@pytest.mark.parametrize("shuffle", [False, True])
def test_exactly_once_and_identical_across_worker_counts(shuffle, shared_memory):
    results = {}
    for nworkers in (1, 2, 4):
        loader = TurboDataLoader(
            samples(),
            10,
            IndexWorker(),
            nworkers,
            shared_memory=shared_memory,
            shuffle=shuffle,
            seed=1234,
        )
        results[nworkers] = run_epochs(loader, 2)
        for epoch in results[nworkers]:
            seen = [i for indices, _ in epoch for i in indices]
            assert sorted(seen) == list(range(N))  # every sample exactly once
            assert [len(b[0]) for b in epoch] == [10] * 10 + [3]
    assert results[1] == results[2] == results[4]
    first, second = results[1]
    order = [i for b in first for i in b[0]]
    assert (order == list(range(N))) != shuffle
    if shuffle:  # reshuffled every epoch
        assert order != [i for b in second for i in b[0]]


def test_same_seed_same_pixels_other_seed_differs():
    a = run_epochs(TurboDataLoader(samples(), 8, IndexWorker(), 2, shuffle=True, seed=5), 1)
    b = run_epochs(TurboDataLoader(samples(), 8, IndexWorker(), 2, shuffle=True, seed=5), 1)
    c = run_epochs(TurboDataLoader(samples(), 8, IndexWorker(), 2, shuffle=True, seed=6), 1)
    assert a == b
    assert a != c


def test_sample_rng_depends_on_sample_not_position():
    # With and without shuffling, sample i gets the same draw in the same epoch.
    plain = run_epochs(TurboDataLoader(samples(), 10, IndexWorker(), 2, seed=3), 1)[0]
    mixed = run_epochs(TurboDataLoader(samples(), 10, IndexWorker(), 2, seed=3, shuffle=True), 1)[0]
    draws = lambda batches: dict(zip(*[sum(x, []) for x in zip(*batches)]))  # noqa: E731
    assert draws(plain) == draws(mixed)
    # and it is the draw of sample_rng(seed, epoch, index), which replays it anywhere
    assert draws(plain) == {i: sample_rng(3, 0, i).random() for i in range(N)}


def test_drop_last_and_mini_batches():
    loader = TurboDataLoader(samples(), 10, IndexWorker(), 2, num_mini_batches=2, drop_last=True)
    with loader:
        batches = [[{k: np.array(v) for k, v in m.items()} for m in mbs] for _, mbs in loader]
    assert len(batches) == len(loader) == 10
    for mbs in batches:
        assert [len(m["index"]) for m in mbs] == [5, 5]
        assert [len(m["pid"]) for m in mbs] == [5, 5]
    seen = [i for mbs in batches for m in mbs for i in m["index"][:, 0]]
    assert seen == list(range(100))


def test_iteration_counter_and_partial_mini_batches():
    loader = TurboDataLoader(samples(7), 4, IndexWorker(), 1, num_mini_batches=4, start_iteration=5)
    with loader:
        out = [(it, [len(m["index"]) for m in mbs]) for it, mbs in loader]
        out += [(it, None) for it, _ in loader]
    assert out == [(5, [1, 1, 1, 1]), (6, [1, 1, 1]), (7, None), (8, None)]


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_disjoint_shards_of_equal_length(drop_last):
    world = 3
    per_rank = []
    for rank in range(world):
        loader = TurboDataLoader(
            samples(),
            8,
            IndexWorker(),
            1,
            shuffle=True,
            seed=9,
            rank=rank,
            world_size=world,
            drop_last=drop_last,
        )
        epoch = run_epochs(loader, 1)[0]
        per_rank.append([i for indices, _ in epoch for i in indices])
    assert len({len(p) for p in per_rank}) == 1
    flat = sum(per_rank, [])
    if drop_last:
        assert len(flat) == len(set(flat))  # disjoint
        assert len(flat) == (N // world) // 8 * 8 * world
    else:
        assert set(flat) == set(range(N))  # padded by repeating: every sample is seen
        assert len(flat) == 35 * world


def test_rank_defaults_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = TurboDataLoader(samples(), 10, IndexWorker(), 1)
    assert (loader.rank, loader.world_size) == (1, 2)
    assert len(loader) == 6  # 52 samples on this rank


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_mid_epoch_gives_the_rest_of_the_run(shuffle):
    def make():
        return TurboDataLoader(samples(), 10, IndexWorker(), 2, shuffle=shuffle, seed=77)

    full = [b for epoch in run_epochs(make(), 2) for b in epoch]
    first = make()
    with first:
        taken = []
        for _, (mb,) in first:
            taken.append((mb["index"][:, 0].tolist(), mb["noise"][:, 0].tolist()))
            if len(taken) == 4:
                state = first.state_dict()
                break
    assert taken == full[:4]
    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.seed == 77
    rest = [b for epoch in run_epochs(resumed, 2) for b in epoch]
    assert rest == full[4:]  # the rest of epoch 0, then epoch 1


def state_after(loader, batches):
    """The state of ``loader`` after ``batches`` batches of its first epoch (all of it if
    ``batches`` is None), taken inside the loop as the Trainer does."""
    with loader:
        for iteration, _ in loader:
            if iteration + 1 == batches:
                return loader.state_dict()
        return loader.state_dict()


def samples_of(epoch_batches):
    return sorted(i for indices, _ in epoch_batches for i in indices)


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"batch_size": 20}, ["batch_size"]),
        ({"batch_size": 5}, ["batch_size"]),
        ({"world_size": 2, "rank": 0}, ["world_size"]),
        ({"world_size": 2, "rank": 1}, ["world_size"]),
        ({"drop_last": True}, ["drop_last"]),
        ({"shuffle": False}, ["shuffle"]),
        ({"length": 50}, ["length"]),
        ({"batch_size": 5, "drop_last": True}, ["batch_size", "drop_last"]),
    ],
)
def test_resume_mid_epoch_with_other_settings_is_refused_naming_each(settings, names):
    kwargs = {"batch_size": 10, "shuffle": True, "seed": 3, **settings}
    state = state_after(TurboDataLoader(samples(), 10, IndexWorker(), 1, shuffle=True), 3)
    other = TurboDataLoader(
        samples(), kwargs.pop("batch_size"), IndexWorker(), 1, kwargs.pop("length", None), **kwargs
    )
    before = other.state_dict()
    with pytest.raises(ValueError, match="loader state was taken") as info:
        other.load_state_dict(state)
    message = str(info.value)
    differing = [
        name
        for name in ("length", "batch_size", "shuffle", "drop_last", "rank", "world_size")
        if f"{name}=" in message
    ]
    assert differing == names, message
    assert other.state_dict() == before  # nothing of the state was taken


@pytest.mark.parametrize(
    "settings",
    [{"batch_size": 20}, {"batch_size": 5}, {"drop_last": True}, {"shuffle": False}],
)
def test_resume_between_epochs_with_other_batching_continues_exactly_once(settings):
    # the state a snapshot at the end of epoch 0 holds: every later pass is whole
    kwargs = {"batch_size": 10, "shuffle": True, "seed": 9, **settings}
    state = state_after(
        TurboDataLoader(samples(), 10, IndexWorker(), 1, shuffle=True, seed=4), None
    )

    def make():
        return TurboDataLoader(
            samples(),
            kwargs["batch_size"],
            IndexWorker(),
            2,
            **{k: v for k, v in kwargs.items() if k != "batch_size"},
        )

    resumed = make()
    resumed.load_state_dict(state)
    assert resumed.seed == 4
    kwargs["seed"] = 4
    assert run_epochs(resumed, 2) == run_epochs(make(), 3)[1:]  # passes 1 and 2, as planned


def test_resume_between_epochs_on_more_ranks_gives_each_sample_once():
    state = state_after(TurboDataLoader(samples(), 10, IndexWorker(), 1, shuffle=True), None)
    seen = []
    for rank in (0, 1):

        def make(rank=rank):
            return TurboDataLoader(
                samples(),
                10,
                IndexWorker(),
                1,
                shuffle=True,
                seed=state["seed"],
                rank=rank,
                world_size=2,
            )

        loader = make()
        loader.load_state_dict(state)
        (epoch,) = run_epochs(loader, 1)
        assert epoch == run_epochs(make(), 2)[1]  # this rank's share of pass 1
        seen += samples_of(epoch)
    # pass 1 over two ranks: every sample once, and one padding sample (103 is odd)
    assert len(seen) == 104 and sorted(set(seen)) == list(range(N))


def test_a_mid_epoch_state_of_rank_0_resumes_on_every_rank():
    # the Trainer writes snapshots on rank 0 only; every rank loads them
    def make(rank):
        return TurboDataLoader(
            samples(), 10, IndexWorker(), 1, shuffle=True, seed=5, rank=rank, world_size=2
        )

    state = state_after(make(0), 2)
    for rank in (0, 1):
        resumed = make(rank)
        resumed.load_state_dict(state)
        (rest,) = run_epochs(resumed, 1)
        assert rest == run_epochs(make(rank), 1)[0][2:]  # this rank's batches from the third


def test_a_state_without_settings_loads_with_a_warning():
    state = state_after(TurboDataLoader(samples(), 10, IndexWorker(), 1), 3)
    del state["plan"]  # as crumpets-core 0.1 wrote it
    loader = TurboDataLoader(samples(), 10, IndexWorker(), 1)
    with pytest.warns(UserWarning, match="settings"):
        loader.load_state_dict(state)
    (epoch,) = run_epochs(loader, 1)
    assert samples_of(epoch) == list(range(30, N))


def test_break_then_next_loop_starts_next_epoch_and_reenter():
    loader = TurboDataLoader(samples(), 10, IndexWorker(), 2, shuffle=True, seed=1)
    reference = run_epochs(
        TurboDataLoader(samples(), 10, IndexWorker(), 2, shuffle=True, seed=1), 3
    )
    with loader:
        for _ in loader:
            break
        second = [(mb["index"][:, 0].tolist(), mb["noise"][:, 0].tolist()) for _, (mb,) in loader]
    with loader:  # re-entering starts fresh processes and continues with epoch 2
        third = [(mb["index"][:, 0].tolist(), mb["noise"][:, 0].tolist()) for _, (mb,) in loader]
    assert second == reference[1]
    assert third == reference[2]


def test_plain_iterator_is_read_in_order_across_epochs():
    loader = TurboDataLoader(itertools.cycle(samples(25)), 10, IndexWorker(), 2, length=25)
    with loader:
        epochs = [[i for _, (mb,) in loader for i in mb["index"][:, 0]] for _ in range(3)]
    assert epochs == [list(range(25))] * 3


def test_set_length_and_epoch_iterations():
    loader = TurboDataLoader(samples(), 10, IndexWorker(), 1)
    loader.set_length(50)
    assert len(loader) == 5
    loader.set_epoch_iterations(7)  # an epoch may span passes over the data
    with loader:
        got = [i for _, (mb,) in loader for i in mb["index"][:, 0]]
    assert got == list(range(50)) + list(range(20))


def test_batches_are_views_of_shared_memory():
    loader = TurboDataLoader(samples(), 10, IndexWorker(shape=(4, 4)), 2, shared_memory=3)
    with loader:
        manager = loader.buffer_manager
        lo, hi = manager.address, manager.address + manager.nbytes
        for _, (mb,) in loader:
            assert lo <= mb["pad"].__array_interface__["data"][0] < hi  # a view of the pool
            assert (mb["pad"] == 7).all()
            break


def test_without_shared_memory_batches_are_private_arrays():
    loader = TurboDataLoader(samples(), 10, IndexWorker(), 2, shared_memory=False)
    with loader:
        assert loader.buffer_manager.num_buffers == 0
        for _, (mb,) in loader:
            assert mb["index"].flags.writeable and mb["index"].flags.owndata
            break


def test_holding_every_buffer_raises_instead_of_hanging():
    loader = TurboDataLoader(samples(), 10, IndexWorker(), 2, shared_memory=2)
    kept = []
    with loader:
        with pytest.raises(RuntimeError, match="shared buffer sets are still referenced"):
            for _, (mb,) in loader:
                kept.append(mb)
        assert len(kept) == 2
        kept.clear()  # released: the loader works again
        del mb
        assert sum(len(mb["index"]) for _, (mb,) in loader) == N


def test_copied_batches_free_their_buffers():
    loader = TurboDataLoader(samples(), 10, IndexWorker(), 2, shared_memory=2)
    with loader:
        kept = [{k: np.array(v) for k, v in mb.items()} for _ in range(3) for _, (mb,) in loader]
    assert sorted(int(i) for b in kept for i in b["index"][:, 0]) == sorted(list(range(N)) * 3)


class CountingReader(Reader):
    """Counts reads in the process that reads."""

    reads = 0

    def __getitem__(self, index):
        type(self).reads += 1
        return super().__getitem__(index)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_read_dataset_files_themselves(tmp_path, monkeypatch, start_method):
    from crumpets.core import _platform

    monkeypatch.setattr(_platform, "START_METHOD", start_method)
    with Writer(tmp_path / "ds") as writer:
        for i in range(N):
            writer.write({"key": str(i), "i": i})
    reader = CountingReader(tmp_path / "ds")
    with TurboDataLoader(reader, 10, IndexWorker(), 2, shuffle=True, seed=1) as loader:
        seen = sorted(int(i) for _, (mb,) in loader for i in mb["index"][:, 0])
    assert seen == list(range(N))
    assert CountingReader.reads == 0  # only indices went to the workers
