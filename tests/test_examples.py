"""The Bayesian-optimisation example runs against the local server, finds more EI than random search, and proposes
the batch asked for."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_the_bayesian_optimisation_example_beats_random_search_and_proposes_the_batch_asked_for(local_server):
    # given the tiny model, and a batch larger than its Thompson draws give distinct points (they repeat the few
    # candidates the posterior favours)
    base_url, _ = local_server
    # when the example runs
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "bayesian_optimisation.py"), "--url", base_url, "--batch", "40"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # then the gradient-based optimum has at least random search's EI
    found = re.search(r"EI ([0-9.e+-]+) in (\d+) calls \(random search, \d+ points: ([0-9.e+-]+)\)", result.stdout)
    assert found, result.stdout
    assert float(found.group(1)) >= float(found.group(3)), "the gradient-based optimum has at least random search's EI"
    # and the batch has the 40 distinct points asked for
    assert "batch of 40: " in result.stdout, result.stdout
    points = re.findall(r"^  (\d+)\. x = \[([^\]]+)\]", result.stdout, re.MULTILINE)
    assert [int(k) for k, _ in points] == list(range(1, 41)), result.stdout
    assert len({x for _, x in points}) == 40
    # and where Thompson sampling gave fewer, the output says why and where the others came from
    thompson = int(re.search(r"batch of 40: (\d+) by Thompson sampling", result.stdout).group(1))
    assert thompson < 40, "the case this test is for: draws that repeat their maxima"
    assert f"fewer than 40: the 320 draws peaked at only {thompson} distinct candidate(s)" in result.stdout
    assert f"The other {40 - thompson} from POST /suggest" in result.stdout
