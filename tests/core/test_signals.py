"""Signals in the main process: deferred handlers and the SIGTERM guard."""

from __future__ import annotations

import os
import signal

import pytest

from crumpets.core._signals import SigtermGuard, deferred_signals


@pytest.fixture
def python_sigint():
    # Python's own handler, also where the test run started with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_in_a_deferred_block_is_raised_after_it(python_sigint):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # many chances for Python to run a handler
                done.append(len(done))
    assert len(done) == 1000
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_deferred_block_without_signals_changes_nothing(python_sigint):
    with deferred_signals():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # not Python's: not held


def test_sigterm_guard_restores_the_default_once_every_loader_left():
    guard, first, second = SigtermGuard(), object(), object()
    guard.enter(first)
    guard.enter(second)
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    guard.leave(first)
    guard.leave(first)  # twice: no effect
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    guard.leave(second)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    guard.leave(object())  # one that never entered
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
