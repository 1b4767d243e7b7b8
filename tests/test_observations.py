"""New simulations (POST /models/{name}/observations): conditioned versions equal GPy's posterior on all the data,
the alias's version scored on rows it has not seen, concurrent posts all kept, a worse canary rolled back, hostile
bodies refused naming the field (moto, in-process; one HTTP test against the local server)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handler import registry_admin_app
from handler.gp import posterior_file
from handler.gp.from_gpy import posterior_arrays
from handler.gp.posterior import GPPosterior
from handler.registry.datasets import DatasetStore, datasets_from_store
from handler.training import observation_uploads, observations
from handler.training.conditioning import GPY_VARDTC_JITTER, condition, kernel_on
from tests.conftest import ROOT, built_once
from tests.events import api_event, lambda_context, response_json
from tests.registry_harness import ADMIN_KEY_ID, Registry, start_registry

FEATURES = ["a", "b", "c"]
OUTPUTS = ["u", "v"]
EPS = float(np.finfo(float).eps)


def simulator(X: np.ndarray) -> np.ndarray:
    return np.column_stack([np.sin(X @ [3.0, 2.0, 1.0]), X[:, 0] ** 2 - X[:, 2]])


def design(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 3))


@pytest.fixture(scope="module", params=["exact", "sparse"])
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A small GPy model of `simulator` (2 outputs, normalised), exact (Matern-5/2) or sparse (RBF, 12 inducing
    inputs), and its posterior file packaged as scripts/package_model.py writes it, publishing its training data."""

    def build(folder: Path) -> None:
        import GPy

        from handler.gp.gpy_model import GPRegressionModel, SparseGPRegressionModel
        from scripts.package_model import package

        X = design(40, seed=3)
        Y = simulator(X)
        if request.param == "exact":
            gp = GPy.models.GPRegression(X, Y, GPy.kern.Matern52(3, ARD=True), normalizer=True)
            wrapper: type[GPRegressionModel] = GPRegressionModel
        else:
            np.random.seed(3)
            gp = GPy.models.SparseGPRegression(X, Y, GPy.kern.RBF(3, ARD=True), num_inducing=12, normalizer=True)
            wrapper = SparseGPRegressionModel
        gp.optimize(max_iters=200)
        pickle_bytes = pickle.dumps(gp)
        (folder / "gp.pkl").write_bytes(pickle_bytes)
        package(
            wrapper(gp), pickle_bytes, folder / "model.npz", features=FEATURES, outputs=OUTPUTS,
            bounds=dict.fromkeys(FEATURES, (0.0, 1.0)), name="observed", limits={"a": (0.0, None)},
            publish_training_data="inputs_and_outputs", force=True,
        )  # fmt: skip

    folder = built_once(tmp_path_factory, f"observations-{request.param}", build)
    return pickle.loads((folder / "gp.pkl").read_bytes()), folder / "model.npz"


def gpy_on_all_the_data(gp: Any, X: np.ndarray, Y: np.ndarray) -> Any:
    """GPy's own posterior with the same hyperparameters and normaliser (not refitted to the new outputs)."""
    from GPy.util.normalizer import Standardize

    class Kept(Standardize):
        def scale_by(self, Y: np.ndarray) -> None:  # the parent's mean and sd, kept
            pass

    normalizer = Kept()
    normalizer.mean, normalizer.std = gp.normalizer.mean.copy(), gp.normalizer.std.copy()
    reference = gp.copy()
    reference.normalizer = normalizer
    reference.set_XY(X, Y)
    return reference


