"""POST /sensitivity, /propagate and /suggest through the Lambda handler: answers shaped as /predict's, refusals
named by field before any work, and the limits the README states.

On the tests' own copy of the Park example (`park_app`) and the plant model: whatever model_artifacts/ holds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from handler.api.limits import SUGGEST_MAX_PENDING, SUGGEST_MAX_Q
from tests.conftest import PLANT_BOUNDS, PLANT_FEATURES, PLANT_OUTPUTS
from tests.events import api_event, lambda_context, response_json

INTERVAL = {"estimate", "ci_low", "ci_high"}


def call(app, path: str, body=None, raw_body: str | None = None):
    response = app.lambda_handler(api_event("POST", path, body, raw_body=raw_body), lambda_context())
    return response["statusCode"], response_json(response)


def features_of(app) -> tuple[str, ...]:
    return app.model.manifest().features


# --- answers ----------------------------------------------------------------------------------------------------


def test_sensitivity_answers_each_features_indices_with_intervals(park_app):
    features = features_of(park_app)
    status, body = call(park_app, "/sensitivity", {"n": 256, "seed": 3, "second_order": True})
    assert status == 200, body
    assert body["seed"] == 3
    assert body["n"] == 256
    assert body["evaluations"] == 256 * (2 * len(features) + 2)
    assert set(body["first_order"]) == set(body["total"]) == set(features)
    for estimate in (*body["first_order"].values(), *body["total"].values(), body["variance"]):
        assert set(estimate) == INTERVAL
        assert estimate["ci_low"] <= estimate["estimate"] <= estimate["ci_high"]
    assert set(body["second_order"]) == set(features[:-1])
    assert set(body["second_order"][features[0]]) == set(features[1:])


def test_the_same_seed_gives_the_same_answer_and_an_absent_one_is_drawn_and_returned(park_app):
    request = {"n": 128, "posterior_samples": 3, "seed": 11}
    first, second = call(park_app, "/sensitivity", request)[1], call(park_app, "/sensitivity", request)[1]
    assert first == second
    status, drawn = call(park_app, "/propagate", {"n": 128, "posterior_samples": 2})
    assert status == 200
    assert isinstance(drawn["seed"], int)
    again = call(park_app, "/propagate", {"n": 128, "posterior_samples": 2, "seed": drawn["seed"]})[1]
    assert again == drawn


def test_an_empty_object_asks_for_the_defaults(park_app):
    status, body = call(park_app, "/sensitivity", {})
    assert status == 200
    assert body["n"] == 1024
    assert body["posterior_samples"] == 0


def test_propagate_answers_moments_quantiles_exceedance_and_a_histogram(park_app):
    status, body = call(
        park_app,
        "/propagate",
        {"n": 512, "posterior_samples": 5, "quantiles": [0.5], "thresholds": [10.0], "bins": 8},
    )
    assert status == 200, body
    assert [q["probability"] for q in body["quantiles"]] == [0.5]
    assert [e["threshold"] for e in body["exceedance"]] == [10.0]
    assert 0 <= body["exceedance"][0]["ci_low"] <= body["exceedance"][0]["ci_high"] <= 1
    histogram = body["histogram"]
    assert len(histogram["edges"]) == 9
    assert len(histogram["counts"]) == 8
    assert sum(histogram["counts"]) == pytest.approx(512)
    assert body["points_outside_domain"] == 0


def test_input_distributions_shift_the_output_distribution(park_app):
    """The same model under inputs concentrated near a corner: the output's mean follows its predictions there."""
    features = features_of(park_app)
    bounds = park_app.model.manifest().bounds
    corner = {f: float(bounds[j, 0] + 0.1 * (bounds[j, 1] - bounds[j, 0])) for j, f in enumerate(features)}
    inputs = {
        f: {"distribution": "truncnormal", "mean": corner[f], "std": 1e-3 * float(bounds[j, 1] - bounds[j, 0]),
            "low": float(bounds[j, 0]), "high": float(bounds[j, 1])}
        for j, f in enumerate(features)
    }  # fmt: skip
    status, body = call(park_app, "/propagate", {"n": 256, "posterior_samples": 0, "inputs": inputs})
    assert status == 200, body
    predicted = call(park_app, "/predict", corner)[1]["mean"]
    assert body["mean"]["estimate"] == pytest.approx(predicted, rel=1e-2)


