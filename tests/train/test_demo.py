"""The digits demo (the README's first command) reaches at least 97% validation accuracy."""

from __future__ import annotations

import os

from crumpets.core.cli import main


def test_digits_demo(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("validation accuracy ")[1].split("%")[0])
    assert accuracy >= 97.0, out
    for name in ("log.jsonl", "curves.png", "preview.png", "result.json", "epoch_0011.pth"):
        assert os.path.getsize(tmp_path / name) > 0
