"""peftkit's layering (pyproject.toml, [tool.importlinter]): each layer imports only those below it. import-linter
checks it, and a new upward import fails with the import named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).parent / "lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the copy's peftkit before the installed one
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_layers_hold():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_them_and_is_named(tmp_path):
    shutil.copytree(ROOT / "peftkit", tmp_path / "peftkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    config = tmp_path / "peftkit" / "config.py"  # near the bottom; the runner is near the top
    config.write_text(config.read_text() + "\n\ndef _upward():\n    from peftkit import runner  # noqa\n")
    proc = lint(tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "peftkit.config is not allowed to import peftkit.runner" in proc.stdout
