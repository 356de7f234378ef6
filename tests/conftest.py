"""Shared by every package's tests (each nox session runs one folder below this one).

The leak check: no child process, /dev/shm segment or zmq ipc socket of this process may
outlive a test. Helpers for all folders live beside this file (_leaks.py, _photos.py).
"""

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
