"""All four distributions side by side: one namespace, one `crumpets` command."""

from __future__ import annotations

import subprocess
import sys


def test_all_distributions_share_the_namespace():
    import crumpets.augment
    import crumpets.core
    import crumpets.torch
    import crumpets.train

    assert len(crumpets.__path__) == 4


def test_crumpets_command_lists_core_commands():
    out = subprocess.run(
        [sys.executable, "-m", "crumpets.core.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "pack" in out.stdout and "info" in out.stdout
