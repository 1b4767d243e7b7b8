"""SnapStart, simulated locally: the runtime's before-snapshot hooks load the model; restores get fresh seeds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.events import api_event, lambda_context

# A fresh interpreter: import the handler, run awslambdaric's own hook runner as the runtime does when a version
# is published, then fork twice (a fork is a copy of memory, as a restore is of the snapshot).
SIMULATION = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import handler.app as app
from awslambdaric import lambda_runtime_hooks_runner
from tests.events import api_event, lambda_context

loaded_before = app.model.is_loaded
lambda_runtime_hooks_runner.run_before_snapshot()
loaded_after = app.model.is_loaded

def restored(run_restore_hooks):
    read, write = os.pipe()
    if os.fork() == 0:
        if run_restore_hooks:
            lambda_runtime_hooks_runner.run_after_restore()
        health = app.lambda_handler(api_event("GET", "/health"), lambda_context())
        os.write(write, json.dumps({"draw": float(np.random.rand()), "health": json.loads(health["body"])}).encode())
        os._exit(0)
    os.close(write)
    data = os.read(read, 4096)
    os.wait()
    return json.loads(data)

with_hooks = [restored(True) for _ in range(2)]
without_hooks = [restored(False) for _ in range(2)]
print(json.dumps({"loaded_before": loaded_before, "loaded_after": loaded_after,
                  "with_hooks": with_hooks, "without_hooks": without_hooks}))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="simulates restores with fork")
def test_the_model_is_in_the_snapshot_and_each_restore_draws_its_own_random_numbers(tiny_model_path):
    # when
    env = {**os.environ, "MODEL_PATH": str(tiny_model_path)}
    result = subprocess.run(
        [sys.executable, "-c", SIMULATION, str(ROOT)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    # then the hook loaded the model before the snapshot, so a restored environment answers without loading
    assert (outcome["loaded_before"], outcome["loaded_after"]) == (False, True)
    assert all(r["health"]["model_loaded"] for r in outcome["with_hooks"])
    # and the after-restore hook reseeds: two restores draw different numbers, as they would not without it
    assert outcome["with_hooks"][0]["draw"] != outcome["with_hooks"][1]["draw"]
    assert outcome["without_hooks"][0]["draw"] == outcome["without_hooks"][1]["draw"]


def test_a_model_that_cannot_load_before_the_snapshot_is_logged_and_left_to_the_first_request(
    monkeypatch: pytest.MonkeyPatch, model_copy, tiny_model_path, caplog: pytest.LogCaptureFixture
):
    from handler import app
    from handler.gp.artifact import PackagedArtifact
    from handler.gp.model import LazyModel

    model_copy.unlink()
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy)))
    with caplog.at_level("ERROR"):
        app.load_before_snapshot()  # must not raise: a failed hook would fail the version's publication
    assert "model not loaded before the snapshot" in caplog.text
    assert not app.model.is_loaded
    # and once the artifact is there, the first request after a restore loads it without waiting out the interval
    shutil.copy(tiny_model_path, model_copy)
    assert (
        app.lambda_handler(api_event(body={"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}), lambda_context())["statusCode"]
        == 200
    )
