"""Signals in the main process: deferred handlers and the SIGTERM guard."""

from __future__ import annotations

import os
import signal
import time

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
    sigterm = signal.getsignal(signal.SIGTERM)
    with deferred_signals():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == sigterm


def test_a_process_forked_in_a_deferred_block_gets_its_signals_at_once():
    # a worker forked while signals are held must not swallow the SIGTERM that stops it
    def leave(signum, frame):
        raise SystemExit(7)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        with deferred_signals():
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)  # interrupted at once
                except SystemExit as e:
                    code = e.code
                finally:
                    os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.waitstatus_to_exitcode(status) == 7


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
