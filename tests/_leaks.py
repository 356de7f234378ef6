"""What a loader may leave behind: child processes, shared memory, ipc sockets."""

from __future__ import annotations

import gc
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


def memory_files(pid: int | None = None) -> set[str]:
    """Descriptors of crumpets buffer pools that ``pid`` holds as anonymous memory files
    (memfd, named ``crumpets_<pid>_...``), as ``/proc/<pid>/fd/<n>`` paths (stat one for
    the file's size and blocks). Present while a loader runs; after it, only while arrays
    of a batch are alive (Python's mmap keeps a duplicate descriptor as long as its
    mapping)."""
    pid = os.getpid() if pid is None else pid
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone
        return found
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if target.startswith("/memfd:crumpets_"):
            found.add(path)
    return found


def mapped_memory_files(pid: int | None = None) -> set[str]:
    """Anonymous crumpets pools that ``pid`` has mapped (from /proc/<pid>/maps). A pool
    stays mapped after its loader stops only while arrays of a batch are alive."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.readlines()
    except OSError:
        return set()
    return {line.split(None, 5)[5].strip() for line in lines if "/memfd:crumpets_" in line}


def shm_segments(pid: int | None = None) -> set[str]:
    """The buffer pools of ``pid``, one name each relative to /dev/shm: named segments,
    and anonymous memory files as ``../../proc/<pid>/fd/<n>``, so that ``/dev/shm/NAME``
    stats either (the soak test measures the pool so). An anonymous pool has no entry in
    /dev/shm: :func:`dev_shm_entries` lists only what is there."""
    files = {}
    for path in sorted(memory_files(pid)):
        try:
            stat = os.stat(path)
        except OSError:
            continue
        files.setdefault((stat.st_dev, stat.st_ino), f"../..{path}")  # one per file
    return dev_shm_entries(pid) | set(files.values())


def dev_shm_entries(pid: int | None = None) -> set[str]:
    """Entries in /dev/shm of ``pid``'s named pools (none for anonymous ones)."""
    tag = f"crumpets_{os.getpid() if pid is None else pid}_"
    return {n for n in os.listdir("/dev/shm") if n.startswith(tag)}


def resources(pid: int | None = None) -> set[str]:
    """Everything of ``pid`` (default: this process) that must not outlive a loader.

    For this process, garbage is collected first: a batch's arrays that only a reference
    cycle keeps (a test's frame held by its own exception's traceback) map the pool until
    the next collection, which frees it; that is not a leak.
    """
    if pid is None or pid == os.getpid():
        gc.collect()
    return (
        {f"child:{p}" for p in children(pid)}
        | {f"shm:{n}" for n in dev_shm_entries(pid)}
        | {f"memfd:{path}" for path in memory_files(pid)}
        | {f"mapped:{name}" for name in mapped_memory_files(pid)}
        | {f"ipc:{s}" for s in ipc_sockets(pid)}
    )
