"""The Python client (client/) against the local server, and its retries against a scripted transport."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from gpr_client import ApiError, JobFailedError, SurrogateClient

from tests.conftest import FEATURES


@pytest.fixture(scope="module")
def client(local_server):
    base_url, _ = local_server
    with SurrogateClient(base_url, concurrency=4) as client:
        yield client


def direct_predictions(base_url: str, points: np.ndarray, **params: str) -> dict:
    body = {name: points[:, i].tolist() for i, name in enumerate(FEATURES)}
    return httpx.post(f"{base_url}/predict", json=body, params=params, timeout=60).json()


def test_predict_splits_a_large_array_into_concurrent_batches_and_keeps_input_order(local_server):
    base_url, _ = local_server
    # Given 2,500 points and a client that sends 400 per request, four at a time
    points = np.random.default_rng(1).uniform(0, 1, (2_500, 4))
    with SurrogateClient(base_url, batch_size=400, concurrency=4) as client:
        prediction = client.predict(points, include=["std"])
    # Then every point has its own answer, in order, as one direct request for all of them gives
    expected = direct_predictions(base_url, points, include="std")
    assert prediction.mean.shape == (2_500, 1)
    np.testing.assert_allclose(prediction.mean[:, 0], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(prediction.variance[:, 0], expected["variance"], rtol=1e-9)
    np.testing.assert_allclose(prediction.extras["std"][:, 0], expected["std"], rtol=1e-9)


def test_predict_takes_a_dataframe_by_column_name_and_returns_one(client, local_server):
    import pandas as pd

    base_url, _ = local_server
    points = np.random.default_rng(2).uniform(0, 1, (50, 4))
    frame = pd.DataFrame(points, columns=list(FEATURES))[["x3", "x1", "x4", "x2"]]  # another order
    prediction = client.predict(frame)
    expected = direct_predictions(base_url, points)
    np.testing.assert_allclose(prediction.to_frame()["y_mean"], expected["mean"], rtol=1e-12)
    with pytest.raises(ValueError, match="lacks column"):
        client.predict(frame.drop(columns="x2"))


def test_a_refused_request_raises_with_the_services_explanation(client):
    with pytest.raises(ApiError) as refused:
        client.predict(np.full((2, 4), 7.0))
    assert refused.value.status == 422
    assert refused.value.details[0]["field"] == "x1[0]"
    assert "outside" in refused.value.details[0]["message"]


def test_run_design_drives_a_job_to_its_results(client, local_server):
    base_url, _ = local_server
    results = client.run_design("halton", n=3_000, seed=4, latent=True, include=["interval"], progress=False)
    assert results.inputs.shape == (3_000, 4)
    expected = direct_predictions(base_url, results.inputs, variance="latent")
    np.testing.assert_allclose(results.mean[:, 0], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(results.variance[:, 0], expected["variance"], rtol=1e-9)
    assert results.statistic("upper_95").shape == (3_000, 1)
    assert list(results.to_frame().columns) == [*FEATURES, "y_mean", "y_variance", "y_lower_95", "y_upper_95"]


def test_submit_uploads_more_points_than_one_request_takes(client, local_server):
    base_url, _ = local_server
    points = np.random.default_rng(5).uniform(0, 1, (10_500, 4))  # over the 10,000-point batch limit
    job = client.submit(points)
    assert job.last_status["source"] == "upload"
    results = job.wait(progress=False, poll_interval_s=0.2, timeout_s=120)
    np.testing.assert_array_equal(results.inputs, points)
    expected = direct_predictions(base_url, points[:10_000])
    np.testing.assert_allclose(results.mean[:10_000, 0], expected["mean"], rtol=1e-12)


def test_a_failed_job_raises_with_its_reason(client):
    points = np.random.default_rng(6).uniform(0, 1, (10_001, 4))
    points[9_999, 2] = 3.0  # outside the domain: found by the worker's plan, after the upload
    job = client.submit(points)
    with pytest.raises(JobFailedError, match="row 10000: x3 = 3 is outside"):
        job.wait(progress=False, poll_interval_s=0.2, timeout_s=120)


def test_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("x-api-key")))
        return httpx.Response(200, json={"status": "ok"})

    monkeypatch.setenv("GPR_SURROGATE_URL", "https://api.example.org/v1")
    monkeypatch.setenv("GPR_SURROGATE_API_KEY", "s3cret")
    with SurrogateClient(transport=httpx.MockTransport(handler)) as client:
        client._request("GET", "/health")
    assert seen == [("https://api.example.org/v1/health", "s3cret")]


def test_throttled_and_unavailable_answers_are_retried_honouring_retry_after():
    # Given a service that throttles, then is briefly unavailable, then answers
    script = [
        httpx.Response(429, json={"message": "Too Many Requests"}, headers={"Retry-After": "0.3"}),
        httpx.Response(503, json={"error": "model unavailable"}, headers={"Retry-After": "0.3"}),
        httpx.Response(200, json={"status": "ok"}),
    ]
    moments = []

    def handler(request: httpx.Request) -> httpx.Response:
        moments.append(time.monotonic())
        return script.pop(0)

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        assert client._request("GET", "/health").json() == {"status": "ok"}
    # Then it asked three times, waiting as long as Retry-After said each time
    assert len(moments) == 3
    assert moments[1] - moments[0] >= 0.3
    assert moments[2] - moments[1] >= 0.3


def test_retries_stop_after_max_attempts_with_the_last_error():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(502, json={"message": "Internal server error"}, headers={"Retry-After": "0"})

    transport = httpx.MockTransport(handler)
    with (
        SurrogateClient("https://api.example.org", max_attempts=3, transport=transport) as client,
        pytest.raises(ApiError) as failed,
    ):
        client._request("GET", "/health")
    assert failed.value.status == 502
    assert len(calls) == 3


def test_a_client_error_is_not_retried():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(422, json={"error": "invalid", "details": [{"field": "x1", "message": "bad"}]})

    transport = httpx.MockTransport(handler)
    with (
        SurrogateClient("https://api.example.org", transport=transport) as client,
        pytest.raises(ApiError, match="x1: bad"),
    ):
        client._request("POST", "/predict")
    assert len(calls) == 1


def test_gradients_covariance_and_samples_through_the_client(client, local_server):
    base_url, _ = local_server
    points = np.random.default_rng(9).uniform(0.1, 0.9, (30, 4))
    prediction = client.predict(points, include=["gradient"], latent=True)
    assert prediction.mean_gradient is not None
    assert prediction.mean_gradient.shape == prediction.variance_gradient.shape == (30, 4, 1)
    expected = direct_predictions(base_url, points, include="gradient", variance="latent")
    np.testing.assert_array_equal(prediction.mean_gradient[:, 2, 0], expected["mean_gradient"]["x3"])
    covariance = client.covariance(points[:5], latent=True)
    assert covariance.shape == (1, 5, 5)
    np.testing.assert_allclose(np.diag(covariance[0]), prediction.variance[:5, 0], rtol=1e-6)
    draws, meta = client.sample(points[:5], 200, seed=4)
    assert draws.shape == (1, 200, 5)
    assert meta["seed"] == 4
    again, _ = client.sample(points[:5], 200, seed=4)
    np.testing.assert_array_equal(draws, again)
