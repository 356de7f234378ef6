"""Where the loader's buffer pool lives: not in /dev/shm (Docker's is 64 MB), and within
the memory limits that do hold it (the system's, a cgroup's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="memfd, mount namespaces, cgroups")

# 8 workers, batch 64 of 3x224x224 uint8: 16 buffer sets of 9,633,792 bytes, 154 MB
LOADER = textwrap.dedent(
    """
    import errno, json, os, shutil, sys
    import numpy as np
    from crumpets.core import BufferWorker, TurboDataLoader, _platform, pack

    class Fill(BufferWorker):
        def __init__(self):
            super().__init__()
            self.add_buffer("image", ((3, 224, 224), np.uint8))
            self.written_in_full.add("image")

        def prepare(self, sample, batch, buffers):
            buffers["image"].fill(sample["i"] % 251)

    def ours():
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith("crumpets_"))

    samples = [pack({"i": i}) for i in range(64 * 20)]  # more batches than sets: all written
    report = {"dev_shm_total": shutil.disk_usage("/dev/shm").total}
    with TurboDataLoader(samples, 64, Fill(), 8) as loader:
        report["nbytes"] = loader.buffer_manager.nbytes
        report["anonymous"] = loader.buffer_manager.anonymous
        report["fds"] = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                report["fds"].append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # listdir's own descriptor, closed by now
                pass
        report["fds"] = sorted(fd for fd in report["fds"] if fd.startswith("/memfd:"))
        report["batches"], report["dev_shm_during"] = 0, set()
        for iteration, (mb,) in loader:
            expected = (np.arange(iteration * 64, iteration * 64 + 64) % 251).astype(np.uint8)
            assert (mb["image"][:, :, ::37, ::37] == expected[:, None, None, None]).all()
            report["batches"] += 1
            report["dev_shm_during"].update(ours())
    report["dev_shm_during"] = sorted(report["dev_shm_during"])
    report["dev_shm_after"] = ours()
    if sys.argv[1:] == ["named"]:  # spawned workers need a named pool: /dev/shm must hold it
        _platform.START_METHOD = "spawn"
        try:
            with TurboDataLoader(samples, 64, Fill(), 8):
                report["named"] = "started"
        except OSError as exc:
            report["named"] = [exc.errno == errno.ENOSPC, str(exc)]
    print(json.dumps(report))
    """
)

PRIVATE_SHM = "mount -t tmpfs -o size=64m tmpfs /dev/shm"


def private_dev_shm() -> list[str]:
    """A command prefix that runs a command with a 64 MB /dev/shm of its own; skips the
    test where mount namespaces are not permitted (not root, a restricted container)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare command (util-linux)")
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    probe = subprocess.run([*prefix, PRIVATE_SHM], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot mount a private 64 MB /dev/shm: {probe.stderr.strip()}")
    return prefix


@pytest.mark.parametrize("where", ["64 MB /dev/shm", "host /dev/shm"])
def test_154_mb_pool_runs_without_dev_shm(where):
    """Docker's default /dev/shm is 64 MB: 8 workers with batch 64 at 3x224x224 need
    154 MB. The pool is an anonymous memory file, so that does not matter, and nothing of
    it appears in /dev/shm; spawned workers (a named pool) are refused with the fix."""
    code = [sys.executable, "-c", LOADER]
    if where == "64 MB /dev/shm":
        command = [*private_dev_shm(), f'{PRIVATE_SHM} && exec "$0" "$@"', *code, "named"]
    else:
        command = code
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["nbytes"] == 154_140_672 and report["batches"] == 20
    assert report["anonymous"] and len(report["fds"]) >= 1
    assert all(fd.startswith("/memfd:crumpets_") for fd in report["fds"])
    assert report["dev_shm_during"] == report["dev_shm_after"] == []
    if where == "64 MB /dev/shm":
        assert report["dev_shm_total"] == 64 << 20
        enospc, message = report["named"]
        assert enospc, message
        assert "needs 154,140,672 bytes but /dev/shm has" in message
        assert "--shm-size" in message and "shared_memory=N" in message


def memory_cgroup_parent() -> tuple[str, str]:
    """(directory, version) of this process's memory cgroup, where a child can be made."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split(" - ") for line in f]
    for hierarchy, controllers, path in lines:
        v1 = "memory" in controllers.split(",")
        if not v1 and not (hierarchy == "0" and not controllers):
            continue
        for before, after in mounts:
            fields, tail = before.split(), after.split()
            fstype = "cgroup" if v1 else "cgroup2"
            if tail[0] != fstype or (v1 and "memory" not in tail[2].split(",")):
                continue
            if fields[3] != "/":
                continue
            directory = os.path.normpath(fields[4] + path)
            if v1:
                return directory, "v1"
            with open(os.path.join(directory, "cgroup.subtree_control")) as f:
                if "memory" in f.read().split():
                    return directory, "v2"
    pytest.skip("no memory cgroup whose children get a memory controller")


def test_cgroup_memory_limit_is_checked_before_allocating(tmp_path):
    """In a cgroup limited to 100 MB (a container's --memory, a batch job's request), the
    154 MB pool is refused up front with ENOMEM naming the cgroup's limit, instead of the
    OOM killer taking a worker once the pool fills."""
    parent, version = memory_cgroup_parent()
    child = os.path.join(parent, f"crumpets-test-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(child)
        limit = "memory.limit_in_bytes" if version == "v1" else "memory.max"
        with open(os.path.join(child, limit), "w") as f:
            f.write(str(100 << 20))
    except OSError as exc:
        if os.path.isdir(child):
            os.rmdir(child)
        pytest.skip(f"cannot make a memory cgroup with a limit: {exc}")
    try:
        join = f'echo $$ > {child}/cgroup.procs && exec "$0" "$@"'
        done = subprocess.run(
            ["sh", "-c", join, sys.executable, "-c", LOADER],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(child)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("OSError: [Errno 12] shared memory pool (16 buffer sets of 9,633,792")
    assert f"needs 154,140,672 bytes but the cgroup memory limit {child}/{limit}" in error
    assert "shared_memory=N, batch_size" in error
