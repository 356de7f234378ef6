"""`crumpets bench` runs the torch loader with a worker and a preset."""

from __future__ import annotations

import pytest

from crumpets.core.cli import main


def test_bench_prints_images_per_second(capsys):
    code = main(
        ["bench", "--samples", "64", "--batches", "4", "--batch-size", "16", "--size", "64"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "classification + AUGMENTATION_TRAIN" in out


def test_bench_rejects_unknown_preset(capsys):
    assert main(["bench", "--preset", "NOPE", "--batches", "1"]) == 2
    assert "AUGMENTATION_TRAIN" in capsys.readouterr().err


@pytest.mark.parametrize("worker", ["image", "fcn", "segmentation"])
def test_bench_runs_every_image_worker(worker, capsys):
    args = ["bench", "--worker", worker, "--samples", "16", "--batches", "2"]
    assert main([*args, "--batch-size", "8", "--size", "32", "--gpu-augmentation"]) == 0
    out = capsys.readouterr().out
    assert f"{worker} + AUGMENTATION_TRAIN" in out and "gpu_augmentation" in out


def test_help_and_info_do_not_import_torch_or_opencv(tmp_path):
    # every package is installed here: the command imports only the subcommand it runs
    import subprocess
    import sys

    from crumpets.core import Writer

    with Writer(tmp_path / "d") as writer:
        writer.write({"key": "a", "x": 1})
    code = (
        "import sys\n"
        "from crumpets.core.cli import main\n"
        f"main(['--help']); main(['info', {str(tmp_path / 'd')!r}])\n"
        "print(sorted(m for m in ('torch', 'cv2', 'crumpets.torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
