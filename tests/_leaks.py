"""What a loader may leave behind: child processes, shared memory, ipc sockets."""

from __future__ import annotations

import os


def children(pid: int | None = None) -> set[int]:
    """Live child processes of ``pid``, without multiprocessing's resource tracker (one
    per interpreter, by design: it removes shared memory if the process is killed)."""
    pid = os.getpid() if pid is None else pid
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == pid and state != "Z" and b"resource_tracker" not in cmdline:
            found.add(int(entry))
    return found


def ipc_sockets(pid: int | None = None) -> set[str]:
    """zmq ipc endpoints of a crumpets loader in ``pid``: abstract or files in /tmp."""
    tag = f"crumpets-{os.getpid() if pid is None else pid}-"
    found = set()
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and tag in parts[7]:
                found.add(parts[7])
    found |= {f"/tmp/{n}" for n in os.listdir("/tmp") if n.startswith(tag)}
    return found


def shm_segments(pid: int | None = None) -> set[str]:
    tag = f"crumpets_{os.getpid() if pid is None else pid}_"
    return {n for n in os.listdir("/dev/shm") if n.startswith(tag)}


def resources(pid: int | None = None) -> set[str]:
    """Everything of ``pid`` (default: this process) that must not outlive a loader."""
    return (
        {f"child:{p}" for p in children(pid)}
        | {f"shm:{n}" for n in shm_segments(pid)}
        | {f"ipc:{s}" for s in ipc_sockets(pid)}
    )
