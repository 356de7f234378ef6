"""benchmarks/gpu.py: one line and exit 0 without CUDA; with --device cpu --quick, every
part runs on CPU tensors and prints its figure (the code paths a GPU run takes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
from _photos import encode, photo

from crumpets.core import Writer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"
NUMBER = r"\d[\d,.]*"


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def tiny_dataset(path: Path, n: int = 32) -> str:
    """``n`` JPEGs of 500x375 cut from real photos, as benchmarks/throughput.py writes."""
    names = ("coffee", "chelsea", "astronaut")
    with Writer(path) as writer:
        for i in range(n):
            im = photo(names[i % 3])[i % 7 :, i % 5 :]
            im = cv2.resize(im, (500, 375), interpolation=cv2.INTER_AREA)
            writer.write({"key": f"{i:04d}", "image": encode(im), "label": i % 10})
    return str(path)


def table_rows(stdout: str) -> dict[str, list[tuple[str, str]]]:
    """Section -> [(measurement, figure)] from the Markdown table."""
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] != "section":
            rows.setdefault(cells[0], []).append((cells[1], cells[2]))
    return rows


def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    proc = run_script(CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA" in lines[0], proc.stdout


def test_cpu_quick_prints_a_figure_for_every_part(tmp_path):
    data = tiny_dataset(tmp_path / "photos.msgpack")
    proc = run_script("--device", "cpu", "--quick", "--data", data, "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = table_rows(proc.stdout)
    assert "- GPU: none used (--device cpu); torch " in proc.stdout
    assert re.search(r"- CPU: .*, \d+ cores", proc.stdout)

    assert "need CUDA" in rows["tests"][0][1]
    ops = [what.split(",")[0] for what, _ in rows["pixel ops"]]
    assert ops == ["add_gamma", "add_blur", "add_noise_rgb", "gamma + blur + noise", "randomize"]
    for _, figure in rows["pixel ops"]:
        assert re.fullmatch(f"8: {NUMBER}; 16: {NUMBER} img/s", figure), figure
    assert re.match(f"{NUMBER} GB/s", rows["transfer"][0][1]), rows["transfer"]
    e2e = rows["end-to-end"]
    assert [what.rsplit(", ", 1)[1] for what, _ in e2e] == [
        "gpu_augmentation=False",
        "gpu_augmentation=True",
    ]
    assert all(re.match(f"{NUMBER} img/s", figure) for _, figure in e2e), e2e
    trainer = rows["trainer"]
    assert len(trainer) == 2
    assert all(re.match(f"{NUMBER} / {NUMBER} ms/step", figure) for _, figure in trainer)
