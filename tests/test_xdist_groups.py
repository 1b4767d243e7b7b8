"""tests/xdist_groups.py: under `--dist loadgroup`, the tests of a group run in one worker, across modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import ROOT

TESTS = """
import json, os, pytest

def record(name):
    with open(os.path.join(os.environ["RECORD_TO"], f"{name}.json"), "w") as handle:
        json.dump(os.environ["PYTEST_XDIST_WORKER"], handle)

@pytest.mark.xdist_group("server")
@pytest.mark.parametrize("i", range(4))
def test_grouped(i):
    record(f"server-{__name__}-{i}")

@pytest.mark.xdist_group(name="other")
@pytest.mark.parametrize("i", range(4))
def test_other_group(i):
    record(f"other-{__name__}-{i}")

@pytest.mark.parametrize("i", range(8))
def test_alone(i):
    record(f"alone-{__name__}-{i}")
"""


@pytest.mark.slow
def test_a_groups_tests_run_in_one_worker_whatever_their_module(tmp_path: Path):
    # given two modules, each with tests of two groups and tests of none, and this suite's plugin
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text('pytest_plugins = ["tests.xdist_groups"]\n')
    for module in ("test_a", "test_b"):
        (project / f"{module}.py").write_text(TESTS)
    records, temp = tmp_path / "records", tmp_path / "temp"
    records.mkdir()
    temp.mkdir()
    # when they run on two workers (not as this run's worker, nor with this run's options)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_ADDOPTS"))}
    env |= {
        "RECORD_TO": str(records),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        "TMPDIR": str(temp),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-q"],
        cwd=project, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # then every test ran, and each group's in a single worker
    workers: dict[str, set[str]] = defaultdict(set)
    for record in records.iterdir():
        workers[record.stem.split("-")[0]].add(json.loads(record.read_text()))
    assert len(list(records.iterdir())) == 2 * (4 + 4 + 8)
    assert len(workers["server"]) == 1
    assert len(workers["other"]) == 1
    assert not list(temp.glob("pytest-xdist-groups-*")), "the controller's folder of groups is removed"
