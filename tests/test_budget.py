"""Every limit is a budget of the work on the model served, checked before the work (422) and during it (504).

On synthetic posterior files (tests/large_models.py: genuine exact posteriors of m random points, no GPy fit) of
a few hundred to 2,000 points and one or ten outputs, beside the Park model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from handler.api.deadline import slice_points
from handler.gp.artifact import PackagedArtifact
from handler.gp.model import LazyModel
from tests.conftest import built_once
from tests.events import api_event, lambda_context, response_json
from tests.large_models import write_synthetic_model

FEATURES = ("x1", "x2", "x3", "x4")
POINT = {"x1": 0.3, "x2": 0.4, "x3": 0.5, "x4": 0.6}


SIZES = {
    "small": {"m": 300},
    "ten outputs": {"m": 2_000, "p": 10},
    "large": {"m": 2_000},
    "sparse": {"m": 1_000, "sparse": True},
    "noiseless": {"m": 300, "noise_variance": 0.0},
}


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The models, built once per test run (by one pytest-xdist worker while the others wait)."""

    def build(folder: Path) -> None:
        for size in SIZES.values():
            write_synthetic_model(folder, **size)  # type: ignore[arg-type]

    folder = built_once(tmp_path_factory, "budget-models", build)
    return {name: write_synthetic_model(folder, **size) for name, size in SIZES.items()}  # type: ignore[arg-type]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]):
    """handler.app serving one of the models, cold."""
    from handler import app

    def serving(name: str):
        monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(models[name])))
        return app

    return serving


def call(app, path: str, body, context=None) -> tuple[int, dict]:
    response = app.lambda_handler(api_event("POST", path, body), context or lambda_context())
    return response["statusCode"], response_json(response)


def running_out(*remaining_ms: int) -> Iterator[int]:
    """Lambda's remaining time as the function sees it at each look: the values given, then 100 ms."""
    yield from remaining_ms
    while True:
        yield 100


def context_with(remaining: Iterator[int]):
    context = lambda_context()
    context.get_remaining_time_in_millis = lambda: next(remaining)
    return context


# --- checked before the work: 422 naming the budget ---------------------------------------------------------------


def test_outputs_count_in_the_budget(serve):
    # given the same /propagate request (the largest n, the posterior mean, the most quantiles)
    body = {"n": 65_536, "posterior_samples": 0, "quantiles": list(np.linspace(0.01, 0.99, 99)), "seed": 1}
    # when a one-output model of 300 points and a ten-output model of 2,000 points are asked
    small_status, _ = call(serve("small"), "/propagate", body)
    large_status, large = call(serve("ten outputs"), "/propagate", body)
    # then the first answers and the second is refused, naming n, the product and the model's budget
    assert small_status == 200
    assert large_status == 422, large
    detail = large["details"][0]
    assert detail["field"] == "n"
    assert "65536 x 1 x 10" in detail["message"]
    assert "m = 2000 training points, 10 outputs" in detail["message"]


def test_a_refusal_says_what_fits_and_that_fits(serve):
    # given a request over the large model's budget
    app = serve("large")
    status, body = call(app, "/sensitivity", {"n": 16_384, "posterior_samples": 100, "seed": 1})
    assert status == 422
    message = body["details"][0]["message"]
    # when the posterior_samples it names as fitting are asked at a smaller n (to keep the test short)
    most = int(message.split("posterior_samples (at most ")[1].split(" ")[0])
    assert 2 <= most < 100
    status, answer = call(app, "/sensitivity", {"n": 1_024, "posterior_samples": most, "seed": 1})
    # then they are answered
    assert status == 200, answer
    assert answer["posterior_samples"] == most


