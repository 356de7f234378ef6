"""Object storage through fsspec: a client per process, and bounded retries.

A storage client holds sockets, an event loop thread and locks, which a forked child
inherits broken (fsspec #755). :class:`Store` makes its client lazily, in the process that
uses it, and makes a new one when it finds itself in another process (a worker after fork
or a pickled copy); fsspec's instance cache is skipped for the same reason.

:func:`retrying` bounds every remote call: transient failures (connection errors,
timeouts, 5xx and SlowDown answers, whatever the client raises for them) are retried with
jittered exponential backoff, at most ``ATTEMPTS`` times and for at most ``DEADLINE``
seconds (each attempt cancelled when that time is up); then an ``OSError`` names the URL
and the cause. Answers that will not change
(the object is missing, access is denied) are raised at once.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ATTEMPTS", "DEADLINE", "MIN_ATTEMPT", "Store", "is_url", "retrying"]

T = TypeVar("T")

ATTEMPTS = 5
# Every attempt ends by the deadline (see retrying), so a store that went away or hangs is
# an error within DEADLINE + MIN_ATTEMPT seconds; processes waiting for the same shard learn
# of the failure from the cache (see _shard_cache) instead of trying again.
DEADLINE = 15.0
MIN_ATTEMPT = 2.0  # seconds an attempt is given at least, also the last one
_BACKOFF = 0.2  # seconds before the second attempt, doubled for each further one, jittered

# Errors a retry cannot mend.
_PERMANENT = (
    ImportError,  # a missing extra (s3fs, gcsfs)
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ValueError,
    TypeError,
    KeyError,
)

# botocore's defaults wait 60 s to connect and retry on their own: a store that went away
# would hang a worker for minutes. The user's storage_options may set others.
S3_TIMEOUTS = {
    "connect_timeout": 5,
    "read_timeout": 20,
    "retries": {"max_attempts": 2, "mode": "standard"},
}


_INHERITED: list[Any] = []


def is_url(path: str) -> bool:
    """Whether ``path`` names a location with a protocol (``s3://``, ``file://``, ...)."""
    return "://" in path


def retrying(what: str, call: Callable[[float], T]) -> T:
    """``call(timeout)``, retried on transient errors; ``what`` (a URL) names it in the error.

    Each attempt is given the seconds left until ``DEADLINE`` (at least ``MIN_ATTEMPT``) as
    ``timeout``: a store that accepts connections but never answers (a stopped server, a
    black-holed network) ends the attempt there, not after the client's own retries.

    Raises:
        FileNotFoundError, PermissionError, ...: at once, for answers a retry cannot mend.
        OSError: naming ``what`` and the last cause, after ``ATTEMPTS`` attempts or
            ``DEADLINE`` seconds.
    """
    start = time.monotonic()
    for attempt in range(ATTEMPTS):
        try:
            return call(max(MIN_ATTEMPT, DEADLINE - (time.monotonic() - start)))
        except _PERMANENT:
            raise
        except Exception as exc:  # whatever the client raises for a transient failure
            cause = exc
        delay = random.uniform(0, _BACKOFF * 2**attempt)  # full jitter
        if attempt == ATTEMPTS - 1 or time.monotonic() - start + delay > DEADLINE:
            break
        time.sleep(delay)
    elapsed = time.monotonic() - start
    # a cancelled try (fsspec's FSTimeoutError) says nothing of itself
    reason = str(cause) or "no answer in the time the try was given"
    raise OSError(
        f"{what}: failed {attempt + 1} times in {elapsed:.1f} s; last error: "
        f"{type(cause).__name__}: {reason}"
    ) from cause


class Store:
    """The file system of one URL, with a client made in the process that uses it.

    Args:
        url: a folder URL (``s3://bucket/prefix``, ``file:///data``, ``https://...``).
        storage_options: keyword arguments for the fsspec file system (s3fs: ``key``,
            ``secret``, ``endpoint_url``, ``client_kwargs``, ``config_kwargs``).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.protocol = url.split("://", 1)[0]
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._pid = -1

    @property
    def fs(self) -> Any:
        """The fsspec file system, made in this process."""
        if self._fs is None or self._pid != os.getpid():
            if self._fs is not None:
                # inherited through fork: its finalizer would close its session on the
                # parent's event loop, which this process does not run; keep it alive
                _INHERITED.append(self._fs)
            try:
                import fsspec
            except ImportError:  # pragma: no cover - fsspec is a dependency of crumpets-core
                raise ImportError("reading datasets from URLs needs fsspec") from None
            options = dict(self.storage_options)
            if self.protocol in ("s3", "s3a"):  # the user's settings win, the rest stays
                options["config_kwargs"] = {**S3_TIMEOUTS, **options.get("config_kwargs", {})}
            try:
                self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **options)
            except ImportError as exc:  # s3fs, gcsfs, aiohttp: the extras
                extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(self.protocol)
                hint = f"pip install 'crumpets-core[{extra}]'" if extra else str(exc)
                raise ImportError(f"reading {self.url} needs {hint} ({exc})") from None
            self._pid = os.getpid()
        return self._fs

    def path(self, name: str) -> str:
        """The file system's path of file ``name`` in the folder."""
        return f"{self.url}/{name}"

    def _timeout(self, seconds: float) -> dict[str, float]:
        # fsspec's asynchronous file systems (s3fs, gcsfs, http) cancel a call that takes
        # longer; the others (local files) take no timeout
        return {"timeout": seconds} if getattr(self.fs, "async_impl", False) else {}

    def cat(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        """File ``name``, or its bytes ``[start, end)``, with retries."""
        path = self.path(name)

        def call(timeout: float) -> bytes:
            return self.fs.cat_file(path, start=start, end=end, **self._timeout(timeout))

        return retrying(path, call)

    def cat_ranges(self, name: str, starts: list[int], ends: list[int]) -> list[bytes]:
        """Byte ranges of file ``name`` (the client sends them concurrently), with retries."""
        path = self.path(name)

        def call(timeout: float) -> list[bytes]:
            paths = [path] * len(starts)
            parts = self.fs.cat_ranges(
                paths, starts, ends, on_error="raise", **self._timeout(timeout)
            )
            return list(parts)

        return retrying(path, call)

    def __getstate__(self) -> dict[str, Any]:
        # a client never crosses processes
        return {"url": self.url, "protocol": self.protocol, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fs = None
        self._pid = -1
