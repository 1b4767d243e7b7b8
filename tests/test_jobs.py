"""Asynchronous jobs end to end against moto: submit, the worker and finisher on their queues, results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from moto import mock_aws

from handler.artifact import PackagedArtifact
from handler.model import LazyModel
from tests.conftest import FEATURES
from tests.jobs_harness import JobsHarness, start_harness


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(variable, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def jobs(aws, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path) -> JobsHarness:
    return start_harness(monkeypatch, LazyModel(PackagedArtifact(tiny_model_path)), chunk_points=1_000)


def sync_predict(jobs: JobsHarness, points: np.ndarray, query: dict[str, str] | None = None) -> dict:
    body = {name: points[:, i].tolist() for i, name in enumerate(FEATURES)}
    status, _, answer = jobs.call("POST", "/predict", body, query=query)
    assert status == 200, answer
    return answer


def test_a_sobol_design_runs_to_succeeded_and_its_results_equal_synchronous_predictions(jobs: JobsHarness):
    # Given a design of 2,500 points (three chunks of at most 1,000)
    spec = {"method": "sobol", "n": 2_500, "seed": 11}
    # When it is submitted and the queues are run
    status, headers, submitted = jobs.call("POST", "/jobs", {"design": spec}, query={"format": "npy"})
    assert status == 202, submitted
    assert headers["Location"] == f"/prod/jobs/{submitted['id']}"
    assert submitted["status"] == "QUEUED"
    assert submitted["progress"]["points"] == 2_500  # known from the spec before the plan runs
    jobs.run()
    # Then the job succeeded, every chunk and point counted once
    status, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert status == 200
    assert done["status"] == "SUCCEEDED", done
    assert done["progress"] == {"chunks_done": 3, "chunks": 3, "points_done": 2_500, "points": 2_500, "fraction": 1.0}
    assert done["design"]["bounds"] == {"x1": [0.0, 1.0], "x2": [0.0, 1.0], "x3": [0.0, 1.0], "x4": [0.0, 1.0]}
    # And the results hold the design's points in order, with /predict's answers for them
    results = jobs.results(done)
    assert results.dtype.names == (*FEATURES, "y_mean", "y_variance")
    points = np.column_stack([results[name] for name in FEATURES])
    from handler.designs import generate

    np.testing.assert_array_equal(points, generate("sobol", 2_500, 11, np.zeros(4), np.ones(4)))
    for start in range(0, 2_500, 1_000):
        expected = sync_predict(jobs, points[start : start + 1_000])
        np.testing.assert_allclose(results["y_mean"][start : start + 1_000], expected["mean"], rtol=1e-12, atol=0)
        np.testing.assert_allclose(results["y_variance"][start : start + 1_000], expected["variance"], rtol=1e-9)


def test_inline_rows_with_options_give_csv_and_parquet_results_in_input_order(jobs: JobsHarness):
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 1, (1_500, 4))
    rows = [dict(zip(FEATURES, p, strict=True)) for p in points.tolist()]
    query = {"variance": "latent", "include": "std,interval"}
    expected = sync_predict(jobs, points, query)
    for fmt in ("csv", "parquet"):
        # Given points sent inline, with the latent variance, std and interval, as CSV or Parquet
        status, _, submitted = jobs.call("POST", "/jobs", {"points": rows}, query={**query, "format": fmt})
        assert status == 202, submitted
        # The points are stored and chunked at once: no plan step for inline points
        assert submitted["status"] == "RUNNING"
        assert submitted["progress"]["chunks"] == 2
        jobs.run()
        _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
        assert done["status"] == "SUCCEEDED", done
        results = jobs.results(done)
        columns = ["y_mean", "y_variance", "y_std", "y_lower_95", "y_upper_95"]
        assert results.dtype.names == (*FEATURES, *columns)
        assert done["results"]["columns"] == [*FEATURES, *columns]
        # Every digit survives the file format: the inputs exactly, the predictions as /predict's
        np.testing.assert_array_equal(np.column_stack([results[n] for n in FEATURES]), points)
        for column, key in zip(columns, ("mean", "variance", "std", "lower_95", "upper_95"), strict=True):
            np.testing.assert_allclose(results[column], expected[key], rtol=1e-9, atol=1e-15)


def test_an_uploaded_csv_in_any_column_order_runs_to_the_same_predictions(jobs: JobsHarness):
    # Given an upload job
    status, _, submitted = jobs.call("POST", "/jobs", {"upload": {"format": "csv"}}, query={"format": "npy"})
    assert status == 202, submitted
    assert submitted["status"] == "AWAITING_UPLOAD"
    assert submitted["upload"]["method"] == "PUT"
    # When a CSV with the features in another order is PUT to the upload URL, and the job started
    points = np.random.default_rng(4).uniform(0, 1, (1_200, 4))
    order = [2, 0, 3, 1]
    text = ",".join(FEATURES[i] for i in order) + "\n"
    text += "\n".join(",".join(repr(v) for v in row) for row in points[:, order].tolist()) + "\n"
    put_upload(jobs, submitted["upload"]["url"], text.encode())
    status, _, started = jobs.call("POST", f"/jobs/{submitted['id']}/start")
    assert status == 202, started
    assert started["status"] == "QUEUED"
    jobs.run()
    # Then the results are the points in the manifest's order, with their predictions
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "SUCCEEDED", done
    results = jobs.results(done)
    np.testing.assert_array_equal(np.column_stack([results[n] for n in FEATURES]), points)
    expected = sync_predict(jobs, points)
    np.testing.assert_allclose(results["y_mean"], expected["mean"], rtol=1e-12)
    # And starting it again is a conflict
    status, _, again = jobs.call("POST", f"/jobs/{submitted['id']}/start")
    assert status == 409, again


def put_upload(jobs: JobsHarness, url: str, data: bytes) -> None:
    from urllib.parse import unquote, urlparse

    bucket, _, key = unquote(urlparse(url).path).lstrip("/").partition("/")
    jobs.backend.storage.s3.put_object(Bucket=bucket, Key=key, Body=data)


def test_an_uploaded_npy_runs(jobs: JobsHarness):
    import io

    _, _, submitted = jobs.call("POST", "/jobs", {"upload": {"format": "npy"}})
    points = np.random.default_rng(5).uniform(0, 1, (700, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, points)
    put_upload(jobs, submitted["upload"]["url"], buffer.getvalue())
    status, _, _ = jobs.call("POST", f"/jobs/{submitted['id']}/start")
    assert status == 202
    jobs.run()
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "SUCCEEDED", done
    results = jobs.results(done)  # CSV, the default format
    np.testing.assert_array_equal(results["x1"], points[:, 0].astype(float))


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        ({"design": {"method": "random", "n": 10}}, 422, "design.method", "'sobol', 'lhs', 'halton' or 'grid'"),
        ({"design": {"method": "sobol", "n": 0}}, 422, "design.n", "greater than or equal to 1"),
        ({"design": {"method": "sobol", "n": "10"}}, 422, "design.n", "valid integer"),
        ({"design": {"method": "sobol", "n": 10**9}}, 422, "design.n", "at most 10000000 per job"),
        ({"design": {"method": "grid", "n": 8}}, 422, "design.n", "needs n >= 16"),
        ({"design": {"method": "lhs", "n": 10, "bounds": {"x9": [0, 1]}}}, 422, "design.bounds.x9", "not a feature"),
        ({"design": {"method": "lhs", "n": 10, "bounds": {"x1": [1, 0]}}}, 422, "design.bounds.x1", "low < high"),
        ({"design": {"method": "lhs", "n": 10, "bounds": {"x1": [0, 5]}}}, 422, "design.bounds.x1", "leaves the model"),
        ({"design": {"method": "lhs", "n": 10, "extra": 1}}, 422, "design.extra", "Extra inputs are not permitted"),
        ({"design": {"method": "lhs", "n": 10}, "upload": {"format": "csv"}}, 422, "body", "exactly one of"),
        ({}, 422, "body", "exactly one of"),
        ({"upload": {"format": "xlsx"}}, 422, "upload.format", "'csv' or 'npy'"),
        ({"points": [{"x1": 0.5}]}, 422, "points[0]", "Field required"),
        ({"points": [{"x1": 9, "x2": 0, "x3": 0, "x4": 0}]}, 422, "points[0].x1", "is outside"),
        ([1, 2], 422, "body", "Input should be an object"),
    ],
)
def test_a_bad_submission_is_refused_with_the_field_and_the_problem(jobs, body, status, field, message):
    code, _, answer = jobs.call("POST", "/jobs", body)
    assert code == status, answer
    assert any(d["field"].startswith(field) and message in d["message"] for d in answer["details"]), answer


def test_bad_query_options_and_headers_are_refused(jobs: JobsHarness):
    spec = {"design": {"method": "sobol", "n": 8}}
    code, _, answer = jobs.call("POST", "/jobs", spec, query={"format": "xlsx"})
    assert (code, answer["details"][0]["field"]) == (422, "format")
    code, _, answer = jobs.call("POST", "/jobs", spec, query={"variance": "both"})
    assert (code, answer["details"][0]["field"]) == (422, "variance")
    code, _, answer = jobs.call("POST", "/jobs", spec, headers={"Idempotency-Key": "x" * 300})
    assert (code, answer["details"][0]["field"]) == (400, "Idempotency-Key")
    code, _, answer = jobs.call("POST", "/jobs", raw_body="{not json")
    assert (code, answer["details"][0]["field"]) == (400, "body")


@pytest.mark.parametrize(
    ("fmt", "data", "message"),
    [
        ("csv", b"x1,x2,x3\n0.1,0.2,0.3\n", "lacks x4"),
        ("csv", b"x1,x2,x3,x4,x5\n0.1,0.2,0.3,0.4,0.5\n", "unknown column(s) 'x5'"),
        ("csv", b"\xff\xfe\x00x1", "not UTF-8"),
        ("npy", b"not an npy file at all", "not an .npy file"),
        ("npy", None, "expected 4 columns"),
    ],
)
def test_an_upload_with_a_bad_header_is_refused_when_started(jobs, fmt, data, message):
    import io

    if data is None:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((3, 5)))
        data = buffer.getvalue()
    _, _, submitted = jobs.call("POST", "/jobs", {"upload": {"format": fmt}})
    put_upload(jobs, submitted["upload"]["url"], data)
    code, _, answer = jobs.call("POST", f"/jobs/{submitted['id']}/start")
    assert code == 422, answer
    assert any(message in d["message"] for d in answer["details"]), answer
    # Nothing was queued: the job still waits for a good file
    _, _, status = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert status["status"] == "AWAITING_UPLOAD"


def test_starting_before_uploading_is_a_conflict(jobs: JobsHarness):
    _, _, submitted = jobs.call("POST", "/jobs", {"upload": {"format": "csv"}})
    code, _, answer = jobs.call("POST", f"/jobs/{submitted['id']}/start")
    assert code == 409
    assert "PUT" in answer["details"][0]["message"]


@pytest.mark.parametrize(
    ("csv", "reason"),
    [
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n0.1,abc,0.3,0.4\n", "could not convert string 'abc'"),
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n0.1,nan,0.3,0.4\n", "row 2: x2 is nan"),
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n7,0.2,0.3,0.4\n", "row 2: x1 = 7 is outside"),
        ("x1,x2,x3,x4\n", "no rows"),
    ],
)
def test_an_upload_with_bad_rows_fails_with_the_row_and_the_reason(jobs, csv, reason):
    _, _, submitted = jobs.call("POST", "/jobs", {"upload": {"format": "csv"}})
    put_upload(jobs, submitted["upload"]["url"], csv.encode())
    assert jobs.call("POST", f"/jobs/{submitted['id']}/start")[0] == 202
    jobs.run()
    _, _, status = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert status["status"] == "FAILED"
    assert reason in status["error"], status
    assert "results" not in status


def test_a_poison_chunk_is_retried_then_dead_lettered_and_the_job_fails_with_the_reason(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch
):
    # Given a model that cannot predict one chunk's points (it returns NaN for points with x1 > 0.9)
    from handler import worker

    real = worker.model.get().model.predict
    attempts = []

    def poisoned(X, *, latent=False):
        if (X[:, 0] > 0.9).any():
            attempts.append(len(X))
            mean, variance = real(X, latent=latent)
            return mean * np.nan, variance
        return real(X, latent=latent)

    monkeypatch.setattr(worker.model.get().model, "predict", poisoned)
    points = np.full((2_500, 4), 0.5)
    points[2_200, 0] = 0.95  # in the third chunk
    body = {"points": {name: points[:, i].tolist() for i, name in enumerate(FEATURES)}}
    _, _, submitted = jobs.call("POST", "/jobs", body)
    # When the queues run (the poison chunk is retried until SQS dead-letters it)
    jobs.run()
    # Then it was tried three times (the queue's maxReceiveCount), and the job FAILED saying which chunk and why
    assert len(attempts) == 3
    _, _, status = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert status["status"] == "FAILED", status
    assert "chunk 2 (points 2000-2499)" in status["error"]
    assert "non-finite predictions" in status["error"]
    assert status["progress"]["chunks_done"] == 2
    assert "results" not in status


def test_a_chunk_delivered_twice_is_counted_once(jobs: JobsHarness):
    # Given a running job of three chunks, whose chunk messages are duplicated on the queue (at-least-once)
    import boto3

    _, _, submitted = jobs.call("POST", "/jobs", {"points": [{n: 0.5 for n in FEATURES}] * 2_500})
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = jobs.resources.work_queue_url
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]
    for message in messages:
        sqs.send_message(QueueUrl=url, MessageBody=message["Body"])
    # When every copy is processed
    jobs.run()
    # Then each chunk and point counted once, and the results have each point once
    _, _, status = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert status["status"] == "SUCCEEDED"
    assert status["progress"]["chunks_done"] == 3
    assert status["progress"]["points_done"] == 2_500
    assert len(jobs.results(status)) == 2_500


def test_an_idempotent_resubmit_returns_the_same_job_and_a_changed_body_is_refused(jobs: JobsHarness):
    spec = {"design": {"method": "lhs", "n": 100, "seed": 1}}
    headers = {"Idempotency-Key": "run-42"}
    code1, _, first = jobs.call("POST", "/jobs", spec, headers=headers)
    code2, _, second = jobs.call("POST", "/jobs", spec, headers=headers)
    assert (code1, code2) == (202, 202)
    assert first["id"] == second["id"]
    # Another caller's identical key is another job
    _, _, other = jobs.call("POST", "/jobs", spec, headers=headers, api_key_id="key-b")
    assert other["id"] != first["id"]
    # The same key with another body is refused rather than answered with the wrong job
    changed = {"design": {"method": "lhs", "n": 101, "seed": 1}}
    code, _, answer = jobs.call("POST", "/jobs", changed, headers=headers)
    assert code == 422
    assert answer["details"][0]["field"] == "Idempotency-Key"
    # Only the two jobs exist, and the first runs once
    jobs.run()
    _, _, done = jobs.call("GET", f"/jobs/{first['id']}")
    assert done["status"] == "SUCCEEDED"
    assert done["progress"]["points_done"] == 100


def test_another_keys_job_and_an_unknown_id_are_404(jobs: JobsHarness):
    _, _, submitted = jobs.call("POST", "/jobs", {"design": {"method": "halton", "n": 10}}, api_key_id="key-a")
    for path in (f"/jobs/{submitted['id']}", f"/jobs/{submitted['id']}/start"):
        method = "GET" if path.count("/") == 2 else "POST"
        code, _, answer = jobs.call(method, path, api_key_id="key-b")
        assert code == 404, answer
    assert jobs.call("GET", "/jobs/" + "0" * 32)[0] == 404
    assert jobs.call("GET", "/jobs/not-an-id")[0] == 404
    assert jobs.call("GET", f"/jobs/{submitted['id']}", api_key_id="key-a")[0] == 200


def test_jobs_expire_with_their_records(jobs: JobsHarness):
    import time

    _, _, submitted = jobs.call("POST", "/jobs", {"design": {"method": "sobol", "n": 16}})
    item = jobs.backend.store.table.get_item(Key={"id": f"job#{submitted['id']}"})["Item"]
    assert 6.9 * 86_400 < int(item["expiration"]) - time.time() <= 7 * 86_400


def test_jobs_answer_503_where_the_deployment_has_none(app_with_model):
    from tests.events import api_event, lambda_context, response_json

    response = app_with_model.lambda_handler(api_event("POST", "/jobs", {"design": {}}), lambda_context())
    assert response["statusCode"] == 503
    assert response_json(response)["details"][0]["field"] == "jobs"


def test_the_second_model_runs_a_job_with_its_own_features_and_outputs(
    aws, monkeypatch: pytest.MonkeyPatch, plant_model_path: Path
):
    from tests.conftest import PLANT_FEATURES

    jobs = start_harness(monkeypatch, LazyModel(PackagedArtifact(plant_model_path)), chunk_points=500)
    spec = {"method": "lhs", "n": 1_200, "seed": 5, "bounds": {"temperature": [300, 350]}}
    _, _, submitted = jobs.call("POST", "/jobs", {"design": spec}, query={"format": "parquet"})
    jobs.run()
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "SUCCEEDED", done
    assert done["design"]["bounds"]["temperature"] == [300.0, 350.0]
    assert done["design"]["bounds"]["pressure"] == [1.0, 10.0]
    results = jobs.results(done)
    outputs = ("conversion_mean", "conversion_variance", "purity_mean", "purity_variance")
    assert results.dtype.names == (*PLANT_FEATURES, *outputs)
    assert results["temperature"].min() >= 300
    assert results["temperature"].max() <= 350
    points = np.column_stack([results[name] for name in PLANT_FEATURES])
    body = {name: points[:500, i].tolist() for i, name in enumerate(PLANT_FEATURES)}
    _, _, expected = jobs.call("POST", "/predict", body)
    np.testing.assert_allclose(results["purity_mean"][:500], expected["purity"]["mean"], rtol=1e-12)
    np.testing.assert_allclose(results["conversion_variance"][:500], expected["conversion"]["variance"], rtol=1e-9)


def test_a_cancelled_job_fails_and_its_remaining_chunks_are_skipped(jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch):
    from handler import worker

    predicted = []
    real = worker.model.get().model.predict
    monkeypatch.setattr(worker.model.get().model, "predict", lambda X, **kw: predicted.append(len(X)) or real(X, **kw))
    _, _, submitted = jobs.call("POST", "/jobs", {"design": {"method": "sobol", "n": 5_000, "seed": 1}})
    code, _, cancelled = jobs.call("POST", f"/jobs/{submitted['id']}/cancel")
    assert code == 200
    assert (cancelled["status"], cancelled["error"]) == ("FAILED", "cancelled by the caller")
    jobs.run()
    assert predicted == []  # its plan found it FAILED and queued nothing
    assert jobs.call("GET", f"/jobs/{submitted['id']}")[2]["status"] == "FAILED"
    assert jobs.call("POST", f"/jobs/{submitted['id']}/cancel")[0] == 409
    assert jobs.call("POST", f"/jobs/{submitted['id']}/cancel", api_key_id="key-b")[0] == 404