def test_the_default_draws_are_lowered_to_fit_the_model_and_the_answer_says_so(serve, monkeypatch):
    # given a sparse model whose draws' factorisation (~0.14 s at m = 1,000) exceeds a 1.2 s timeout's 0.1 s budget
    from handler.analyses.function_draws import sparse_factors
    from handler.api import analyses

    app = serve("sparse")
    services = analyses._context()
    short = dataclasses.replace(services.settings, function_timeout_seconds=1.2)
    monkeypatch.setattr(analyses, "_services", dataclasses.replace(services, settings=short))
    # when /propagate is asked with its defaults (50 draws), then with draws named
    status, body = call(app, "/propagate", {"n": 256, "seed": 1})
    refused_status, refused = call(app, "/propagate", {"n": 256, "posterior_samples": 10, "seed": 1})
    # then the defaults answer with the posterior mean alone and say why; the named draws are refused
    assert status == 200, body
    assert body["posterior_samples"] == 0
    assert "lowered from the default 50 to 0" in body["note"]
    assert refused_status == 422
    assert refused["details"][0]["field"] == "posterior_samples"
    assert "factorisation" in refused["details"][0]["message"]
    assert sparse_factors(app.model.get().model.posterior, compute=False) is None


def test_a_sparse_models_draw_factors_are_computed_once(serve):
    from handler.analyses.function_draws import sparse_factors

    app = serve("sparse")
    status, first = call(app, "/propagate", {"n": 256, "posterior_samples": 4, "seed": 1})
    assert status == 200, first
    posterior = app.model.get().model.posterior
    factors = sparse_factors(posterior, compute=False)
    assert factors is not None
    status, second = call(app, "/propagate", {"n": 256, "posterior_samples": 4, "seed": 1})
    assert status == 200
    assert sparse_factors(posterior, compute=False) is factors
    assert second == first


def test_the_posterior_mean_alone_does_not_compute_the_variance(serve, monkeypatch):
    # given a model whose predict (mean and variance: m^2 a point) must not be called
    from handler.gp.posterior import GPPosterior

    app = serve("small")
    app.model.get()  # loading probes predictions: that is not what is checked

    def no_variance(*args, **kwargs):
        raise AssertionError("predict (with its variance) was called")

    monkeypatch.setattr(GPPosterior, "predict", no_variance)
    # when /sensitivity and /propagate are asked without draws
    sensitivity_status, _ = call(app, "/sensitivity", {"n": 64, "seed": 1})
    propagate_status, _ = call(app, "/propagate", {"n": 64, "posterior_samples": 0, "seed": 1})
    # then they answer
    assert sensitivity_status == propagate_status == 200


# --- checked during the work: 504 rather than a killed function ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sensitivity", {"n": 4_096, "seed": 1}),
        ("/propagate", {"n": 16_384, "posterior_samples": 4, "seed": 1}),
        ("/suggest", {"q": 5, "acquisition": "integrated_variance", "seed": 1}),
    ],
)
def test_an_analysis_stops_with_504_when_the_time_runs_out_mid_work(serve, path, body):
    # given 15 s left at the first two looks, then 0.1 s
    app = serve("large")
    context = context_with(running_out(15_000, 15_000))
    # when
    status, answer = call(app, path, body, context)
    # then the answer is a 504 saying how far the work got
    assert status == 504, answer
    assert answer["error"] == "time budget exceeded"
    assert answer["details"][0]["field"] == "body"
    assert "stopped before the function's deadline" in answer["details"][0]["message"]
    json.dumps(answer)


@pytest.mark.parametrize("include", [None, "gradient"])
def test_predict_checks_the_deadline_between_slices_sized_by_the_model(serve, include):
    # given a model of 2,000 points, 10,000 points to predict, and time for one slice only
    app = serve("large")
    rng = np.random.default_rng(1)
    columns = {f: rng.random(10_000).tolist() for f in FEATURES}
    event = api_event("POST", "/predict", columns)
    if include:
        event["queryStringParameters"] = {"include": include}
    context = context_with(running_out(15_000))
    # when
    response = app.lambda_handler(event, context)
    # then the batch stops mid-way with a 504 saying how many points were predicted
    assert response["statusCode"] == 504, response["body"][:500]
    message = response_json(response)["details"][0]["message"]
    predicted = int(message.split("predicted ")[1].split(" of ")[0])
    assert 0 < predicted < 10_000
    assert predicted == slice_points(app.model.get().model, include == "gradient")


