"""Worker processes and the zmq pipeline that feeds them.

Data flow: the main process sends each batch request (a small msgpack header and the
samples' msgpack bytes as zero-copy frames) over a PUSH socket to ``nworkers`` worker
processes; each worker writes its batch into the shared buffer set named in the request
and pushes back a small message that references it. The main process polls the result
socket together with the workers' process sentinels, so a worker that dies wakes it at
once instead of leaving it waiting. Sockets are ipc in the Linux abstract namespace (no
files to leave behind) and tcp on loopback elsewhere.

One request yields exactly one result, tagged with the request's sequence number; the
pipeline hands results out in sequence order whatever order workers finish in.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import faulthandler
import gc
import math
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zmq

from ._buffers import make_buffer, make_bufferspec, make_fill_value
from .procname import setprocname
from .shm import DummyBufferManager, SharedBufferManager, pack, unpack

__all__ = [
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

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit: int = 32 << 20) -> None:
    """Let this process's malloc keep up to ``limit`` bytes of freed memory (glibc; a no-op
    elsewhere). Worker processes call it when they start.

    glibc gives blocks above a (self-adjusting) threshold back to the kernel when they are
    freed, and trims the heap's free top above twice that threshold. A worker that makes
    a few MB of temporaries per sample (decoded pixels and their copies) then page-faults
    all of them in again for every sample: measured on an image worker in a fresh process,
    about 550 page faults and 2.0 instead of 1.05 ms per image. Kept memory is reused by
    the next sample; the idle part stays below ``limit``, and larger blocks still go back.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, limit)
    mallopt(_M_TRIM_THRESHOLD, limit)


# Fork starts workers in milliseconds with the template already in memory; workers are
# forked before the parent creates its zmq context, so no zmq thread is forked. Where
# fork is unavailable or unsafe, spawn pickles the template instead.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"


def workers_are_forked() -> bool:
    """True if worker processes are forked, so they inherit the parent's memory mappings
    (an anonymous shared buffer pool among them); False if they are spawned and attach to
    a named pool."""
    return START_METHOD == "fork"


class WorkerError(RuntimeError):
    """A worker failed and the original exception type could not be rebuilt here."""


