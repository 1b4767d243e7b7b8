"""The Bayesian-optimisation example runs against the local server, finds more EI than random search, and proposes
the batch asked for; the active-learning example runs the loop on the service."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

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


@pytest.mark.slow
def test_the_active_learning_example_runs_the_loop_on_the_service_and_learns_branin():
    # given the example's own local server (it starts it with an admin key, and stops it)
    # when it trains on 20 runs and runs 3 rounds of 4, refitting every 2 rounds
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "active_learning.py"), "--rounds", "3", "--q", "4",
         "--refit-every", "2", "--sobol-n", "256", "--draws", "4", "--repeats", "1", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # then the service trained the first version, and each round made a version, later ones than the last
    assert re.search(r"^trained branin-active-\w+ version 1 on 20 runs \(READY", result.stdout, re.MULTILINE)
    rounds = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)", result.stdout, re.MULTILINE)
    assert [(int(r), int(n)) for r, n, *_ in rounds] == [(0, 20), (1, 24), (2, 28), (3, 32)]
    versions = [int(v) for _, _, v, *_ in rounds]
    assert versions == sorted(set(versions))
    # and round 2 refitted; the last surrogate's RMSE is below the first's (32 runs against 20)
    assert re.search(r"^\s+2\s+28\s+\d+ .*refit: version \d+$", result.stdout, re.MULTILINE), result.stdout
    assert float(rounds[-1][3]) < float(rounds[0][3])
    assert "active learning's RMSE is below random sampling's in" in result.stdout