def test_v2_infer_checks_the_deadline_between_the_same_slices(serve):
    # given the model of 2,000 points, a V2 request of 10,000 points, and time for one slice only
    app = serve("large")
    manifest = app.model.manifest()
    data = np.random.default_rng(2).random((10_000, len(manifest.features))).tolist()
    body = {"inputs": [{"name": "input", "shape": [10_000, len(manifest.features)], "datatype": "FP64", "data": data}]}
    event = api_event("POST", f"/v2/models/{manifest.name}/infer", body)
    # when
    response = app.lambda_handler(event, context_with(running_out(15_000)))
    # then V2 answers 504 in its own error shape, saying how far it got, rather than running into Lambda's timeout
    assert response["statusCode"] == 504, response["body"][:500]
    error = response_json(response)["error"]
    assert error.startswith("time budget exceeded")
    assert f"predicted {slice_points(app.model.get().model, False)} of 10000 points" in error


def test_the_draws_setup_is_not_taken_as_the_first_chunks_time(serve):
    # given posterior draws set up after the deadline began, the setup taking 4.5 s on a fake clock, and 5 s left
    from handler.analyses.budget import Deadline
    from handler.analyses.function_draws import PosteriorFunctionDraws

    posterior = serve("small").model.get().model.posterior
    now = [0.0]
    deadline = Deadline(lambda: 5_000, clock=lambda: now[0])
    draws = PosteriorFunctionDraws(posterior, 4, np.random.default_rng(1))
    now[0] += 4.5
    X = np.random.default_rng(2).random((50, len(FEATURES)))
    # when the draws are evaluated (chunks taking no time on the fake clock)
    mean, values = draws.evaluate_with_mean(X, deadline)
    # then the evaluation runs: the 5 s left cover the reserve and chunks of no time, whatever the setup took
    assert values.shape == (50, 4, 1)
    assert mean.shape == (50, 1)


def test_a_chunk_longer_than_the_time_left_still_stops_the_work():
    # given a deadline with 5 s left whose previous chunk took 4.5 s on a fake clock
    from handler.analyses.budget import Deadline, DeadlineExceeded

    now = [0.0]
    deadline = Deadline(lambda: 5_000, clock=lambda: now[0])
    deadline.lap()
    now[0] += 4.5
    # when the next chunk is checked, then it is not started
    with pytest.raises(DeadlineExceeded, match="1 chunk done"):
        deadline.check("1 chunk done")


# --- the batch limit is the model's: refused before the work (422), reported by GET /model -------------------------


@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch):
    """A function timeout of `seconds` for the app and its routers (a smaller budget: the limits bind on m = 2,000)."""
    from handler import app

    def shorten(seconds: float) -> None:
        short = dataclasses.replace(app.settings, function_timeout_seconds=seconds)
        monkeypatch.setattr(app, "settings", short)
        for router in app.ROUTERS:
            monkeypatch.setattr(router, "_services", dataclasses.replace(app.services, settings=short))

    return shorten


def limits_of(app) -> dict:
    response = app.lambda_handler(api_event("GET", "/model"), lambda_context())
    assert response["statusCode"] == 200, response["body"][:500]
    return response_json(response)["limits"]


def columns_of(points: int, seed: int = 3) -> dict[str, list[float]]:
    values = np.random.default_rng(seed).random((points, len(FEATURES)))
    return {f: values[:, i].tolist() for i, f in enumerate(FEATURES)}


def v2_body(app, points: int) -> dict:
    data = np.random.default_rng(4).random((points, len(FEATURES))).ravel().tolist()
    return {"inputs": [{"name": "input", "shape": [points, len(FEATURES)], "datatype": "FP64", "data": data}]}


def test_get_model_reports_the_models_batch_limits(serve, short_timeout):
    # given the model of 2,000 points and a 2 s timeout (a budget of 0.33 s), beside the Park model
    from handler import app as park_app

    park = limits_of(park_app)
    short_timeout(2.0)
    app = serve("large")
    # when GET /model is asked
    limits = limits_of(app)
    # then the large model's limits are under the deployment's, lower with gradients, and the Park model keeps it
    assert limits["max_batch_size"] < app.settings.max_batch_size
    assert limits["max_batch_size_with_gradient"] < limits["max_batch_size"]
    assert park["max_batch_size"] == park_app.settings.max_batch_size
    assert "max_batch_size_with_gradient" not in park
    # and GET /model did not load the model (the limits come from its manifest)
    assert not app.model.is_loaded