class WorkerKeyError(KeyError):
    """A KeyError raised in a worker; shows its message as text (KeyError shows a repr,
    which would mangle the worker's traceback)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Request:
    """One batch of work as a worker receives it.

    Attributes:
        seq: sequence number; results are handed out in this order.
        slot: shared buffer set to write into (None without shared memory).
        seed: the loader's seed.
        epoch: the epoch (pass over the data) the samples belong to.
        indices: each sample's index in the dataset.
        items: each sample's msgpack bytes.
    """

    seq: int
    slot: int | None
    seed: int
    epoch: int
    indices: list[int]
    items: list[Any]


def _unpack_header(frame: Any) -> dict:
    return msgpack.unpackb(frame, raw=False)


def _one_result(worker: Worker, result: Any) -> Any:
    # crumpets 3 let process return several batches (an iterator); here one request is
    # one batch, which len(loader), exactly-once epochs and exact resume count on
    if isinstance(result, Iterator):
        raise TypeError(
            f"{type(worker).__name__}.process returned a {type(result).__name__}: return one "
            "result (one batch) per request; crumpets counts one batch per request for "
            "len(loader), exactly-once epochs and exact resume. To make several batches from "
            "one input, store it as several samples."
        )
    return result


class Worker(ABC):
    """Abstract base class for workers. Implement :meth:`process`.

    Note: :meth:`set_addresses` must be called before :meth:`run`; the loader does this.

    Args:
        timeout: how long (ms) a worker waits for work before checking that its parent
            process is still alive; an orphaned worker exits by itself.
        daemon: daemon flag of the worker process.
        gpu_augmentation: True disables CPU pixel augmentations that a GPU Randomizer
            applies instead.
    """

    def __init__(self, timeout: int = 1000, daemon: bool = True, gpu_augmentation: bool = False):
        if int(timeout) <= 0:
            raise ValueError(f"timeout must be a positive number of ms, got {timeout}")
        self.timeout = int(timeout)
        self.daemon = bool(daemon)
        self.gpu_augmentation = bool(gpu_augmentation)
        self.worker_id = 0
        # Set by the loader for dataset files: the worker reads samples by index itself,
        # from its own memory map, so only indices cross the socket.
        self.source: Any = None
        self.work_address: str | None = None
        self.result_address: str | None = None

    def set_addresses(self, work: str, result: str) -> None:
        """Set the zmq addresses work is received on and results are pushed to."""
        self.work_address, self.result_address = work, result

    def set_gpu_augmentation(self, val: bool) -> None:
        """True disables CPU augmentations for which a GPU version is applied."""
        self.gpu_augmentation = bool(val)

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
        """The worker process: receive requests, process them, push results."""
        # Ctrl-C reaches the whole process group; the main process decides and stops us.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        setprocname(f"crumpets-w{self.worker_id}")
        keep_freed_memory()
        try:
            # The main process sends SIGUSR1 to a worker that stalls: its stack goes to
            # stderr. File descriptor 2, as sys.stderr may have none (pytest, Jupyter).
            faulthandler.register(signal.SIGUSR1, file=2, all_threads=True)
        except (OSError, ValueError, RuntimeError):
            pass  # no stderr to dump to: stalls are still reported, without a stack
        parent = os.getppid()
        ctx = zmq.Context()
        work = ctx.socket(zmq.PULL)
        result = ctx.socket(zmq.PUSH)
        work.linger = 0
        result.linger = 1000  # deliver a last message (an error) before exiting
        work.connect(self.work_address)
        result.connect(self.result_address)
        try:
            try:
                self.init()
                hello = {"ready": self.worker_id}
            except Exception as exc:  # the main process raises it
                hello = {"ready": self.worker_id, "error": self._describe(exc)}
            result.send_multipart([msgpack.packb(hello), b""])
            if "error" in hello:
                return
            while True:
                if not work.poll(self.timeout):
                    if os.getppid() != parent:
                        return
                    continue
                frames = work.recv_multipart(copy=False)
                header = _unpack_header(frames[0].buffer)
                request = Request(items=[f.buffer for f in frames[1:]], **header)
                reply = {"seq": request.seq, "slot": request.slot}
                self.sample_index, self.epoch = None, request.epoch
                try:
                    if not request.items and self.source is not None:
                        for index in request.indices:
                            self.sample_index = index  # names the sample if reading fails
                            request.items.append(self.source[index])
                        self.sample_index = None
                    payload = self.pack(_one_result(self, self.process(request)))
                except Exception as exc:
                    reply["error"] = self._describe(exc)
                    payload = b""
                result.send_multipart([msgpack.packb(reply), payload], copy=False)
        finally:
            work.close()
            result.close()
            ctx.term()

    def _describe(self, exc: BaseException) -> dict:
        try:
            exc_type = pickle.dumps(type(exc))
        except Exception:
            exc_type = b""
        return {
            "type": exc_type,
            "name": type(exc).__name__,
            "message": exc.args[0] if len(exc.args) == 1 else str(exc),
            "traceback": traceback.format_exc(),
            "index": getattr(self, "sample_index", None),
            "epoch": getattr(self, "epoch", None),
            "worker": self.worker_id,
            "pid": os.getpid(),
        }


class BufferWorker(Worker):
    """Base class for workers that write constant-size buffers.

    Subclasses declare buffers with :meth:`add_buffer` and implement :meth:`prepare`,
    which handles one sample. While ``prepare`` runs, ``self.sample_index`` and
    ``self.epoch`` name the sample and ``self.rng`` is its own ``numpy.random.Generator``,
    seeded from (seed, epoch, sample index): the same sample gets the same random numbers
    whatever worker processes it.

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
            batch: the batch the sample belongs to; a ``defaultdict(list)``.
            buffers: this sample's row of every buffer.
        """

    def process(self, request: Request) -> dict:
        manager = self.buffer_manager
        if manager is None:
            raise RuntimeError("no buffer manager set; call set_buffer_manager (the loader does)")
        n = len(request.items)
        buffers = manager.buffers(request.slot)
        manager.fill({k: b for k, b in buffers.items() if k not in self.written_in_full}, n)
        batch: dict[str, Any] = defaultdict(list)
        self.epoch = request.epoch
        for i, (item, index) in enumerate(zip(request.items, request.indices)):
            self.sample_index = index
            self.rng = np.random.default_rng((request.seed, request.epoch, index))
            try:
                sample = unpack(item)
            except Exception as exc:
                raise ValueError(f"sample {index} is not a valid msgpack message: {exc}") from None
            if not isinstance(sample, dict):
                raise TypeError(f"sample {index} is a {type(sample).__name__}, not a dict")
            self.prepare(sample, batch, {k: b[i] for k, b in buffers.items()})
        self.sample_index = None
        out = dict(batch)
        out.update((k, b[:n]) for k, b in buffers.items())
        return out


def _rebuild_error(info: dict) -> BaseException:
    where = f"worker {info['worker']} (pid {info['pid']})"
    if info.get("index") is not None:
        where += f" on sample {info['index']} (epoch {info['epoch']})"
    text = (
        f"{info['name']}: {info['message']}\n  raised in {where}\n\n"
        f"Traceback in the worker:\n{info['traceback']}"
    )
    try:
        exc_type = pickle.loads(info["type"])
        exc = (WorkerKeyError if exc_type is KeyError else exc_type)(text)
        if not isinstance(exc, Exception):
            raise TypeError
    except Exception:
        exc = WorkerError(text)
    exc.sample_index = info.get("index")  # type: ignore[attr-defined]
    return exc


def _death_message(index: int, proc: Any) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
        if -code == signal.SIGKILL:
            how += " (out of memory, or killed from outside)"
    else:
        how = f"exited with code {code}"
    return f"crumpets worker {index} (pid {proc.pid}) {how}; the batch it held is lost"


class Dispatcher:
    """Starts ``nworkers`` copies of a worker template as processes, watches and stops them.

    Args:
        worker_template: Worker instance; ``copy.copy`` makes one per process.
        nworkers: number of worker processes.
        work_address: zmq address workers pull requests from.
        result_address: zmq address workers push results to.
        daemon: daemon flag of the processes; None uses the template's.
        gpu_augmentation: passed to the workers; None keeps the template's.
    """

    def __init__(
        self,
        worker_template: Worker,
        nworkers: int,
        work_address: str,
        result_address: str,
        daemon: bool | None = None,
        gpu_augmentation: bool | None = None,
    ):
        self.worker_template = worker_template
        self.nworkers = nworkers
        self.work_address = work_address
        self.result_address = result_address
        self.daemon = worker_template.daemon if daemon is None else daemon
        self.gpu_augmentation = gpu_augmentation
        self.processes: list[Any] = []

    def start(self) -> None:
        context = mp.get_context(START_METHOD)
        with self.worker_template.starting():
            for i in range(self.nworkers):
                worker = copy.copy(self.worker_template)
                worker.worker_id = i
                worker.set_addresses(self.work_address, self.result_address)
                if self.gpu_augmentation is not None:
                    worker.set_gpu_augmentation(self.gpu_augmentation)
                proc = context.Process(
                    target=worker.run, name=f"crumpets-worker-{i}", daemon=self.daemon
                )
                proc.start()
                self.processes.append(proc)

    def dump_stacks(self) -> None:
        """Have every live worker write its Python stack to stderr (faulthandler)."""
        for proc in self.processes:
            if proc.exitcode is None:
                os.kill(proc.pid, signal.SIGUSR1)
                time.sleep(0.2)  # one at a time, so the dumps do not interleave

    @property
    def sentinels(self) -> list[int]:
        """File descriptors that become readable when a worker process ends."""
        return [p.sentinel for p in self.processes]

    def active(self) -> bool:
        """True if any worker is alive."""
        return any(p.is_alive() for p in self.processes)

    def check(self) -> None:
        """Raise RuntimeError if a worker has died."""
        for i, proc in enumerate(self.processes):
            if proc.exitcode is not None:
                raise RuntimeError(_death_message(i, proc))

    def stop(self, timeout: float = 2.0) -> None:
        """Terminate all workers; kill those that do not exit within ``timeout``."""
        for proc in self.processes:
            if proc.exitcode is None:
                proc.terminate()
        for proc in self.processes:
            proc.join(timeout)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
        for proc in self.processes:
            proc.close()
        self.processes = []

    terminate = stop


class Producer:
    """The PUSH end that hands requests to workers (bound in the main process)."""

    def __init__(self, context: zmq.Context, address: str, bind_random: bool = False):
        self.socket = context.socket(zmq.PUSH)
        self.socket.linger = 0
        self.address = _bind(self.socket, address, bind_random)

    def try_send(self, request: Request) -> bool:
        """Send without blocking; False if no worker can take it right now."""
        header = {
            "seq": request.seq,
            "slot": request.slot,
            "seed": request.seed,
            "epoch": request.epoch,
            "indices": request.indices,
        }
        try:
            self.socket.send_multipart(
                [msgpack.packb(header), *request.items], copy=False, flags=zmq.NOBLOCK
            )
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self.socket.close()


class Consumer:
    """The PULL end that receives results (bound in the main process)."""

    def __init__(self, context: zmq.Context, address: str, bind_random: bool = False):
        self.socket = context.socket(zmq.PULL)
        self.socket.linger = 0
        self.address = _bind(self.socket, address, bind_random)

    def retrieve(self) -> tuple[dict, Any]:
        """Receive one message without blocking: (header, payload)."""
        header, payload = self.socket.recv_multipart(flags=zmq.NOBLOCK)
        return _unpack_header(header), payload

    def close(self) -> None:
        self.socket.close()


def _bind(socket: zmq.Socket, address: str, bind_random: bool) -> str:
    if bind_random:
        port = socket.bind_to_random_port(address)
        return f"{address}:{port}"
    socket.bind(address)
    return address


class Pipeline:
    """Workers, producer and consumer of one loader, with ordered, bounded hand-off.

    Requests are submitted in sequence order while a buffer set is free (and fewer than
    ``max_in_flight`` are outstanding); :meth:`result` returns the result of a sequence
    number, keeping results that arrive early until their turn.

    Args:
        worker_template: Worker instance.
        nworkers: number of worker processes.
        buffer_manager: SharedBufferManager or DummyBufferManager.
        max_in_flight: most requests outstanding at once.
        gpu_augmentation: passed to the workers; None keeps the template's.
        stall_timeout: seconds without any message from the workers, while waiting for
            one, after which their stacks are dumped to stderr and TimeoutError is
            raised; None waits forever.
        poll_interval: seconds between liveness checks while waiting.
        source: a dataset workers read samples from by index (requests then carry no
            sample bytes); None sends the bytes.
    """

    def __init__(
        self,
        worker_template: Worker,
        nworkers: int,
        buffer_manager: Any,
        max_in_flight: int,
        gpu_augmentation: bool | None = None,
        stall_timeout: float | None = 300.0,
        poll_interval: float = 1.0,
        source: Any = None,
    ):
        self.worker_template = worker_template
        self.nworkers = nworkers
        self.buffer_manager = buffer_manager
        self.max_in_flight = max_in_flight
        self.gpu_augmentation = gpu_augmentation
        self.stall_timeout = stall_timeout
        self.poll_interval = poll_interval
        self.source = source
        self.min_seq = 0
        self.in_flight: dict[int, int | None] = {}  # seq -> slot
        self._done: dict[int, tuple[int | None, Any]] = {}
        self._context: zmq.Context | None = None
        self.dispatcher: Dispatcher | None = None
        self.producer: Producer | None = None
        self.consumer: Consumer | None = None

    def start(self) -> None:
        template = copy.copy(self.worker_template)
        template.source = self.source
        if isinstance(template, BufferWorker):
            template.set_buffer_manager(self.buffer_manager)
        try:
            if START_METHOD == "fork":
                tag = f"crumpets-{os.getpid()}-{uuid.uuid4().hex[:12]}"
                work, result = f"ipc://@{tag}-work", f"ipc://@{tag}-result"
                self.dispatcher = Dispatcher(
                    template, self.nworkers, work, result, gpu_augmentation=self.gpu_augmentation
                )
                self.dispatcher.start()
                self._open_sockets(work, result, bind_random=False)
            else:
                self._open_sockets("tcp://127.0.0.1", "tcp://127.0.0.1", bind_random=True)
                self.dispatcher = Dispatcher(
                    template,
                    self.nworkers,
                    self.producer.address,
                    self.consumer.address,
                    gpu_augmentation=self.gpu_augmentation,
                )
                self.dispatcher.start()
            self._wait_ready()
            # Every worker has mapped the buffer pool: a named one loses its name now, so
            # that a later kill of every process (the OOM killer, `kill -9 -PGID`), which
            # takes the resource tracker too, leaves nothing in /dev/shm.
            unlink = getattr(self.buffer_manager, "unlink", None)
            if unlink is not None:
                unlink()
        except BaseException:
            self.stop()
            raise

    def _open_sockets(self, work: str, result: str, bind_random: bool) -> None:
        self._context = zmq.Context()
        self.producer = Producer(self._context, work, bind_random)
        self.consumer = Consumer(self._context, result, bind_random)
        self._poller = zmq.Poller()
        self._poller.register(self.consumer.socket, zmq.POLLIN)

    def _wait_ready(self) -> None:
        # Requests go out only once every worker is connected, so the first ones are
        # spread over all workers instead of queueing at the first to connect.
        ready = 0
        for fd in self.dispatcher.sentinels:
            self._poller.register(fd, zmq.POLLIN)
        while ready < self.nworkers:
            self._wait_message("start-up message")
            header, _ = self.consumer.retrieve()
            if "error" in header:
                raise _rebuild_error(header["error"])
            ready += "ready" in header

    def _wait_message(self, what: str) -> None:
        """Block until a message waits; raise if a worker dies or all stall."""
        start = time.monotonic()
        while not self._poll(min(self.poll_interval, self.stall_timeout or math.inf)):
            if self.stall_timeout is not None and time.monotonic() - start > self.stall_timeout:
                self.dispatcher.dump_stacks()
                raise TimeoutError(
                    f"no {what} from the workers for {self.stall_timeout:g} s; their Python "
                    "stacks are on stderr. Pass a larger stall_timeout if that is expected."
                )

    def _poll(self, timeout: float) -> bool:
        """Wait for a result; raise if a worker died. True if a message is waiting."""
        events = dict(self._poller.poll(timeout * 1000))
        if self.consumer.socket in events:
            return True
        self.dispatcher.check()  # a worker's sentinel fired, or the interval passed
        return False

    def can_submit(self) -> bool:
        if len(self.in_flight) >= self.max_in_flight:
            return False
        return (
            not isinstance(self.buffer_manager, SharedBufferManager) or self.buffer_manager.free > 0
        )

    def submit(self, seq: int, seed: int, epoch: int, indices: list[int], items: list) -> None:
        """Send one request; call only when :meth:`can_submit` is True."""
        slot = self.buffer_manager.acquire()
        request = Request(seq, slot, seed, epoch, indices, items)
        try:
            while not self.producer.try_send(request):
                self._poll_send()
        except BaseException:
            self.buffer_manager.release(slot)
            raise
        self.in_flight[seq] = slot

    def _poll_send(self) -> None:
        poller = zmq.Poller()
        poller.register(self.producer.socket, zmq.POLLOUT)
        for fd in self.dispatcher.sentinels:
            poller.register(fd, zmq.POLLIN)
        poller.poll(self.poll_interval * 1000)
        self.dispatcher.check()

    def discard_before(self, seq: int) -> None:
        """Forget results of sequence numbers below ``seq`` (an abandoned epoch)."""
        self.min_seq = seq
        for old in [s for s in self._done if s < seq]:
            slot, _ = self._done.pop(old)
            self._release(slot)

    def _receive(self) -> None:
        header, payload = self.consumer.retrieve()
        if "ready" in header:
            return
        seq = header["seq"]
        slot = self.in_flight.pop(seq, header["slot"])
        if seq < self.min_seq:  # an abandoned epoch's result, or error: forget it
            self._release(slot)
        elif "error" in header:
            # raised in sequence order, by result(): batches before it are handed out first
            self._release(slot)
            self._done[seq] = (None, _rebuild_error(header["error"]))
        else:
            self._done[seq] = (slot, payload)

    def _release(self, slot: int | None) -> None:
        if slot is not None:
            self.buffer_manager.release(slot)

    def wait_any(self) -> None:
        """Block until one message arrived and was handled."""
        self._wait_message("batch")
        self._receive()

    def result(self, seq: int) -> Any:
        """The result of request ``seq``; blocks until it arrives."""
        while seq not in self._done:
            if seq not in self.in_flight:
                raise RuntimeError(f"request {seq} was never submitted")
            self.wait_any()
        slot, payload = self._done.pop(seq)
        if isinstance(payload, BaseException):
            raise payload
        lease = None if slot is None else self.buffer_manager.lease(slot)
        return self.buffer_manager.unpack(payload, lease)

    def buffers_held(self) -> bool:
        """True if no request can be submitted because user code holds every buffer set,
        even after a garbage collection (views in reference cycles)."""
        if self.can_submit() or self.in_flight:
            return False
        gc.collect()
        return not self.can_submit()

    def stop(self) -> None:
        """Stop workers and close sockets. Safe to call more than once."""
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        for end in (self.producer, self.consumer):
            if end is not None:
                end.close()
        self.producer = self.consumer = None
        if self._context is not None:
            self._context.term()
            self._context = None
        self.in_flight.clear()
        self._done.clear()
