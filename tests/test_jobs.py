"""Asynchronous jobs end to end against moto: submit, the worker and finisher on their queues, results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from handler.gp.artifact import PackagedArtifact
from handler.gp.model import LazyModel
from tests.conftest import FEATURES
from tests.jobs_harness import JobsHarness, moto_server, start_harness


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
    from handler.jobs.designs import generate

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
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n0.1,abc,0.3,0.4\n", "row 2: x2 is 'abc', not a number"),
        ("x2,x1,x3,x4\n0.1,0.2,0.3,0.4\n0.1,,0.3,0.4\n", "row 2: x1 is '', not a number"),
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n0.1,nan,0.3,0.4\n", "row 2: x2 is nan"),
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n7,0.2,0.3,0.4\n", "row 2: x1 = 7 is outside"),
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n\n7,0.2,0.3,0.4\n", "row 3: x1 = 7 is outside"),  # rows count lines
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n0.1,0.2,0.3\n", "row 2 has 3 values; the header names 4"),
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n0.1,0.2,0.3,0.4,0.5\n", "row 2 has 5 values; the header names 4"),
        ("x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n0.1,0.2,0.3,0.4,\n", "row 2 has 5 values; the header names 4"),
        ('x1,x2,x3,x4\n0.1,0.2,"0.3"x,0.4\n', "row 1: ',' expected after '\"'"),
        ('x1,x2,x3,x4\n0.1,0.2,0.3,0.4\n0.1,"0.2\n0.3",0.3,0.4\n', "row 2: unexpected end of data"),
        ("x1,x2,x3,x4\n0.1,0.2,0.3," + "9" * 300 + "\n", "row 1 is longer than 256 characters"),
        ("x1,x2,x3,x4\n" + "\n" * 1_001, "more than 1000 empty lines"),
        ("x1,x2,x3,x4\n", "no rows"),
        ("x1,x2,x3,x4\n\n\n", "no rows"),
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
    # Given a worker that fails on one chunk's points every time (those with x1 > 0.9); a model that answers
    # non-finite numbers is no retry's business (tests/test_broken_model.py: the job fails at once)
    from handler.jobs import worker

    real = worker.model.get().model.predict
    attempts = []

    def poisoned(X, *, latent=False):
        if (X[:, 0] > 0.9).any():
            attempts.append(len(X))
            raise OSError("scratch space exhausted while predicting")
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
    assert "scratch space exhausted while predicting" in status["error"]
    assert status["progress"]["chunks_done"] == 2
    assert "results" not in status


def test_a_model_that_cannot_load_fails_the_job_without_quoting_the_artifact(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch
):
    # Given a worker whose model load fails with a reason that quotes the artifact's bytes
    from handler.gp.artifact import ModelUnavailableError
    from handler.jobs import worker

    def broken():
        raise ModelUnavailableError("model artifact could not be read: TOPSECRET-bytes")

    _, _, submitted = jobs.call("POST", "/jobs", {"points": [{n: 0.5 for n in FEATURES}] * 3})
    monkeypatch.setattr(worker.model, "get", broken)  # after the API sized the job's chunks by the model
    # When the queues run (the chunk is retried, then dead-lettered)
    jobs.run()
    # Then the job failed saying the model was unavailable, and nothing of the reason reached its caller
    _, _, status = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert status["status"] == "FAILED", status
    assert "model unavailable" in status["error"]
    assert "TOPSECRET" not in str(status)


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
    from handler.jobs import worker

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


def npy_bytes(points: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, points)
    return buffer.getvalue()


def upload_job(jobs: JobsHarness, fmt: str, data: bytes) -> str:
    """An upload job with `data` PUT to its URL (not started): its id."""
    status, _, submitted = jobs.call("POST", "/jobs", {"upload": {"format": fmt}})
    assert status == 202, submitted
    put_upload(jobs, submitted["upload"]["url"], data)
    return submitted["id"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            npy_bytes(np.full((10, 4), 0.5)) + bytes(100_000),
            "100448 bytes, but its header declares 10 rows x 4 columns of float64",
        ),
        (
            npy_bytes(np.full((10, 4), 0.5))[:-8],
            "440 bytes, but its header declares 10 rows x 4 columns of float64: 448 bytes",
        ),
        (npy_bytes(np.full((10, 4), 0.5, dtype=np.longdouble)), "at most 64 bits, got dtype float128"),
    ],
)
def test_an_npy_whose_size_its_header_does_not_explain_is_refused_when_started(jobs: JobsHarness, data, message):
    # Given a .npy of 10 rows followed by bytes its header does not declare (or cut short, or of a float
    # type whose layout differs between machines)
    job_id = upload_job(jobs, "npy", data)
    # When the job is started
    code, _, answer = jobs.call("POST", f"/jobs/{job_id}/start")
    # Then it is refused naming the upload and what its header declares, and nothing was queued
    assert code == 422, answer
    assert answer["details"][0]["field"] == "upload"
    assert message in answer["details"][0]["message"], answer
    assert jobs.call("GET", f"/jobs/{job_id}")[2]["status"] == "AWAITING_UPLOAD"


@pytest.mark.parametrize("fmt", ["csv", "npy"])
def test_an_empty_upload_is_refused_when_started(jobs: JobsHarness, fmt: str):
    # Given an upload job whose file is 0 bytes
    job_id = upload_job(jobs, fmt, b"")
    # When it is started
    code, _, answer = jobs.call("POST", f"/jobs/{job_id}/start")
    # Then a 422 says so (not S3's InvalidRange as a 5xx), and the job still waits for a file
    assert code == 422, answer
    assert answer["details"] == [{"field": "upload", "message": f"the uploaded .{fmt} is empty (0 bytes)"}]
    assert jobs.call("GET", f"/jobs/{job_id}")[2]["status"] == "AWAITING_UPLOAD"


def test_a_csv_larger_than_its_row_limit_explains_is_refused_and_one_with_too_many_rows_fails(
    aws, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path
):
    # Given jobs of at most 100 points, so at most 100 rows of 4 x 64 characters after the header
    jobs = start_harness(monkeypatch, LazyModel(PackagedArtifact(tiny_model_path)), max_points=100)
    header = ",".join(FEATURES) + "\n"
    row = "0.5,0.5,0.5,0.5\n"
    # When a CSV of more bytes than that is started
    too_big = upload_job(jobs, "csv", (header + row * (100 * 256 // len(row) + 1)).encode())
    code, _, answer = jobs.call("POST", f"/jobs/{too_big}/start")
    # Then it is refused naming the upload
    assert code == 422, answer
    assert answer["details"][0]["field"] == "upload"
    assert "more than 100 rows of 4 values take (at most 25612 bytes" in answer["details"][0]["message"]
    # And a CSV small enough in bytes but of 101 rows starts, then fails at its 101st
    too_many = upload_job(jobs, "csv", (header + row * 101).encode())
    assert jobs.call("POST", f"/jobs/{too_many}/start")[0] == 202
    jobs.run()
    _, _, status = jobs.call("GET", f"/jobs/{too_many}")
    assert (status["status"], status["error"]) == ("FAILED", "more than 100 points; split the job")


@pytest.mark.parametrize(("fmt", "bad_row"), [("csv", 2_500), ("npy", 2_500), ("csv", 1_001), ("npy", 1_000)])
def test_rows_are_numbered_through_the_whole_file_when_it_is_read_in_batches(jobs: JobsHarness, fmt, bad_row):
    # Given 3,000 points, read 1,000 at a time (the harness's chunk), one of them NaN, another far outside
    points = np.random.default_rng(2).uniform(0, 1, (3_000, 4))
    points[bad_row - 1, 2] = np.nan
    points[2_999, 0] = 9.0
    if fmt == "csv":
        data = (",".join(FEATURES) + "\n" + "\n".join(",".join(map(repr, r)) for r in points.tolist())).encode()
    else:
        data = npy_bytes(points.astype(np.float32))
    job_id = upload_job(jobs, fmt, data)
    assert jobs.call("POST", f"/jobs/{job_id}/start")[0] == 202
    # When its plan runs
    jobs.run()
    # Then the job fails naming the first bad row as the file numbers it (1-based, after a CSV's header)
    _, _, status = jobs.call("GET", f"/jobs/{job_id}")
    assert status["status"] == "FAILED"
    assert status["error"] == f"row {bad_row}: x3 is nan (not a finite number)"


@pytest.mark.parametrize("dtype", ["<f4", ">f8", "<i2", "|u1"])
def test_an_uploaded_npy_of_any_numeric_type_is_predicted_in_place(jobs: JobsHarness, dtype: str):
    # Given a .npy of 2,500 points (three chunks) in a type other than float64 (values 0 and 1 for integers)
    rng = np.random.default_rng(5)
    points = (rng.uniform(0, 1, (2_500, 4)) if dtype[1] == "f" else rng.integers(0, 2, (2_500, 4))).astype(dtype)
    job_id = upload_job(jobs, "npy", npy_bytes(points))
    # When it runs
    assert jobs.call("POST", f"/jobs/{job_id}/start")[0] == 202
    jobs.run()
    # Then its chunks read the upload itself (no converted copy) and the results hold its points as float64
    _, _, done = jobs.call("GET", f"/jobs/{job_id}")
    assert done["status"] == "SUCCEEDED", done
    assert jobs.backend.store.get(job_id).input_dtype == np.dtype(dtype).str
    assert "Contents" not in jobs.backend.storage.s3.list_objects_v2(
        Bucket=jobs.backend.bucket, Prefix=jobs.backend.storage.input_key(job_id)
    )
    results = jobs.results(done)
    np.testing.assert_array_equal(np.column_stack([results[n] for n in FEATURES]), points.astype(float))
    expected = sync_predict(jobs, points.astype(float)[:1_000])
    np.testing.assert_allclose(results["y_mean"][:1_000], expected["mean"], rtol=1e-12)


def test_a_csv_with_a_bom_crlf_quotes_spaces_and_empty_lines_runs(jobs: JobsHarness):
    text = '\ufeff"x2", x1 ,x3,x4\r\n"0.25", 0.5 ,0.75,1\r\n\r\n0,1e-1,+.5,1.0E-0\r\n'
    job_id = upload_job(jobs, "csv", text.encode())
    assert jobs.call("POST", f"/jobs/{job_id}/start")[0] == 202
    jobs.run()
    _, _, done = jobs.call("GET", f"/jobs/{job_id}")
    assert done["status"] == "SUCCEEDED", done
    results = jobs.results(done)
    points = np.column_stack([results[n] for n in FEATURES])
    np.testing.assert_array_equal(points, [[0.5, 0.25, 0.75, 1.0], [0.1, 0.0, 0.5, 1.0]])


@pytest.mark.parametrize("fmt", ["csv", "npy"])
def test_an_upload_replaced_after_start_fails_the_job(jobs: JobsHarness, fmt: str):
    # Given a started upload job
    def upload(value: float) -> bytes:
        if fmt == "npy":
            return npy_bytes(np.full((1_500, 4), value))
        return (",".join(FEATURES) + "\n" + f"{value},{value},{value},{value}\n" * 1_500).encode()

    job_id = upload_job(jobs, fmt, upload(0.5))
    assert jobs.call("POST", f"/jobs/{job_id}/start")[0] == 202
    # When its file is replaced through the (still valid) upload URL before the plan reads it
    key = jobs.backend.storage.upload_key(job_id, fmt)
    jobs.backend.storage.s3.put_object(Bucket=jobs.backend.bucket, Key=key, Body=upload(0.25))
    jobs.run()
    # Then the job fails saying so rather than reading a file that was not checked
    _, _, status = jobs.call("GET", f"/jobs/{job_id}")
    assert (status["status"], status["error"]) == ("FAILED", f"upload.{fmt} was replaced after the job started")


@pytest.mark.parametrize("rows", [0, 10, 163_840, 163_841, 400_000])
def test_the_input_writer_sends_its_header_last_and_keeps_every_row(aws, rows: int):
    # Given rows written in batches of 4,096 to an S3 .npy of parts of S3's least size (5 MiB: 163,840 rows)
    import io

    import boto3

    from handler.jobs.backend import JobStorage

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="writer-test")
    points = np.random.default_rng(rows).uniform(size=(rows, 4))
    with JobStorage(s3, "writer-test").input_writer("job", 4, part_bytes=0) as writer:
        for start in range(0, rows, 4_096):
            writer.write(points[start : start + 4_096])
    # Then the object is a .npy of exactly those rows, its data where the writer says
    data = s3.get_object(Bucket="writer-test", Key="jobs/job/input.npy")["Body"].read()
    np.testing.assert_array_equal(np.load(io.BytesIO(data)), points)
    assert len(data) == writer.header_bytes + points.nbytes


def test_an_input_writer_that_fails_leaves_no_object_and_no_open_upload(aws):
    import boto3

    from handler.jobs.backend import JobStorage

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="writer-test")

    def write_then_fail() -> None:
        with JobStorage(s3, "writer-test").input_writer("job", 4, 0) as writer:
            writer.write(np.zeros((400_000, 4)))  # two parts sent
            raise RuntimeError("a bad row")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert "Contents" not in s3.list_objects_v2(Bucket="writer-test")
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="writer-test")


# --- memory: moto's server in its own process, so what this process traces is the worker's own -----------


@pytest.fixture(scope="module")
def aws_server():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def served_jobs(aws_server: str, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path) -> JobsHarness:
    import uuid

    for variable, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_server)
    model = LazyModel(PackagedArtifact(tiny_model_path))
    return start_harness(monkeypatch, model, chunk_points=20_000, prefix=f"t{uuid.uuid4().hex[:12]}")


def traced_peak(action) -> int:
    """The most this process had allocated at once (Python and numpy) while `action` ran, above its start."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        action()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak


