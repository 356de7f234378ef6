"""Remote calls: bounded, jittered retries that name the URL; a storage client per process."""

from __future__ import annotations

import importlib.util
import pickle

import pytest

from crumpets.core import _remote
from crumpets.core._remote import ATTEMPTS, Store, retrying


@pytest.fixture
def sleeps(monkeypatch):
    """The delays retrying asks for, without waiting them."""
    slept: list[float] = []
    monkeypatch.setattr(_remote.time, "sleep", slept.append)
    return slept


def failing(times: int, error: BaseException, result: str = "ok"):
    calls = []

    def call(timeout):
        assert timeout >= _remote.MIN_ATTEMPT
        calls.append(1)
        if len(calls) <= times:
            raise error
        return result

    return call, calls


@pytest.mark.parametrize(
    "error",
    [ConnectionError("refused"), TimeoutError("timed out"), RuntimeError("503 SlowDown")],
)
def test_transient_errors_are_retried_until_the_call_succeeds(sleeps, error):
    call, calls = failing(2, error)
    assert retrying("s3://b/x", call) == "ok"
    assert len(calls) == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "error", [FileNotFoundError("no such key"), PermissionError("denied"), ImportError("s3fs")]
)
def test_answers_a_retry_cannot_mend_are_raised_at_once(sleeps, error):
    call, calls = failing(5, error)
    with pytest.raises(type(error)):
        retrying("s3://b/x", call)
    assert len(calls) == 1 and sleeps == []


def test_retries_are_bounded_in_count_and_name_the_url_and_the_cause(sleeps):
    call, calls = failing(100, ConnectionError("connection refused"))
    with pytest.raises(OSError, match=r"s3://b/shard-1\.msgpack: failed 5 times") as raised:
        retrying("s3://b/shard-1.msgpack", call)
    assert "ConnectionError: connection refused" in str(raised.value)
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert len(calls) == ATTEMPTS
    # full jitter: each delay anywhere below a doubling bound
    assert all(0 <= d <= _remote._BACKOFF * 2**k for k, d in enumerate(sleeps))


def test_retries_are_bounded_in_time(monkeypatch, sleeps):
    now, timeouts = [0.0], []
    monkeypatch.setattr(_remote.time, "monotonic", lambda: now[0])

    def slow_failure(timeout):
        timeouts.append(timeout)
        now[0] += 4.0  # each attempt takes 4 s (a timeout)
        raise TimeoutError("read timed out")

    with pytest.raises(OSError, match="failed 4 times in 16.0 s"):
        retrying("gs://b/x", slow_failure)
    # each attempt may take what is left of the deadline, and at least MIN_ATTEMPT
    assert timeouts == [15.0, 11.0, 7.0, 3.0]
    assert now[0] <= _remote.DEADLINE + 4.0


def test_a_client_is_made_in_the_process_that_uses_it(monkeypatch):
    made = []

    def filesystem(protocol, **options):
        made.append((protocol, options))
        return object()

    import fsspec

    monkeypatch.setattr(fsspec, "filesystem", filesystem)
    monkeypatch.setattr(_remote, "_INHERITED", [])
    store = Store("s3://bucket/data/", {"key": "k"})
    first = store.fs
    assert store.fs is first and len(made) == 1
    # fsspec's instance cache would hand a forked child its parent's client
    assert made[0][1]["skip_instance_cache"] is True
    # botocore's minute-long defaults are shortened unless the user sets their own
    assert made[0][1]["config_kwargs"] == _remote.S3_TIMEOUTS
    # the user's settings (path-style addressing for an S3-compatible store) keep the rest
    user = {"connect_timeout": 1, "s3": {"addressing_style": "path"}}
    assert Store("s3://b", {"config_kwargs": user}).fs is not None
    assert made[1][1]["config_kwargs"] == {**_remote.S3_TIMEOUTS, **user}
    # as a forked child sees it: another process, so another client; the inherited one is
    # kept (its finalizer would wait for the parent's event loop)
    store._pid = -1
    assert store.fs is not first and _remote._INHERITED == [first]
    # a pickled store carries no client
    copy = pickle.loads(pickle.dumps(store))
    assert copy._fs is None and copy.url == "s3://bucket/data"
    assert copy.path("index.json") == "s3://bucket/data/index.json"


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_missing_extra_names_the_one_to_install(sleeps):
    with pytest.raises(ImportError, match=r"crumpets-core\[gcs\]"):
        Store("gs://bucket/data").cat("index.json")
    assert sleeps == []  # not retried


def test_a_cancelled_try_still_says_why(sleeps):
    call, _ = failing(100, TimeoutError())  # fsspec's FSTimeoutError has no message
    with pytest.raises(OSError, match="TimeoutError: no answer in the time the try was given"):
        retrying("s3://b/x", call)
