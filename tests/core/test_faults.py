"""Faults and bad input: each is a clear exception within seconds, and nothing is left
behind (the autouse fixture in conftest checks processes, /dev/shm and ipc sockets)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from _core_workers import FailingWorker, IndexWorker, SlowWorker, StuckWorker, SuicideWorker
from _leaks import children, memory_files, resources

from crumpets.core import TurboDataLoader, Worker, pack
from crumpets.core.shm import SharedBufferManager

SAMPLES = [pack({"i": i}) for i in range(100)]


def test_worker_exception_is_raised_with_sample_index_and_traceback():
    loader = TurboDataLoader(SAMPLES, 10, FailingWorker(fail_at=37), 2)
    with loader, pytest.raises(ValueError) as info:
        for _ in loader:
            pass
    text = str(info.value)
    assert "cannot handle value 37" in text
    assert "on sample 37 (epoch 0)" in text
    assert "in prepare" in text  # the worker's own traceback
    assert info.value.sample_index == 37


@pytest.mark.parametrize("how", ["from outside", "inside prepare"])
def test_killed_worker_is_reported_within_seconds(how):
    template = SlowWorker() if how == "from outside" else SuicideWorker(die_at=55)
    loader = TurboDataLoader(SAMPLES, 10, template, 2)
    with loader:
        with pytest.raises(RuntimeError, match="killed by SIGKILL") as info:
            for iteration, _ in loader:
                if iteration == 1 and how == "from outside":
                    os.kill(min(children()), signal.SIGKILL)
                    killed = time.monotonic()
                elif iteration == 0:
                    killed = time.monotonic()
        assert time.monotonic() - killed < 5
    assert "crumpets worker" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"nworkers": 0}, ValueError, "nworkers"),
        ({"num_mini_batches": 3}, ValueError, "num_mini_batches"),
        ({"worker_template": object()}, TypeError, "worker_template"),
        ({"shared_memory": -1}, ValueError, "shared_memory"),
        ({"shared_memory": 1}, ValueError, "shared_memory"),
        ({"length": 101}, ValueError, "length"),
        ({"seed": -1}, ValueError, "seed"),
        ({"rank": 2, "world_size": 2}, ValueError, "rank"),
        ({"iterable": 5}, TypeError, "iterable"),
        ({"iterable": iter(SAMPLES), "shuffle": True, "length": 10}, ValueError, "shuffle"),
        ({"iterable": iter(SAMPLES)}, ValueError, "length"),
        ({"drop_last": True, "length": 3}, ValueError, "length"),
    ],
)
def test_wrong_arguments_name_the_argument(kwargs, error, name):
    args = {"iterable": SAMPLES, "batch_size": 4, "worker_template": IndexWorker(), "nworkers": 1}
    args.update(kwargs)
    with pytest.raises(error, match=name):
        TurboDataLoader(**args)


def test_bad_buffer_spec_names_the_buffer():
    with pytest.raises(ValueError, match="'image'"):
        IndexWorker().add_buffer("image", ((3, 0), np.uint8))
    with pytest.raises(ValueError, match="one value per channel"):
        IndexWorker().add_buffer("image", ((3, 4), np.uint8, (1, 2)))


@pytest.mark.parametrize(
    ("item", "error", "text"),
    [
        ({"i": 3}, TypeError, "iterable item 3 is a dict, not msgpack bytes"),
        (b"\xc1", ValueError, "sample 3 is not a valid msgpack message"),
        (pack(17), TypeError, "sample 3 is a int, not a dict"),
        (pack({"j": 3}), KeyError, "on sample 3"),
    ],
)
def test_bad_items_name_the_sample(item, error, text):
    data = list(SAMPLES[:10])
    data[3] = item
    with TurboDataLoader(data, 4, IndexWorker(), 2) as loader, pytest.raises(error, match=text):
        for _ in loader:
            pass


def test_iterable_that_raises_propagates():
    class Broken:
        def __len__(self):
            return 20

        def __getitem__(self, i):
            if i == 13:
                raise OSError("disk on fire")
            return SAMPLES[i]

    with TurboDataLoader(Broken(), 4, IndexWorker(), 2) as loader:
        with pytest.raises(OSError, match="disk on fire"):
            for _ in loader:
                pass


def test_exception_in_loop_body_and_keyboard_interrupt_stop_cleanly():
    for exc in (ZeroDivisionError, KeyboardInterrupt):
        with pytest.raises(exc):
            with TurboDataLoader(SAMPLES, 10, IndexWorker(), 2) as loader:
                for iteration, _ in loader:
                    if iteration == 2:
                        raise exc()


def test_real_sigint_mid_iteration():
    # Python's own handler, also where the test run started with SIGINT ignored (a shell
    # runs background jobs so)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with TurboDataLoader(SAMPLES, 10, SlowWorker(), 2) as loader:
                for iteration, _ in loader:
                    if iteration == 1:
                        os.kill(os.getpid(), signal.SIGINT)
                        time.sleep(5)  # interrupted long before
    finally:
        signal.signal(signal.SIGINT, previous)


def test_process_that_yields_several_results_is_refused_clearly():
    class Several(Worker):
        def process(self, request):
            for i in request.indices:
                yield {"i": i}

    with TurboDataLoader(SAMPLES, 10, Several(), 1) as loader:
        with pytest.raises(TypeError, match="Several.process returned a generator: return one"):
            next(iter(loader))


def test_not_started_loader_says_how_to_start():
    loader = TurboDataLoader(SAMPLES, 10, IndexWorker(), 1)
    with pytest.raises(RuntimeError, match="with loader"):
        iter(loader)


def test_worker_that_is_not_a_buffer_worker_runs():
    class Echo(Worker):
        def process(self, request):
            return {"n": len(request.items), "indices": request.indices}

    with TurboDataLoader(SAMPLES, 30, Echo(), 2) as loader:
        got = [(mb["n"], mb["indices"][0]) for _, (mb,) in loader]
    assert got == [(30, 0), (30, 30), (30, 60), (10, 90)]


def test_too_little_memory_is_detected_before_allocating():
    with pytest.raises(
        OSError, match=r"needs [\d,]+ bytes but .* leaves [\d,]+\. .*shared_memory=N"
    ) as info:
        SharedBufferManager(4, 10**6, {"x": ((10**6,), np.float64)})
    assert info.value.errno == errno.ENOMEM


def test_too_little_shm_for_a_named_pool_is_detected_before_allocating():
    with pytest.raises(OSError, match=r"needs [\d,]+ bytes .*--shm-size") as info:
        SharedBufferManager(4, 10**6, {"x": ((10**6,), np.float64)}, anonymous=False)
    assert info.value.errno == errno.ENOSPC


def test_spawned_workers_leave_no_name_in_dev_shm_once_ready(monkeypatch):
    from crumpets.core import _platform

    monkeypatch.setattr(_platform, "START_METHOD", "spawn")
    with TurboDataLoader(SAMPLES, 10, IndexWorker(), 2) as loader:
        manager = loader.buffer_manager
        assert not manager.anonymous and manager.name.startswith(f"crumpets_{os.getpid()}_")
        assert manager.name not in os.listdir("/dev/shm")  # unlinked once both were ready
        assert sorted(int(i) for _, (mb,) in loader for i in mb["index"][:, 0]) == list(range(100))


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from _core_workers import SlowWorker
    from crumpets.core import TurboDataLoader, pack

    loader = TurboDataLoader([pack({{"i": i}}) for i in range(1000)], 10, SlowWorker(), 2)
    with loader:
        for iteration, _ in loader:
            if iteration == 2:
                print("ready", flush=True)
                sys.stdin.readline()
                os.kill(os.getpid(), signal.{signal})
                time.sleep(30)
    """
)


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGKILL", -9)])
def test_main_process_terminated_leaves_nothing(sig, code):
    script = SCRIPT.format(tests=os.path.dirname(__file__), signal=sig)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout.readline() == b"ready\n"
    workers = children(proc.pid)
    assert len(workers) == 2
    assert resources(proc.pid) - {f"child:{w}" for w in workers}  # its shm and sockets
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    assert proc.wait(timeout=10) == code
    # Orphaned workers notice within their 1 s poll; the pool goes with the last of them.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        resources(proc.pid) or any(os.path.exists(f"/proc/{w}") for w in workers)
    ):
        time.sleep(0.05)
    assert not resources(proc.pid)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")]