@pytest.mark.parametrize("route", ["/predict", "v2"])
def test_a_batch_over_the_models_limit_is_refused_before_any_work_naming_it(serve, short_timeout, route):
    # given the model of 2,000 points under a 2 s timeout, and its limit as GET /model reports it
    short_timeout(2.0)
    app = serve("large")
    limit = limits_of(app)["max_batch_size"]
    path = "/predict" if route == "/predict" else f"/v2/models/{app.model.manifest().name}/infer"

    def ask(points: int) -> dict:
        body = columns_of(points) if route == "/predict" else v2_body(app, points)
        return app.lambda_handler(api_event("POST", path, body), lambda_context())

    # when one point more than the limit is sent
    refused = ask(limit + 1)
    # then it is refused with a 422 naming the limit, before the model is even loaded
    assert refused["statusCode"] == 422, refused["body"][:500]
    assert f"at most {limit} per request" in refused["body"]
    assert "m = 2000 training points" in refused["body"]
    assert not app.model.is_loaded
    # and the limit itself is answered
    answered = ask(limit)
    assert answered["statusCode"] == 200, answered["body"][:500]


def test_a_batch_over_the_models_gradient_limit_is_refused_with_include_gradient_only(serve, short_timeout):
    # given the model of 2,000 points under a 2 s timeout, and its limit with gradients
    short_timeout(2.0)
    app = serve("large")
    limits = limits_of(app)
    over = limits["max_batch_size_with_gradient"] + 1
    event = api_event("POST", "/predict", columns_of(over))
    event["queryStringParameters"] = {"include": "gradient"}
    # when one point more than that limit is sent with include=gradient
    refused = app.lambda_handler(event, lambda_context())
    # then it is refused, naming that limit, before any work; the same points without gradients are answered
    assert refused["statusCode"] == 422, refused["body"][:500]
    detail = response_json(refused)["details"][0]
    assert detail["field"] == "include"
    assert f"at most {limits['max_batch_size_with_gradient']} per request with include=gradient" in detail["message"]
    assert not app.model.is_loaded
    answered = app.lambda_handler(api_event("POST", "/predict", columns_of(over)), lambda_context())
    assert answered["statusCode"] == 200, answered["body"][:500]


def test_a_covariance_over_the_models_budget_is_refused_before_any_work(serve, short_timeout):
    # given the model of 2,000 points under a 1.3 s timeout (a budget of 0.1 s), and 426 points (the answer's limit)
    short_timeout(1.3)
    app = serve("large")
    assert limits_of(app)["max_batch_size"] >= 426

    def ask(points: int) -> dict:
        event = api_event("POST", "/predict", columns_of(points))
        event["queryStringParameters"] = {"include": "covariance"}
        return app.lambda_handler(event, lambda_context())

    # when their covariance is asked
    refused = ask(426)
    # then it is refused, naming the points whose covariance fits, before the model is loaded; those are answered
    assert refused["statusCode"] == 422, refused["body"][:500]
    detail = response_json(refused)["details"][0]
    assert detail["field"] == "include"
    fits = int(detail["message"].split("for at most ")[1])
    assert 0 < fits < 426
    assert not app.model.is_loaded
    answered = ask(fits)
    assert answered["statusCode"] == 200, answered["body"][:500]


def test_the_openapi_document_states_the_models_batch_limit(serve, short_timeout):
    # given the model of 2,000 points under a 2 s timeout
    short_timeout(2.0)
    app = serve("large")
    limit = limits_of(app)["max_batch_size"]
    # when its OpenAPI document is asked
    response = app.lambda_handler(api_event("GET", "/openapi.json"), lambda_context())
    document = response_json(response)
    # then the batch's maxItems is the model's limit
    columns = document["components"]["schemas"]["PredictColumns"]["properties"]
    assert {column["maxItems"] for column in columns.values()} == {limit}


