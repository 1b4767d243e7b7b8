"""The Bayesian-optimisation example runs against the local server and finds more EI than random search."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_the_bayesian_optimisation_example_runs_and_beats_random_search(local_server):
    base_url, _ = local_server
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "bayesian_optimisation.py"), "--url", base_url, "--batch", "3"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = re.search(r"EI ([0-9.e+-]+) in (\d+) calls \(random search, \d+ points: ([0-9.e+-]+)\)", result.stdout)
    assert found, result.stdout
    assert float(found.group(1)) >= float(found.group(3)), "the gradient-based optimum has at least random search's EI"
    assert "batch of" in result.stdout
