"""A posterior file that loads but cannot answer (issue 21, section 2): every route answers one fixed 503, never a
500, a `null` or a negative variance; a factor that is not the kernel's is refused at load.

The files are crafted from a small GPy model on [0, 1]^4 (the features every test model has): finite numbers
everywhere, the three load probes (two corners and the centre) finite, but wrong near (0.25, 0.25, 0.25, 0.25).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handler.gp import posterior_file
from handler.gp.artifact import PackagedArtifact, manifest_path_for
from handler.gp.broken import ModelBrokenError
from handler.gp.from_gpy import posterior_arrays
from handler.gp.model import LazyModel
from handler.gp.posterior import GPPosterior
from tests.conftest import FEATURES, built_once
from tests.events import api_event, lambda_context, response_json

HOT_SPOT = np.full(len(FEATURES), 0.25)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, np.ndarray]]:
    """A short-lengthscale RBF GP on 40 points and one at the hot spot: what is wrong there stays there."""

    def build(folder: Path) -> None:
        import GPy

        rng = np.random.default_rng(21)
        X = np.vstack([rng.uniform(size=(40, len(FEATURES))), HOT_SPOT])
        gp = GPy.models.GPRegression(
            X, np.sin(3 * X.sum(axis=1, keepdims=True)), GPy.kern.RBF(len(FEATURES), 1.0, 0.08)
        )
        gp.likelihood.variance = 1e-2
        kernel, _, arrays = posterior_arrays(gp)
        np.savez(folder / "arrays.npz", **arrays)
        (folder / "kernel").write_text(kernel)

    folder = built_once(tmp_path_factory, "broken-model-source", build)
    with np.load(folder / "arrays.npz") as npz:
        return (folder / "kernel").read_text(), {name: npz[name] for name in npz.files}


def write_model(folder: Path, kernel: str, arrays: dict[str, np.ndarray]) -> Path:
    """The arrays as a posterior file with a manifest that describes them truly (sha256 and all)."""
    import hashlib

    data, description = posterior_file.encode(arrays, "exact")
    path = folder / "model.npz"
    path.write_bytes(data)
    manifest = {
        "schema_version": 3, "format": "npz", "model_type": "GPy.models.GPRegression", "artifact": path.name,
        "sha256": hashlib.sha256(data).hexdigest(), "name": "crafted", "version": "1", "features": list(FEATURES),
        "outputs": ["y"], "bounds": {f: [0.0, 1.0] for f in FEATURES}, "kernel": {"name": kernel},
        "posterior": description,
    }  # fmt: skip
    manifest_path_for(path).write_text(json.dumps(manifest))
    return path


def overflowing_mean(kernel: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A woodbury vector of 1e300 at the hot spot: the mean is ~1e301 at the corners and centre, infinite there."""
    woodbury_vector = arrays["woodbury_vector"].copy()
    woodbury_vector[-1] = 1e300
    return {**arrays, "woodbury_vector": woodbury_vector, "y_std": np.array([1e10])}


def legacy_with_a_wrong_row(kernel: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A file of the old format (L^-1) whose hot spot's row, the last, is 1e3 too large: variances near it are far
    below zero, at the corners and centre as they should be; unit columns of L L^T other than the last miss it."""
    cholesky = arrays["cholesky"]
    inverse = np.linalg.solve(cholesky, np.eye(len(cholesky)))
    inverse[-1] *= 1e3
    return {**{k: v for k, v in arrays.items() if k != "cholesky"}, "cholesky_inverse": np.tril(inverse)}


def random_factor(kernel: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A random lower-triangular factor scaled by 1e3, with a positive diagonal: finite, and no one's kernel."""
    rng = np.random.default_rng(0)
    m = len(arrays["cholesky"])
    return {**arrays, "cholesky": 1e3 * (np.tril(rng.normal(size=(m, m)), -1) + np.diag(rng.uniform(1, 2, m)))}


@pytest.fixture(params=[overflowing_mean, legacy_with_a_wrong_row], ids=["overflowing-mean", "negative-variance"])
def broken_app(request: pytest.FixtureRequest, fitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from handler import app

    path = write_model(tmp_path, fitted[0], request.param(*fitted))
    if request.param is legacy_with_a_wrong_row:
        # the load check refuses this file (test below); the routes must hold even where a check misses
        monkeypatch.setattr(GPPosterior, "factor_mismatch", lambda *args, **kwargs: None)
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(path)))
    return app