def test_sample_over_the_models_budget_is_refused_before_any_work_naming_what_fits(serve, short_timeout):
    # given the sparse model of 1,000 inducing points under a 1.3 s timeout (a budget of 0.1 s)
    short_timeout(1.3)
    app = serve("sparse")
    body = {"points": [dict(zip(FEATURES, row, strict=True)) for row in np.random.default_rng(5).random((1_000, 4))]}
    # when /sample is asked for joint draws at 1,000 points (its format's limit)
    status, refused = call(app, "/sample", {**body, "samples": 1, "seed": 1})
    # then it is refused with a 422 naming the budget and the points that fit, before the model is loaded
    assert status == 422, refused
    detail = refused["details"][0]
    assert detail["field"] == "points"
    assert "time budget of 0.1 s" in detail["message"]
    assert not app.model.is_loaded
    fits = int(detail["message"].split("at most ")[1].split(" points")[0])
    assert 0 < fits < 1_000
    # and the points it names as fitting are answered
    status, answer = call(app, "/sample", {"points": body["points"][:fits], "samples": 1, "seed": 1})
    assert status == 200, answer


# --- a valid model answers: duplicates and zero noise -------------------------------------------------------------


@pytest.mark.parametrize("acquisition", ["variance", "integrated_variance", "expected_improvement"])
def test_duplicate_pending_points_on_a_noiseless_model_are_conditioned_on_once(serve, acquisition):
    # given a model of noise variance 0 and five copies of one pending point
    app = serve("noiseless")
    assert app.model.get().model.posterior.noise_variance == 0.0
    body = {"q": 3, "acquisition": acquisition, "pending": [POINT] * 5, "seed": 1}
    if acquisition == "expected_improvement":
        body["goal"] = "maximize"
    # when
    status, answer = call(app, "/suggest", body)
    # then it answers finite acquisition values at points other than the pending one
    assert status == 200, answer
    assert all(np.isfinite(p["acquisition"]) for p in answer["points"])
    assert all(p["x"] != POINT for p in answer["points"])


def test_the_conditioner_adds_no_row_for_an_observation_it_already_has(serve):
    from handler.analyses.acquisition import Conditioner

    posterior = serve("noiseless").model.get().model.posterior
    conditioner = Conditioner(posterior)
    X = np.array([[0.3, 0.4, 0.5, 0.6]] * 3 + [[0.7, 0.2, 0.1, 0.9]])
    tracked = conditioner.track(X)
    added = [conditioner.condition(tracked, i, [tracked]) for i in range(len(X))]
    assert added == [True, False, False, True]
    assert len(conditioner.picks) == 2
    # the conditioned variance at an observed point of a noiseless model is zero, to the rank tolerance
    assert tracked.conditioned_variance()[:3].max() <= conditioner.rank_tolerance


def test_a_snapshot_holds_a_sparse_models_draw_factors(serve):
    # given a sparse model whose draw factorisation fits the budget
    from handler.analyses.function_draws import sparse_factors

    app = serve("sparse")
    # when SnapStart's init loads it
    app.load_before_snapshot()
    # then the factors are cached before any request
    assert sparse_factors(app.model.get().model.posterior, compute=False) is not None


def test_a_refusal_never_suggests_a_value_the_route_would_refuse():
    from handler.api.analyses import MIN_ANALYSIS_N, _what_fits

    class Budget:  # what _what_fits asks of a budget: the largest value whose estimate fits it
        def __init__(self, fits) -> None:
            self.fits = fits

        def largest(self, seconds, upper: int) -> int:
            return max((v for v in range(upper + 1) if self.fits(seconds, v)), default=0)

    # given a model on which draws cost so much that no n >= 16 fits at 100 posterior samples, but fewer draws do
    per_draw = Budget(lambda seconds, value: seconds(value) <= 1.0)
    field, hint = _what_fits(per_draw, lambda n, k: n * k / 1_000, 64, 100)
    # then the refusal names posterior_samples and no n below the routes' least
    assert field == "posterior_samples"
    assert "at most 0" not in hint
    assert "lower n" not in hint
    assert "posterior_samples (at most 15 at n = 64)" in hint
    # and where even the least n with no draws would not fit, it says so rather than suggesting 0
    field, hint = _what_fits(per_draw, lambda n, k: 1e9, 64, 0)
    assert (field, hint) == ("n", f"this model cannot answer even n = {MIN_ANALYSIS_N} within its budget")
