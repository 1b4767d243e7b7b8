"""The Makefile's setup: what a first `make serve` or `make test` shows while it creates .venv."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Stands in for Python 3.13: `-m venv DIR` makes DIR/bin/python, which says what it was asked and does nothing.
FAKE_PYTHON = """#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
echo "python $*"
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_setup_says_what_it_does_shows_pips_progress_and_how_long_it_took(tmp_path: Path):
    # given no virtualenv yet, and a Python that records what pip is asked to do
    python = tmp_path / "python3.13"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    venv = tmp_path / "venv"
    # when setup runs, as the first `make serve` runs it
    result = subprocess.run(
        ["make", "--no-print-directory", "setup", f"VENV={venv}", f"PYTHON313={python}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    # then it says first what it is doing and that it takes minutes, lets pip show its progress for the long
    # install, and ends saying how long it took
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"setup: creating {venv} with {python} and installing requirements-dev.txt")
    assert "a few minutes" in lines[0]
    [install] = [line for line in lines if "-r requirements-dev.txt" in line]
    assert install.startswith("python -m pip install ")
    assert "--quiet" not in install
    assert "-q" not in install.split()
    assert lines[-1].startswith(f"setup: {venv} ready in ")
    assert lines[-1].endswith(" s")
    assert (venv / ".installed").is_file()