def tolerances(
    kernel: str, inference: str, arrays: dict, X_all: np.ndarray, Y_all: np.ndarray, X: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """How far two correct float64 computations of the conditioned mean and variance at X may differ.

    Each solves with a matrix A (exact: K + s2 I; sparse: Kuu and S = Kuu + Kuf Kfu / s2) formed with its own
    rounding: the kernels differ entrywise by R (`cross_covariance_rounding`) and a factorisation's backward error is
    at most ~m eps |A| (ten times that allowed). A perturbation dA moves k A^-1 b by |A^-1 k|^T |dA| |A^-1 b|
    (first order), and k itself by R |A^-1 b|: sharper than cond(A), and computed from the very vectors involved.
    """
    kern = kernel_on(kernel, arrays, X_all if inference == "exact" else arrays["inputs"])
    U = kern.inputs
    y_std = np.asarray(arrays["y_std"])
    K_star, R_star = kern.cross_covariance(X), kern.cross_covariance_rounding(X)
    R_uu = kern.cross_covariance_rounding(U)
    s2 = float(arrays["noise_variance"])
    Ys = (Y_all - arrays["y_mean"]) / y_std
    if inference == "exact":
        A = kern.cross_covariance(U) + (s2 + 1e-8) * np.eye(len(U))
        systems = [(A, R_uu, Ys, 1.0)]
    else:
        Kuf, R_uf = kern.cross_covariance(X_all).T, kern.cross_covariance_rounding(X_all).T
        beta = 1 / max(s2, GPY_VARDTC_JITTER)
        Kuu = kern.cross_covariance(U) + GPY_VARDTC_JITTER * np.eye(len(U))
        S = Kuu + beta * Kuf @ Kuf.T
        R_S = R_uu + beta * (R_uf @ np.abs(Kuf.T) + np.abs(Kuf) @ R_uf.T)
        systems = [(Kuu, R_uu, None, -1.0), (S, R_S, beta * Kuf @ Ys, 1.0)]
    mean_tol = np.zeros((len(X), Ys.shape[1]))
    variance_tol = np.full(len(X), 8 * EPS * float(arrays["kernel_variance"]))
    for A, R, b, _ in systems:
        dA = 10 * len(A) * EPS * np.abs(A) + R
        q = np.abs(np.linalg.solve(A, K_star.T))  # |A^-1 k|, (m, points)
        variance_tol += np.einsum("ip,ij,jp->p", q, dA, q) + 2 * np.sum(R_star.T * q, axis=0)
        if b is not None:
            w = np.abs(np.linalg.solve(A, b))
            if inference == "sparse":  # b = Kuf Y / s2 is formed with rounded kernels too
                w_b = np.abs(np.linalg.solve(A, R_uf @ np.abs(Ys))) * beta
                w_extra = q.T @ (R_uf @ np.abs(Ys)) * beta
            else:
                w_b, w_extra = 0 * w, 0.0
            mean_tol += q.T @ dA @ w + R_star @ (w + w_b) + w_extra
    return mean_tol * y_std, variance_tol[:, None] * y_std**2


def test_a_conditioned_posterior_predicts_as_gpy_does_after_set_xy_on_all_the_data(fitted):
    # given a fitted model, and 20 new simulations
    gp, _ = fitted
    kernel, inference, arrays = posterior_arrays(gp)
    X_new = design(20, seed=11)
    X_all, Y_all = np.vstack([gp.X, X_new]), np.vstack([gp.Y, simulator(X_new)])
    # when the posterior is conditioned on all of it with the same hyperparameters
    conditioned = condition(kernel, inference, arrays, X_all, Y_all)
    ours = GPPosterior.from_arrays(kernel, conditioned)
    reference = gpy_on_all_the_data(gp, X_all, Y_all)
    # then it predicts as GPy's own model on all the data, to what the conditioning explains
    X_test = np.vstack([design(200, seed=12), X_new])
    mean_tol, variance_tol = tolerances(kernel, inference, arrays, X_all, Y_all, X_test)
    gpy_mean, gpy_variance = reference.predict(X_test)
    prediction = ours.predict(X_test)
    assert np.all(np.abs(prediction.mean - gpy_mean) <= mean_tol)
    assert np.all(np.abs(prediction.variance - gpy_variance) <= variance_tol)
    # and the parent, which has not seen the new rows, is farther from GPy's than the tolerance: the check can fail
    parent = GPPosterior.from_arrays(kernel, arrays).predict(X_new)
    assert np.any(np.abs(parent.mean - gpy_mean[-20:]) > mean_tol[-20:])


def test_conditioning_and_surprise_run_without_gpy_or_scipy():
    # given a process where importing GPy, paramz or scipy fails
    probe = (
        "import importlib.abc, sys\n"
        "class Forbidden(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('GPy', 'paramz', 'scipy'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Forbidden())\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import handler.training.conditioning, handler.training.surprise, handler.training.observations\n"
        "import handler.registry_admin_app\n"
    )
    # when the admin function's observation modules are imported, then they import
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


# --- the route, in-process ------------------------------------------------------------------------------------


@pytest.fixture
def registry(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model) -> Registry:
    return start_registry(monkeypatch, tmp_path)


def live(registry: Registry, name: str, model_path: Path) -> int:
    """`name` published from `model_path`, its `live` alias on it."""
    status, checked = registry.publish(name, model_path)
    assert status == 200, checked
    status, _, moved = registry.call(
        "PUT", f"/models/{name}/aliases/live", {"version": checked["version"]}, ADMIN_KEY_ID
    )
    assert status == 200, moved
    return checked["version"]


def rows(X: np.ndarray) -> list[dict[str, float]]:
    Y = simulator(X)
    return [dict(zip(FEATURES + OUTPUTS, map(float, [*x, *y]), strict=True)) for x, y in zip(X, Y, strict=True)]


def observe(registry: Registry, name: str, body: dict, key: str | None = ADMIN_KEY_ID) -> tuple[int, Any]:
    """POST /models/{name}/observations to the admin function."""
    event = api_event("POST", f"/models/{name}/observations", body)
    event["requestContext"]["identity"]["apiKeyId"] = key
    response = registry_admin_app.lambda_handler(event, lambda_context())
    return response["statusCode"], response_json(response)


def test_twenty_simulations_make_a_conditioned_version_that_live_serves_with_its_surprise(registry: Registry, fitted):
    # given a model published with its training data, live on version 1
    gp, model_path = fitted
    parent = live(registry, "observed", model_path)
    X_new = design(20, seed=21)
    # when 20 new simulations are posted
    status, answer = observe(registry, "observed", {"data": {"rows": rows(X_new)}})
    # then they are appended to the data made from the published points, and a conditioned version is live
    assert status == 201, answer
    assert (answer["rows_before"], answer["rows_added"], answer["dataset"]["rows"]) == (40, 20, 60)
    version = answer["version"]
    assert version["state"] == "READY"
    assert version["origin"]["how"] == "conditioned"
    assert version["origin"]["parent_version"] == parent
    assert version["dataset"] == {k: answer["dataset"][k] for k in ("id", "rows", "sha256")}
    assert answer["promotion"]["promoted"] is True
    assert registry.store.alias("observed", "live").target.version == version["version"]
    # and the surprise is the parent's, scored on the new rows before it saw them (its own predictions of them)
    kernel, inference, arrays = posterior_arrays(gp)
    expected = GPPosterior.from_arrays(kernel, arrays).predict(X_new)
    z = np.abs(simulator(X_new) - expected.mean) / np.sqrt(expected.variance)
    surprise = answer["surprise"]
    assert surprise["version"] == f"observed/{parent}"
    for j, output in enumerate(OUTPUTS):
        assert surprise[output]["n"] == 20
        assert surprise[output]["max_abs_z"] == pytest.approx(float(z[:, j].max()), rel=1e-6)
        assert set(surprise[output]) == {"rmse", "mean_abs_z", "max_abs_z", "coverage_95", "msll", "n"}
    # and the new version is served, predicting the new rows as the posterior conditioned on all the data
    point = dict(zip(FEATURES, map(float, X_new[0]), strict=True))
    status, _, served = registry.call("POST", "/models/observed/predict", point)
    assert status == 200, served
    conditioned = GPPosterior.from_arrays(kernel, condition(kernel, inference, arrays, *_all(gp, X_new)))
    assert served["u"]["mean"] == pytest.approx(float(conditioned.predict(X_new[:1]).mean[0, 0]), rel=1e-9)


def _all(gp: Any, X_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.vstack([gp.X, X_new]), np.vstack([gp.Y, simulator(X_new)])


def test_refit_none_only_appends_and_scores_and_promote_never_leaves_the_alias(registry: Registry, fitted):
    _, model_path = fitted
    parent = live(registry, "observed", model_path)
    status, answer = observe(registry, "observed", {"data": {"rows": rows(design(5, 31))}, "refit": "none"})
    assert status == 201, answer
    assert answer["version"] is None
    assert answer["dataset"]["rows"] == 45
    status, answer = observe(registry, "observed", {"data": {"rows": rows(design(5, 32))}, "promote": "never"})
    assert status == 201, answer
    assert answer["version"]["state"] == "READY"
    assert answer["promotion"]["promoted"] is False
    assert registry.store.alias("observed", "live").target.version == parent


def test_an_exact_model_past_the_conditioning_limit_is_refused_before_its_rows_are_appended(
    registry: Registry, fitted, monkeypatch: pytest.MonkeyPatch
):
    # given an exact model of 40 rows and a limit of 50 rows for a conditioning in the request
    gp, model_path = fitted
    if type(gp).__name__ != "GPRegression":
        pytest.skip("sparse models condition on any number of rows (O(n m^2))")
    monkeypatch.setattr(observations, "MAX_EXACT_CONDITIONED_ROWS", 50)
    live(registry, "observed", model_path)
    # when 20 rows are posted to be conditioned on, then 409 names refit and nothing is appended
    status, answer = observe(registry, "observed", {"data": {"rows": rows(design(20, seed=71))}})
    assert status == 409, answer
    assert answer["details"][0]["field"] == "refit"
    assert datasets_from_store(registry.store).head("observed").rows == 40
    # and with refit none they are appended
    status, answer = observe(registry, "observed", {"data": {"rows": rows(design(20, seed=71))}, "refit": "none"})
    assert status == 201, answer
    assert answer["dataset"]["rows"] == 60


BAD_ROW = dict.fromkeys(FEATURES + OUTPUTS, 0.5)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"data": {"rows": [{**BAD_ROW, "a": "NaN"}]}}, 422, "data.rows[0].a"),
        ({"data": {"rows": [{**BAD_ROW, "u": True}]}}, 422, "data.rows[0].u"),
        ({"data": {"rows": [{**BAD_ROW, "a": -0.5}]}}, 422, "data.a"),  # below a's physical limit 0
        ({"data": {"rows": [{k: v for k, v in BAD_ROW.items() if k != "v"}]}}, 422, "data.rows[0]"),
        ({"data": {"rows": [{**BAD_ROW, "w": 1.0}]}}, 422, "data.rows[0]"),
        ({"data": {"rows": []}}, 422, "data.rows"),
        ({"data": {"columns": {"a": [0.1], "b": [0.1, 0.2]}}}, 422, "data.columns"),
        ({"data": {"columns": {name: [None] for name in FEATURES + OUTPUTS}}}, 422, "data.columns.a[0]"),
        ({"data": {"table": []}}, 422, "data"),
        ({"data": {"upload": "xlsx"}}, 422, "data.upload"),
        ({"data": {"upload": "csv"}, "refit": "sometimes"}, 422, "refit"),
        ({"data": {"rows": [BAD_ROW]}, "refit": "sometimes"}, 422, "refit"),
        ({"data": {"rows": [BAD_ROW]}, "promote": "maybe"}, 422, "promote"),
        ({"data": {"rows": [BAD_ROW]}, "alias": "no such"}, 422, "alias"),
        ({"data": {"rows": [BAD_ROW]}, "extra": 1}, 422, "'extra'"),
        ({}, 422, "data"),
    ],
)
def test_hostile_bodies_are_refused_naming_the_field_and_nothing_is_appended(
    registry: Registry, fitted, body: dict, status: int, field: str
):
    _, model_path = fitted
    live(registry, "observed", model_path)
    got, answer = observe(registry, "observed", body)
    assert got == status, answer
    assert answer["details"][0]["field"] == field
    assert datasets_from_store(registry.store).head("observed") is None