TWO_LOADERS = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from _core_workers import IndexWorker, SlowWorker
    from crumpets.core import TurboDataLoader, pack

    samples = [pack({{"i": i}}) for i in range(1000)]
    first = TurboDataLoader(samples, 10, IndexWorker(), 1)
    second = TurboDataLoader(samples, 10, SlowWorker(), 1)
    {order}
    try:
        for iteration, _ in second:
            if iteration == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
    finally:
        second.stop()
        print("stopped", flush=True)
    """
)


@pytest.mark.parametrize(
    "order",
    [
        "first.start(); second.start(); first.stop()",  # stopped before the other
        "second.start(); first.start(); first.stop()",  # started and stopped after it
    ],
)
def test_sigterm_unwinds_with_any_number_of_loaders_in_any_order(order):
    script = TWO_LOADERS.format(tests=os.path.dirname(__file__), order=order)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    # SystemExit(143) unwound through the loop: the running loader stopped its workers
    assert proc.returncode == 143, proc.stderr
    assert proc.stdout == "stopped\n"


def test_a_workers_own_source_attribute_is_left_alone(tmp_path):
    from crumpets.core import Reader, Writer

    class Tagged(Worker):
        def __init__(self):
            super().__init__()
            self.source = "my own"

        def process(self, request):
            return {"source": self.source, "n": len(request.items)}

    with Writer(tmp_path / "d") as writer:
        for i in range(20):
            writer.write({"key": str(i), "i": i})
    with Reader(tmp_path / "d") as reader, TurboDataLoader(reader, 10, Tagged(), 2) as loader:
        assert [(mb["source"], mb["n"]) for _, (mb,) in loader] == [("my own", 10)] * 2


def test_stalled_worker_is_reported_with_its_stack(capfd):
    loader = TurboDataLoader(SAMPLES, 10, StuckWorker(stuck_at=42), 2, stall_timeout=1.5)
    with loader, pytest.raises(TimeoutError, match="no batch from the workers for 1.5 s"):
        for _ in loader:
            pass
    assert "in prepare" in capfd.readouterr().err  # faulthandler's dump of the stuck worker


def test_exception_while_a_worker_starts_is_raised_in_the_main_process():
    class BadStart(IndexWorker):
        def init(self):
            raise OSError("cannot open the camera")

    with pytest.raises(OSError, match="cannot open the camera") as info:
        with TurboDataLoader(SAMPLES, 10, BadStart(), 2):
            pass
    assert "raised in worker" in str(info.value)


def test_workers_start_when_stderr_has_no_file_descriptor(capsys):
    # pytest's capsys (like Jupyter) replaces sys.stderr with an object without fileno()
    with TurboDataLoader(SAMPLES, 10, IndexWorker(), 2) as loader:
        assert sum(len(mb["index"]) for _, (mb,) in loader) == 100


def test_worker_errors_come_in_batch_order_and_never_leak_into_the_next_epoch():
    from _core_workers import EpochZeroFailures

    loader = TurboDataLoader(SAMPLES, 10, EpochZeroFailures(fail_at={35, 45}), 2)
    with loader:
        delivered = []
        with pytest.raises(ValueError, match="bad sample 35"):
            for _, (mb,) in loader:
                delivered += mb["index"][:, 0].tolist()
        assert delivered == list(range(30))  # every batch before the failing one, in order
        # the second failure (batch 4) belonged to the abandoned epoch: it must not surface
        again = [i for _, (mb,) in loader for i in mb["index"][:, 0].tolist()]
    assert sorted(again) == list(range(100))


def test_plain_iterator_cannot_go_back():
    import itertools

    loader = TurboDataLoader(itertools.cycle(SAMPLES[:20]), 10, IndexWorker(), 1, length=20)
    with loader:
        start = loader.state_dict()
        assert len([b for b in loader]) == 2
        loader.load_state_dict(start)
        with pytest.raises(ValueError, match="cannot go back"):
            for _ in loader:
                pass


GROUP_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from _core_workers import SlowWorker
    from crumpets.core import TurboDataLoader, _platform, pack

    _platform.START_METHOD = {start_method!r}
    loader = TurboDataLoader([pack({{"i": i}}) for i in range(1000)], 10, SlowWorker(), 2)
    with loader:
        for iteration, _ in loader:
            if iteration == 2:
                print(loader.buffer_manager.name, flush=True)
                time.sleep(60)
    """
)


