"""The packaging quality gate: a model no better than its mean is refused unless forced (issue 21).

The case a new user met: the Borehole function (8 inputs in physical units, ranges from 0.1 to 52,000), 300 points,
GPy's Matern-3/2 ARD with its default lengthscales of 1: the optimiser never moves them and the model predicts the
outputs' mean everywhere.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handler.api.schemas import ModelManifest
from handler.gp.artifact import manifest_path_for
from handler.gp.gpy_model import wrap_gpy_model
from handler.gp.unpickling import load_pickle
from scripts import package_model
from tests.conftest import PACKAGE_MODEL, built_once

BOREHOLE_BOUNDS = {
    "rw": (0.05, 0.15), "r": (100.0, 50_000.0), "Tu": (63_070.0, 115_600.0), "Hu": (990.0, 1_110.0),
    "Tl": (63.1, 116.0), "Hl": (700.0, 820.0), "L": (1_120.0, 1_680.0), "Kw": (9_855.0, 12_045.0),
}  # fmt: skip
BOREHOLE_FEATURES = ",".join(BOREHOLE_BOUNDS)


def borehole(X: np.ndarray) -> np.ndarray:
    """Water flow through a borehole, m3/yr (Harper & Gupta 1983; the SFU simulation library's `borehole`)."""
    rw, r, Tu, Hu, Tl, Hl, L, Kw = X.T
    log_ratio = np.log(r / rw)
    return 2 * np.pi * Tu * (Hu - Hl) / (log_ratio * (1 + 2 * L * Tu / (log_ratio * rw**2 * Kw) + Tu / Tl))


def borehole_design(n: int, seed: int) -> np.ndarray:
    from scipy.stats import qmc

    low, high = np.array(list(BOREHOLE_BOUNDS.values())).T
    return qmc.scale(qmc.LatinHypercube(d=len(BOREHOLE_BOUNDS), seed=seed).random(n), low, high)


def build_borehole(folder: Path) -> None:
    """`unscaled.pkl`: as the user fitted it; `started.pkl`: the same data, lengthscales started at the ranges;
    `holdout.csv`: 200 other points."""
    import GPy

    X = borehole_design(300, seed=0)
    Y = borehole(X)[:, None]
    unscaled = GPy.models.GPRegression(X, Y, GPy.kern.Matern32(8, ARD=True), normalizer=True)
    np.random.seed(0)  # GPy draws restart points from numpy's global generator
    unscaled.optimize_restarts(1, verbose=False)  # one restart stays stuck as the user's three did
    (folder / "unscaled.pkl").write_bytes(pickle.dumps(unscaled))
    ranges = X.max(axis=0) - X.min(axis=0)
    started = GPy.models.GPRegression(X, Y, GPy.kern.Matern32(8, lengthscale=ranges, ARD=True), normalizer=True)
    started.optimize(max_iters=50)
    (folder / "started.pkl").write_bytes(pickle.dumps(started))
    X_holdout = borehole_design(200, seed=1)
    rows = np.column_stack([X_holdout, borehole(X_holdout)])
    np.savetxt(folder / "holdout.csv", rows, delimiter=",", header=f"{BOREHOLE_FEATURES},flow", comments="")


@pytest.fixture(scope="module")
def borehole_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "borehole", build_borehole)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PACKAGE_MODEL), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def borehole_arguments(folder: Path, model: str, output: Path) -> list[str | Path]:
    return [folder / model, "--features", BOREHOLE_FEATURES, "--outputs", "flow",
            "--holdout", folder / "holdout.csv", "--output", output]  # fmt: skip


