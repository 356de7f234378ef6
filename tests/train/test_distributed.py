"""Two processes under torchrun (gloo): disjoint shards, one metric, rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_see_disjoint_shards_and_agree(tmp_path):
    here = os.path.dirname(__file__)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        os.path.join(here, "_ddp_script.py"),
        str(tmp_path),
    ]
    env = dict(
        os.environ,
        PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    assert (r0["world"], r1["world"]) == (2, 2)
    for phase, size in (("train", 320), ("val", 80)):
        for epoch in ("0", "1"):
            a, b = r0["seen"][phase][epoch], r1["seen"][phase][epoch]
            assert len(a) == len(b) == size // 2  # equal shards
            assert not set(a) & set(b), (phase, epoch)  # disjoint
            assert set(a) | set(b) == set(range(size))  # together: every sample
    assert r0["seen"]["train"]["0"] != r0["seen"]["train"]["1"]  # reshuffled per epoch
    assert r0["val"]["top1_accuracy"] == r1["val"]["top1_accuracy"]  # all-reduced
    assert r0["val"]["loss"] == r1["val"]["loss"]
    assert abs(r0["weights_sum"] - r1["weights_sum"]) < 1e-6  # DDP kept replicas equal
    assert (tmp_path / "log.jsonl").exists()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["epoch_0000.pth", "epoch_0001.pth"]
