"""scripts/package_model.py: from a user's pickled GPy model to an artifact the function loads."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handler.api.schemas import ModelManifest
from handler.gp.artifact import PackagedArtifact, manifest_path_for, sha256_of
from handler.gp.gpy_model import GPRegressionModel, wrap_gpy_model
from handler.gp.model import PosteriorModel, load_model
from handler.gp.posterior import GPPosterior
from handler.gp.unpickling import load_pickle
from scripts import package_model
from tests.conftest import (
    DEPLOYED_MODEL,
    PACKAGE_MODEL,
    PARK_PICKLE,
    PLANT_BOUNDS,
    PLANT_FEATURES,
    built_once,
    plant,
    plant_design,
)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PACKAGE_MODEL), *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def sparse_pickle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SparseGPRegression (RBF, not ARD) on 400 points with 30 inducing points, one output."""

    def build(folder: Path) -> None:
        import GPy

        X = plant_design(400, seed=5)
        np.random.seed(5)  # GPy picks the initial inducing points at random
        gp = GPy.models.SparseGPRegression(X, plant(X)[:, 1:], GPy.kern.RBF(3, ARD=True), num_inducing=30)
        gp.optimize(max_iters=50)
        (folder / "sparse.pkl").write_bytes(pickle.dumps(gp))

    return built_once(tmp_path_factory, "sparse-pickle", build) / "sparse.pkl"


# Two ordinary user fits that packaging once refused (issue 14): their covariance is ill-conditioned (the
# optimiser drives the noise to GPy's 1e-8 floor), so the fast path and GPy differ by more than a fixed 1e-9.
ORDINARY_BOUNDS = {"temperature": (300.0, 400.0), "pressure": (1.0, 5.0), "flow_rate": (0.1, 2.0)}


def ordinary_design(n: int, seed: int) -> np.ndarray:
    from scipy.stats import qmc

    low, high = np.array(list(ORDINARY_BOUNDS.values())).T
    return qmc.scale(qmc.LatinHypercube(d=3, seed=seed).random(n), low, high)


@pytest.fixture(scope="module")
def matern_user_pickle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 points, two outputs, Matern-5/2 ARD, normaliser, noise started at 1e-4, optimize(max_iters=200)."""

    def build(folder: Path) -> None:
        import GPy

        X = ordinary_design(60, seed=0)
        gp = GPy.models.GPRegression(X, plant(X), GPy.kern.Matern52(3, ARD=True), normalizer=True)
        gp.likelihood.variance = 1e-4
        gp.optimize(max_iters=200)
        (folder / "matern.pkl").write_bytes(pickle.dumps(gp))

    return built_once(tmp_path_factory, "matern-user", build) / "matern.pkl"


@pytest.fixture(scope="module")
def rbf_restarts_pickle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 points, two outputs, RBF ARD, normaliser, optimize_restarts (refused at 4.6x the old fixed bound)."""

    def build(folder: Path) -> None:
        import GPy

        X = ordinary_design(200, seed=5)
        gp = GPy.models.GPRegression(X, plant(X), GPy.kern.RBF(3, ARD=True), normalizer=True)
        np.random.seed(5)  # GPy draws restart points from numpy's global generator
        gp.optimize_restarts(num_restarts=2, robust=True, verbose=False, max_iters=100)
        (folder / "rbf.pkl").write_bytes(pickle.dumps(gp))

    return built_once(tmp_path_factory, "rbf-restarts", build) / "rbf.pkl"


def ordinary_arguments(path: Path, output: Path) -> list[str]:
    bounds = ",".join(f"{name}={low:g}:{high:g}" for name, (low, high) in ORDINARY_BOUNDS.items())
    return [str(path), "--features", ",".join(ORDINARY_BOUNDS), "--outputs", "conversion,purity",
            "--bounds", bounds, "--output", str(output)]  # fmt: skip