def test_a_model_stuck_at_gpys_initial_lengthscales_is_refused_and_nothing_is_written(borehole_folder: Path, tmp_path):
    # given the user's Borehole fit, its lengthscales still GPy's initial 1.0
    gp = load_pickle(borehole_folder / "unscaled.pkl")
    assert np.all(gp.kern.lengthscale.values == package_model.GPY_INITIAL_LENGTHSCALE)
    output = tmp_path / "out" / "borehole.npz"
    # when it is packaged with the defaults
    result = run(*borehole_arguments(borehole_folder, "unscaled.pkl", output))
    # then it is refused, with one message of several lines: what failed, the rule, the cause, the way round
    assert result.returncode == 3, result.stdout
    assert result.stdout == ""
    message = result.stderr
    assert message.startswith("package_model: refused: this model predicts little better than its mean")
    assert "hold-out flow: R2 " in message
    assert "leave-one-out flow: R2 " in message
    assert f"R2 >= {package_model.MIN_R2} for every output" in message
    assert "inputs not scaled" in message
    for feature in BOREHOLE_BOUNDS:
        assert f"{feature} (range " in message, feature
    assert "are still 1, GPy's initial value" in message
    assert "--force" in message
    assert len(message.splitlines()) > 3
    # and nothing is written
    assert not output.parent.exists()


def test_forced_it_is_packaged_with_a_loud_warning_and_its_leave_one_out_accuracy_recorded(
    borehole_folder: Path, tmp_path: Path
):
    output = tmp_path / "borehole.npz"
    # when the same model is packaged with --force
    result = run(*borehole_arguments(borehole_folder, "unscaled.pkl", output), "--force")
    # then it is written, the summary prints both accuracies, and a warning on stderr says it failed the gate
    assert result.returncode == 0, result.stderr
    assert "leave-one-out flow: 300 points" in result.stdout
    assert "hold-out flow: 200 points" in result.stdout
    assert "WARNING: packaged with --force although it fails the quality gate" in result.stderr
    assert "are still 1, GPy's initial value" in result.stderr
    # and the manifest records the leave-one-out accuracy next to the hold-out's, for GET /model
    manifest = ModelManifest.model_validate_json(manifest_path_for(output).read_text())
    assert manifest.leave_one_out is not None
    assert manifest.holdout is not None
    assert manifest.leave_one_out["flow"].n_points == 300
    assert manifest.leave_one_out["flow"].r2 < package_model.MIN_R2
    assert manifest.holdout["flow"].r2 < package_model.MIN_R2


def test_the_same_data_with_lengthscales_started_at_the_ranges_passes(borehole_folder: Path, tmp_path: Path):
    output = tmp_path / "borehole.npz"
    # when the fit started each lengthscale at its feature's range
    result = run(*borehole_arguments(borehole_folder, "started.pkl", output))
    # then it passes the gate, without a warning
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout.lower() + result.stderr.lower()
    manifest = ModelManifest.model_validate_json(manifest_path_for(output).read_text())
    assert manifest.leave_one_out is not None
    assert manifest.holdout is not None
    assert package_model.quality_problems({"hold-out": manifest.holdout, "leave-one-out": manifest.leave_one_out}) == []


def smooth_model(noise: float = 1e-4, signal: float = 1.0, sparse: bool = False):
    """A GP with fixed hyperparameters on a smooth function of two inputs: fitted well, nothing optimised."""
    import GPy

    X = np.random.default_rng(2).uniform(size=(60, 2))
    Y = np.column_stack([np.sin(3 * X[:, 0]) + X[:, 1], np.cos(2 * X[:, 1]) * X[:, 0]])
    kernel = GPy.kern.RBF(2, variance=signal, lengthscale=[0.4, 0.5], ARD=True)
    if sparse:
        gp = GPy.models.SparseGPRegression(X, Y, kernel, Z=X[::6].copy(), normalizer=True)
    else:
        gp = GPy.models.GPRegression(X, Y, kernel, normalizer=True)
    gp.likelihood.variance = noise
    return gp