def process_group(pgid: int) -> set[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.add(int(entry))
    return found


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_killing_the_whole_process_group_leaves_nothing(start_method):
    """The OOM killer, a scheduler cancelling a job, `kill -9 -PGID`: every process dies
    at once, multiprocessing's resource tracker included, so nothing can clean up."""
    script = GROUP_SCRIPT.format(tests=os.path.dirname(__file__), start_method=start_method)
    before = {n for n in os.listdir("/dev/shm") if n.startswith("crumpets_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        name = proc.stdout.readline().decode().strip()  # mid-epoch
        group = process_group(proc.pid)
        assert len(group) >= 3  # the loader and its 2 workers (and spawn's tracker)
        if start_method == "fork":
            assert name == "None" and memory_files(proc.pid)  # an anonymous pool
        else:
            assert name.startswith(f"crumpets_{proc.pid}_")  # named, and unlinked already
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 5
    while process_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_group(proc.pid)
    after = {n for n in os.listdir("/dev/shm") if n.startswith("crumpets_")}
    assert not after - before


FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from _core_workers import IndexWorker
    from crumpets.core import TurboDataLoader, pack

    loader = TurboDataLoader([pack({{"i": i}}) for i in range(200)], 10, IndexWorker(), 2)
    with loader:
        batches = iter(loader)
        seen = [int(i) for i in next(batches)[1][0]["index"][:, 0]]
        pid = os.fork()
        if pid == 0:
            {child}
        _, status = os.waitpid(pid, 0)
        seen += [int(i) for _, (mb,) in batches for i in mb["index"][:, 0]]
    print(os.waitstatus_to_exitcode(status), sorted(seen) == list(range(200)), flush=True)
    """
)
FORK_CHILDREN = {
    # leaves the with block (stop) and runs atexit handlers (multiprocessing's among them)
    "sys.exit": "sys.exit(0)",
    "stop": "loader.stop(); os._exit(0)",
    # a forked child cannot use its parent's loader: a clear error, and nothing stopped
    "iterate": textwrap.dedent(
        """\
        try:
                    next(iter(loader))
                except RuntimeError as e:
                    os._exit(3 if "forked" in str(e) else 4)
                os._exit(5)"""
    ),
}


@pytest.mark.parametrize("child", sorted(FORK_CHILDREN))
def test_a_forked_child_never_stops_its_parents_workers(child):
    script = FORK_SCRIPT.format(tests=os.path.dirname(__file__), child=FORK_CHILDREN[child])
    # its own process group, so that a child that hangs goes with it
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, err
    code = 3 if child == "iterate" else 0
    assert out.split() == [str(code), "True"], err
    assert "Traceback" not in err, err


STARTUP_SIGINT_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    sys.path.insert(0, {tests!r})
    from _core_workers import IndexWorker
    from _leaks import resources
    from crumpets.core import TurboDataLoader, pack

    signal.signal(signal.SIGINT, signal.default_int_handler)
    samples = [pack({{"i": i}}) for i in range(100)]
    left = set()
    for attempt in range({tries}):
        delay = {max_delay} * (attempt + 1) / {tries}
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()
            with TurboDataLoader(samples, 10, IndexWorker(), 2) as loader:
                time.sleep(1)  # interrupted here, if not before
        except KeyboardInterrupt:
            pass
        timer.join()
        deadline = time.monotonic() + 5
        while resources() and time.monotonic() < deadline:
            time.sleep(0.02)
        left = resources()
        if left:  # a worker outlived its loader (or hangs on to its memory)
            break
    print("left", sorted(left), "after", attempt + 1, flush=True)
    """
)


def test_ctrl_c_while_a_loader_starts_leaves_nothing():
    """Ctrl-C 0 to 50 ms after `with loader:` begins: it may land between a worker's fork
    and its being recorded, or while the sockets are made; every try must end with no
    process, memory file or socket left, and without hanging."""
    tests = os.path.dirname(__file__)
    script = STARTUP_SIGINT_SCRIPT.format(tests=tests, tries=60, max_delay=0.05)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.path.dirname(tests)},
    )
    assert done.stdout.split() == ["left", "[]", "after", "60"], done.stdout + done.stderr