def wrapped(path: Path) -> GPRegressionModel:
    return wrap_gpy_model(load_pickle(path))


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
    output = tmp_path / "out" / "model.npz"
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
    # and its training points, each left out, are predicted in closed form for its own (DTC) predictive
    assert manifest["leave_one_out"]["purity"]["n_points"] == 400
    assert "leave-one-out of a sparse model: in closed form for its DTC predictive" in result.stdout
    assert manifest["kernel"]["inducing_points"] == 30
    loaded = load_model(PackagedArtifact(output))
    assert isinstance(loaded.model, PosteriorModel)
    assert loaded.model.posterior.inference == "sparse"
    assert manifest["posterior"]["arrays"]["woodbury_inverse"]["shape"] == [30, 30]
    assert sorted(p.name for p in output.parent.iterdir()) == ["model.manifest.json", "model.npz"], "no leftovers"


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
        (["--features", "a"], "the model takes 3 inputs but 1 feature was named"),
        (["--features", "a,b,c", "--outputs", "y,z"], "the model has 1 output but 2 output names were given"),
        (["--features", "a,b,c", "--bounds", "a=5:1"], "--bounds: a needs finite LOW < HIGH, got 5:1"),
        (["--features", "a,b,c", "--bounds", "d=0:1"], "--bounds: 'd' is not one of the features (a, b, c)"),
        (["--features", "a,b,c", "--bounds", "a=0"], "--bounds: expected NAME=LOW:HIGH, got 'a=0'"),
        (["--features", "a,b,a"], "--features: names must be distinct"),
        (["--features", "a,b,c d"], "--features: 'c d' must start with a letter or _ and hold only letters, digits, "
                                    "_ or - (64 at most)"),
        (["--features", "a,b,c", "--holdout", "missing.csv"], "--holdout: missing.csv: no such file"),
    ],
    ids=["feature-count", "one-feature", "output-count", "low-above-high", "unknown-feature", "malformed-bound",
         "duplicate", "bad-name", "missing-csv"],
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


def log_likelihood_tolerance(model: GPRegressionModel) -> float:
    """How far two machines' float64 log-likelihoods of an exact GP may differ (first order in eps).

    GPy computes -1/2 (y^T alpha + D log|K| + n D log 2 pi) from K (entries up to dK apart:
    `GPPosterior.cross_covariance_rounding`), its Cholesky factor L ((K + E) = L L^T, |E| <= (n + 1) eps |L| |L^T| / 2)
    and alpha from two triangular solves (backward errors of the same size, with L). A change dK of K moves y^T alpha
    by alpha^T dK alpha and log|K| by tr(K^-1 dK); the sum y^T alpha and the logs of L's diagonal add a few eps.
    Each machine is within half of this of the exact value.
    """
    assert model.posterior is not None
    assert model.posterior.inference == "exact"
    gp, eps = model.gp, float(np.finfo(float).eps)
    n, outputs = np.shape(gp.Y_normalized)
    gamma = (n + 1) * eps
    alpha, y = np.abs(gp.posterior.woodbury_vector), np.abs(np.asarray(gp.Y_normalized))
    L, K_inverse = np.abs(gp.posterior.woodbury_chol), np.abs(gp.posterior.woodbury_inv)
    dK = model.posterior.cross_covariance_rounding(np.asarray(gp.X, dtype=float))
    quadratic = np.sum(alpha * (dK @ alpha)) + 3 * gamma * np.sum((L.T @ alpha) ** 2) + gamma * np.sum(alpha * y)
    log_det = outputs * (np.sum(K_inverse * dK) + gamma * np.sum(K_inverse * (L @ L.T)))
    log_det += 2 * outputs * n * eps * np.max(np.abs(np.log(np.diag(gp.posterior.woodbury_chol))))
    return float(quadratic + log_det)


