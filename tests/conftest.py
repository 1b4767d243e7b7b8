from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import settings

from handler.artifact import PackagedArtifact, manifest_path_for
from handler.model import LazyModel
from scripts.train_model import train

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = ROOT / "model_artifacts" / "pretrained-model.pkl"
LOCAL_LAMBDA = ROOT / "scripts" / "local_lambda.py"
# The Park model's features: tests may name them; handler/ never does (it reads them from the manifest).
FEATURES = ("x1", "x2", "x3", "x4")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_vars_file(folder: Path, model_path: Path) -> Path:
    """Overrides in `sam local --env-vars` format that point the function at another model."""
    path = folder / "env.json"
    path.write_text(json.dumps({"PredictFunction": {"MODEL_PATH": str(model_path)}}))
    return path


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GP trained by the repo's own script (30 points, one restart): fast, and real."""
    path = tmp_path_factory.mktemp("tiny-model") / "pretrained-model.pkl"
    train(path, n_train=30, n_holdout=200, restarts=1, seed=7)
    return path


@pytest.fixture
def model_copy(tiny_model_path: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model and its manifest, free to break."""
    path = tmp_path / tiny_model_path.name
    shutil.copy(tiny_model_path, path)
    shutil.copy(manifest_path_for(tiny_model_path), manifest_path_for(path))
    return path


@pytest.fixture
def app_with_model(monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path):
    """handler.app with a fresh, unloaded LazyModel on the tiny model (what a cold start sees)."""
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(tiny_model_path)))
    return app


# Property tests: bounded and reproducible in CI (the same examples every run), broader by hand:
# HYPOTHESIS_PROFILE=explore pytest tests/test_properties.py
settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=2_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def local_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """`scripts/local_lambda.py serve` on a free loopback port: two warm environments, the tiny model via --env-vars.

    Yields the base URL and the server's log file.
    """
    port = free_port()
    env_file = env_vars_file(tmp_path_factory.mktemp("serve"), tiny_model_path)
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with log.open("w") as log_handle:
        process = subprocess.Popen(
            [sys.executable, str(LOCAL_LAMBDA), "--env-vars", str(env_file), "serve", "--port", str(port), "-w", "2"],
            cwd=ROOT,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
        )
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base_url}/health", timeout=30).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"local server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield base_url, log
        process.terminate()
        process.wait(timeout=10)
