from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from filelock import FileLock
from hypothesis import settings

from handler.gp.artifact import PackagedArtifact, manifest_path_for
from handler.gp.model import LazyModel
from scripts.train_model import train

ROOT = Path(__file__).resolve().parent.parent
# The model the function deploys: the Park example's posterior file until a user packages their own in its place
# (`make package-model`); tests of the deployment read its manifest, whatever model it is.
DEPLOYED_MODEL = ROOT / "model_artifacts" / "pretrained-model.npz"
# The Park example as GPy pickled it, with the schema-2 manifest it was first packaged with: for tests that need
# that very model (or GPy's own predictions of it), whatever is deployed.
PARK_PICKLE = ROOT / "tests" / "data" / "park" / "pretrained-model.pkl"
PARK_POSTERIOR = ROOT / "tests" / "data" / "park" / "park-posterior.npz"  # that pickle, packaged
LOCAL_LAMBDA = ROOT / "scripts" / "local_lambda.py"
# The Park model's features: tests may name them; handler/ never does (it reads them from the manifest).
FEATURES = ("x1", "x2", "x3", "x4")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def near_training_points(
    training: dict, bounds: dict, feature: str, held: dict[str, float], near: float
) -> list[tuple[int, float]]:
    """(index, distance) of the published training points near the slice along `feature`, computed point by point
    from GET /model/training-data's answer: the root mean square, over the other features, of each difference
    over its range (as the explorer page and the client define near)."""
    others = [f for f in bounds if f != feature]
    chosen = []
    for i in range(training["n_points"]):
        squares = [((training["inputs"][f][i] - held[f]) / (bounds[f][1] - bounds[f][0])) ** 2 for f in others]
        distance = (sum(squares) / len(others)) ** 0.5 if others else 0.0
        if distance <= near:
            chosen.append((i, distance))
    return chosen


def wait_for_job(base_url: str, job_id: str, timeout_s: float = 120) -> dict:
    """Poll GET /jobs/{id} on a served API until the job has ended; its last status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(f"{base_url}/jobs/{job_id}", timeout=30).json()
        if status["status"] in ("SUCCEEDED", "FAILED"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {status}")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    """moto's AWS, in-process, with fake credentials and no endpoint of a real server (the jobs' tests)."""
    from moto import mock_aws

    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(variable, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


def env_vars_file(folder: Path, model_path: Path) -> Path:
    """Overrides in `sam local --env-vars` format that point the functions (API and job worker) at another model.

    Jobs are capped at 20,000 points, so that what the fuzzer sends stays quick; and the work budgets are derived
    from an 8 s timeout rather than the function's 15 s (the emulator still allows 15): on a CI machine shared by the
    test workers, the servers and the fuzzer, the largest accepted request can run several times slower than the
    budget's calibration, and the fuzzer counts a 504 as a failure.
    """
    path = folder / "env.json"
    overrides = {"MODEL_PATH": str(model_path), "JOB_MAX_POINTS": "20000", "FUNCTION_TIMEOUT_SECONDS": "8"}
    path.write_text(json.dumps({"Parameters": overrides}))
    return path


# Tests sharing a server run in the same pytest-xdist worker (`--dist loadgroup`, which tests/xdist_groups.py
# makes group under pytest 9), so that each server is started once; a server is also what makes a test slow.
# Trained models are built once per run whichever worker asks first (`built_once`): tests using one may go anywhere.
GROUPED_FIXTURES = ("local_server", "plant_server", "deployed_server", "keyed_server")
pytest_plugins = ["tests.xdist_groups"]


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks added here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        group = next((name for name in GROUPED_FIXTURES if name in fixtures), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            item.add_marker(pytest.mark.slow)
    # The longest work first (stable otherwise): a server's group, then the other slow tests, then the rest, so
    # that the workers start the long ones early rather than end on one alone.
    items.sort(
        key=lambda item: (item.get_closest_marker("xdist_group") is None, item.get_closest_marker("slow") is None)
    )


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder `build` fills once per test run, for every pytest-xdist worker: the first to ask builds it while the
    others wait (a file lock), then all read it. Nothing may change what is in it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # a worker's base temp is a folder of the run's own
    folder = root / f"built-{name}"
    with FileLock(root / f"built-{name}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GP trained by the repo's own script (30 points, one restart), packaged for the GPy route: a pickle
    publishing its training inputs only."""

    def build(folder: Path) -> None:
        train(
            folder / "pretrained-model.pkl",
            n_train=30,
            n_holdout=200,
            restarts=1,
            seed=7,
            gpy_route=True,
            publish_training_data="inputs",
        )

    return built_once(tmp_path_factory, "tiny-model", build) / "pretrained-model.pkl"


