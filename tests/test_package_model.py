"""scripts/package_model.py: from a user's pickled GPy model to an artifact the function loads."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handler.artifact import PackagedArtifact, manifest_path_for, sha256_of
from handler.model import SparseGPRegressionModel, load_model
from handler.schemas import ModelManifest
from tests.conftest import PACKAGE_MODEL, PLANT_BOUNDS, PLANT_FEATURES, plant, plant_design


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PACKAGE_MODEL), *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def sparse_pickle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SparseGPRegression (RBF, not ARD) on 400 points with 30 inducing points, one output."""
    import GPy

    X = plant_design(400, seed=5)
    np.random.seed(5)  # GPy picks the initial inducing points at random
    gp = GPy.models.SparseGPRegression(X, plant(X)[:, 1:], GPy.kern.RBF(3, ARD=True), num_inducing=30)
    gp.optimize(max_iters=50)
    path = tmp_path_factory.mktemp("sparse") / "sparse.pkl"
    path.write_bytes(pickle.dumps(gp))
    return path


def test_the_plant_model_was_packaged_with_everything_the_manifest_promises(plant_model_path: Path):
    # (packaged by the plant_model_path fixture with the command line, as a user would)
    manifest = ModelManifest.model_validate_json(manifest_path_for(plant_model_path).read_text())
    assert manifest.sha256 == sha256_of(plant_model_path)
    assert manifest.model_type == "GPy.models.GPRegression"
    assert manifest.n_train == 60
    assert manifest.kernel["name"] == "Matern52"
    assert len(manifest.kernel["lengthscale"]) == 3
    assert set(manifest.versions) == {"python", "numpy", "scipy", "GPy", "paramz"}
    assert manifest.holdout is not None
    assert manifest.holdout["conversion"].n_points == 100
    assert 0 <= manifest.holdout["conversion"].coverage_95 <= 1


def test_a_sparse_model_gets_bounds_from_its_training_inputs(sparse_pickle: Path, tmp_path: Path):
    # when
    output = tmp_path / "out" / "model.pkl"
    result = run(sparse_pickle, "--features", ",".join(PLANT_FEATURES), "--outputs", "purity", "--output", output)
    # then
    assert result.returncode == 0, result.stderr
    assert "packaged sparse 1: GPy.models.SparseGPRegression" in result.stdout
    assert "numpy/BLAS fast path" in result.stdout
    manifest = json.loads(manifest_path_for(output).read_text())
    X = pickle.loads(sparse_pickle.read_bytes()).X
    assert manifest["bounds"] == {
        name: [float(X[:, i].min()), float(X[:, i].max())] for i, name in enumerate(PLANT_FEATURES)
    }
    assert manifest["holdout"] is None
    assert manifest["kernel"]["inducing_points"] == 30
    loaded = load_model(PackagedArtifact(output))
    assert isinstance(loaded.model, SparseGPRegressionModel)
    assert output.read_bytes() == sparse_pickle.read_bytes(), "the pickle is copied byte for byte"
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.manifest.json", "model.pkl"], "no leftovers"


def test_a_bound_given_on_the_command_line_wins_and_the_others_come_from_the_data(sparse_pickle: Path, tmp_path: Path):
    output = tmp_path / "model.pkl"
    result = run(sparse_pickle, "--features", "a,b,c", "--bounds", "b=-1:20", "--output", output)
    assert result.returncode == 0, result.stderr
    bounds = json.loads(manifest_path_for(output).read_text())["bounds"]
    assert bounds["b"] == [-1.0, 20.0]
    assert bounds["a"][0] >= PLANT_BOUNDS["temperature"][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--features", "a,b"], "the model takes 3 inputs but 2 features were named"),
        (["--features", "a,b,c", "--outputs", "y,z"], "the model has 1 outputs but 2 output names were given"),
        (["--features", "a,b,c", "--bounds", "a=5:1"], "--bounds: a needs finite LOW < HIGH, got 5:1"),
        (["--features", "a,b,c", "--bounds", "d=0:1"], "--bounds: 'd' is not one of the features (a, b, c)"),
        (["--features", "a,b,c", "--bounds", "a=0"], "--bounds: expected NAME=LOW:HIGH, got 'a=0'"),
        (["--features", "a,b,a"], "--features: names must be distinct"),
        (["--features", "a,b,c d"], "--features: 'c d' must start with a letter or _ and hold only letters, digits, "
                                    "_ or - (64 at most)"),
        (["--features", "a,b,c", "--holdout", "missing.csv"], "--holdout: missing.csv: no such file"),
    ],
    ids=["feature-count", "output-count", "low-above-high", "unknown-feature", "malformed-bound", "duplicate",
         "bad-name", "missing-csv"],
)  # fmt: skip
def test_a_wrong_argument_exits_2_with_one_clear_line(sparse_pickle: Path, tmp_path: Path, args, message: str):
    result = run(sparse_pickle, *args, "--output", tmp_path / "out.pkl")
    assert result.returncode == 2
    assert result.stderr.strip() == f"package_model: error: {message}"
    assert not (tmp_path / "out.pkl").exists(), "nothing is written"