def test_a_body_past_the_row_limit_is_refused_before_a_row_is_read(registry: Registry, fitted):
    # given rows past the limit, each of which would itself be refused if it were read
    _, model_path = fitted
    live(registry, "observed", model_path)
    body = {"data": {"rows": ["not a row"] * (observations.MAX_OBSERVATION_ROWS + 1)}}
    # then the count is what is refused
    status, answer = observe(registry, "observed", body)
    assert status == 422, answer
    assert answer["details"][0]["field"] == "data.rows"
    assert str(observations.MAX_OBSERVATION_ROWS + 1) in answer["details"][0]["message"]
    # and a reader's key cannot post at all
    status, answer = observe(registry, "observed", {"data": {"rows": [BAD_ROW]}}, key=None)
    assert status == 403


def test_a_model_published_without_its_training_outputs_cannot_be_conditioned(
    registry: Registry, tiny_posterior_path: Path, tmp_path: Path
):
    # given a posterior file published with its training inputs only
    import hashlib

    from handler.gp.artifact import manifest_path_for

    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    with np.load(tiny_posterior_path) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "training_outputs"}
    data, description = posterior_file.encode(arrays, "exact")
    manifest.update(posterior=description, sha256=hashlib.sha256(data).hexdigest(), published_training_data="inputs")
    path = tmp_path / "inputs-only.npz"
    path.write_bytes(data)
    manifest_path_for(path).write_text(json.dumps(manifest))
    live(registry, "private", path)
    # when observations are posted, then the answer is 409 naming the data, and says how to fix it
    point = {"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5, "y": 1.0}
    status, answer = observe(registry, "private", {"data": {"rows": [point]}})
    assert status == 409, answer
    assert answer["details"][0]["field"] == "data"
    assert "--publish-training-data inputs_and_outputs" in answer["details"][0]["message"]
    assert "/train" in answer["details"][0]["message"]


def test_two_posts_at_once_are_both_kept_and_their_versions_are_in_order(
    registry: Registry, fitted, monkeypatch: pytest.MonkeyPatch
):
    # given a live model, and a post whose append is overtaken by another post that runs to its end (moto
    # in-process is not thread-safe: the race is laid out in order, as in tests/test_registry_datasets.py)
    _, model_path = fitted
    parent = live(registry, "observed", model_path)
    first, second = design(4, seed=41), design(6, seed=42)
    load = DatasetStore.load
    overtaken: list[Any] = []

    def load_then_the_other_post_lands(self: DatasetStore, dataset: Any) -> Any:
        answer = load(self, dataset)
        if not overtaken:
            overtaken.append(None)  # the other post's own reads go through unhindered
            overtaken[0] = observations.observe(
                registry.store, self, "observed", request_of(second), "bob", registry.resolver.cache_dir
            )
        return answer

    monkeypatch.setattr(DatasetStore, "load", load_then_the_other_post_lands)
    # when the first post runs
    status, answer = observe(registry, "observed", {"data": {"rows": rows(first)}})
    monkeypatch.setattr(DatasetStore, "load", load)
    # then both are kept, the overtaken one after the other, and each made a version, numbered in that order
    assert status == 201, answer
    other = overtaken[0]
    assert (other["rows_before"], other["dataset"]["rows"]) == (40, 46)
    assert (answer["rows_before"], answer["dataset"]["rows"]) == (46, 50)
    assert answer["version"]["version"] == other["version"]["version"] + 1
    # and live ends on the version that saw every row: the other was conditioned from the same parent on fewer
    assert other["promotion"]["promoted"] is True
    assert answer["promotion"]["promoted"] is True
    assert registry.store.alias("observed", "live").target.version == answer["version"]["version"]
    assert answer["version"]["origin"]["parent_version"] == parent
    X, _ = datasets_from_store(registry.store).load(datasets_from_store(registry.store).head("observed"))
    np.testing.assert_array_equal(X[40:46], second)
    np.testing.assert_array_equal(X[46:], first)


def request_of(X: np.ndarray) -> observations.Request:
    return observations.Request(X, simulator(X), "condition", "if_better", "live", None)


@pytest.fixture(scope="module")
def poor_model_path(fitted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kernel with the noise variance raised to the outputs' variance: a model that explains half of what
    it sees as noise (its predictions shrunk to the mean, its intervals wide), packaged with the gate forced."""
    gp, _ = fitted
    folder = tmp_path_factory.mktemp("poor")
    from handler.gp.gpy_model import GPRegressionModel, SparseGPRegressionModel
    from scripts.package_model import package

    poor = gp.copy()
    poor.likelihood.variance[:] = 1.0  # on the normalised scale: the outputs' own variance
    poor.parameters_changed()  # a copy's posterior is not recomputed on its own
    wrapper = GPRegressionModel if type(gp).__name__ == "GPRegression" else SparseGPRegressionModel
    package(
        wrapper(poor), pickle.dumps(poor), folder / "poor.npz", features=FEATURES, outputs=OUTPUTS,
        bounds=dict.fromkeys(FEATURES, (0.0, 1.0)), name="observed", limits={"a": (0.0, None)},
        publish_training_data="inputs_and_outputs", force=True,
    )  # fmt: skip
    return folder / "poor.npz"


@pytest.mark.parametrize("canary_is_worse", [True, False], ids=["worse-canary", "equal-canary"])
def test_a_canary_that_predicts_the_new_simulations_worse_is_rolled_back(
    registry: Registry, fitted, poor_model_path: Path, canary_is_worse: bool
):
    # given live on a good version with a canary taking 10%: a poor model, or the same good one
    _, model_path = fitted
    main = live(registry, "observed", model_path)
    status, checked = registry.publish("observed", poor_model_path if canary_is_worse else model_path)
    assert status == 200, checked
    canary = checked["version"]
    status, _, moved = registry.call(
        "PUT", "/models/observed/aliases/live",
        {"version": main, "canary": {"version": canary, "weight": 0.1}}, ADMIN_KEY_ID,
    )  # fmt: skip
    assert status == 200, moved
    # when 20 new simulations are posted
    status, answer = observe(registry, "observed", {"data": {"rows": rows(design(20, seed=51))}})
    assert status == 201, answer
    judged = answer["canary"]
    # then both were scored on them, and the canary is rolled back only if it did worse, the move recorded
    assert judged["judged"] is True
    assert judged["rolled_back"] is canary_is_worse
    assert judged["scores"]["canary"]["version"] == f"observed/{canary}"
    target = registry.store.alias("observed", "live").target
    assert target.version == answer["version"]["version"]  # the conditioned version is promoted either way
    assert target.canary_version == (None if canary_is_worse else canary)
    reasons = [move.get("reason") or "" for move in registry.store.history("observed")]
    assert any(r.startswith("canary judged by 20 new simulations") for r in reasons) is canary_is_worse


# --- by upload: POST {"data": {"upload": ...}}, PUT the file, POST .../start ------------------------------------------


def post(registry: Registry, path: str, body: dict | None = None, key: str | None = ADMIN_KEY_ID) -> tuple[int, Any]:
    event = api_event("POST", path, body)
    event["requestContext"]["identity"]["apiKeyId"] = key
    response = registry_admin_app.lambda_handler(event, lambda_context())
    return response["statusCode"], response_json(response)


def csv_of(X: np.ndarray, header: str = ",".join(FEATURES + OUTPUTS)) -> bytes:
    table = np.hstack([X, simulator(X)])
    return (header + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in table) + "\n").encode()


def npy_of(X: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.hstack([X, simulator(X)]))
    return buffer.getvalue()


def asked(registry: Registry, kind: str, **options: Any) -> dict:
    """An upload asked for: its id, URL and start route (202), nothing written but its record."""
    status, answer = observe(registry, "observed", {"data": {"upload": kind}, **options})
    assert status == 202, answer
    assert set(answer) == {"upload_id", "upload_url", "start", "expires_at"}
    assert answer["start"] == f"/models/observed/observations/uploads/{answer['upload_id']}/start"
    return answer


def put(registry: Registry, answer: dict, kind: str, content: bytes) -> None:
    """The caller's PUT to the presigned URL, done with the client (moto in-process serves no URLs)."""
    key = observation_uploads.upload_key("observed", answer["upload_id"], kind)
    assert f"/{key}?" in answer["upload_url"]
    registry.store.s3.put_object(Bucket=registry.store.bucket, Key=key, Body=content)


def test_thirty_simulations_uploaded_as_csv_are_conditioned_on_and_promoted(registry: Registry, fitted):
    # given a live model, and 30 new simulations in a CSV whose columns are in another order
    _, model_path = fitted
    parent = live(registry, "observed", model_path)
    X_new = design(30, seed=61)
    header = ",".join(["v", *FEATURES, "u"])
    table = np.hstack([simulator(X_new)[:, 1:], X_new, simulator(X_new)[:, :1]])
    content = (header + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in table)).encode()
    # when an upload is asked for with its options, the file PUT and started
    answer = asked(registry, "csv", promote="always", reason="batch 7")
    assert datasets_from_store(registry.store).head("observed") is None  # nothing appended before the start
    put(registry, answer, "csv", content)
    status, observed = post(registry, answer["start"])
    # then it is answered as the same rows inline are: appended, scored, conditioned and promoted with the reason
    assert status == 201, observed
    assert (observed["rows_before"], observed["rows_added"], observed["dataset"]["rows"]) == (40, 30, 70)
    assert observed["surprise"]["version"] == f"observed/{parent}"
    assert observed["surprise"]["u"]["n"] == 30
    assert observed["version"]["origin"]["how"] == "conditioned"
    assert observed["promotion"] == {**observed["promotion"], "rule": "always", "promoted": True}
    assert registry.store.alias("observed", "live").target.version == observed["version"]["version"]
    assert any((m.get("reason") or "").startswith("batch 7") for m in registry.store.history("observed"))
    # and the rows appended are the file's, in the model's column order
    datasets = datasets_from_store(registry.store)
    X, Y = datasets.load(datasets.head("observed"))
    np.testing.assert_array_equal(X[40:], X_new)
    np.testing.assert_array_equal(Y[40:], simulator(X_new))


def test_an_npy_upload_is_appended_with_refit_none(registry: Registry, fitted):
    _, model_path = fitted
    parent = live(registry, "observed", model_path)
    X_new = design(12, seed=62)
    answer = asked(registry, "npy", refit="none")
    put(registry, answer, "npy", npy_of(X_new))
    status, observed = post(registry, answer["start"])
    assert status == 201, observed
    assert (observed["rows_added"], observed["version"]) == (12, None)
    assert registry.store.alias("observed", "live").target.version == parent
    datasets = datasets_from_store(registry.store)
    np.testing.assert_array_equal(datasets.load(datasets.head("observed"))[0][40:], X_new)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (csv_of(design(5, 63), header="a,b,c,u"), "upload"),  # no column v
        (csv_of(np.vstack([design(4, 63), [[1.5, 0.5, 0.5]]])), "upload.a"),  # outside where the model answers
        (csv_of(design(5, 63)) + b"0.5,0.5\n", "upload"),  # a row short of columns
        (csv_of(design(5, 63)) + b"0.5,0.5,0.5,nan,0.1\n", "upload.u"),  # a value not finite
    ],
    ids=["header", "domain", "short-row", "nan"],
)
def test_a_refused_file_leaves_the_upload_pending_and_a_corrected_one_is_started(
    registry: Registry, fitted, content: bytes, field: str
):
    # given an upload asked for, and a file the inline route would refuse
    _, model_path = fitted
    live(registry, "observed", model_path)
    answer = asked(registry, "csv")
    put(registry, answer, "csv", content)
    # when it is started, then 422 names the field and nothing is appended
    status, refused = post(registry, answer["start"])
    assert status == 422, refused
    assert refused["details"][0]["field"] == field
    assert datasets_from_store(registry.store).head("observed") is None
    # and when a corrected file is PUT to the same upload, its start is observed
    put(registry, answer, "csv", csv_of(design(5, 64)))
    status, observed = post(registry, answer["start"])
    assert status == 201, observed
    assert observed["rows_added"] == 5