@pytest.fixture(scope="session")
def tiny_posterior_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same small GP (training is deterministic), packaged as the packaging command does: a posterior file."""

    def build(folder: Path) -> None:
        train(folder / "pretrained-model.npz", n_train=30, n_holdout=200, restarts=1, seed=7)

    return built_once(tmp_path_factory, "tiny-posterior", build) / "pretrained-model.npz"


# A second, different model, as a user would bring it: their own feature names and bounds, two outputs,
# a Matern-5/2 kernel, fitted with GPy and packaged with scripts/package_model.py.
PLANT_FEATURES = ("temperature", "pressure", "flow_rate")
PLANT_OUTPUTS = ("conversion", "purity")
PLANT_BOUNDS = {"temperature": (250.0, 400.0), "pressure": (1.0, 10.0), "flow_rate": (0.1, 2.0)}
PACKAGE_MODEL = ROOT / "scripts" / "package_model.py"


def plant(X: np.ndarray) -> np.ndarray:
    """A made-up chemical plant: conversion (%) and purity (%) of temperature (K), pressure (bar) and flow (L/s)."""
    temperature, pressure, flow_rate = X.T
    conversion = 80 * np.exp(-((temperature - 320) ** 2) / 2000) * np.log1p(pressure) / (1 + flow_rate)
    purity = 90 + 5 * np.sin(temperature / 30) - 0.2 * flow_rate * pressure
    return np.column_stack([conversion, purity])


def plant_design(n: int, seed: int) -> np.ndarray:
    from scipy.stats import qmc

    low, high = np.array(list(PLANT_BOUNDS.values())).T
    return qmc.scale(qmc.LatinHypercube(d=3, seed=seed).random(n), low, high)


@pytest.fixture(scope="session")
def plant_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plant model fitted with GPy, pickled, and packaged by the packaging command with a hold-out CSV."""
    return built_once(tmp_path_factory, "plant", package_plant_model) / "artifact" / "plant-model.npz"


def package_plant_model(folder: Path) -> None:
    import GPy

    X = plant_design(60, seed=1)
    # Started where a user would start: lengthscales a third of each range, little noise (GPy's defaults of 1
    # in the inputs' units would leave the optimiser explaining everything as noise).
    lengthscale = [(high - low) / 3 for low, high in PLANT_BOUNDS.values()]
    gp = GPy.models.GPRegression(X, plant(X), GPy.kern.Matern52(3, lengthscale=lengthscale, ARD=True), normalizer=True)
    gp.likelihood.variance = 1e-3
    gp.likelihood.variance.constrain_bounded(1e-6, 1.0, warning=False)
    gp.optimize(max_iters=500)
    (folder / "plant.pkl").write_bytes(pickle.dumps(gp))
    X_holdout = plant_design(100, seed=2)
    rows = np.column_stack([X_holdout, plant(X_holdout)])
    header = ",".join((*PLANT_FEATURES, *PLANT_OUTPUTS))
    np.savetxt(folder / "holdout.csv", rows, delimiter=",", header=header, comments="")
    output = folder / "artifact" / "plant-model.npz"
    command = [
        sys.executable, str(PACKAGE_MODEL), str(folder / "plant.pkl"),
        "--features", ",".join(PLANT_FEATURES), "--outputs", ",".join(PLANT_OUTPUTS),
        "--bounds", ",".join(f"{k}={lo:g}:{hi:g}" for k, (lo, hi) in PLANT_BOUNDS.items()),
        "--name", "plant", "--version", "2026.11", "--holdout", str(folder / "holdout.csv"), "--output", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="session")
def plant_pickle_path(plant_model_path: Path) -> Path:
    """The plant model as GPy pickled it, before packaging (GPy's own predictions are the reference)."""
    return plant_model_path.parent.parent / "plant.pkl"


@pytest.fixture
def plant_app(monkeypatch: pytest.MonkeyPatch, plant_model_path: Path):
    """handler.app serving the plant model, cold."""
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(plant_model_path)))
    return app


@pytest.fixture
def park_app(monkeypatch: pytest.MonkeyPatch):
    """handler.app serving the tests' own copy of the Park example (a posterior file), cold: tests that need its
    shape (one output, features on [0, 1]) whatever model_artifacts/ holds."""
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(PARK_POSTERIOR)))
    return app


@pytest.fixture
def deployed_app(monkeypatch: pytest.MonkeyPatch):
    """handler.app serving the deployed model (whatever model_artifacts/ holds, as events/ and docs/ describe), cold."""
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(DEPLOYED_MODEL)))
    return app


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


@contextlib.contextmanager
def serving(model_path: Path, folder: Path, *options: str) -> Iterator[tuple[str, Path]]:
    """`scripts/local_lambda.py serve` on a loopback port of its own choosing: two warm environments, the model via
    --env-vars.

    Yields the base URL and the server's log file. `options` go to `serve` (`--no-jobs`, `--api-key KEY`, `-w 1`).
    """
    log = folder / "server.log"
    process, base_url = start_server(env_vars_file(folder, model_path), log, "-w", "2", *options)
    key = options[options.index("--api-key") + 1] if "--api-key" in options else None
    try:
        if not _started(process, base_url, {"x-api-key": key} if key else {}):
            pytest.fail(f"local server did not start:\n{log.read_text()}")
        yield base_url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: it was asked to stop; now it is made to
            process.kill()
            process.wait(timeout=30)


def start_server(env_file: Path, log: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`serve --port 0` on the model of `env_file`, logging to `log`: the process and its base URL."""
    from scripts.local_lambda import spawn_serve

    return spawn_serve(log, *options, env_vars=env_file)


def _started(process: subprocess.Popen, base_url: str, headers: dict[str, str]) -> bool:
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", headers=headers, timeout=30).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def local_server(tiny_posterior_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The local server on the tiny Park model's posterior file."""
    with serving(tiny_posterior_path, tmp_path_factory.mktemp("serve")) as server:
        yield server


@pytest.fixture(scope="session")
def plant_server(plant_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The local server on the plant model."""
    with serving(plant_model_path, tmp_path_factory.mktemp("serve-plant")) as server:
        yield server


@pytest.fixture(scope="session")
def deployed_server(tmp_path_factory: pytest.TempPathFactory):
    """The local server on the deployed model (whatever model_artifacts/ holds), without jobs."""
    with serving(DEPLOYED_MODEL, tmp_path_factory.mktemp("serve-deployed"), "--no-jobs") as server:
        yield server
