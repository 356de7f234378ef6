"""TurboDataLoader: parallel loading and processing of msgpack samples into batches.

Which samples each batch holds is the loader's :class:`~crumpets.core.plan.EpochPlan`, a
stream of batches pass after pass. A ``for`` loop over the loader yields the next
``epoch_iterations`` batches of that stream; leaving the loop early abandons the rest of
that epoch, and the next loop starts the next one. A batch's samples depend only on
(seed, pass, rank, position), never on the workers, which is what makes batches
identical for any number of workers and lets :meth:`TurboDataLoader.state_dict` resume
in the middle of an epoch.

Subclasses (crumpets-torch's loader) extend three documented hooks:
:meth:`~TurboDataLoader.make_buffer_manager`, :meth:`~TurboDataLoader.deliver` and
:meth:`~TurboDataLoader.release_transfers`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
import weakref
from collections.abc import Generator
from typing import Any, cast

import numpy as np

from ._items import Items
from ._loop import Loop
from ._signals import SIGTERM_GUARD, deferred_signals
from .broker import Pipeline, Worker, workers_are_forked
from .plan import EpochPlan
from .shm import DummyBufferManager, SharedBufferManager

__all__ = ["TurboDataLoader"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    # torchrun and torch.distributed.launch export these for every rank.
    if rank is None and world_size is None and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return (0 if rank is None else int(rank)), (1 if world_size is None else int(world_size))


def _shutdown(pipeline: Pipeline, manager: Any, token: object, owner: int) -> None:
    if os.getpid() != owner:
        # a forked child: the workers, sockets and memory are its parent's (and a pinned
        # pool's CUDA cannot be used here); its copies go with the process
        return
    try:
        # A second Ctrl-C must not cut the cleanup short: it comes once everything stopped.
        with deferred_signals():
            try:
                pipeline.stop()
            finally:
                manager.close()
    finally:
        SIGTERM_GUARD.leave(token)


class TurboDataLoader:
    """Fast parallel loading and processing of input data.

    Always use the loader inside a ``with`` statement, which starts and stops the worker
    processes. Iterating yields ``(iteration, mini_batches)``: ``iteration`` counts
    batches from ``start_iteration``; ``mini_batches`` is a list of ``num_mini_batches``
    dicts produced by the workers (e.g. 'image', 'label', 'augmentation').

    Example:
        >>> loader = TurboDataLoader(samples, 64, ClassificationWorker(...), nworkers=4)
        >>> with loader:
        ...     for epoch in range(epochs):
        ...         for iteration, mini_batches in loader:
        ...             for sample in mini_batches:
        ...                 images = sample['image']

    Args:
        iterable: msgpack bytes of samples: a sequence (``len`` and indexing, e.g. a list
            or :class:`crumpets.core.dataset.Reader`), which the loader reads by index and
            can shuffle and shard; or any iterator (e.g. ``itertools.cycle(list)``), read
            in order.
        batch_size: samples per batch.
        worker_template: a :class:`crumpets.core.broker.Worker`; copied once per worker.
        nworkers: number of worker processes.
        length: samples per epoch; defaults to ``len(iterable)`` (required for iterators).
        num_mini_batches: mini-batches each batch is split into; must divide batch_size.
        start_iteration: first value of the iteration counter (for resuming).
        shared_memory: True for ``2 * nworkers`` shared buffer sets, a number for that
            many, False or 0 to send batches inside messages.
        seed: seed for shuffling and for every sample's random generator; None picks one.
        shuffle: reshuffle the samples every epoch (needs a sequence).
        drop_last: drop the last partial batch of an epoch (and, with several ranks,
            the samples that would not divide evenly).
        rank: this process's shard; default ``$RANK`` under torchrun, else 0.
        world_size: number of shards; default ``$WORLD_SIZE`` under torchrun, else 1.
            Every rank gets the same number of batches: without drop_last, the shards
            are padded by repeating samples from the start of the epoch's order.
        stall_timeout: seconds the loader waits for workers that send nothing before it
            dumps their Python stacks to stderr and raises TimeoutError; None waits forever.

    Raises:
        TypeError, ValueError: for invalid arguments, naming the argument.
    """

    def __init__(
        self,
        iterable: Any,
        batch_size: int,
        worker_template: Worker,
        nworkers: int,
        length: int | None = None,
        num_mini_batches: int = 1,
        start_iteration: int = 0,
        shared_memory: bool | int = True,
        *,
        seed: int | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        stall_timeout: float | None = 300.0,
    ):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.nworkers = _positive_int("nworkers", nworkers)
        self.num_mini_batches = _positive_int("num_mini_batches", num_mini_batches)
        if self.batch_size % self.num_mini_batches:
            raise ValueError(
                f"num_mini_batches={num_mini_batches} must divide batch_size={batch_size}"
            )
        if not isinstance(worker_template, Worker):
            raise TypeError(
                "worker_template must be an instance of crumpets.core.broker.Worker, "
                f"got {type(worker_template).__name__}"
            )
        self.worker_template = worker_template
        if isinstance(shared_memory, bool) or shared_memory is None:
            self.num_buffers = 2 * self.nworkers if shared_memory else 0
        elif (
            isinstance(shared_memory, (int, np.integer))
            and shared_memory != 1
            and shared_memory >= 0
        ):
            self.num_buffers = int(shared_memory)
        else:
            # one buffer set cannot work: a for loop still holds the last batch while it
            # asks for the next
            raise ValueError(
                f"shared_memory must be a bool, 0 or a count >= 2, got {shared_memory!r}"
            )

        self.iterable = iterable
        self._items = Items(iterable)
        self.random_access = self._items.random_access
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = _distributed_defaults(rank, world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")
        if not self.random_access and (self.shuffle or self.world_size > 1):
            what = "shuffle=True" if self.shuffle else f"world_size={self.world_size}"
            raise ValueError(
                f"{what} needs an iterable with len() and indexing (a list or a dataset "
                f"Reader), got {type(iterable).__name__}"
            )
        if seed is None:
            # a SeedSequence made without entropy draws one int
            seed = int(cast(int, np.random.SeedSequence().entropy)) % 2**63
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self.seed = int(seed)
        if stall_timeout is not None and not stall_timeout > 0:
            raise ValueError(f"stall_timeout must be > 0 or None, got {stall_timeout!r}")
        self.stall_timeout = stall_timeout

        self._iteration = int(start_iteration)
        self._cursor = 0  # stream index of the next batch to yield
        self._epoch_end: int | None = None  # set while an epoch is in progress
        self._seq = 0  # requests sent so far
        # A sequence that each worker can open itself (a dataset file, memory-mapped in
        # every worker): send indices, not sample bytes.
        self._workers_read = self.random_access and getattr(iterable, "read_in_workers", False)
        # An iterable may want to know the batches ahead (ShardedReader fetches their
        # shards): schedule(plan, b) is called as batch b is submitted, unschedule() at stop.
        self._schedule = getattr(iterable, "schedule", None) if self._workers_read else None
        self._loop: Loop | None = None
        self._pid = os.getpid()  # the process that started the loader
        self._pipeline: Pipeline | None = None
        self._finalizer: Any = None
        self.set_length(length)

    # -- epoch geometry -------------------------------------------------------------------
    def set_length(self, length: int | None) -> None:
        """Set the number of samples per epoch; resets epoch_iterations accordingly.

        Args:
            length: ``len(iterable)`` or fewer; None means ``len(iterable)``.
        """
        if length is None:
            if not hasattr(self.iterable, "__len__"):
                raise ValueError("length is required for an iterable without len()")
            length = len(self.iterable)
        length = int(length)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if self.random_access and length > len(self.iterable):
            raise ValueError(f"length={length} exceeds len(iterable)={len(self.iterable)}")
        self.length = length
        # a sharded dataset (ShardedReader) orders samples shard by shard
        sharded = self.random_access and getattr(self.iterable, "shard_sizes", None) is not None
        self.plan = EpochPlan(
            length,
            self.batch_size,
            self.seed,
            self.shuffle,
            self.drop_last,
            self.rank,
            self.world_size,
            shard_sizes=self.iterable.shard_sizes if sharded else None,
            window=getattr(self.iterable, "window", 4) if sharded else 4,
        )
        self.epoch_iterations = self.plan.batches_per_pass

    @property
    def batches_per_pass(self) -> int:
        """Batches per pass over the data (of this rank): :attr:`plan`'s."""
        return self.plan.batches_per_pass

    def set_epoch_iterations(self, iterations: int) -> None:
        """Set the number of batches per epoch; does not change length.

        Args:
            iterations: batches yielded by one ``for`` loop over the loader.
        """
        self.epoch_iterations = _positive_int("iterations", iterations)

    def __len__(self) -> int:
        return self.epoch_iterations

    def batch_indices(self, b: int) -> tuple[int, np.ndarray]:
        """(pass, sample indices) of batch ``b`` of the stream (see :attr:`plan`)."""
        return self.plan.batch(b)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the processing pipeline."""
        if self._pipeline is not None:
            raise RuntimeError("loader is already started")
        specs = getattr(self.worker_template, "buffer_specs", {})
        shared = bool(self.num_buffers and specs)
        max_in_flight = self.num_buffers if shared else self.num_buffers or 2 * self.nworkers
        token = object()  # this start's entry in the SIGTERM guard
        try:
            SIGTERM_GUARD.enter(token)
            # Ctrl-C waits until the memory is owned by the finalizer, which frees it.
            with deferred_signals():
                manager = self.make_buffer_manager(shared, specs)
                pipeline = Pipeline(
                    self.worker_template,
                    self.nworkers,
                    manager,
                    max_in_flight,
                    stall_timeout=self.stall_timeout,
                    source=self.iterable if self._workers_read else None,
                )
                # Runs on stop(), on garbage collection or at interpreter exit, whichever
                # is first.
                self._pid = os.getpid()
                self._finalizer = weakref.finalize(
                    self, _shutdown, pipeline, manager, token, self._pid
                )
        except BaseException:
            SIGTERM_GUARD.leave(token)
            raise
        pipeline.start()
        self._pipeline = pipeline

    # -- extension points (crumpets-torch's loader overrides them) ---------------------
    def make_buffer_manager(self, shared: bool, specs: dict) -> Any:
        """The memory batches are written into; called once, by :meth:`start`.

        Args:
            shared: True for a pool of ``num_buffers`` shared buffer sets, False for
                batches sent inside messages.
            specs: the worker's buffer specs (name -> ``(shape, dtype, fill)``).

        Returns:
            A :class:`~crumpets.core.shm.SharedBufferManager` or
            :class:`~crumpets.core.shm.DummyBufferManager` (or a subclass: their
            ``unpack`` decides what a batch's arrays are, e.g. torch tensors).
        """
        if shared:
            # forked workers inherit an anonymous pool; spawned ones attach to a named one
            return SharedBufferManager(
                self.num_buffers, self.batch_size, specs, anonymous=workers_are_forked()
            )
        return DummyBufferManager(self.batch_size, specs)

    def deliver(self, mini_batches: list[dict]) -> list:
        """Hand a batch's mini-batches to the user; override to convert or move them
        (e.g. to a GPU). Called once per batch, in order."""
        return mini_batches

    def release_transfers(self) -> bool:
        """Wait for the oldest transfer :meth:`deliver` left running and free the buffer
        set it holds; True if there was one. The loader calls it when every buffer set is
        taken; override where deliveries are asynchronous."""
        return False

    def stop(self) -> None:
        """Stop the processing pipeline: workers, sockets and shared memory."""
        try:
            if self._loop is not None:
                loop, self._loop = self._loop, None
                loop.end(
                    "the loader was stopped (its `with` block ended): iterate inside "
                    "`with loader:`",
                    force=True,
                )
        finally:
            self._pipeline = None
            try:
                if self._finalizer is not None:
                    self._finalizer()
                    self._finalizer = None
            finally:
                if self._schedule is not None:  # once the workers are gone
                    self.iterable.unschedule()

    @property
    def buffer_manager(self) -> Any:
        """The running pipeline's SharedBufferManager or DummyBufferManager (None when
        stopped): the memory every batch's arrays are views of."""
        return None if self._pipeline is None else self._pipeline.buffer_manager

    def __enter__(self) -> TurboDataLoader:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- iteration ------------------------------------------------------------------------
    def __iter__(self) -> Loop:
        if self._pipeline is None:
            raise RuntimeError("start the loader first: use it inside `with loader:`")
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this loader was started in process {self._pid}; a forked process cannot "
                "use its workers. Make and start a loader of its own in the child."
            )
        if self._loop is not None:  # a newer loop ends it (RuntimeError if in use)
            name = threading.current_thread().name
            self._loop.end(f"this loop was ended by a newer loop over the loader (in {name})")
        if self._epoch_end is None:
            self._epoch_end = self._cursor + self.epoch_iterations
        self._loop = Loop(self._epoch(self._cursor, self._epoch_end))
        return self._loop

    def _epoch(self, start: int, end: int) -> Generator[tuple[int, list], None, None]:
        pipeline = self._pipeline
        assert pipeline is not None  # __iter__ checked that the loader is started
        pipeline.discard_before(self._seq)  # results still coming belong to an old epoch
        seq0 = self._seq
        sent = start
        try:
            for b in range(start, end):
                while sent < end and pipeline.can_submit():
                    self._submit(pipeline, sent, seq0 + sent - start)
                    sent += 1
                while sent == b:  # the batch we need next has not been sent
                    if pipeline.in_flight:
                        pipeline.wait_any()
                    elif self.release_transfers():
                        pass
                    elif pipeline.buffers_held():
                        raise RuntimeError(
                            f"all {self.num_buffers} shared buffer sets are still referenced "
                            "by your code, so no batch can be loaded. Keep fewer batches, "
                            "copy what you keep (array.copy()), or pass a larger "
                            "shared_memory=N to the loader."
                        )
                    if pipeline.can_submit():
                        self._submit(pipeline, sent, seq0 + sent - start)
                        sent += 1
                batch = pipeline.result(seq0 + b - start)
                self._cursor = b + 1
                iteration = self._iteration
                self._iteration += 1
                yield iteration, self.deliver(self._split(batch))
        finally:
            self._seq = seq0 + sent - start
            self._cursor = end
            self._epoch_end = None

    def _submit(self, pipeline: Pipeline, b: int, seq: int) -> None:
        p, indices = self.batch_indices(b)
        if not self.random_access:
            # a plain iterator is numbered by position in the epoch
            indices = indices.astype(np.int64)
        # the workers read a file's samples from their own map of it: send indices only
        items = [] if self._workers_read else self._items.read(p, indices, self.length)
        if self._schedule is not None:  # a sharded dataset fetches the coming shards
            self._schedule(self.plan, b)
        pipeline.submit(seq, self.seed, p, indices.tolist(), items)

    def _split(self, batch: dict) -> list[dict]:
        m = self.num_mini_batches
        if m == 1:
            return [batch]
        n = next((len(v) for v in batch.values() if hasattr(v, "__len__")), 0)
        bounds = [n * i // m for i in range(m + 1)]
        minis = []
        for a, b in zip(bounds, bounds[1:]):
            if b > a:  # a short last batch gives fewer, never empty, mini-batches
                minis.append({k: v[a:b] if hasattr(v, "__len__") else v for k, v in batch.items()})
        return minis

    # -- resuming -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Position of the loader: load it into a new loader to continue from here.

        Take it inside the loop or between epochs. Taken after leaving a loop early, it
        still points into the abandoned epoch (a loader loaded from it finishes that
        epoch), while the next ``for`` loop on this loader starts the next epoch.
        """
        return {
            "iteration": self._iteration,
            "cursor": self._cursor,
            "epoch_end": self._epoch_end,
            "seed": self.seed,
            "plan": self.plan.settings(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`, in the middle of an epoch if it was taken
        there. Uses the saved seed, so shuffling and augmentation continue identically.

        The state records the settings its position depends on (length, batch_size,
        shuffle, drop_last, rank, world_size). Taken between epochs, it loads into a loader
        whose settings other than length differ: that loader starts the next pass with
        its own batches. Taken mid-epoch, it loads only with the same settings.

        Raises:
            KeyError: if the state lacks an entry.
            ValueError: naming each setting that differs, where the position would repeat
                or skip samples; the loader is left as it was.
        """
        missing = {"iteration", "cursor", "epoch_end", "seed"} - set(state)
        if missing:
            raise KeyError(f"loader state lacks {sorted(missing)}")
        cursor = int(state["cursor"])
        epoch_end = None if state["epoch_end"] is None else int(state["epoch_end"])
        plan = self.plan
        if int(state["seed"]) != self.seed:
            plan = dataclasses.replace(plan, seed=int(state["seed"]))
        if state.get("plan") is None:
            warnings.warn(
                "the loader state records none of the settings its position depends on "
                "(crumpets-core 0.1 wrote it so); it is loaded as if they were this loader's",
                stacklevel=2,
            )
        else:
            moved = plan.resume_at(state["plan"], cursor, epoch_end not in (None, cursor))
            if moved != cursor:  # between epochs: the next pass, with this plan's batches
                cursor = moved
                epoch_end = None if epoch_end is None else cursor
        if self._loop is not None:
            self._loop.end("the loader's state was replaced (load_state_dict)")
            self._loop = None
        self._iteration = int(state["iteration"])
        self._cursor = cursor
        self._epoch_end = epoch_end
        self.seed = plan.seed
        self.plan = plan
