"""What optimisers need: gradients, the joint covariance and joint samples, against GPy and finite differences."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from handler.gp.gpy_model import wrap_gpy_model
from tests.conftest import FEATURES, PLANT_FEATURES, PLANT_OUTPUTS
from tests.events import api_event, lambda_context, response_json
from tests.test_posterior import CASES, D, make_gp

IDS = [
    f"{k}-{'ard' if a else 'iso'}-{'norm' if n else 'raw'}-{o}out-{'sparse' if s else 'exact'}"
    for k, a, n, o, s in CASES
]


def gpy_gradients(gp, X):
    mean_gradient, variance_gradient = gp.predictive_gradients(X)
    if variance_gradient.ndim == 2:
        variance_gradient = np.repeat(variance_gradient[:, :, None], mean_gradient.shape[2], axis=2)
    return mean_gradient, variance_gradient


def gpy_covariance(gp, X, latent):
    _, covariance = (gp.predict_noiseless if latent else gp.predict)(X, full_cov=True)
    outputs = gp.Y.shape[1]
    return np.repeat(covariance[None], outputs, axis=0) if covariance.ndim == 2 else np.moveaxis(covariance, -1, 0)


@pytest.mark.parametrize(("kernel", "ard", "normalize", "outputs", "sparse"), CASES, ids=IDS)
def test_analytic_gradients_and_covariance_equal_gpys(kernel, ard, normalize, outputs, sparse):
    # given a covered model and points inside and a little outside its data
    gp = make_gp(kernel, ard=ard, normalize=normalize, outputs=outputs, sparse=sparse)
    model = wrap_gpy_model(gp)
    assert model.posterior is not None
    X = np.random.default_rng(2).uniform(-2.5, 3.5, size=(60, D))
    # when
    mean_gradient, variance_gradient = model.gradients(X)
    # then: GPy's predictive_gradients, to rounding of the largest entry
    expected_mean, expected_variance = gpy_gradients(gp, X)
    assert mean_gradient.shape == variance_gradient.shape == (60, D, outputs)
    np.testing.assert_allclose(mean_gradient, expected_mean, rtol=0, atol=1e-9 * np.abs(expected_mean).max())
    np.testing.assert_allclose(
        variance_gradient, expected_variance, rtol=0, atol=1e-9 * np.abs(expected_variance).max()
    )
    for latent in (False, True):
        covariance = model.covariance(X, latent=latent)
        expected = gpy_covariance(gp, X, latent)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(covariance, expected, rtol=0, atol=1e-10 * scale)
        # symmetric exactly; positive semi-definite to rounding; its diagonal is the pointwise variance
        np.testing.assert_array_equal(covariance, np.swapaxes(covariance, 1, 2))
        assert np.linalg.eigvalsh(covariance).min() >= -1e-9 * scale
        _, variance = model.predict(X, latent=latent)
        np.testing.assert_allclose(np.diagonal(covariance, axis1=1, axis2=2).T, variance, rtol=0, atol=1e-10 * scale)


def test_models_gpy_predicts_itself_give_gpys_gradients_and_covariance():
    import GPy

    X = np.random.default_rng(0).uniform(size=(30, 2))
    gp = GPy.models.GPRegression(X, np.sin(X[:, :1] * 4), GPy.kern.RBF(2) + GPy.kern.Linear(2))
    model = wrap_gpy_model(gp)
    assert model.posterior is None  # a sum of kernels: predicted by GPy
    Xs = np.random.default_rng(1).uniform(size=(9, 2))
    np.testing.assert_array_equal(model.gradients(Xs)[0], gpy_gradients(gp, Xs)[0])
    np.testing.assert_array_equal(model.covariance(Xs), gpy_covariance(gp, Xs, latent=False))


def rounding(gp) -> float:
    """100 cond(K + noise I) eps: how far two correct evaluations through K^-1 may differ, relative to the largest."""
    K = gp.kern.K(gp.X) + np.eye(len(gp.X)) * float(gp.likelihood.variance.values[0])
    return 100 * np.linalg.cond(K) * np.finfo(float).eps


def call(app, body, query=None, path="/predict"):
    event = api_event("POST", path, body)
    event["queryStringParameters"] = query
    response = app.lambda_handler(event, lambda_context())
    return response["statusCode"], response_json(response)


def columns(points: np.ndarray, features=FEATURES) -> dict:
    return {name: points[:, i].tolist() for i, name in enumerate(features)}


@pytest.mark.parametrize("shape", ["point", "rows", "columns"])
def test_predict_with_gradient_equals_gpy_and_central_differences_of_its_own_predictions(app_with_model, shape):
    # given points of the Park model
    points = np.random.default_rng(3).uniform(0.1, 0.9, size=(1 if shape == "point" else 5, 4))
    body = {
        "point": dict(zip(FEATURES, points[0], strict=True)),
        "rows": [dict(zip(FEATURES, p, strict=True)) for p in points.tolist()],
        "columns": columns(points),
    }[shape]
    # when gradients are asked for, with the latent variance and the std
    status, answer = call(app_with_model, body, {"include": "gradient,std", "variance": "latent"})
    assert status == 200, answer
    rows = [answer] if shape == "point" else answer
    if shape == "columns":
        rows = [
            {
                key: {f: v[i] for f, v in value.items()} if isinstance(value, dict) else value[i]
                for key, value in answer.items()
            }
            for i in range(len(points))
        ]
    mean_gradient = np.array([[row["mean_gradient"][f] for f in FEATURES] for row in rows])
    variance_gradient = np.array([[row["variance_gradient"][f] for f in FEATURES] for row in rows])
    # then they are GPy's
    gp = app_with_model.model.get().model.gp
    expected_mean, expected_variance = gpy_gradients(gp, points)
    np.testing.assert_allclose(mean_gradient, expected_mean[:, :, 0], rtol=1e-9, atol=1e-12)
    scale = np.abs(expected_variance).max()  # a difference of nearly equal terms: to rounding of the largest
    np.testing.assert_allclose(variance_gradient, expected_variance[:, :, 0], rtol=0, atol=1e-8 * scale)
    # and central differences of the service's own answers
    h = 1e-5
    for j in range(len(FEATURES)):
        step = np.zeros(4)
        step[j] = h
        _, up = call(app_with_model, columns(points + step), {"variance": "latent"})
        _, down = call(app_with_model, columns(points - step), {"variance": "latent"})
        finite_mean = (np.array(up["mean"]) - np.array(down["mean"])) / (2 * h)
        np.testing.assert_allclose(mean_gradient[:, j], finite_mean, rtol=1e-5, atol=1e-6)
        finite_variance = (np.array(up["variance"]) - np.array(down["variance"])) / (2 * h)
        np.testing.assert_allclose(
            variance_gradient[:, j], finite_variance, rtol=1e-3, atol=1e-3 * np.abs(variance_gradient).max()
        )
    # and the plain answer is unchanged beside them
    _, plain = call(app_with_model, body, {"variance": "latent"})
    assert [r["mean"] for r in rows] == (
        [plain["mean"]] if shape == "point" else plain["mean"] if shape == "columns" else [r["mean"] for r in plain]
    )


def test_the_second_model_answers_gradients_and_covariance_per_named_output(plant_app, plant_pickle_path):
    points = np.array([[300.0, 5.0, 1.0], [320.0, 4.0, 0.5], [350.0, 8.0, 1.5]])
    status, answer = call(
        plant_app, [dict(zip(PLANT_FEATURES, p, strict=True)) for p in points.tolist()], {"include": "gradient"}
    )
    assert status == 200, answer
    gp = pickle.loads(plant_pickle_path.read_bytes())  # GPy's own, against the posterior file the app serves
    expected_mean, expected_variance = gpy_gradients(gp, points)
    for o, output in enumerate(PLANT_OUTPUTS):
        got = np.array([[row[output]["mean_gradient"][f] for f in PLANT_FEATURES] for row in answer])
        np.testing.assert_allclose(got, expected_mean[:, :, o], rtol=1e-9, atol=1e-12)
        got = np.array([[row[output]["variance_gradient"][f] for f in PLANT_FEATURES] for row in answer])
        # a difference of nearly equal terms through K^-1: both sides are exact to ~cond(K) eps of the largest
        scale = np.abs(expected_variance[:, :, o]).max()
        np.testing.assert_allclose(got, expected_variance[:, :, o], rtol=0, atol=rounding(gp) * scale)
    status, answer = call(plant_app, columns(points, PLANT_FEATURES), {"include": "covariance"})
    assert status == 200, answer
    expected = gpy_covariance(gp, points, latent=False)
    for o, output in enumerate(PLANT_OUTPUTS):
        tolerance = rounding(gp) * np.abs(expected[o]).max()
        np.testing.assert_allclose(answer[output]["covariance"], expected[o], rtol=0, atol=tolerance)


def test_covariance_answers_as_columns_and_is_refused_past_its_limit(app_with_model):
    from handler.api.limits import covariance_limit

    points = np.random.default_rng(4).uniform(0, 1, size=(4, 4))
    status, answer = call(
        app_with_model,
        [dict(zip(FEATURES, p, strict=True)) for p in points.tolist()],
        {"include": "covariance", "variance": "latent"},
    )
    assert status == 200
    assert set(answer) == {"mean", "variance", "covariance"}
    covariance = np.array(answer["covariance"])
    assert covariance.shape == (4, 4)
    gp = app_with_model.model.get().model.gp
    expected = gpy_covariance(gp, points, latent=True)[0]
    np.testing.assert_allclose(covariance, expected, rtol=0, atol=rounding(gp) * np.abs(expected).max())
    limit = covariance_limit(1)
    assert 400 <= limit <= 500
    too_many = np.random.default_rng(5).uniform(0, 1, size=(limit + 1, 4))
    status, answer = call(app_with_model, columns(too_many), {"include": "covariance"})
    assert status == 422
    assert answer["details"][0]["field"] == "include"
    assert str(limit) in answer["details"][0]["message"]


def test_samples_are_reproducible_and_converge_to_the_predictive_mean_and_covariance(app_with_model):
    points = np.array([[0.2, 0.3, 0.4, 0.5], [0.25, 0.3, 0.4, 0.5], [0.8, 0.1, 0.9, 0.3]])
    body = {"points": columns(points), "samples": 20_000, "seed": 11}
    status, first = call(app_with_model, body, path="/sample")
    assert status == 200, first
    _, again = call(app_with_model, body, path="/sample")
    _, other = call(app_with_model, {**body, "seed": 12}, path="/sample")
    assert first["samples"] == again["samples"]
    assert first["samples"] != other["samples"]
    draws = np.array(first["samples"])
    assert draws.shape == (20_000, 3)
    _, predicted = call(app_with_model, columns(points), {"include": "covariance", "variance": "latent"})
    mean, covariance = np.array(predicted["mean"]), np.array(predicted["covariance"])
    # the sample mean within 5 standard errors; each sample covariance within 5 of its standard errors
    n = len(draws)
    assert np.all(np.abs(draws.mean(axis=0) - mean) <= 5 * np.sqrt(np.diag(covariance) / n))
    sample_covariance = np.cov(draws.T)
    standard_error = np.sqrt((np.outer(np.diag(covariance), np.diag(covariance)) + covariance**2) / n)
    assert np.all(np.abs(sample_covariance - covariance) <= 5 * standard_error)
    assert first["jitter"] == 0.0
    assert first["method"] == "cholesky"


def test_samples_of_the_same_point_repeated_need_jitter_and_say_so(app_with_model):
    # The corner of the domain: scaled inputs of exactly zero, so the copies are exactly zero apart however BLAS
    # sums (elsewhere, the rounding of |a|^2 + |a|^2 - 2 a.a, which depends on BLAS's threads, can leave their
    # covariance positive definite by a hair); and three copies, as a singular c * ones(3, 3) never passes Cholesky
    # by rounding, while a 2 x 2 one does for some c.
    point = {"x1": 0.0, "x2": 0.0, "x3": 0.0, "x4": 0.0}
    status, answer = call(app_with_model, {"points": [point] * 3, "samples": 100, "seed": 1}, path="/sample")
    assert status == 200, answer
    assert answer["jitter"] > 0
    draws = np.array(answer["samples"])
    for copy in (1, 2):
        np.testing.assert_allclose(draws[:, 0], draws[:, copy], rtol=0, atol=1e-3 * np.std(draws[:, 0]) + 1e-12)
    # observations: the noise makes the two draws differ
    _, noisy = call(
        app_with_model,
        {"points": [point, point], "samples": 2_000, "seed": 1, "target": "observations"},
        path="/sample",
    )
    assert noisy["target"] == "observations"
    draws = np.array(noisy["samples"])
    assert np.std(draws[:, 0] - draws[:, 1]) > 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"points": [{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}], "samples": 0}, "samples"),
        ({"points": [{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}], "samples": 10, "seed": -1}, "seed"),
        ({"points": [{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}], "samples": 5, "target": "both"}, "target"),
        ({"points": [{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}] * 100, "samples": 5_000}, "samples"),
        ({"points": [{"x1": 0.5}], "samples": 5}, "points[0]"),
        ({"samples": 5}, "points"),
        ({"points": [{"x1": 9, "x2": 0.5, "x3": 0.5, "x4": 0.5}], "samples": 5}, "points[0].x1"),
    ],
)
def test_a_bad_sample_request_names_the_field(app_with_model, body, field):
    status, answer = call(app_with_model, body, path="/sample")
    assert status == 422, answer
    assert any(d["field"].startswith(field) for d in answer["details"]), answer


def test_the_second_model_samples_and_answers_v2_per_output(plant_app):
    points = [
        {"temperature": 300.0, "pressure": 5.0, "flow_rate": 1.0},
        {"temperature": 330.0, "pressure": 2.0, "flow_rate": 0.4},
    ]
    status, answer = call(plant_app, {"points": points, "samples": 500, "seed": 3}, path="/sample")
    assert status == 200, answer
    assert set(answer["samples"]) == set(PLANT_OUTPUTS)
    assert np.array(answer["samples"]["purity"]).shape == (500, 2)
    assert set(answer["jitter"]) == set(PLANT_OUTPUTS)
    # V2: one input [N, 3], outputs [N, 2] in the manifest's output order, equal to /predict's
    manifest = plant_app.model.manifest()
    data = [[p[f] for f in PLANT_FEATURES] for p in points]
    request = {"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": data}]}
    status, inferred = call(plant_app, request, path=f"/v2/models/{manifest.name}/versions/{manifest.version}/infer")
    assert status == 200, inferred
    mean = next(o for o in inferred["outputs"] if o["name"] == "mean")
    assert mean["shape"] == [2, 2]
    _, predicted = call(plant_app, points)
    expected = [predicted[i][output]["mean"] for i in range(2) for output in PLANT_OUTPUTS]
    assert mean["data"] == expected


def test_every_option_combines_in_one_answer(app_with_model):
    points = np.random.default_rng(6).uniform(0, 1, size=(3, 4))
    rows = [dict(zip(FEATURES, p, strict=True)) for p in points.tolist()]
    status, answer = call(app_with_model, rows, {"include": "std,interval,gradient,covariance", "variance": "latent"})
    assert status == 200, answer
    assert set(answer) == {
        "mean",
        "variance",
        "std",
        "lower_95",
        "upper_95",
        "mean_gradient",
        "variance_gradient",
        "covariance",
    }
    _, plain = call(app_with_model, rows, {"include": "std,interval", "variance": "latent"})
    assert answer["mean"] == [row["mean"] for row in plain]
    assert answer["upper_95"] == [row["upper_95"] for row in plain]
    assert set(answer["mean_gradient"]) == set(FEATURES)
    assert len(answer["mean_gradient"]["x1"]) == 3
