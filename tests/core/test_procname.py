from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from crumpets.core import procname
from crumpets.core.procname import getprocname, setprocname

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="prctl and /proc are Linux's")


@linux_only
def test_subprocess_name_visible_in_proc():
    code = (
        "from crumpets.core.procname import setprocname, getprocname\n"
        "assert setprocname('crumpets-worker-12')\n"
        "print(open('/proc/self/comm').read().strip(), getprocname())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    # The kernel keeps 15 bytes.
    assert out.split() == ["crumpets-worker", "crumpets-worker"]


def _in_thread(fn):
    result = {}

    def target():
        result["value"] = fn()
        result["tid"] = threading.get_native_id()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return result


@linux_only
def test_names_the_calling_thread():
    # A helper thread, so the test process keeps its own name.
    def rename():
        ok = setprocname("crumpets-test")
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            return ok, f.read().strip(), getprocname()

    assert _in_thread(rename)["value"] == (True, "crumpets-test", "crumpets-test")


@linux_only
def test_multibyte_names_are_cut_at_a_character_boundary():
    result = _in_thread(lambda: (setprocname("é" * 10), getprocname()))["value"]
    assert result == (True, "é" * 7)  # 14 bytes; half an eighth would be 15


def test_never_raises():
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

    assert _in_thread(lambda: setprocname(Unprintable()))["value"] is False


def test_noop_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    procname._prctl.cache_clear()
    try:
        assert setprocname("x") is False
        assert getprocname() is None
    finally:
        monkeypatch.undo()
        procname._prctl.cache_clear()