def test_converting_a_packaged_pickle_keeps_its_manifest_and_writes_a_posterior_file_that_predicts_as_gpy(
    tmp_path: Path,
):
    # given the Park example as first packaged (a pickle beside its schema-2 manifest)
    source = tmp_path / PARK_PICKLE.name
    shutil.copy(PARK_PICKLE, source)
    shutil.copy(manifest_path_for(PARK_PICKLE), manifest_path_for(source))
    output = tmp_path / "converted" / "pretrained-model.npz"
    # when it is packaged again with nothing but its path: names, bounds and hold-out come from its manifest
    result = run(source, "--output", output)
    # then what no arithmetic produces is kept, the hyperparameters (read from the pickle) included
    assert result.returncode == 0, result.stderr
    before = json.loads(manifest_path_for(PARK_PICKLE).read_text())
    after = json.loads(manifest_path_for(output).read_text())
    for key in ("name", "version", "description", "model_type", "features", "outputs", "bounds", "n_train", "holdout"):
        assert after[key] == before[key], key
    assert (after["schema_version"], after["format"], after["artifact"]) == (3, "npz", "pretrained-model.npz")
    assert {**after["kernel"], "log_likelihood": None} == {**before["kernel"], "log_likelihood": None}
    gpy = GPRegressionModel.load(PARK_PICKLE)
    # and the log-likelihood (a Cholesky factorisation: its last digits differ by CPU) agrees to that rounding
    assert abs(after["kernel"]["log_likelihood"] - before["kernel"]["log_likelihood"]) <= log_likelihood_tolerance(gpy)
    # and the posterior file, read as the function reads it, predicts as GPy does, to rounding
    served = load_model(PackagedArtifact(output)).model
    assert isinstance(served, PosteriorModel)
    X = package_model.points_across({k: tuple(v) for k, v in before["bounds"].items()}, 256)
    mean_bound, variance_bound = package_model.rounding_tolerances(gpy, X)
    for latent in (False, True):
        reference = gpy.predict_with_gpy(X, latent=latent)
        assert np.all(np.abs(served.predict(X, latent=latent).mean - reference.mean) <= mean_bound)
        assert np.all(np.abs(served.predict(X, latent=latent).variance - reference.variance) <= variance_bound)


def test_the_deployed_model_is_what_the_packaging_code_writes():
    # given whatever is deployed in model_artifacts/ (the Park example, or a user's own model)
    document = json.loads(manifest_path_for(DEPLOYED_MODEL).read_text())
    manifest = ModelManifest.model_validate(document)
    # then it validates against the packaging schema, and loads as the function loads it, every array checked
    loaded = load_model(PackagedArtifact(DEPLOYED_MODEL))
    assert loaded.manifest.format == manifest.format
    if manifest.format == "npz":
        assert isinstance(loaded.model, PosteriorModel)
        assert manifest.posterior is not None
    # and the Park example, if that is what is deployed, is the conversion of the pickle in tests/data/park/
    if manifest.name == "park1991":
        before = json.loads(manifest_path_for(PARK_PICKLE).read_text())
        for key in ("name", "version", "features", "outputs", "bounds", "n_train", "holdout"):
            assert document[key] == before[key], key


@pytest.mark.parametrize("fixture", ["matern_user_pickle", "rbf_restarts_pickle"])
def test_an_ordinary_user_model_is_packaged_with_the_fast_path(fixture: str, request, tmp_path: Path, capsys):
    # given an ordinary fit, ill-conditioned as fitted GPs are
    path = request.getfixturevalue(fixture)
    output = tmp_path / "model.npz"
    # when
    status = package_model.main(ordinary_arguments(path, output))
    # then it is packaged as a posterior file, predicting through the fast path, which agrees with GPy to rounding
    stdout = capsys.readouterr().out
    assert status == 0
    assert "predicts through the numpy/BLAS fast path" in stdout
    assert "warning" not in stdout
    manifest = json.loads(manifest_path_for(output).read_text())
    assert "predict_through_gpy" not in manifest
    served = load_model(PackagedArtifact(output)).model
    assert isinstance(served, PosteriorModel)
    X = package_model.points_across(ORDINARY_BOUNDS, package_model.CHECK_POINTS)
    mean_error, variance_error = package_model.fast_path_error(wrapped(path), X, served=served)
    assert mean_error <= 1
    assert variance_error <= 1


def _lengthscale_off(posterior: GPPosterior) -> GPPosterior:
    return dataclasses.replace(posterior, inverse_lengthscale=posterior.inverse_lengthscale * (1 + 1e-6))


def _offset_dropped(posterior: GPPosterior) -> GPPosterior:
    return dataclasses.replace(posterior, y_mean=np.zeros_like(posterior.y_mean))


def _cholesky_off(posterior: GPPosterior) -> GPPosterior:
    assert posterior.cholesky is not None
    return dataclasses.replace(posterior, cholesky=posterior.cholesky * (1 + 1e-9))