@pytest.mark.parametrize("sparse", [False, True], ids=["exact", "sparse"])
def test_leave_one_out_in_closed_form_is_gpy_refitted_without_each_point(sparse: bool):
    import GPy

    # given a model, exact or sparse (inducing points kept)
    gp = smooth_model(noise=1e-3, sparse=sparse)
    # when each training point is predicted from the others in closed form
    loo = package_model.leave_one_out(wrap_gpy_model(gp))
    assert isinstance(loo, package_model.LeaveOneOut)
    # then it is what GPy predicts for it, refitted on the others with the same hyperparameters
    X, Y = np.asarray(gp.X), np.asarray(gp.Y_normalized)
    noise = float(gp.likelihood.variance.values[0])
    A = gp.kern.K(X) + noise * np.eye(len(X))
    # both are solves with (K + noise I) or its DTC counterpart: each within cond x eps of the exact, relative
    tolerance = 100 * len(X) * np.linalg.cond(A) * np.finfo(float).eps
    for i in (0, 17, 59):
        others = np.arange(len(X)) != i
        if sparse:
            refit = GPy.models.SparseGPRegression(X[others], Y[others], gp.kern.copy(), Z=np.asarray(gp.Z).copy())
        else:
            refit = GPy.models.GPRegression(X[others], Y[others], gp.kern.copy())
        refit.likelihood.variance = noise
        mean, variance = refit.predict(X[i : i + 1])
        mean, variance = gp.normalizer.inverse_mean(mean), gp.normalizer.inverse_variance(variance)
        scale = gp.normalizer.std
        np.testing.assert_allclose(loo.mean[i], mean[0], rtol=0, atol=tolerance * float(np.max(scale)))
        np.testing.assert_allclose(loo.variance[i], variance[0], rtol=tolerance)
    np.testing.assert_array_equal(loo.Y, np.asarray(gp.Y))


def test_a_model_without_a_closed_form_says_why():
    import GPy

    X = np.random.default_rng(1).uniform(size=(20, 1))
    laplace = GPy.inference.latent_function_inference.Laplace()
    gp = GPy.core.GP(X, np.sin(6 * X), GPy.kern.RBF(1), GPy.likelihoods.StudentT(), inference_method=laplace)
    assert package_model.leave_one_out(wrap_gpy_model(gp)) == "likelihood StudentT is not Gaussian: no closed form"


def test_intervals_plainly_too_narrow_are_refused_even_where_the_mean_is_good(tmp_path: Path):
    # given a good fit, and the same with its kernel and noise variances scaled by 1e-4: intervals 100x narrower
    features, outputs = ["x1", "x2"], ["a", "b"]
    good, narrow = smooth_model(noise=1e-2), smooth_model(noise=1e-6, signal=1e-4)
    # when each is packaged
    package_model.package(wrap_gpy_model(good), b"", tmp_path / "good.npz", features=features, outputs=outputs,
                          name="good")  # fmt: skip
    with pytest.raises(package_model.QualityGateError) as refused:
        package_model.package(wrap_gpy_model(narrow), b"", tmp_path / "narrow.npz", features=features,
                              outputs=outputs, name="narrow")  # fmt: skip
    # then the narrow one is refused for its intervals alone (its mean is as good), and nothing of it is written
    assert "leave-one-out a: the 95% interval covers" in str(refused.value)
    assert "over-confident" in str(refused.value)
    assert " R2 " not in str(refused.value).split("The rule")[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.manifest.json", "good.npz"]


def test_every_model_the_suite_packages_passes_the_gate_unforced(
    tiny_model_path: Path, tiny_posterior_path: Path, plant_model_path: Path
):
    # (the fixtures package without --force: a model failing the gate would have failed its fixture)
    for path in (tiny_model_path, tiny_posterior_path, plant_model_path):
        manifest = ModelManifest.model_validate_json(manifest_path_for(path).read_text())
        assert manifest.leave_one_out is not None, path
        checks = {"hold-out": manifest.holdout, "leave-one-out": manifest.leave_one_out}
        assert package_model.quality_problems(checks) == [], path


def test_converting_a_packaged_model_keeps_its_gate_and_hold_out(borehole_folder: Path, tmp_path: Path):
    # given the stuck model packaged with --force as a pickle, its manifest beside it
    first = tmp_path / "first" / "borehole.pkl"
    assert run(*borehole_arguments(borehole_folder, "unscaled.pkl", first), "--force", "--gpy-route").returncode == 0
    # when it is converted (packaged again from that pickle) without --force
    result = run(first, "--output", tmp_path / "second" / "borehole.npz")
    # then it is refused again: the hold-out metrics from its manifest count too
    assert result.returncode == 3
    assert "hold-out flow: R2" in result.stderr
    assert json.loads(manifest_path_for(first).read_text())["holdout"]["flow"]["n_points"] == 200
