"""The client's analyses (sensitivity, propagate, suggest): the bodies it sends, and the local server's answers."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from gpr_client import ApiError, Suggestions, SurrogateClient

from tests.conftest import FEATURES


@pytest.fixture(scope="module")
def client(local_server):
    base_url, _ = local_server
    with SurrogateClient(base_url) as client:
        yield client


def direct(base_url: str, path: str, body: dict) -> dict:
    response = httpx.post(f"{base_url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


# --- the bodies sent (a scripted transport) ------------------------------------------------------------------

MODEL = {
    "name": "park1991",
    "version": "1",
    "features": list(FEATURES),
    "outputs": ["y"],
    "bounds": {f: [0.0, 1.0] for f in FEATURES},
    "limits": {"max_batch_size": 10_000},
}


def recording_client(sent: list[tuple[str, dict]], answer: dict) -> SurrogateClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json=MODEL)
        sent.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json=answer)

    return SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler))


def test_each_analysis_posts_its_documented_body_without_the_fields_left_as_none():
    sent: list[tuple[str, dict]] = []
    suggest_answer = {"seed": 1, "acquisition": "variance", "output": "y", "goal": None, "points": []}
    # Given a client whose service records what it is sent
    with recording_client(sent, suggest_answer) as client:
        # When each analysis is asked with its defaults, and then with every field
        client.sensitivity()
        client.sensitivity(64, 3, True, {"x1": {"distribution": "normal", "mean": 0.5, "std": 0.1}}, np.int64(5))
        client.propagate()
        client.propagate(n=32, posterior_samples=0, quantiles=[0.1], thresholds=np.array([2.0, 3.0]), bins=4, seed=1)
        client.suggest()
        client.suggest(
            q=2,
            acquisition="expected_improvement",
            goal="minimize",
            bounds={"x1": (np.float64(0.2), 0.4)},
            pending=np.array([[0.1, 0.2, 0.3, 0.4]]),
            best=1.5,
            beta=1.0,
            seed=7,
        )
    # Then the defaults are the service's, None fields are not sent, and numpy values go as JSON numbers
    assert sent == [
        ("/sensitivity", {"n": 1024, "posterior_samples": 0, "second_order": False}),
        (
            "/sensitivity",
            {
                "n": 64,
                "posterior_samples": 3,
                "second_order": True,
                "inputs": {"x1": {"distribution": "normal", "mean": 0.5, "std": 0.1}},
                "seed": 5,
            },
        ),
        (
            "/propagate",
            {"n": 4096, "posterior_samples": 50, "quantiles": [0.05, 0.5, 0.95], "thresholds": [], "bins": 30},
        ),
        (
            "/propagate",
            {"n": 32, "posterior_samples": 0, "quantiles": [0.1], "thresholds": [2.0, 3.0], "bins": 4, "seed": 1},
        ),
        ("/suggest", {"q": 1, "acquisition": "variance", "beta": 2.0}),
        (
            "/suggest",
            {
                "q": 2,
                "acquisition": "expected_improvement",
                "goal": "minimize",
                "bounds": {"x1": [0.2, 0.4]},
                "pending": [{"x1": 0.1, "x2": 0.2, "x3": 0.3, "x4": 0.4}],
                "best": 1.5,
                "beta": 1.0,
                "seed": 7,
            },
        ),
    ]


def test_pending_points_of_the_wrong_width_or_not_finite_are_refused_before_sending():
    sent: list[tuple[str, dict]] = []
    with recording_client(sent, {}) as client:
        with pytest.raises(ValueError, match=r"X must be \(N, 4\)"):
            client.suggest(pending=np.zeros((2, 3)))
        with pytest.raises(ValueError, match="JSON compliant"):
            client.suggest(pending=[{"x1": float("nan"), "x2": 0.0, "x3": 0.0, "x4": 0.0}])
    assert sent == []


# --- against the local server --------------------------------------------------------------------------------


def test_sensitivity_with_a_seed_is_the_services_answer_to_the_same_body(client, local_server):
    base_url, _ = local_server
    inputs = {"x3": {"distribution": "truncnormal", "mean": 0.5, "std": 0.2, "low": 0.0, "high": 1.0}}
    # Given a seed, when the client asks for first-, total- and second-order indices
    answer = client.sensitivity(n=64, posterior_samples=2, second_order=True, inputs=inputs, seed=11)
    # Then it returns the JSON the service answers to the same request
    body = {"n": 64, "posterior_samples": 2, "second_order": True, "inputs": inputs, "seed": 11}
    assert answer == direct(base_url, "/sensitivity", body)
    assert set(answer["first_order"]) == set(FEATURES) == set(answer["total"])
    assert answer["second_order"]["x1"].keys() == {"x2", "x3", "x4"}
    assert answer["evaluations"] == 64 * (2 * 4 + 2)


def test_propagate_with_a_seed_is_the_services_answer_to_the_same_body(client, local_server):
    base_url, _ = local_server
    # Given quantiles, a threshold and a few bins, when the client propagates the inputs' distribution
    answer = client.propagate(n=128, posterior_samples=3, quantiles=(0.1, 0.9), thresholds=(10.0,), bins=5, seed=12)
    # Then it returns the service's answer to the same body, with what was asked
    body = {"n": 128, "posterior_samples": 3, "quantiles": [0.1, 0.9], "thresholds": [10.0], "bins": 5, "seed": 12}
    assert answer == direct(base_url, "/propagate", body)
    assert [q["probability"] for q in answer["quantiles"]] == [0.1, 0.9]
    assert [e["threshold"] for e in answer["exceedance"]] == [10.0]
    assert len(answer["histogram"]["counts"]) == 5


def test_suggest_returns_the_services_points_inside_the_bounds_as_an_array(client, local_server):
    base_url, _ = local_server
    bounds = {"x1": (0.2, 0.4), "x4": (0.5, 1.0)}
    pending = np.array([[0.3, 0.5, 0.5, 0.7], [0.25, 0.1, 0.9, 0.6]])
    # Given bounds on two features and points already planned (an array in the model's feature order)
    suggestions = client.suggest(q=3, bounds=bounds, pending=pending, seed=13)
    # Then the service's points come back as a (q, d) array, in its order, inside the bounds
    assert isinstance(suggestions, Suggestions)
    answer = direct(
        base_url,
        "/suggest",
        {
            "q": 3,
            "bounds": {"x1": [0.2, 0.4], "x4": [0.5, 1.0]},
            "pending": _rows(pending),
            "seed": 13,
        },
    )
    expected = np.array([[p["x"][f] for f in FEATURES] for p in answer["points"]])
    assert suggestions.points.shape == (3, 4)
    np.testing.assert_allclose(suggestions.points, expected, rtol=1e-9, atol=1e-12)
    assert np.all((suggestions.points[:, 0] >= 0.2) & (suggestions.points[:, 0] <= 0.4))
    assert np.all((suggestions.points[:, 3] >= 0.5) & (suggestions.points[:, 3] <= 1.0))
    assert np.all((suggestions.points >= 0.0) & (suggestions.points <= 1.0))
    # and the predictions beside them are the service's at those points
    prediction = client.predict(suggestions.points)
    np.testing.assert_allclose(suggestions.mean, prediction.mean, rtol=1e-9)
    assert list(suggestions.to_frame().columns) == [*FEATURES, "acquisition", "y_mean", "y_variance"]
    # and the same pending points given as rows make the same request
    again = client.suggest(q=3, bounds=bounds, pending=_rows(pending), seed=13)
    np.testing.assert_allclose(again.points, suggestions.points, rtol=1e-9, atol=1e-12)
    # and as rows, the suggestions are pending points for the next request
    assert suggestions.pending() == _rows(suggestions.points)


def _rows(points: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, row, strict=True)) for row in points.tolist()]


def test_goal_directed_suggestions_carry_the_goal_and_the_output(client):
    suggestions = client.suggest(q=2, acquisition="upper_confidence_bound", goal="minimize", beta=1.0, seed=14)
    assert suggestions.answer["goal"] == "minimize"
    assert suggestions.answer["output"] == "y"
    assert suggestions.seed == 14
    assert len(suggestions) == 2
    assert suggestions.acquisition.shape == (2,)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.sensitivity(n=8), "n"),
        (lambda c: c.sensitivity(n=64, inputs={"x1": {"distribution": "uniform", "low": 0, "high": 2}}), "inputs.x1"),
        (lambda c: c.propagate(n=64, quantiles=[1.5]), "quantiles[0]"),
        (lambda c: c.suggest(acquisition="expected_improvement"), "goal"),
        (lambda c: c.suggest(bounds={"x2": (0.6, 0.5)}), "bounds.x2"),
        (lambda c: c.suggest(pending=np.array([[5.0, 0.5, 0.5, 0.5]])), "pending[0].x1"),
    ],
)
def test_a_refused_analysis_raises_the_clients_error_naming_the_field(client, call, field):
    # When the service refuses the request
    with pytest.raises(ApiError) as refused:
        call(client)
    # Then the client's error says so, with the field the service named
    assert refused.value.status == 422
    assert refused.value.details[0]["field"] == field
    assert field in str(refused.value)


def test_suggestions_of_a_model_with_several_outputs_are_arrays_per_output():
    # Given a two-output model's answer (predictions by output name), one criterion that overflowed to null
    model = {**MODEL, "outputs": ["conversion", "purity"]}
    picks = [
        {
            "x": {"x4": 0.4, "x3": 0.3, "x2": 0.2, "x1": 0.1},  # any key order
            "acquisition": 2.5,
            "prediction": {"conversion": {"mean": 1.0, "variance": 0.1}, "purity": {"mean": 2.0, "variance": 0.2}},
        },
        {
            "x": {"x1": 0.5, "x2": 0.6, "x3": 0.7, "x4": 0.8},
            "acquisition": None,
            "prediction": {"conversion": {"mean": 3.0, "variance": 0.3}, "purity": {"mean": 4.0, "variance": 0.4}},
        },
    ]
    answer = {"seed": 3, "acquisition": "expected_improvement", "output": "purity", "goal": "maximize", "points": picks}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=model if request.url.path == "/model" else answer)

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        suggestions = client.suggest(q=2, acquisition="expected_improvement", goal="maximize", output="purity")
    # Then the points are in the model's feature order and the predictions (q, n_outputs), in the outputs' order
    np.testing.assert_array_equal(suggestions.points, [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    np.testing.assert_array_equal(suggestions.mean, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(suggestions.variance, [[0.1, 0.2], [0.3, 0.4]])
    np.testing.assert_array_equal(suggestions.acquisition, [2.5, np.nan])
    assert list(suggestions.to_frame().columns) == [
        *FEATURES, "acquisition", "conversion_mean", "conversion_variance", "purity_mean", "purity_variance"
    ]  # fmt: skip