def test_an_upload_is_started_once_and_not_before_its_file_is_there(registry: Registry, fitted):
    _, model_path = fitted
    live(registry, "observed", model_path)
    answer = asked(registry, "npy", refit="none")
    # started before the PUT: 409, nothing uploaded yet
    status, refused = post(registry, answer["start"])
    assert status == 409, refused
    assert refused["details"][0]["field"] == "upload"
    put(registry, answer, "npy", npy_of(design(3, 65)))
    assert post(registry, answer["start"])[0] == 201
    # started again: 409, and the rows are in the data once
    status, refused = post(registry, answer["start"])
    assert status == 409, refused
    assert refused["details"][0]["field"] == "upload_id"
    assert datasets_from_store(registry.store).head("observed").rows == 43
    # an unknown or malformed id: 404
    for upload_id in ("0" * 32, "not-an-id"):
        status, missing = post(registry, f"/models/observed/observations/uploads/{upload_id}/start")
        assert status == 404, missing
        assert missing["details"][0]["field"] == "upload_id"


def test_an_upload_larger_than_the_limit_is_refused_by_its_size_before_it_is_read(
    registry: Registry, fitted, monkeypatch: pytest.MonkeyPatch
):
    # given a limit of 4 rows an upload, and a file of 30 rows PUT
    _, model_path = fitted
    live(registry, "observed", model_path)
    monkeypatch.setattr(observation_uploads, "MAX_OBSERVATION_UPLOAD_ROWS", 4)
    answer = asked(registry, "csv")
    put(registry, answer, "csv", csv_of(design(30, 66)))
    reads: list[Any] = []
    s3 = registry.store.s3
    monkeypatch.setattr(s3, "get_object", lambda **kwargs: reads.append(kwargs) or pytest.fail("read"))
    # when it is started, then 413 says the size and the file was never read
    status, refused = post(registry, answer["start"])
    assert status == 413, refused
    assert refused["details"][0]["field"] == "upload"
    assert "4 rows" in refused["details"][0]["message"]
    assert reads == []
    assert datasets_from_store(registry.store).head("observed") is None


def test_uploads_need_the_admin_key(registry: Registry, fitted):
    _, model_path = fitted
    live(registry, "observed", model_path)
    status, refused = observe(registry, "observed", {"data": {"upload": "csv"}}, key=None)
    assert status == 403, refused
    answer = asked(registry, "csv")
    put(registry, answer, "csv", csv_of(design(3, 67)))
    status, refused = post(registry, answer["start"], key="reader-key")
    assert status == 403, refused
    assert datasets_from_store(registry.store).head("observed") is None
