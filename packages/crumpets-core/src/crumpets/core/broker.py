"""The workers' base classes: :class:`Worker` processes a request of samples into one
result, :class:`BufferWorker` one sample at a time into shared buffers.

The rest of the pipeline lives beside this module and is re-exported here under the
reference's names: the messages (:mod:`crumpets.core._messages`), the worker process's
loop (:mod:`crumpets.core._worker_loop`), the processes, sockets and ordering
(:mod:`crumpets.core._pipeline`) and the platform tweaks (:mod:`crumpets.core._platform`).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ._buffers import make_buffer, make_bufferspec, make_fill_value
from ._messages import Request, WorkerError
from ._pipeline import Consumer, Dispatcher, Pipeline, Producer
from ._platform import keep_freed_memory, workers_are_forked
from ._worker_loop import run_worker
from .params import PIXEL_OPS
from .plan import SampleRNG
from .shm import DummyBufferManager, SharedBufferManager, pack, unpack

__all__ = [
    "Batch",
    "BufferWorker",
    "Consumer",
    "Dispatcher",
    "DummyBufferManager",
    "Pipeline",
    "Producer",
    "Request",
    "SharedBufferManager",
    "Worker",
    "WorkerError",
    "keep_freed_memory",
    "make_buffer",
    "make_bufferspec",
    "make_fill_value",
    "workers_are_forked",
]


class Worker(ABC):
    """Abstract base class for workers. Implement :meth:`process`.

    The loader runs copies of a worker in its processes (see
    :mod:`crumpets.core._worker_loop`): each calls :meth:`init` once, then
    :meth:`process` for every request it receives; ``self.worker_id`` is its number.

    Args:
        timeout: how long (ms) a worker waits for work before checking that its parent
            process is still alive; an orphaned worker exits by itself.
        daemon: daemon flag of the worker process.
        gpu_augmentation: True disables CPU pixel augmentations that a GPU Randomizer
            applies instead: all of :data:`crumpets.core.params.PIXEL_OPS`, unless
            :meth:`set_gpu_augmentation` is told which.
    """

    def __init__(self, timeout: int = 1000, daemon: bool = True, gpu_augmentation: bool = False):
        if int(timeout) <= 0:
            raise ValueError(f"timeout must be a positive number of ms, got {timeout}")
        self.timeout = int(timeout)
        self.daemon = bool(daemon)
        self.gpu_augmentation = bool(gpu_augmentation)
        self.gpu_ops: frozenset[str] = frozenset(PIXEL_OPS)
        self.worker_id = 0
        self.work_address: str | None = None
        self.result_address: str | None = None

    def set_addresses(self, work: str, result: str) -> None:
        """Set the zmq addresses :meth:`run` connects to (the loader passes them to its
        processes itself)."""
        self.work_address, self.result_address = work, result

    def set_gpu_augmentation(self, val: bool, ops: Iterable[str] | None = None) -> None:
        """True disables CPU augmentations for which a GPU version is applied.

        Args:
            val: whether a GPU applies pixel operations after the workers.
            ops: which ones (names of :data:`crumpets.core.params.PIXEL_OPS`); None: all
                of them. The loader that applies them says which (crumpets-torch's
                ``TorchTurboDataLoader`` passes its Randomizer's operations).

        Raises:
            TypeError: ``ops`` is a string, not a collection of names.
            ValueError: ``ops`` names something that is not a pixel operation.
        """
        if isinstance(ops, str):
            raise TypeError(f"ops must be a collection of operation names, got {ops!r}")
        names = frozenset(PIXEL_OPS if ops is None else ops)
        if not names <= PIXEL_OPS.keys():
            raise ValueError(
                f"ops must name pixel operations {list(PIXEL_OPS)}, "
                f"got {sorted(names - PIXEL_OPS.keys())}"
            )
        self.gpu_ops = names
        self.gpu_augmentation = bool(val)

    def set_gpu_decode(self, val: bool, max_bytes: int = 1 << 20) -> dict[str, Any]:
        """True: the worker writes its images' encoded bytes, not their pixels, for a loader
        that decodes and warps them itself (crumpets-torch's ``gpu_decode``).

        A worker that can (crumpets-augment's image workers) replaces each such image
        buffer ``NAME`` in :attr:`buffer_specs` by ``NAME_bytes`` (``max_bytes`` uint8 per
        sample) and ``NAME_info`` (int64 per sample: the byte count, the sample index and
        the epoch), and still reports each sample's parameters and matrix.

        Args:
            val: whether to write the encoded bytes.
            max_bytes: the most bytes one encoded image may have.

        Returns:
            The image buffers the loader must make, name -> their ``(shape, dtype, fill)``
            spec as the worker declared it; empty when ``val`` is False.

        Raises:
            TypeError: this worker cannot (the base class cannot).
        """
        if val:
            raise TypeError(
                f"{type(self).__name__} cannot leave decoding to the loader (gpu_decode)"
            )
        return {}

    @abstractmethod
    def process(self, request: Request) -> Any:
        """Process one request and return its result (msgpack-able, usually a dict).

        One request gives one result: an iterator or generator of several (which
        crumpets 3 allowed) is refused with a TypeError in the main process.
        """

    def pack(self, obj: Any) -> bytes:
        """Serialize a result for the trip to the main process."""
        return pack(obj)

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Context the parent process holds while it starts the worker processes.

        Override to make a library safe to fork: e.g. OpenCV's thread pool hangs a
        forked child that touches it, unless the parent has one thread while forking.
        """
        yield

    def init(self) -> None:  # noqa: B027 - an optional hook, empty by design
        """Called once in the worker process before the first request; override to set
        up per-process state (thread pools, file handles)."""

    def run(self) -> None:
        """Run this worker in the current process, on the addresses of
        :meth:`set_addresses` (the loader starts its processes without it)."""
        if self.work_address is None or self.result_address is None:
            raise RuntimeError("call set_addresses(work, result) before run()")
        run_worker(self, self.worker_id, self.work_address, self.result_address)


class Batch(defaultdict[str, list[Any]]):
    """What :meth:`BufferWorker.process` collects from one request, which ``prepare``
    receives as ``batch``: per-sample values in lists by key (a ``defaultdict(list)``),
    and the writes that ``prepare`` left for the second phase.

    A ``prepare`` may :meth:`defer` work that reads nothing the rest of ``prepare`` needs
    (an image's pixels: decoding, warping, pixel operations): ``process`` runs it once
    every sample of the request is prepared, in the order deferred, with
    ``self.sample_index`` naming its sample. Running the per-sample Python back to back,
    while its data is in the caches, and the pixel work after, is faster.
    """

    def __init__(self) -> None:
        super().__init__(list)
        self.deferred: list[tuple[int | None, Callable[[], None]]] = []

    def defer(self, index: int | None, write: Callable[[], None]) -> None:
        """Leave ``write`` (of sample ``index``) until every sample is prepared."""
        self.deferred.append((index, write))


class BufferWorker(Worker):
    """Base class for workers that write constant-size buffers.

    Subclasses declare buffers with :meth:`add_buffer` and implement :meth:`prepare`,
    which handles one sample. While ``prepare`` runs, ``self.sample_index`` and
    ``self.epoch`` name the sample and ``self.rng`` is its own ``numpy.random.Generator``
    (:func:`crumpets.core.plan.sample_rng` of the loader's seed, the epoch and the sample
    index): the same sample gets the same random numbers whatever worker processes it.
    ``self.rng`` is valid while ``prepare`` runs (the next sample resets it); keep a
    generator that ``sample_rng`` makes instead.

    :meth:`process` works in two phases: it calls ``prepare`` for every sample of the
    request, then runs the writes that ``prepare`` deferred (:meth:`Batch.defer`), one
    sample after another. A ``prepare`` that defers nothing has written everything when
    it returns.

    Each batch's rows start at their buffers' fill values, except the buffers named in
    ``self.written_in_full``: a subclass whose ``prepare`` writes every element of a
    buffer adds its key there and saves that pass over memory.

    Args:
        buffer_manager: a SharedBufferManager or DummyBufferManager; the loader sets one.
        **kwargs: passed to :class:`Worker`.
    """

    def __init__(self, buffer_manager: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.buffer_manager = buffer_manager
        self.buffer_specs: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.sample_index: int | None = None
        self.epoch: int | None = None
        self.rng: np.random.Generator | None = None
        self._sample_rngs: SampleRNG | None = None  # made in the worker process
        # Buffers that prepare writes in full for every sample (an image warped with its
        # background): process does not reset them first, which would be one more pass
        # over the whole batch's memory. Every other buffer starts each batch filled.
        self.written_in_full: set[str] = set()

    def add_buffer(self, key: str, buf: Any) -> None:
        """Register a buffer: a ``(shape, dtype[, fill_value])`` spec or a template array."""
        try:
            self.buffer_specs[key] = make_bufferspec(buf)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"buffer {key!r}: {exc}") from None

    def add_params(self, key: str, params: Any, default: Any = None) -> None:
        """Add a parameter group; ``default`` is used if ``params`` is None."""
        self.params[key] = default if params is None else params

    def get_buffer_manager(self) -> Any:
        return self.buffer_manager

    def set_buffer_manager(self, buffer_manager: Any) -> None:
        self.buffer_manager = buffer_manager

    def pack(self, obj: Any) -> bytes:
        return self.buffer_manager.pack(obj)

    @abstractmethod
    def prepare(self, sample: dict, batch: dict, buffers: dict[str, np.ndarray]) -> None:
        """Process one sample: write into ``buffers`` (this sample's rows) and append
        per-sample values to lists in ``batch``.

        Args:
            sample: the unpacked sample dict.
            batch: the batch the sample belongs to: a :class:`Batch`, a
                ``defaultdict(list)`` that also takes deferred writes.
            buffers: this sample's row of every buffer.
        """

    def process(self, request: Request) -> dict:
        manager = self.buffer_manager
        if manager is None:
            raise RuntimeError("no buffer manager set; call set_buffer_manager (the loader does)")
        self.sample_index = None  # until the first sample: an error concerns no sample
        n = len(request.items)
        buffers = manager.buffers(request.slot)
        manager.fill({k: b for k, b in buffers.items() if k not in self.written_in_full}, n)
        batch = Batch()
        self.epoch = request.epoch
        rngs = self._sample_rngs
        if rngs is None:
            rngs = self._sample_rngs = SampleRNG()
        for i, (item, index) in enumerate(zip(request.items, request.indices)):
            self.sample_index = index
            self.rng = rngs(request.seed, request.epoch, index)
            try:
                sample = unpack(item)
            except Exception as exc:
                raise ValueError(f"sample {index} is not a valid msgpack message: {exc}") from None
            if not isinstance(sample, dict):
                raise TypeError(f"sample {index} is a {type(sample).__name__}, not a dict")
            self.prepare(sample, batch, {k: b[i] for k, b in buffers.items()})
        # second phase: what prepare deferred (an error still names its sample)
        for deferred_index, write in batch.deferred:
            self.sample_index = deferred_index
            write()
        self.sample_index = None
        out = dict(batch)
        out.update((k, b[:n]) for k, b in buffers.items())
        return out
