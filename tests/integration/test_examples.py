"""The scripts in examples/ run, quickly, and produce what they claim.

Each example's documented functions are called with small sizes, each script's command
line runs once (``--help``, and ``--no-show`` or ``--quick``), so that the examples cannot
rot unnoticed.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from crumpets.core import Reader, unpack
from crumpets.core.cli import main as crumpets_command

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = [
    "dataloader_simple",
    "dataloader_datadings",
    "pytorch_cifar10",
    "pytorch_resnet",
    "streaming_s3",
]
TILE = 224  # the dataloader examples' image size
TINYSET_IMAGES = 12  # 4 classes x 3 photos


@pytest.fixture
def examples(monkeypatch):
    """Import examples as modules (they import each other by name, as scripts do)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


@pytest.fixture
def one_torch_thread():
    # Each loader's workers take the 2 cores of CI; torch's intra-op threads waiting for
    # them make a training step many times slower.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_script(name: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see one_torch_thread
    return subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def check_grid(path: str | Path, rows: int) -> np.ndarray:
    """The batches file: ``rows`` epochs of the 12 tinyset images, none of them blank."""
    grid = cv2.imread(str(path))
    assert grid is not None, f"{path} is not an image"
    assert grid.shape == (rows * TILE, TINYSET_IMAGES * TILE, 3)
    tiles = grid.reshape(rows, TILE, TINYSET_IMAGES, TILE, 3)
    assert tiles.std(axis=(1, 3, 4)).min() > 10, "a tile is blank"
    return grid