@pytest.mark.parametrize("fixture", ["matern_user_pickle", "rbf_restarts_pickle"])
@pytest.mark.parametrize(
    ("perturb", "which"),
    [(_lengthscale_off, "mean"), (_offset_dropped, "mean"), (_cholesky_off, "variance")],
    ids=["lengthscale-1e-6-relative", "normaliser-offset-dropped", "cholesky-1e-9-relative"],
)
def test_the_check_catches_a_fast_path_that_computes_something_else(fixture: str, perturb, which: str, request):
    # given an ordinary model whose fast path agrees with GPy to rounding
    model = wrapped(request.getfixturevalue(fixture))
    X = package_model.points_across(ORDINARY_BOUNDS, package_model.CHECK_POINTS)
    assert model.posterior is not None
    assert max(package_model.fast_path_error(model, X)) <= 1
    # when the fast path is slightly wrong
    model.posterior = perturb(model.posterior)
    mean_error, variance_error = package_model.fast_path_error(model, X)
    # then the check says so
    assert (mean_error if which == "mean" else variance_error) > 1


def test_a_model_the_fast_path_cannot_match_is_packaged_to_predict_through_gpy(
    matern_user_pickle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
):
    # given a fast path that drops the normaliser's offset: it cannot match GPy
    from handler.gp import from_gpy

    real = from_gpy.posterior_from_gpy
    monkeypatch.setattr(from_gpy, "posterior_from_gpy", lambda gp: _offset_dropped(real(gp)))
    output = tmp_path / "model.pkl"
    # when
    status = package_model.main(ordinary_arguments(matern_user_pickle, output))
    # then it is packaged, not refused; the summary warns, and the manifest records why it predicts through GPy
    stdout = capsys.readouterr().out
    assert status == 0
    assert "predicts through GPy's own predict (the fast path does not match it" in stdout
    assert "warning: the fast path differs from GPy by" in stdout
    manifest = ModelManifest.model_validate_json(manifest_path_for(output).read_text())
    assert manifest.predict_through_gpy is not None
    assert manifest.predict_through_gpy.startswith("the fast path differs from GPy by")
    assert (manifest.format, manifest.artifact) == ("pickle", "model.pkl")
    # and the loader honours it, saying why in the log
    with caplog.at_level("WARNING", logger="handler.gp.gpy_model"):
        model = load_model(PackagedArtifact(output)).model
    assert isinstance(model, GPRegressionModel)
    assert model.posterior is None
    assert f"predicting through GPy, as the manifest says: {manifest.predict_through_gpy}" in caplog.text
    X = ordinary_design(50, seed=11)
    gpy_mean, gpy_variance = model.gp.predict(X)
    prediction = model.predict(X)
    np.testing.assert_array_equal(prediction.mean, gpy_mean)  # the same code on the same machine: bit for bit
    np.testing.assert_array_equal(prediction.variance, gpy_variance)


def test_counts_of_one_read_in_the_singular(matern_user_pickle: Path):
    model = wrapped(matern_user_pickle)
    with pytest.raises(package_model.PackagingError, match=r"^the model has 2 outputs but 1 output name was given$"):
        package_model.check_counts(model, ["a", "b", "c"], ["y"])


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


def test_a_model_that_explains_everything_as_noise_is_refused_and_forced_packaged_with_a_warning(tmp_path: Path):
    import GPy

    # given a fit stuck where GPy's defaults often leave inputs in large units: all noise, little signal
    X = plant_design(40, seed=3)
    gp = GPy.models.GPRegression(X, plant(X)[:, 1:], GPy.kern.RBF(3), normalizer=True)
    gp.kern.variance = 0.05
    gp.likelihood.variance = 1.0
    (tmp_path / "noisy.pkl").write_bytes(pickle.dumps(gp))
    # when it is packaged
    refused = run(tmp_path / "noisy.pkl", "--features", "a,b,c", "--output", tmp_path / "out.pkl")
    # then the quality gate refuses it: its training points, each left out, are predicted no better than the mean
    assert refused.returncode == 3
    assert "leave-one-out y: R2" in refused.stderr
    assert not (tmp_path / "out.pkl").exists()
    # and forced, it is packaged, and the summary says what looks wrong
    result = run(tmp_path / "noisy.pkl", "--features", "a,b,c", "--output", tmp_path / "out.pkl", "--force")
    assert result.returncode == 0, result.stderr
    assert "warning: the fitted noise variance (1) exceeds the kernel's (0.05)" in result.stdout
    assert "WARNING: packaged with --force although it fails the quality gate" in result.stderr


