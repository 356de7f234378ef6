"""crumpets-core: the TurboDataLoader pipeline (pyzmq, msgpack, shared memory),
dataset files, logging, timing and the ``crumpets`` command."""

from ._version import __version__
from .broker import BufferWorker, Worker, WorkerError
from .dataloader import TurboDataLoader
from .dataset import Reader, Writer
from .shards import ShardedReader, ShardWriter
from .shm import pack, unpack

__all__ = [
    "BufferWorker",
    "Reader",
    "ShardWriter",
    "ShardedReader",
    "TurboDataLoader",
    "Worker",
    "WorkerError",
    "Writer",
    "__version__",
    "pack",
    "unpack",
]