def read_log(outdir: Path) -> list[dict]:
    with open(outdir / "log.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    result = run_script(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout


# -- dataloader_simple ----------------------------------------------------------------------
def test_simple_prepare_dataset(examples):
    simple = examples("dataloader_simple")
    iterable = simple.prepare_dataset(simple.TINYSET)
    samples = [unpack(item) for item in iterable]
    assert len(samples) == TINYSET_IMAGES
    assert sorted(s["label"] for s in samples) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(s["image"][:2] == b"\xff\xd8" for s in samples)  # the JPEG files' bytes


def test_simple_main_writes_batches(examples, tmp_path, capsys):
    simple = examples("dataloader_simple")
    out = tmp_path / "batches.png"
    assert simple.main(show=False, wait_key=1, out=str(out)) == str(out)
    check_grid(out, rows=3)
    assert capsys.readouterr().out.count("epoch ") == 3 * TINYSET_IMAGES // 2  # batch size 2


def test_simple_main_without_display(examples, tmp_path, monkeypatch, capsys):
    simple = examples("dataloader_simple")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "batches.jpg"
    assert simple.main(show=True, wait_key=1, out=str(out)) == str(out)
    assert "cannot show the batches" in capsys.readouterr().err
    check_grid(out, rows=3)


def test_simple_script(tmp_path):
    result = run_script("dataloader_simple", "--no-show", "--out", "b.jpg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    check_grid(tmp_path / "b.jpg", rows=3)


# -- dataloader_datadings -------------------------------------------------------------------
def test_datadings_prepare_dataset(examples, tmp_path):
    datadings = examples("dataloader_datadings")
    path = str(tmp_path / "tiny.msgpack")
    classes = datadings.prepare_dataset(datadings.TINYSET, path)
    assert classes == ["astronaut", "cat", "coffee", "rocket"]
    with Reader(path) as reader:
        assert len(reader) == TINYSET_IMAGES
        assert reader.get(3)["key"] == "cat/1.jpg" and reader.get(3)["label"] == 1
        assert datadings.class_names(reader) == classes


def test_datadings_main_writes_batches(examples, tmp_path):
    datadings = examples("dataloader_datadings")
    out = tmp_path / "batches.png"
    assert datadings.main(show=False, out=str(out), epochs=2) == str(out)
    check_grid(out, rows=2)


def test_datadings_script_on_packed_file(tmp_path):
    """A file from `crumpets pack`, as the docstring suggests for real datasets."""
    packed = str(tmp_path / "packed")
    assert crumpets_command(["pack", str(EXAMPLES / "tinyset"), packed, "--quiet"]) == 0
    args = ["--file", packed + ".msgpack", "--no-show", "--out", "b.png", "--epochs", "1"]
    result = run_script("dataloader_datadings", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    check_grid(tmp_path / "b.png", rows=1)


# -- pytorch_cifar10 ------------------------------------------------------------------------
def test_cifar10_make_loader_on_cpu(examples, tmp_path, one_torch_thread):
    """use_cuda=False with gpu_augmentation=True: the loader applies the pixel operations
    on the CPU; a length beyond the file repeats it."""
    import torch

    from crumpets.augment.presets import AUGMENTATION_TRAIN

    cifar = examples("pytorch_cifar10")
    file = str(tmp_path / "sample.msgpack")
    assert crumpets_command(["pack", cifar.TINYSET, file, "--quiet"]) == 0
    loader = cifar.make_loader(
        file, 8, 2, 2, image_rng=AUGMENTATION_TRAIN, use_cuda=False, length=100
    )
    assert loader.gpu_augmentation and len(loader) == 13  # 100 samples in batches of 8
    with loader:
        for _, mini_batches in loader:
            assert len(mini_batches) == 2
            for mini in mini_batches:
                assert mini["image"].dtype == torch.uint8 and mini["image"].device.type == "cpu"
                assert mini["image"].shape[1:] == (3, 32, 32) and len(mini["label"]) <= 4
    assert len(cifar.make_loader(file, 8, 1, 1, use_cuda=False)) == 2  # the file's 12


def test_cifar10_main_learns(examples, tmp_path, one_torch_thread):
    import torch

    from crumpets.train.snapshot import resume

    cifar = examples("pytorch_cifar10")
    torch.manual_seed(0)
    history = cifar.main(None, str(tmp_path), 32, 2, 0.02, cuda=False)
    assert len(history) == 2
    # 4 of the 10 classes, 12 photos seen 2 x 2000 times: far better than chance (25%)
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    assert history[-1]["val"]["top1_accuracy"] >= 0.5, history
    log = read_log(tmp_path)
    assert [r["epoch"] for r in log if r.get("phase") == "val"] == [0, 1]
    snapshot = resume(tmp_path / "epoch_0001.pth", cifar.Net())
    assert snapshot["epoch"] == 1


def test_cifar10_script_quick(tmp_path):
    result = run_script("pytorch_cifar10", "--quick", "--no-cuda", "--outdir", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "validation accuracy after 2 epochs" in result.stdout
    assert (tmp_path / "out" / "epoch_0001.pth").stat().st_size > 0
    assert len(read_log(tmp_path / "out")) == 2 * 3  # per epoch: lr, train, val


# -- pytorch_resnet -------------------------------------------------------------------------
def test_resnet_main(examples, tmp_path, one_torch_thread):
    from crumpets.train.snapshot import resume

    resnet = examples("pytorch_resnet")
    history = resnet.main(
        None, None, str(tmp_path), size=32, batch_size=4, epochs=1, cuda=False, nworkers=2
    )
    assert len(history) == 1 and np.isfinite(history[0]["val"]["loss"])
    assert [r.get("phase") for r in read_log(tmp_path)] == [None, "train", "val"]
    resume(tmp_path / "epoch_0000.pth", resnet.make_network("resnet18", 4))


def test_resnet_script_quick_on_packed_files(tmp_path):
    """The command line on files from `crumpets pack`, as the docstring shows."""
    packed = str(tmp_path / "tiny")
    assert crumpets_command(["pack", str(EXAMPLES / "tinyset"), packed, "--quiet"]) == 0
    files = ["--train", packed + ".msgpack", "--val", packed + ".msgpack"]
    result = run_script(
        "pytorch_resnet", *files, "--quick", "--no-cuda", "--outdir", "out", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "validation accuracy after 2 epochs" in result.stdout
    assert (tmp_path / "out" / "epoch_0001.pth").stat().st_size > 0