def test_a_holdout_csv_missing_a_column_is_named(sparse_pickle: Path, tmp_path: Path):
    csv = tmp_path / "holdout.csv"
    csv.write_text("a,b,y\n1,2,3\n")
    result = run(sparse_pickle, "--features", "a,b,c", "--holdout", csv, "--output", tmp_path / "out.pkl")
    assert result.returncode == 2
    assert result.stderr.strip() == f"package_model: error: --holdout: {csv} has no column c (header: a, b, y)"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a pickle", "is not a readable pickle (UnpicklingError"),
        (pickle.dumps({"weights": [1, 2]}), "builtins.dict is not a supported model (GPy.models.GPRegression"),
    ],
    ids=["not-a-pickle", "not-a-model"],
)
def test_a_file_that_is_not_a_supported_model_exits_2(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "thing.pkl"
    path.write_bytes(content)
    result = run(path, "--features", "a", "--output", tmp_path / "out.pkl")
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_shipped_manifest_is_what_the_packaging_code_writes(tmp_path: Path):
    # given the shipped pickle packaged again with the shipped manifest's names and bounds
    from tests.conftest import SHIPPED_MODEL

    shipped = json.loads(manifest_path_for(SHIPPED_MODEL).read_text())
    output = tmp_path / "pretrained-model.pkl"
    bounds = ",".join(f"{k}={lo}:{hi}" for k, (lo, hi) in shipped["bounds"].items())
    result = run(SHIPPED_MODEL, "--features", ",".join(shipped["features"]), "--bounds", bounds,
                 "--name", shipped["name"], "--output", output)  # fmt: skip
    assert result.returncode == 0, result.stderr
    again = json.loads(manifest_path_for(output).read_text())
    for key in ("schema_version", "name", "model_type", "sha256", "features", "outputs", "bounds", "n_train", "kernel"):
        assert again[key] == shipped[key], key
    X = np.random.default_rng(0).uniform(size=(10, 4))
    np.testing.assert_array_equal(
        load_model(PackagedArtifact(output)).model.predict(X).mean,
        load_model(PackagedArtifact(SHIPPED_MODEL)).model.predict(X).mean,
    )


def test_a_pickle_that_reaches_for_os_system_is_refused_at_packaging(tmp_path: Path):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Payload()))
    result = run(path, "--features", "a", "--output", tmp_path / "out.pkl")
    assert result.returncode == 2
    assert "is refused: the pickle references posix.system" in result.stderr
    assert not (tmp_path / "ran").exists()


def test_a_model_that_explains_everything_as_noise_is_packaged_with_a_warning(tmp_path: Path):
    import GPy

    # given a fit stuck where GPy's defaults often leave inputs in large units: all noise, little signal
    X = plant_design(40, seed=3)
    gp = GPy.models.GPRegression(X, plant(X)[:, 1:], GPy.kern.RBF(3), normalizer=True)
    gp.kern.variance = 0.05
    gp.likelihood.variance = 1.0
    (tmp_path / "noisy.pkl").write_bytes(pickle.dumps(gp))
    # when
    result = run(tmp_path / "noisy.pkl", "--features", "a,b,c", "--output", tmp_path / "out.pkl")
    # then it is packaged, and the summary says what looks wrong
    assert result.returncode == 0, result.stderr
    assert "warning: the fitted noise variance (1) exceeds the kernel's (0.05)" in result.stdout


def test_a_well_fitted_model_gets_no_warning(plant_model_path: Path, tmp_path: Path):
    result = run(plant_model_path, "--features", ",".join(PLANT_FEATURES), "--outputs", "conversion,purity",
                 "--output", tmp_path / "again.pkl")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout
