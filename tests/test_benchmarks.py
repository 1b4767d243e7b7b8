"""The benchmark script runs (quick mode), so it cannot rot between full runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_handler_latency_quick_run_prints_every_measure():
    result = subprocess.run(
        [sys.executable, "benchmarks/handler_latency.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    measures = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table}
    assert "cold total / (GPy import + unpickle)" in measures
    assert "handler / GPy predict, 1000-point batch" in measures
    assert all(value and value[0].isdigit() for value in measures.values()), measures
