"""crumpets.train.snapshot: round trips, atomic writes, strict and partial resume."""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from crumpets.train.snapshot import filter_state, resume, save


def small_net(hidden=3):
    return nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 2))


def trained(net):
    """An SGD optimizer with momentum buffers after one step, and running BN stats."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()
    return optimizer


def test_round_trip_restores_model_optimizer_and_extras(tmp_path):
    torch.manual_seed(0)
    net = small_net()
    optimizer = trained(net)
    path = tmp_path / "snap.pth"
    save(path, 7, net, optimizer, epoch=3, history=[{"loss": 0.5}])
    assert os.listdir(tmp_path) == ["snap.pth"]

    torch.manual_seed(1)
    other = small_net()
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.5, momentum=0.9)
    snapshot = resume(path, other, other_optimizer)
    assert (snapshot["iteration"], snapshot["epoch"], snapshot["history"]) == (
        7,
        3,
        [{"loss": 0.5}],
    )
    for (name, a), b in zip(net.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert other_optimizer.param_groups[0]["lr"] == 0.1
    for p, q in zip(net.parameters(), other.parameters()):
        torch.testing.assert_close(
            optimizer.state[p]["momentum_buffer"], other_optimizer.state[q]["momentum_buffer"]
        )


def test_wrapped_models_are_saved_without_module_prefix(tmp_path):
    net = small_net()
    save(tmp_path / "snap.pth", 0, nn.DataParallel(net), None)
    state = torch.load(tmp_path / "snap.pth", weights_only=True)["model_state"]
    assert list(state) == list(net.state_dict())
    resume(tmp_path / "snap.pth", nn.DataParallel(small_net()))


def test_reserved_extra_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="model_state"):
        save(tmp_path / "snap.pth", 0, small_net(), None, model_state={})


def test_failing_torch_save_leaves_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "snap.pth"
    save(path, 1, small_net(), None)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a snapshot")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save(path, 2, small_net(), None)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["snap.pth"]


class FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes free: writes past that fail with ENOSPC, as the
    kernel's do (an OSError without a file name)."""

    room = 0

    def write(self, data):
        if self.tell() + len(memoryview(data).cast("B")) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("room", [0, 100, 3000, -1])  # -1: all but the last byte
def test_a_full_disk_is_enospc_naming_the_snapshot_and_keeps_the_previous_one(
    tmp_path, monkeypatch, room
):
    path = tmp_path / "snap.pth"
    save(path, 1, small_net(), None)
    before = path.read_bytes()
    FullDisk.room = room if room >= 0 else len(before) - 1

    def full_disk_fdopen(fd, mode="r", *args, **kwargs):
        return io.BufferedWriter(FullDisk(fd, "wb"))

    monkeypatch.setattr(os, "fdopen", full_disk_fdopen)
    with pytest.raises(OSError) as info:
        save(path, 2, small_net(), None)
    monkeypatch.undo()
    # not torch's RuntimeError('... unexpected pos ...') nor the bare OSError of a failed
    # flush, neither of which names the file
    assert type(info.value) is OSError and info.value.errno == errno.ENOSPC
    assert info.value.filename == str(path)
    assert re.search(r"No space left on device.*snap\.pth", str(info.value)), info.value
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["snap.pth"]


CHILD = textwrap.dedent(
    """
    import sys, torch
    from crumpets.train.snapshot import save

    net = torch.nn.Linear(1, 1)
    net.big = torch.nn.Parameter(torch.zeros(50_000_000))  # 200 MB
    for iteration in range(1, 1000):
        with torch.no_grad():
            net.big.fill_(iteration)
        save(sys.argv[1], iteration, net, None)
        print(iteration, flush=True)
    """
)


def test_sigkill_while_writing_leaves_a_loadable_snapshot(tmp_path):
    path = tmp_path / "big.pth"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "1"  # one snapshot is complete
        time.sleep(0.2)  # the child is writing the next one
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    snapshot = torch.load(path, weights_only=True)
    big = snapshot["model_state"]["big"]
    assert snapshot["iteration"] >= 1
    assert big.shape == (50_000_000,) and bool((big == snapshot["iteration"]).all())


def test_strict_resume_of_another_architecture_names_the_differences(tmp_path):
    path = tmp_path / "snap.pth"
    save(path, 0, small_net(hidden=3), None)
    other = small_net(hidden=5)
    other.add_module("3", nn.Linear(2, 2))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError) as info:
        resume(path, other)
    message = str(info.value)
    assert "0.weight (model [5, 4], snapshot [3, 4])" in message
    assert "2.weight (model [2, 5], snapshot [2, 3])" in message
    assert "missing from the snapshot: ['3.weight', '3.bias']" in message
    for name, value in other.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed although resume failed"


def test_non_strict_resume_loads_what_fits_and_warns(tmp_path):
    path = tmp_path / "snap.pth"
    net = small_net(hidden=3)
    save(path, 0, net, trained(net))
    other = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 5))
    optimizer = torch.optim.SGD(other.parameters(), lr=1.0, momentum=0.9)
    with pytest.warns(UserWarning, match=r"2\.weight \(model \[5, 3\], snapshot \[2, 3\]\)"):
        resume(path, other, optimizer, strict=False)
    for name in ("0.weight", "0.bias", "1.running_mean", "1.num_batches_tracked"):
        assert torch.equal(other.state_dict()[name], net.state_dict()[name]), name
    assert not torch.equal(other.state_dict()["2.bias"][:2], net.state_dict()["2.bias"])
    assert optimizer.param_groups[0]["lr"] == 1.0  # optimizer state left alone
    assert not optimizer.state


def test_filter_state_reports_missing_unexpected_and_mismatched():
    own = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    theirs = {"a": torch.ones(2), "b": torch.ones(4), "d": torch.ones(1)}
    filtered, report = filter_state(own, theirs)
    assert list(filtered) == ["a"] and torch.equal(filtered["a"], torch.ones(2))
    assert report.missing == ["c"] and report.unexpected == ["d"]
    assert report.mismatched == {"b": ((3,), (4,))}
    assert not report.clean
    assert filter_state(own, own)[1].clean


def test_resume_of_a_file_that_is_no_snapshot_says_so(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(small_net().state_dict(), path)
    with pytest.raises(ValueError, match="not a snapshot written by save"):
        resume(path, small_net())


@pytest.mark.parametrize("cut", [0, 1, 0.5, -1])  # bytes kept: a count, a fraction, all but one
def test_resume_of_a_cut_snapshot_names_the_file_and_says_it_is_incomplete(tmp_path, cut):
    path = tmp_path / "snap.pth"
    save(path, 0, small_net(), None)
    data = path.read_bytes()
    kept = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    path.write_bytes(data[:kept])
    with pytest.raises(ValueError, match="incomplete") as info:
        resume(path, small_net())
    assert repr(str(path)) in str(info.value) and f"{kept} bytes" in str(info.value)
    assert info.value.__cause__ is not None  # torch's own message, for whoever digs