def test_suggest_answers_points_inside_the_bounds_with_their_predictions(park_app):
    features = features_of(park_app)
    bounds = {features[0]: [0.2, 0.4]}
    status, body = call(park_app, "/suggest", {"q": 3, "bounds": bounds, "seed": 5})
    assert status == 200, body
    assert body["acquisition"] == "variance"
    assert len(body["points"]) == 3
    for point in body["points"]:
        assert set(point["x"]) == set(features)
        assert 0.2 <= point["x"][features[0]] <= 0.4
        assert set(point["prediction"]) == {"mean", "variance"}
        again = call(park_app, "/predict", point["x"])[1]
        # one point alone, or three in a batch: BLAS sums in another order, and the Park model's K has cond ~1e9
        assert point["prediction"]["mean"] == pytest.approx(again["mean"], rel=1e-9 * 100)
        assert point["prediction"]["variance"] == pytest.approx(again["variance"], rel=1e-3, abs=1e-12)


def test_two_outputs_answer_one_object_per_named_output(plant_app):
    status, body = call(plant_app, "/sensitivity", {"n": 64, "seed": 1})
    assert status == 200
    assert set(body) == set(PLANT_OUTPUTS)
    assert set(body["purity"]["first_order"]) == set(PLANT_FEATURES)
    status, body = call(plant_app, "/propagate", {"n": 64, "posterior_samples": 2, "seed": 1})
    assert status == 200
    assert set(body) == set(PLANT_OUTPUTS)
    status, body = call(
        plant_app, "/suggest", {"q": 2, "acquisition": "expected_improvement", "goal": "maximize", "output": "purity"}
    )
    assert status == 200
    assert body["output"] == "purity"
    assert set(body["points"][0]["prediction"]) == set(PLANT_OUTPUTS)


def test_ei_on_several_outputs_must_name_one(plant_app):
    status, body = call(plant_app, "/suggest", {"acquisition": "expected_improvement", "goal": "maximize"})
    assert status == 422
    assert body["details"][0]["field"] == "output"


# --- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/sensitivity", {"n": "1024"}, "n"),
        ("/sensitivity", {"n": 8}, "n"),
        ("/sensitivity", {"n": 1024.0}, "n"),
        ("/sensitivity", {"second_order": 1}, "second_order"),
        ("/sensitivity", {"posterior_samples": -1}, "posterior_samples"),
        ("/sensitivity", {"posterior_samples": 1}, "posterior_samples"),
        ("/propagate", {"posterior_samples": 1}, "posterior_samples"),
        ("/sensitivity", {"seed": 2**63}, "seed"),
        ("/sensitivity", {"bogus": 1}, "bogus"),
        ("/sensitivity", {"inputs": {"nope": {"distribution": "uniform", "low": 0, "high": 1}}}, "inputs.nope"),
        ("/propagate", {"quantiles": [1.0]}, "quantiles[0]"),
        ("/propagate", {"thresholds": ["1"]}, "thresholds[0]"),
        ("/propagate", {"bins": 0}, "bins"),
        ("/suggest", {"q": SUGGEST_MAX_Q + 1}, "q"),
        ("/suggest", {"acquisition": "thompson"}, "acquisition"),
        ("/suggest", {"acquisition": "expected_improvement"}, "goal"),
        ("/suggest", {"beta": 0}, "beta"),
        ("/suggest", {"beta": 1e308}, "beta"),
        ("/suggest", {"output": "nope"}, "output"),
    ],
)
def test_invalid_fields_are_named(park_app, path, body, field):
    status, answer = call(park_app, path, body)
    assert status == 422, answer
    assert field in [d["field"] for d in answer["details"]], answer