def test_a_well_fitted_model_gets_no_warning(plant_model_path: Path, tmp_path: Path):
    source = plant_model_path.parent.parent / "plant.pkl"  # what the plant fixture packaged
    result = run(source, "--features", ",".join(PLANT_FEATURES), "--outputs", "conversion,purity",
                 "--output", tmp_path / "again.pkl")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout


def test_packaging_never_removes_the_users_pickle_nor_a_file_no_manifest_names(
    matern_user_pickle: Path, tmp_path: Path
):
    # given the user's pickle (no manifest beside it names it)
    folder = tmp_path / "work"
    folder.mkdir()
    source = folder / "plant.pkl"
    shutil.copy(matern_user_pickle, source)
    # when it is packaged beside itself, under its own name
    result = run(source, "--features", "a,b,c", "--outputs", "y1,y2", "--output", folder / "plant.npz")
    # then the posterior file is written and the user's pickle is still there, byte for byte
    assert result.returncode == 0, result.stderr
    assert source.read_bytes() == matern_user_pickle.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["plant.manifest.json", "plant.npz", "plant.pkl"]


@pytest.mark.parametrize("name", ["o.tar.gz", "park-v1.2"])
def test_an_output_name_with_another_suffix_is_refused(matern_user_pickle: Path, tmp_path: Path, name: str):
    result = run(matern_user_pickle, "--features", "a,b,c", "--outputs", "y1,y2", "--output", tmp_path / name)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "expected a .npz or .pkl name" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("beside", "message"),
    [({"features": 5}, "features must be an array"), ({"version": 5}, "version must be a string"),
     ({"features": ["a", "b", "c"], "bounds": {"a": [0]}}, "each bound must be a [low, high] pair")],
    ids=["features-a-number", "version-a-number", "bound-not-a-pair"],
)  # fmt: skip
def test_a_malformed_manifest_beside_the_model_is_one_line(matern_user_pickle: Path, tmp_path: Path, beside, message):
    source = tmp_path / "model.pkl"
    shutil.copy(matern_user_pickle, source)
    manifest_path_for(source).write_text(json.dumps(beside))
    result = run(source, "--output", tmp_path / "out" / "model.npz")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert message in result.stderr


def test_a_check_that_produces_nan_fails_rather_than_passes():
    assert package_model._worst_ratio(np.array([np.nan, 5.0]), np.array([1.0, 1.0])) == float("inf")
    assert package_model._worst_ratio(np.array([0.0, 0.5]), np.array([0.0, 1.0])) == 0.5


def test_bounds_whose_width_overflows_are_refused():
    with pytest.raises(package_model.PackagingError, match="finite LOW < HIGH"):
        package_model.parse_bounds("a=-1e308:1e308", ["a"])


def test_bounds_far_from_zero_against_their_width_are_refused_unless_forced(matern_user_pickle: Path, tmp_path: Path):
    # given a user's model and bounds for its first feature centred 1,000 of their widths from zero
    model = wrapped(matern_user_pickle)
    features = [f"x{j + 1}" for j in range(model.input_dim)]
    far = {"x1": (1000.0, 1001.0)}
    # when it is packaged, then it is refused, naming the feature and the offset, and nothing is written
    with pytest.raises(package_model.PackagingError, match=r"x1's bounds .* centred 1000 of their widths") as refused:
        package_model.package(model, b"", tmp_path / "far.npz", features=features, bounds=far, name="far")
    assert "x1 - 1000.5" in str(refused.value)
    assert not any(tmp_path.iterdir())
    # and forced, it is packaged
    _, artifact = package_model.package(model, b"", tmp_path / "far.npz", features=features, bounds=far, name="far",
                                        force=True)  # fmt: skip
    assert artifact.exists()