def test_a_second_thread_that_iterates_meanwhile_ends_the_first_loop_loudly():
    # the first loop is between batches: the second thread's loop is a whole epoch, and
    # the first loop's next batch is a RuntimeError, never a silently shortened epoch
    import threading

    loader = TurboDataLoader(SAMPLES, 10, IndexWorker(), 2)
    second = []

    def iterate():
        second.extend(i for _, (mb,) in loader for i in mb["index"][:, 0].tolist())

    with loader:
        first = iter(loader)
        next(first)
        thread = threading.Thread(target=iterate)
        thread.start()
        thread.join()
        with pytest.raises(RuntimeError, match="ended by a newer loop"):
            next(first)
    assert sorted(second) == list(range(100))


def test_a_thread_that_iterates_while_another_takes_a_batch_gets_an_error():
    import threading

    loader = TurboDataLoader(SAMPLES, 10, StuckWorker(stuck_at=15, seconds=1.0), 2)
    seen, errors = [], []

    def consume(batches):
        seen.extend(i for _, (mb,) in batches for i in mb["index"][:, 0].tolist())

    with loader:
        batches = iter(loader)
        seen.extend(next(batches)[1][0]["index"][:, 0].tolist())
        thread = threading.Thread(target=consume, args=(batches,))  # handed on: allowed
        thread.start()
        time.sleep(0.3)  # the thread waits inside next() for the batch holding sample 15
        for attempt in (lambda: iter(loader), lambda: next(batches)):
            try:
                attempt()
            except RuntimeError as e:
                errors.append(str(e))
        thread.join()
    assert len(errors) == 2 and all("another thread" in e for e in errors), errors
    assert sorted(seen) == list(range(100))  # the loop went on, whole


def test_a_loaders_iterator_after_its_with_block_raises():
    loader = TurboDataLoader(SAMPLES, 10, IndexWorker(), 2)
    with loader:
        batches = iter(loader)
        next(batches)
    with pytest.raises(RuntimeError, match="stopped"):
        next(batches)
