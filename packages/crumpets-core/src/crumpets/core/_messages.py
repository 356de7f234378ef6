"""The messages between the main process and its workers, and how errors travel in them.

A request is a multipart zmq message: a msgpack header (:class:`Request`'s fields but the
items) and one frame per sample's msgpack bytes (none when the workers read a dataset
file themselves). A reply is two frames: a msgpack header (``seq`` and ``slot``, or
``ready``, and ``error`` when something failed) and the worker's packed result. An error
travels as a dict (:func:`describe_error`) and is raised again in the main process with
its original type where that can be rebuilt (:func:`rebuild_error`).
"""

from __future__ import annotations

import os
import pickle
import traceback
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "Request",
    "WorkerError",
    "decode_header",
    "decode_request",
    "describe_error",
    "encode_request",
    "rebuild_error",
    "reply_header",
]


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


def encode_request(request: Request) -> list[Any]:
    """The frames of a request: its header, then the items (sent without copying)."""
    header = {
        "seq": request.seq,
        "slot": request.slot,
        "seed": request.seed,
        "epoch": request.epoch,
        "indices": request.indices,
    }
    return [msgpack.packb(header), *request.items]


def decode_request(frames: list[Any]) -> Request:
    """The request in received frames (zmq frames, read without copying)."""
    header = decode_header(frames[0].buffer)
    return Request(items=[f.buffer for f in frames[1:]], **header)


def decode_header(frame: Any) -> dict:
    """The msgpack header of a request or reply."""
    return msgpack.unpackb(frame, raw=False)


def reply_header(**fields: Any) -> bytes:
    """A reply's header: ``seq`` and ``slot`` of a result, or ``ready`` (the worker's id)
    when it has started; ``error`` (:func:`describe_error`) when something failed."""
    return msgpack.packb(fields)


def describe_error(
    exc: BaseException, worker_id: int, index: int | None, epoch: int | None
) -> dict:
    """An exception as a msgpack-able dict, with the worker and the sample it concerns."""
    try:
        exc_type = pickle.dumps(type(exc))
    except Exception:
        exc_type = b""
    return {
        "type": exc_type,
        "name": type(exc).__name__,
        "message": exc.args[0] if len(exc.args) == 1 else str(exc),
        "traceback": traceback.format_exc(),
        "index": index,
        "epoch": epoch,
        "worker": worker_id,
        "pid": os.getpid(),
    }


def rebuild_error(info: dict) -> BaseException:
    """The exception :func:`describe_error` described, to raise in the main process: its
    type where it can be rebuilt (else :class:`WorkerError`), the message naming the
    worker and the sample, and the worker's traceback."""
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
