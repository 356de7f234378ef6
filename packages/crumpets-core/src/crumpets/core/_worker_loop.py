"""The worker process's main loop: receive requests, have the worker process them, push
results.

:func:`run_worker` is the target of every worker process. It owns what the process
needs at run time (sockets, the dataset it reads samples from, its id), so the user's
:class:`~crumpets.core.broker.Worker` only processes requests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import zmq

from ._messages import decode_request, describe_error, reply_header
from ._platform import tune_worker_process

__all__ = ["run_worker"]


def _one_result(worker: Any, result: Any) -> Any:
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


def run_worker(
    worker: Any, worker_id: int, work_address: str, result_address: str, source: Any = None
) -> None:
    """Run ``worker`` in this process until its parent is gone or it is terminated.

    Args:
        worker: a :class:`~crumpets.core.broker.Worker`.
        worker_id: its number among the loader's workers (``worker.worker_id``).
        work_address: zmq address to pull requests from.
        result_address: zmq address to push results to.
        source: a dataset to read requested samples from by index, for requests that
            carry indices only; None when requests carry the samples' bytes.
    """
    tune_worker_process(worker_id)
    worker.worker_id = worker_id
    parent = os.getppid()
    ctx = zmq.Context()
    work = ctx.socket(zmq.PULL)
    result = ctx.socket(zmq.PUSH)
    work.linger = 0
    result.linger = 1000  # deliver a last message (an error) before exiting
    work.connect(work_address)
    result.connect(result_address)
    try:
        try:
            worker.init()
        except Exception as exc:  # the main process raises it
            error = describe_error(exc, worker_id, None, None)
            result.send_multipart([reply_header(ready=worker_id, error=error), b""])
            return
        result.send_multipart([reply_header(ready=worker_id), b""])
        while True:
            if not work.poll(worker.timeout):
                if os.getppid() != parent:  # orphaned: the main process died
                    return
                continue
            request = decode_request(work.recv_multipart(copy=False))
            index = None  # the sample an error concerns, when it is known
            try:
                if not request.items and source is not None:
                    if hasattr(source, "read_batch"):  # reads a batch's samples together
                        request.items.extend(source.read_batch(request.indices))
                    else:
                        for index in request.indices:
                            request.items.append(source[index])
                        index = None
                payload = worker.pack(_one_result(worker, worker.process(request)))
                header = reply_header(seq=request.seq, slot=request.slot)
            except Exception as exc:
                index = index if index is not None else getattr(worker, "sample_index", None)
                error = describe_error(exc, worker_id, index, request.epoch)
                header = reply_header(seq=request.seq, slot=request.slot, error=error)
                payload = b""
            result.send_multipart([header, payload], copy=False)
    finally:
        work.close()
        result.close()
        ctx.term()