def test_distributions_are_checked_against_the_domain(park_app):
    feature = features_of(park_app)[0]
    low, high = park_app.model.manifest().bounds[0]
    wide = {feature: {"distribution": "normal", "mean": float(low + high) / 2, "std": float(high - low)}}
    status, body = call(park_app, "/propagate", {"inputs": wide})
    assert status == 422
    assert body["details"][0]["field"] == f"inputs.{feature}"
    assert "outside the model's domain" in body["details"][0]["message"]
    beyond = {feature: {"distribution": "uniform", "low": float(low), "high": float(high + 10 * (high - low))}}
    assert call(park_app, "/sensitivity", {"inputs": beyond})[0] == 422
    unordered = {feature: {"distribution": "triangular", "low": 0.5, "mode": 0.1, "high": 0.9}}
    status, body = call(park_app, "/sensitivity", {"inputs": unordered})
    assert status == 422
    assert body["details"][0]["field"].startswith(f"inputs.{feature}")


def test_too_much_work_is_refused_naming_the_budget_before_any_work(park_app, monkeypatch):
    # given the most draws at the largest n on the Park model (m = 200): ~17 s of draws on one vCPU
    from handler.analyses import function_draws

    def no_draws(*args, **kwargs):
        raise AssertionError("the refused request was worked on")

    monkeypatch.setattr(function_draws.PosteriorFunctionDraws, "__init__", no_draws)
    # when
    status, body = call(park_app, "/sensitivity", {"n": 16_384, "posterior_samples": 100})
    # then it is refused before any draw, naming the budget, the model's size and what fits instead
    assert status == 422
    assert body["details"][0]["field"] == "posterior_samples"
    message = body["details"][0]["message"]
    assert "16384 x 6 x 100 x 1" in message
    assert "this model's budget of 4.7 s" in message
    assert "m = 200 training points" in message
    assert "at most" in message


def test_pending_points_are_counted_and_checked(park_app):
    features = features_of(park_app)
    point = {f: 0.5 for f in features}
    status, body = call(park_app, "/suggest", {"pending": [point] * (SUGGEST_MAX_PENDING + 1)})
    assert status == 422
    assert body["details"][0]["field"] == "pending"
    status, body = call(park_app, "/suggest", {"pending": [{**point, features[0]: 1e6}]})
    assert status == 422
    assert body["details"][0]["field"] == f"pending[0].{features[0]}"
    status, body = call(park_app, "/suggest", {"pending": [{features[0]: 0.5}]})
    assert status == 422
    assert body["details"][0]["field"] == "pending[0]"


def test_a_body_that_is_not_an_object_is_refused(park_app):
    for raw in ("[1]", '"x"', "null", "{"):
        status, body = call(park_app, "/propagate", raw_body=raw)
        assert status in (400, 422), (raw, body)
        json.dumps(body)


def test_a_model_served_through_gpy_says_analyses_need_a_posterior_file(app_with_model):
    status, body = call(app_with_model, "/sensitivity", {"n": 64})
    assert status == 501
    assert body["details"][0]["field"] == "model"


def test_the_bounds_of_the_plant_are_respected(plant_app):
    status, body = call(plant_app, "/suggest", {"q": 2, "bounds": {"temperature": [300.0, 320.0]}, "seed": 2})
    assert status == 200
    assert all(300 <= p["x"]["temperature"] <= 320 for p in body["points"])
    low, high = PLANT_BOUNDS["pressure"]
    status, body = call(plant_app, "/suggest", {"bounds": {"pressure": [low - 100 * (high - low), high]}})
    assert status == 422
    assert body["details"][0]["field"] == "bounds.pressure"