def post(app, path: str, body: dict) -> tuple[int, dict, dict]:
    response = app.lambda_handler(api_event("POST", path, body), lambda_context())
    headers = {name: values[-1] for name, values in (response.get("multiValueHeaders") or {}).items()}
    return response["statusCode"], headers | (response.get("headers") or {}), response_json(response)


HOT = dict(zip(FEATURES, HOT_SPOT.tolist(), strict=True))
NEAR_HOT = {f: [0.25, 0.26] for f in FEATURES}
AROUND_HOT = {f: {"distribution": "uniform", "low": 0.2, "high": 0.3} for f in FEATURES}
ROUTES = {
    "predict": ("/predict", {f: [0.25, 0.26] for f in FEATURES}),
    "sample": ("/sample", {"points": NEAR_HOT, "samples": 4, "seed": 1}),
    "sensitivity": ("/sensitivity", {"n": 64, "seed": 1, "inputs": AROUND_HOT, "posterior_samples": 2}),
    "propagate": ("/propagate", {"n": 64, "seed": 1, "inputs": AROUND_HOT, "posterior_samples": 2}),
    "suggest": ("/suggest", {"q": 1, "seed": 1, "bounds": {f: [0.2, 0.3] for f in FEATURES}}),
}


def test_the_broken_files_load_they_pass_the_probes_at_the_corners_and_centre(broken_app):
    # given a broken file; when it is loaded; then it is (what is wrong lies away from the probes)
    loaded = broken_app.model.get()
    # and a prediction at the hot spot is what the model layer refuses to answer
    with pytest.raises(ModelBrokenError):
        loaded.model.predict(HOT_SPOT[None, :], latent=True)


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_answers_a_fixed_503_naming_the_model_as_broken(broken_app, route: str, caplog, request):
    # given a broken model; when a route asks it about the hot spot
    if request.node.callspec.id.startswith("negative-variance") and route in ("sensitivity", "propagate"):
        # Their draws use the factor through solves and answer finite numbers from a wrong one (not a negative
        # variance): against a factor that is not the kernel's, the load check is the defence (tests above).
        pytest.skip("a wrong factor gives these finite draws; the load check refuses such files")
    path, body = ROUTES[route]
    with caplog.at_level("ERROR"):
        status, headers, answer = post(broken_app, path, body)
    # then the answer is a 503 with Retry-After that names the model as broken, and the reason is only logged
    assert status == 503, answer
    assert answer["error"] == "model broken"
    assert int(headers["Retry-After"]) >= 1
    assert "values are not finite" not in json.dumps(answer)
    assert "standardised" not in json.dumps(answer)
    reasons = [str(getattr(record, "reason", "")) for record in caplog.records if record.getMessage() == "model broken"]
    assert any("values are not finite" in reason or "standardised" in reason for reason in reasons), reasons


def test_the_v2_infer_route_answers_503(broken_app):
    # given a broken model; when V2 infer asks about the hot spot
    name = broken_app.model.manifest().name
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": HOT_SPOT.tolist()}]}
    status, _, answer = post(broken_app, f"/v2/models/{name}/infer", body)
    # then it is a 503 with its fixed message, never a 500
    assert status == 503, answer
    assert set(answer) == {"error"}


def test_a_job_whose_chunk_the_model_cannot_answer_fails_with_a_clear_error(
    fitted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from moto import mock_aws

    from tests.jobs_harness import start_harness

    # given the jobs API on a model whose mean overflows at the hot spot
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(variable, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    path = write_model(tmp_path, fitted[0], overflowing_mean(*fitted))
    with mock_aws():
        jobs = start_harness(monkeypatch, LazyModel(PackagedArtifact(path)), chunk_points=1_000)
        points = np.full((1_500, len(FEATURES)), 0.5)
        points[1_200] = HOT_SPOT  # in the second chunk
        _, _, submitted = jobs.call(
            "POST", "/jobs", {"points": {f: points[:, i].tolist() for i, f in enumerate(FEATURES)}}
        )
        # when the queues run
        jobs.run()
        # then the job failed at once (not retried: the model will not heal) saying the model is broken
        _, _, status = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert status["status"] == "FAILED", status
    assert "the model is broken" in status["error"]
    assert "1e+300" not in status["error"]


def test_a_factor_that_is_not_the_kernels_is_refused_at_load(fitted, tmp_path: Path, monkeypatch, caplog):
    from handler import app

    # given a posterior file whose factor is a random lower-triangular matrix scaled by 1e3
    path = write_model(tmp_path, fitted[0], random_factor(*fitted))
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(path)))
    # when it is asked for a prediction
    with caplog.at_level("ERROR"):
        status, _, answer = post(app, "/predict", {f: [0.5] for f in FEATURES})
    # then the load refused it (the fixed 503 of a model that cannot be loaded), saying why in the log
    assert status == 503, answer
    assert answer["error"] == "model unavailable"
    assert "its factor does not belong to its kernel" in caplog.text


