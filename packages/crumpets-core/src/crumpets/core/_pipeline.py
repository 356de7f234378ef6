"""The pipeline of one loader: worker processes, the sockets between them and the main
process, and the hand-out of results in request order.

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

import copy
import gc
import math
import multiprocessing as mp
import os
import signal
import time
import uuid
import weakref
from typing import Any

import zmq

from . import _platform
from ._messages import Request, decode_header, encode_request, rebuild_error
from ._signals import STACK_DUMP, deferred_signals
from ._worker_loop import run_worker
from .shm import SharedBufferManager

__all__ = ["Consumer", "Dispatcher", "Pipeline", "Producer"]


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


# Dispatchers with workers, so that a process forked from this one (os.fork) can forget
# them: they are not its children.
_RUNNING: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


def _forget_inherited_workers() -> None:
    # multiprocessing terminates and joins the daemonic processes it started when the
    # interpreter exits, in a forked child too, where they are its parent's: a child that
    # calls sys.exit would stop its parent's workers.
    children = getattr(mp.process, "_children", None)
    for dispatcher in list(_RUNNING):
        if children is not None:
            children.difference_update(dispatcher.processes)
        dispatcher.processes = []


os.register_at_fork(after_in_child=_forget_inherited_workers)


class Dispatcher:
    """Starts ``nworkers`` copies of a worker template as processes, watches and stops them.

    Only the process that started the workers stops them: a process forked from it
    inherits the dispatcher without its workers.

    Args:
        worker_template: Worker instance; ``copy.copy`` makes one per process.
        nworkers: number of worker processes.
        work_address: zmq address workers pull requests from.
        result_address: zmq address workers push results to.
        daemon: daemon flag of the processes; None uses the template's.
        source: a dataset the workers read requested samples from by index; None when
            requests carry the samples' bytes.
    """

    def __init__(
        self,
        worker_template: Any,
        nworkers: int,
        work_address: str,
        result_address: str,
        daemon: bool | None = None,
        source: Any = None,
    ):
        self.worker_template = worker_template
        self.nworkers = nworkers
        self.work_address = work_address
        self.result_address = result_address
        self.daemon = worker_template.daemon if daemon is None else daemon
        self.source = source
        self.processes: list[Any] = []

    def start(self) -> None:
        context = mp.get_context(_platform.START_METHOD)
        with self.worker_template.starting():
            for i in range(self.nworkers):
                worker = copy.copy(self.worker_template)
                # typeshed's get_context(str) returns BaseContext, which lacks Process;
                # every real context (fork, spawn, forkserver) has it
                proc = context.Process(  # type: ignore[attr-defined]
                    target=run_worker,
                    args=(worker, i, self.work_address, self.result_address, self.source),
                    name=f"crumpets-worker-{i}",
                    daemon=self.daemon,
                )
                # A Ctrl-C between the fork and the append would lose the process.
                with deferred_signals():
                    proc.start()
                    self.processes.append(proc)
                    _RUNNING.add(self)

    def dump_stacks(self) -> None:
        """Have every live worker write its Python stack to stderr (faulthandler)."""
        for proc in self.processes:
            if proc.exitcode is None:
                os.kill(proc.pid, STACK_DUMP)
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
        _RUNNING.discard(self)
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
        try:
            self.socket.send_multipart(encode_request(request), copy=False, flags=zmq.NOBLOCK)
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
        return decode_header(header), payload

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
        stall_timeout: seconds without any message from the workers, while waiting for
            one, after which their stacks are dumped to stderr and TimeoutError is
            raised; None waits forever.
        poll_interval: seconds between liveness checks while waiting.
        source: a dataset workers read samples from by index (requests then carry no
            sample bytes); None sends the bytes.
    """

    def __init__(
        self,
        worker_template: Any,
        nworkers: int,
        buffer_manager: Any,
        max_in_flight: int,
        stall_timeout: float | None = 300.0,
        poll_interval: float = 1.0,
        source: Any = None,
    ):
        self.worker_template = worker_template
        self.nworkers = nworkers
        self.buffer_manager = buffer_manager
        self.max_in_flight = max_in_flight
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
        if hasattr(template, "set_buffer_manager"):  # a BufferWorker writes into the pool
            template.set_buffer_manager(self.buffer_manager)
        try:
            if _platform.START_METHOD == "fork":
                tag = f"crumpets-{os.getpid()}-{uuid.uuid4().hex[:12]}"
                work, result = f"ipc://@{tag}-work", f"ipc://@{tag}-result"
                self.dispatcher = Dispatcher(
                    template,
                    self.nworkers,
                    work,
                    result,
                    source=self.source,
                )
                self.dispatcher.start()
                self._open_sockets(work, result, bind_random=False)
            else:
                self._open_sockets("tcp://127.0.0.1", "tcp://127.0.0.1", bind_random=True)
                assert self.producer is not None and self.consumer is not None
                self.dispatcher = Dispatcher(
                    template,
                    self.nworkers,
                    self.producer.address,
                    self.consumer.address,
                    source=self.source,
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
        # A socket made but not yet recorded would never be closed, and zmq's term()
        # waits for every socket: a Ctrl-C must not land in between.
        with deferred_signals():
            self._context = zmq.Context()
            self.producer = Producer(self._context, work, bind_random)
            self.consumer = Consumer(self._context, result, bind_random)
        self._poller = zmq.Poller()
        self._poller.register(self.consumer.socket, zmq.POLLIN)

    def _wait_ready(self) -> None:
        # Requests go out only once every worker is connected, so the first ones are
        # spread over all workers instead of queueing at the first to connect.
        assert self.dispatcher is not None and self.consumer is not None  # start() made them
        ready = 0
        for fd in self.dispatcher.sentinels:
            self._poller.register(fd, zmq.POLLIN)
        while ready < self.nworkers:
            self._wait_message("start-up message")
            header, _ = self.consumer.retrieve()
            if "error" in header:
                raise rebuild_error(header["error"])
            ready += "ready" in header

    def _wait_message(self, what: str) -> None:
        """Block until a message waits; raise if a worker dies or all stall."""
        start = time.monotonic()
        while not self._poll(min(self.poll_interval, self.stall_timeout or math.inf)):
            if self.stall_timeout is not None and time.monotonic() - start > self.stall_timeout:
                assert self.dispatcher is not None  # _poll has just used it
                self.dispatcher.dump_stacks()
                raise TimeoutError(
                    f"no {what} from the workers for {self.stall_timeout:g} s; their Python "
                    "stacks are on stderr. Pass a larger stall_timeout if that is expected."
                )

    def _poll(self, timeout: float) -> bool:
        """Wait for a result; raise if a worker died. True if a message is waiting."""
        assert self.dispatcher is not None and self.consumer is not None  # start() made them
        events = dict(self._poller.poll(int(timeout * 1000)))  # int(): what pyzmq does with it
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
        assert self.producer is not None  # start() made it
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
        assert self.dispatcher is not None and self.producer is not None  # start() made them
        poller = zmq.Poller()
        poller.register(self.producer.socket, zmq.POLLOUT)
        for fd in self.dispatcher.sentinels:
            poller.register(fd, zmq.POLLIN)
        poller.poll(int(self.poll_interval * 1000))
        self.dispatcher.check()

    def discard_before(self, seq: int) -> None:
        """Forget results of sequence numbers below ``seq`` (an abandoned epoch)."""
        self.min_seq = seq
        for old in [s for s in self._done if s < seq]:
            slot, _ = self._done.pop(old)
            self._release(slot)

    def _receive(self) -> None:
        assert self.consumer is not None  # start() made it
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
            self._done[seq] = (None, rebuild_error(header["error"]))
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
        """Stop workers and close sockets. Safe to call more than once; a Ctrl-C meanwhile
        is raised once all is stopped. In a process forked from the one that started the
        pipeline it stops no worker (they are its parent's)."""
        with deferred_signals():
            if self.dispatcher is not None:
                self.dispatcher.stop()
                self.dispatcher = None
            for end in (self.producer, self.consumer):
                if end is not None:
                    end.close()
            self.producer = self.consumer = None
            if self._context is not None:
                # closes any socket of the context, and never waits to send (linger 0);
                # in a forked process, pyzmq leaves the parent's sockets alone
                self._context.destroy(linger=0)
                self._context = None
            self.in_flight.clear()
            self._done.clear()