def test_a_40_mb_csv_row_fails_its_job_fast_in_memory_bounded_by_the_chunk(served_jobs: JobsHarness):
    # Given a CSV whose one row is 40 MB of empty fields (np.loadtxt took 1.2 GB for it), and chunks of 20,000 points
    jobs = served_jobs
    data = (",".join(FEATURES) + "\n" + "," * 40_000_000 + "\n").encode()
    job_id = upload_job(jobs, "csv", data)
    del data
    assert jobs.call("POST", f"/jobs/{job_id}/start")[0] == 202
    # When its plan runs
    peak = traced_peak(jobs.run)
    # Then the job fails naming the row, having held a fraction of the file
    _, _, status = jobs.call("GET", f"/jobs/{job_id}")
    assert (status["status"], status["error"]) == (
        "FAILED",
        "upload.csv: row 1 is longer than 256 characters (4 values)",
    )
    assert peak < 20_000 * 4 * 8, f"{peak / 1e6:.1f} MB"  # one chunk's float64 rows: 640 kB (0.15 MB seen)


def test_an_npy_upload_is_checked_a_chunk_at_a_time(served_jobs: JobsHarness):
    # Given a 12.8 MB .npy of 400,000 points (20 chunks of 20,000: 640 kB each), the last one outside the domain
    from handler.jobs import worker

    jobs = served_jobs
    points = np.random.default_rng(3).uniform(0, 1, (400_000, 4))
    points[-1, 3] = 5.0
    job_id = upload_job(jobs, "npy", npy_bytes(points))
    del points
    assert jobs.call("POST", f"/jobs/{job_id}/start")[0] == 202
    # When its plan reads all of it
    manifest = worker.model.manifest()

    def plan() -> None:
        with pytest.raises(worker.JobInputError, match="row 400000: x4 = 5 is outside"):
            worker.plan_job(jobs.backend, job_id, manifest, worker.settings.domain_margin, lambda: 20_000)

    peak = traced_peak(plan)
    # Then it held about a chunk's rows (bytes, their float64 and the checks' masks), not the file's
    assert peak < 4 * 20_000 * 4 * 8 + 2**20, f"{peak / 1e6:.1f} MB"  # 3.6 MB (1.35 MB seen) of a 12.8 MB file


def test_an_upload_replaced_while_it_is_started_is_a_conflict(jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch):
    # Given an upload job whose file is replaced between `start`'s HEAD and its read of the file's first bytes
    from handler.jobs.backend import JobStorage

    job_id = upload_job(jobs, "npy", npy_bytes(np.full((10, 4), 0.5)))
    read_bytes = JobStorage.read_bytes

    def replaced_first(storage: JobStorage, key: str, *args, **kwargs) -> bytes:
        storage.s3.put_object(Bucket=storage.bucket, Key=key, Body=npy_bytes(np.full((10, 4), 0.25)))
        return read_bytes(storage, key, *args, **kwargs)

    monkeypatch.setattr(JobStorage, "read_bytes", replaced_first)
    # When it is started
    code, _, answer = jobs.call("POST", f"/jobs/{job_id}/start")
    # Then a 409 says to start it again, and it still waits
    assert code == 409, answer
    assert answer["details"][0] == {
        "field": "upload",
        "message": "the file was replaced while the job was being started: start it again",
    }
    assert jobs.call("GET", f"/jobs/{job_id}")[2]["status"] == "AWAITING_UPLOAD"