@pytest.mark.parametrize("seed", range(5))
def test_an_old_format_factor_with_one_wrong_row_is_refused_at_load(fitted, seed: int):
    # given the old format's L^-1 with its last row 1e3 too large, and the true one
    kernel, arrays = fitted
    wrong = GPPosterior.from_arrays(kernel, legacy_with_a_wrong_row(kernel, arrays))
    right = {**{k: v for k, v in arrays.items() if k != "cholesky"}}
    right["cholesky_inverse"] = np.tril(np.linalg.solve(arrays["cholesky"], np.eye(len(arrays["cholesky"]))))
    # when each is checked in random directions, whatever the draw
    found = wrong.factor_mismatch(8, np.random.default_rng(seed))
    # then the wrong one is named and the true one passes
    assert found is not None
    assert "random directions" in found
    assert GPPosterior.from_arrays(kernel, right).factor_mismatch(8, np.random.default_rng(seed)) is None


@pytest.mark.parametrize("seed", range(5))
def test_a_factor_with_one_wrong_diagonal_entry_is_refused_whichever_columns_are_sampled(fitted, seed: int):
    # given L with its last diagonal entry 50 times too large: only its own column of L L^T shows it
    kernel, arrays = fitted
    cholesky = arrays["cholesky"].copy()
    cholesky[-1, -1] *= 50.0
    wrong = GPPosterior.from_arrays(kernel, {**arrays, "cholesky": cholesky})
    # when it is checked on 8 sampled columns, whatever the draw
    found = wrong.factor_mismatch(8, np.random.default_rng(seed))
    # then the diagonal, checked on every row, names it; and the true factor passes
    assert found is not None
    assert "diagonal" in found
    assert GPPosterior.from_arrays(kernel, arrays).factor_mismatch(8, np.random.default_rng(seed)) is None


def test_a_woodbury_vector_that_does_not_fit_the_published_outputs_is_refused_at_load(fitted):
    # given the posterior of a model, its training outputs, and the same posterior with a woodbury vector 1e-6 off
    kernel, arrays = fitted
    posterior = GPPosterior.from_arrays(kernel, arrays)
    assert posterior.cholesky is not None
    outputs = posterior.cholesky @ (posterior.cholesky.T @ posterior.woodbury_vector)  # what it solves for
    off = GPPosterior.from_arrays(kernel, {**arrays, "woodbury_vector": arrays["woodbury_vector"] * (1 + 1e-6)})
    rng = np.random.default_rng(1)
    # when each is checked against the outputs
    # then the true one passes on every draw of columns, the other fails
    assert all(posterior.factor_mismatch(8, rng, outputs) is None for _ in range(10))
    assert (
        off.factor_mismatch(8, rng, outputs)
        == "the woodbury vector does not solve (K + noise I) w = the training outputs"
    )


def test_a_variance_below_zero_by_rounding_is_answered_as_zero_and_far_below_as_broken():
    # given a model with almost no noise, whose latent variance at its training inputs is ~1e-9 of the prior's,
    # and the same model with a factor 1e-9 too small (variances there ~-2e-9 of the prior's: what rounding can
    # do where K is conditioned ~1e10) or 1e-3 too small (variances far below zero)
    import dataclasses

    import GPy

    from handler.gp.from_gpy import posterior_from_gpy

    X = np.linspace(0, 1, 50)[:, None]
    gp = GPy.models.GPRegression(X, np.sin(3 * X), GPy.kern.RBF(1, lengthscale=0.5))
    gp.likelihood.variance = 1e-10
    posterior = posterior_from_gpy(gp)
    assert posterior.cholesky is not None
    rounded = dataclasses.replace(posterior, cholesky=posterior.cholesky * (1 - 1e-9))
    broken = dataclasses.replace(posterior, cholesky=posterior.cholesky * (1 - 1e-3))
    with np.errstate(all="ignore"):
        below = rounded.kernel_variance - np.vecdot(*2 * [rounded.whitened(rounded.cross_covariance(X))])
    assert below.min() < 0, "the factor 1e-9 off takes some variances below zero"
    # when their latent variances at the training inputs are computed
    # then the rounded ones are answered as zero, never below
    assert rounded.predict(X, latent=True).variance.min() == 0.0
    # and the broken ones are refused
    with pytest.raises(ModelBrokenError, match="below what rounding explains"):
        broken.predict(X, latent=True)
