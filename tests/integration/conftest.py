"""Leak checks for every integration test: no child process, /dev/shm entry or zmq ipc
socket of ours may outlive a test (the same fixture as tests/core/conftest.py)."""

from __future__ import annotations

import os
import time

import pytest
from _leaks import resources


@pytest.fixture(autouse=True)
def no_leaks():
    before = resources()
    yield
    deadline = time.monotonic() + 5
    after = resources()
    while after != before and time.monotonic() < deadline:
        time.sleep(0.05)
        after = resources()
    assert after == before, f"leaked: {after - before}, gone: {before - after} (pid {os.getpid()})"