def test_a_model_with_more_features_than_the_sobol_table_is_told_so():
    from types import SimpleNamespace

    from handler.api.analyses import _dimensions_supported
    from handler.api.errors import RequestError

    manifest = SimpleNamespace(features=tuple(f"x{i}" for i in range(65)))
    _dimensions_supported(128, manifest)  # 64 features' sensitivity: the table's 128 dimensions
    with pytest.raises(RequestError) as refused:
        _dimensions_supported(130, manifest)
    assert refused.value.status_code == 501
    assert "130 Sobol' dimensions" in refused.value.details[0][1]


@pytest.mark.parametrize("path", ["/sensitivity", "/propagate"])
def test_distributions_beyond_arithmetic_are_refused_not_answered_with_nonsense(park_app, path):
    feature = features_of(park_app)[0]
    far_tail = {"distribution": "truncnormal", "mean": 0.5, "std": 0.001, "low": 0.6, "high": 0.7}  # 100 std away
    heavy = {"distribution": "lognormal", "mu": -1000.0, "sigma": 300.0}  # 0.04% outside the domain, up to 1e126
    for spec in (far_tail, heavy):
        status, body = call(park_app, path, {"n": 4096, "seed": 1, "inputs": {feature: spec}})
        assert status == 422, body
        assert body["details"][0]["field"] == f"inputs.{feature}"


def test_expected_improvement_far_from_any_hope_still_ranks_and_stays_finite(park_app):
    status, body = call(
        park_app, "/suggest", {"q": 3, "acquisition": "expected_improvement", "goal": "maximize", "best": 1e300}
    )
    assert status == 200, body
    assert all(isinstance(p["acquisition"], float) for p in body["points"])  # 0.0, not null
    status, body = call(
        park_app, "/suggest", {"best": 1e301, "acquisition": "expected_improvement", "goal": "maximize"}
    )
    assert status == 422
    assert body["details"][0]["field"] == "best"


def test_suggested_points_are_distinct_even_in_a_box_a_few_floats_wide(park_app):
    features = features_of(park_app)
    tiny = {f: [0.5, 0.5000000000000001] for f in features}  # one float step: 16 distinct points in all
    status, body = call(park_app, "/suggest", {"q": 20, "bounds": tiny, "seed": 1})
    assert status == 200, body
    points = [tuple(p["x"][f] for f in features) for p in body["points"]]
    assert 0 < len(points) <= 16
    assert len(set(points)) == len(points)


def test_equal_bounds_hold_a_feature_fixed(park_app):
    feature = features_of(park_app)[1]
    status, body = call(park_app, "/suggest", {"q": 4, "bounds": {feature: [0.25, 0.25]}, "seed": 3})
    assert status == 200, body
    assert {p["x"][feature] for p in body["points"]} == {0.25}


@pytest.mark.parametrize("path", ["/sensitivity", "/propagate"])
def test_a_truncnormal_38_std_from_its_mean_is_refused_for_what_it_is(park_app, path):
    # given a truncated normal on [mean + 38.4 std, mean + 39.4 std], inside the domain
    feature = features_of(park_app)[0]
    spec = {"distribution": "truncnormal", "mean": 0.5, "std": 0.01, "low": 0.884, "high": 0.894}
    # when
    status, body = call(park_app, path, {"n": 1024, "seed": 1, "inputs": {feature: spec}})
    # then the refusal says the normal holds no representable probability there, not that samples are far off
    assert status == 422, body
    assert body["details"][0]["field"] == f"inputs.{feature}"
    assert "no representable probability" in body["details"][0]["message"]


@pytest.mark.parametrize("best", [-1e160, -1e200, -1e300])
def test_expected_improvement_far_above_the_incumbent_is_the_improvement(park_app, best):
    # given an incumbent so low that every point improves on it by about -best
    status, body = call(
        park_app, "/suggest", {"q": 2, "acquisition": "expected_improvement", "goal": "maximize", "best": best}
    )
    # then EI is the improvement, mean - best, to rounding (Phi(u) = 1 and phi(u) = 0 in floats this far up)
    assert status == 200, body
    for point in body["points"]:
        improvement = point["prediction"]["mean"] - best
        assert point["acquisition"] == pytest.approx(improvement, rel=4 * np.finfo(float).eps)
