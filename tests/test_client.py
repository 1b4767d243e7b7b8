"""The Python client (client/) against the local server, and against a scripted transport: retries, the forms of X
it reads, missing extras, progress bars."""

from __future__ import annotations

import io
import json
import sys
import time

import httpx
import numpy as np
import pytest
from gpr_client import ApiError, Job, JobFailedError, SurrogateClient

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


def test_the_services_own_504_is_not_retried_but_api_gateways_is():
    # given a service whose work did not fit its time (its own 504), and API Gateway timing out once
    calls: list[str] = []
    script = {
        "/predict": httpx.Response(504, json={"error": "time budget exceeded", "details": []}),
        "/health": httpx.Response(504, json={"message": "Endpoint request timed out"}),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/health" and calls.count("/health") > 1:
            return httpx.Response(200, json={"status": "ok"})
        return script[request.url.path]

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        # when each is asked
        with pytest.raises(ApiError, match="time budget exceeded") as failed:
            client._request("POST", "/predict")
        health = client._request("GET", "/health").json()
    # then the service's 504 is raised at once (the same work would not fit again); API Gateway's is retried
    assert failed.value.status == 504
    assert calls.count("/predict") == 1
    assert calls.count("/health") == 2
    assert health == {"status": "ok"}


def test_predict_with_gradients_splits_by_the_models_gradient_limit():
    # given a model whose limits are 3 points a request, 2 with gradients
    manifest = {**PARK_MANIFEST, "limits": {"max_batch_size": 3, "max_batch_size_with_gradient": 2}}
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json=manifest)
        body = json.loads(request.content)
        n = len(body["x1"])
        sizes.append(n)
        gradient = {f: [0.0] * n for f in FEATURES}
        columns = {"mean": [0.0] * n, "variance": [1.0] * n}
        return httpx.Response(200, json={**columns, "mean_gradient": gradient, "variance_gradient": gradient})

    points = np.random.default_rng(0).random((5, len(FEATURES)))
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        # when 5 points are predicted without, then with, gradients
        client.predict(points)
        plain = sorted(sizes)
        sizes.clear()
        answer = client.predict(points, include=["gradient"])
    # then batches follow each limit
    assert plain == [2, 3]
    assert sorted(sizes) == [1, 2, 2]
    assert answer.mean_gradient is not None
    assert answer.mean_gradient.shape == (5, len(FEATURES), 1)


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


# --- points by name, missing extras, progress bars (a scripted service) -----------------------------------------

PARK_MANIFEST = {"name": "park1991", "version": "1", "features": list(FEATURES), "outputs": ["y"],
                 "bounds": {f: [0.0, 1.0] for f in FEATURES}, "limits": {"max_batch_size": 10_000}}  # fmt: skip


def scripted_client(sent: list[dict], delay_s: float = 0.0, **options) -> SurrogateClient:
    """A client of a scripted Park-model service whose /predict records each body and answers, after `delay_s`,
    a mean that tells the features apart (x1 + 10 x2 + 100 x3 + 1000 x4)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json=PARK_MANIFEST)
        body = json.loads(request.content)
        sent.append(body)
        time.sleep(delay_s)
        mean = sum(10**i * np.asarray(body[f]) for i, f in enumerate(FEATURES))
        return httpx.Response(200, json={"mean": mean.tolist(), "variance": [0.5] * len(mean)})

    return SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler), **options)


def test_predict_takes_rows_and_columns_by_feature_name():
    # given the same two points as an array, as rows {feature: value} in any key order, and as columns
    points = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    rows = [{"x4": 0.4, "x2": 0.2, "x1": 0.1, "x3": 0.3}, {"x1": 0.5, "x2": 0.6, "x3": 0.7, "x4": 0.8}]
    columns = {"x3": [0.3, 0.7], "x1": [0.1, 0.5], "x2": [0.2, 0.6], "x4": [0.4, 0.8]}
    sent: list[dict] = []
    with scripted_client(sent) as client:
        # when each is predicted
        answers = [client.predict(X) for X in (points, rows, columns)]
    # then each sends the same body, in the model's feature order, and gets the same answer
    assert sent[0] == sent[1] == sent[2] == {f: points[:, i].tolist() for i, f in enumerate(FEATURES)}
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer.mean, answers[0].mean)


@pytest.mark.parametrize(
    ("X", "error", "says"),
    [
        ([{"x1": 0.1, "x2": 0.2, "x3": 0.3, "x4": 0.4}, {"x1": 0.5, "x2": 0.6, "x4": 0.8}], ValueError,
         r"X row 1: no x3 \(the model's features: x1, x2, x3, x4\)"),
        ([{"x1": 0.1, "x2": 0.2, "x3": 0.3, "x4": 0.4, "depth": 3.0}], ValueError,
         r"X row 0: unknown feature\(s\) depth"),
        ({"x1": [0.1], "x2": [0.2], "x3": [0.3]}, ValueError, "X's columns: no x4"),
        ({"x1": [0.1, 0.2], "x2": [0.2], "x3": [0.3], "x4": [0.4]}, ValueError, "lists of one length"),
        ([{"x1": 0.1, "x2": 0.2, "x3": 0.3, "x4": 0.4}, [0.5, 0.6, 0.7, 0.8]], TypeError,
         r"X must be an \(N, n_features\) array .* a list of rows \{feature: value\}.*; got a list of dict and list"),
        ([["0.1", "a", "0.3", "0.4"]], ValueError, r"X must be numbers.*could not convert string to float: 'a'"),
        ({"x1": [0.1], "x2": ["a"], "x3": [0.3], "x4": [0.4]}, ValueError, r"X must be numbers.*'a'"),
    ],
)  # fmt: skip
def test_points_the_client_cannot_read_are_refused_saying_what_it_takes(X, error, says):
    # given a client and points it cannot read; when they are predicted, then the error says what is accepted
    sent: list[dict] = []
    with scripted_client(sent) as client, pytest.raises(error, match=says):
        client.predict(X)
    assert sent == [], "refused before any request"


def test_to_frame_without_pandas_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch):
    # given pandas is not installed (None in sys.modules makes `import pandas` fail as if it were absent)
    monkeypatch.setitem(sys.modules, "pandas", None)
    sent: list[dict] = []
    with scripted_client(sent) as client:
        prediction = client.predict(np.full((2, 4), 0.5))
    # when a frame is asked for, then the error names the client's extra that installs it
    with pytest.raises(ModuleNotFoundError, match=r"pip install './client\[pandas\]'") as missing:
        prediction.to_frame()
    assert missing.value.name == "pandas"
    assert "the client's `pandas` extra" in str(missing.value)


def test_plots_without_matplotlib_name_the_extra_to_install(monkeypatch: pytest.MonkeyPatch):
    # given matplotlib is not installed, and the plots module not yet imported
    import gpr_client

    for module in ("matplotlib", "matplotlib.axes", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delitem(sys.modules, "gpr_client.plots", raising=False)
    monkeypatch.delattr(gpr_client, "plots", raising=False)
    sent: list[dict] = []
    # when a picture is asked for, then the error names the client's extra that installs matplotlib
    with scripted_client(sent) as client, pytest.raises(ModuleNotFoundError, match=r"pip install './client\[plot\]'"):
        client.plot_slices()


def progress_lines(output: str) -> list[str]:
    """The lines a progress bar wrote (it rewrites its line after a carriage return; a log shows each)."""
    return [line for line in output.replace("\r", "\n").split("\n") if line.strip()]


def test_predicts_progress_bar_shows_its_last_line_once(monkeypatch: pytest.MonkeyPatch):
    # given a service slow enough (0.15 s a batch) for the bar to redraw after each of 3 batches
    output = io.StringIO()
    monkeypatch.setattr(sys, "stderr", output)  # where tqdm writes
    sent: list[dict] = []
    with scripted_client(sent, delay_s=0.15, batch_size=2, concurrency=1) as client:
        # when 6 points are predicted with a progress bar
        client.predict(np.full((6, 4), 0.5), progress=True)
    # then the bar reached 3/3 and said so once
    finished = [line for line in progress_lines(output.getvalue()) if "100%" in line]
    assert len(finished) == 1, output.getvalue()
    assert "3/3" in finished[0]


def test_a_jobs_progress_bar_shows_its_last_line_once_before_the_download(monkeypatch: pytest.MonkeyPatch):
    # given a job that is half done, then done, and whose results take 0.3 s to download
    output = io.StringIO()
    monkeypatch.setattr(sys, "stderr", output)
    table = np.zeros(4, dtype=[(f, "<f8") for f in (*FEATURES, "y_mean", "y_variance")])
    buffer = io.BytesIO()
    np.save(buffer, table)
    states = [("RUNNING", 2), ("SUCCEEDED", 4)]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json=PARK_MANIFEST)
        if request.url.path == "/results.npy":
            time.sleep(0.3)
            return httpx.Response(200, content=buffer.getvalue())
        status, done = states.pop(0)
        results = {"url": "https://files.example.org/results.npy", "format": "npy"} if status == "SUCCEEDED" else None
        return httpx.Response(200, json={"id": "job-1", "status": status, "results": results,
                                         "progress": {"points": 4, "points_done": done}})  # fmt: skip

    started = {"id": "job-1", "status": "RUNNING", "progress": {"points": 4, "points_done": 0}}
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        # when it is waited for with a progress bar, polling every 0.15 s
        results = Job(client, "job-1", started).wait(progress=True, poll_interval_s=0.15)
    # then the bar reached 4/4 and said so once
    assert len(results.table) == 4
    finished = [line for line in progress_lines(output.getvalue()) if "100%" in line]
    assert len(finished) == 1, output.getvalue()
    assert "4/4" in finished[0]


def parquet_part(table: np.ndarray) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({name: table[name] for name in table.dtype.names}), sink)
    return sink.getvalue()


def scripted_parquet_job(parts: int, rows: int) -> tuple[np.ndarray, httpx.MockTransport, list[str]]:
    """A SUCCEEDED Parquet job of `parts` parts of `rows` rows, its answer listing two parts a page."""
    table = np.zeros(parts * rows, dtype=[(f, "<f8") for f in (*FEATURES, "y_mean", "y_variance")])
    table["y_mean"] = np.arange(parts * rows)
    files = {f"/part-{i:06d}.parquet": parquet_part(table[i * rows : (i + 1) * rows]) for i in range(parts)}
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.path == "/prod/model":
            return httpx.Response(200, json=PARK_MANIFEST)
        if request.url.path in files:
            return httpx.Response(200, content=files[request.url.path])
        first = int(request.url.params.get("parts_from", 0))
        listed = [{"index": i, "url": f"https://files.example.org/part-{i:06d}.parquet", "rows": rows,
                   "first_row": i * rows} for i in range(first, min(first + 2, parts))]  # fmt: skip
        results = {"format": "parquet", "layout": "dataset", "rows": parts * rows, "parts_total": parts,
                   "parts": listed}  # fmt: skip
        if first + 2 < parts:
            results["parts_next"] = f"/prod/jobs/job-1?parts_from={first + 2}"
        progress = {"points": parts * rows, "points_done": parts * rows}
        answer = {"id": "job-1", "status": "SUCCEEDED", "results": results, "progress": progress}
        return httpx.Response(200, json=answer)

    return table, httpx.MockTransport(handler), asked


def test_a_parquet_jobs_parts_are_read_page_after_page_into_one_table_in_order():
    # given a Parquet job of five parts, listed two a page
    table, transport, asked = scripted_parquet_job(parts=5, rows=3)
    with SurrogateClient("https://api.example.org/prod", transport=transport) as client:
        # when its results are read
        results = Job(client, "job-1", {"id": "job-1", "status": "SUCCEEDED"}).results()
    # then every part is in the table, in order, and the pages were asked for from where the last one ended
    np.testing.assert_array_equal(results.table["y_mean"], table["y_mean"])
    pages = [url for url in asked if "/jobs/job-1" in url]
    assert pages == [
        "https://api.example.org/prod/jobs/job-1",
        "https://api.example.org/prod/jobs/job-1?parts_from=2",
        "https://api.example.org/prod/jobs/job-1?parts_from=4",
    ]


def test_a_parquet_job_downloads_as_a_folder_duckdb_and_pyarrow_read_as_one_dataset(tmp_path):
    import duckdb
    import pyarrow.dataset as ds

    table, transport, _ = scripted_parquet_job(parts=5, rows=3)
    with SurrogateClient("https://api.example.org/prod", transport=transport) as client:
        folder = Job(client, "job-1", {"id": "job-1", "status": "SUCCEEDED"}).download(tmp_path / "results")
    assert sorted(p.name for p in folder.iterdir()) == [f"part-{i:06d}.parquet" for i in range(5)]
    read = ds.dataset(folder, format="parquet").to_table().sort_by("y_mean")
    np.testing.assert_array_equal(read.column("y_mean").to_numpy(), table["y_mean"])
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchall() == [(15,)]


def test_run_design_asks_for_the_format_it_is_given_and_reads_its_results():
    # given a service whose design job finishes as a Parquet dataset of three parts
    table, transport, asked = scripted_parquet_job(parts=3, rows=2)
    with SurrogateClient("https://api.example.org/prod", transport=transport) as client:
        # when a design is run in Parquet
        results = client.run_design("sobol", n=6, seed=1, format="parquet", progress=False, poll_interval_s=0.01)
    # then the job was submitted in Parquet, and its parts read into one table in order
    submitted = [url for url in asked if url.startswith("https://api.example.org/prod/jobs?")]
    assert len(submitted) == 1
    assert httpx.URL(submitted[0]).params["format"] == "parquet"
    np.testing.assert_array_equal(results.table["y_mean"], table["y_mean"])


def test_a_job_is_cancelled_and_then_waiting_for_it_raises_the_services_reason():
    # given a running job on a service that cancels jobs as POST /jobs/{id}/cancel does
    status = {"id": "job-1", "status": "RUNNING", "progress": {"points": 4, "points_done": 0}}
    asked: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append((request.method, request.url.path))
        if request.method == "POST" and request.url.path == "/prod/jobs/job-1/cancel":
            status.update(status="FAILED", error="cancelled by the caller")
        return httpx.Response(200, json=status)

    with SurrogateClient("https://api.example.org/prod", transport=httpx.MockTransport(handler)) as client:
        job = Job(client, "job-1", dict(status))
        # when it is cancelled
        cancelled = job.cancel()
        # then the service was asked once, the answer is the job FAILED, and waiting raises its reason
        assert asked == [("POST", "/prod/jobs/job-1/cancel")]
        assert cancelled["status"] == "FAILED"
        with pytest.raises(JobFailedError, match="cancelled by the caller"):
            job.wait(progress=False)


@pytest.mark.parametrize(("error", "raises"), [("cancelled by the caller", False), ("chunk 2 failed", True)])
def test_a_cancel_retried_after_its_answer_was_lost_returns_the_cancelled_job(error: str, raises: bool):
    # given a job already ended: cancelled (the first cancel worked, its answer lost) or failed for another reason
    ended = {"id": "job-1", "status": "FAILED", "error": error, "progress": {"points": 4, "points_done": 0}}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(409, json={"error": "job already ended", "details": []})
        return httpx.Response(200, json=ended)

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        job = Job(client, "job-1", {"id": "job-1", "status": "RUNNING"})
        # when it is cancelled (again), then a cancelled job is returned, and one that failed otherwise raises 409
        if raises:
            with pytest.raises(ApiError) as refused:
                job.cancel()
            assert refused.value.status == 409
        else:
            assert job.cancel() == ended


@pytest.mark.parametrize("feature", ["print", "file", "return", "flow-rate"])
def test_a_csv_jobs_results_keep_the_models_column_names(feature: str):
    import pyarrow as pa
    import pyarrow.csv

    # given a model with a feature whose name a manifest allows, and its CSV job's results as the worker writes them
    features = ["x1", feature]
    manifest = {**PARK_MANIFEST, "features": features, "bounds": {f: [0.0, 1.0] for f in features}}
    rng = np.random.default_rng(3)
    columns = {"x1": rng.uniform(size=5), feature: rng.uniform(size=5), "y_mean": rng.normal(size=5)}
    columns["y_variance"] = rng.uniform(size=5)
    sink = io.BytesIO()
    pa.csv.write_csv(pa.table(columns), sink)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json=manifest)
        if request.url.path == "/results.csv":
            return httpx.Response(200, content=sink.getvalue())
        results = {"url": "https://files.example.org/results.csv", "format": "csv", "rows": 5}
        return httpx.Response(200, json={"id": "job-1", "status": "SUCCEEDED", "results": results})

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        # when its results are read
        results = Job(client, "job-1", {"id": "job-1", "status": "SUCCEEDED"}).results()
    # then every column has the model's name and its values, exactly (the CSV holds round-trip digits)
    assert results.table.dtype.names == ("x1", feature, "y_mean", "y_variance")
    np.testing.assert_array_equal(results.inputs, np.column_stack([columns["x1"], columns[feature]]))
    np.testing.assert_array_equal(results.mean[:, 0], columns["y_mean"])


def test_parquet_parts_read_for_more_than_an_hour_are_read_with_urls_signed_again(monkeypatch, tmp_path):
    import gpr_client.client as client_module

    # given a Parquet job of six parts on one page, URLs valid for an hour, and each part taking 20 minutes to read
    clock = {"now": 0.0}
    monkeypatch.setattr(client_module, "_clock", lambda: clock["now"])
    table = np.zeros(6, dtype=[(f, "<f8") for f in (*FEATURES, "y_mean", "y_variance")])
    table["y_mean"] = np.arange(6)
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/prod/model":
            return httpx.Response(200, json=PARK_MANIFEST)
        if request.url.host == "files.example.org":
            index, signed = int(request.url.params["part"]), float(request.url.params["signed"])
            if clock["now"] - signed > 3600:
                return httpx.Response(403, content=b"<Error>Request has expired</Error>")
            clock["now"] += 1200
            return httpx.Response(200, content=parquet_part(table[index : index + 1]))
        first = int(request.url.params.get("parts_from", 0))
        asked.append(f"parts_from={first} at {clock['now']:.0f} s")
        listed = [{"index": i, "url": f"https://files.example.org/p?part={i}&signed={clock['now']}", "rows": 1,
                   "first_row": i} for i in range(first, 6)]  # fmt: skip
        results = {"format": "parquet", "layout": "dataset", "rows": 6, "parts_total": 6, "parts": listed,
                   "expires_in_seconds": 3600}  # fmt: skip
        return httpx.Response(200, json={"id": "job-1", "status": "SUCCEEDED", "results": results})

    with SurrogateClient("https://api.example.org/prod", transport=httpx.MockTransport(handler)) as client:
        job = Job(client, "job-1", {"id": "job-1", "status": "SUCCEEDED"})
        # when its results are read (two hours), then downloaded after another two hours from that answer
        results = job.results()
        clock["now"] += 7200
        folder = job.download(tmp_path / "results")
    # then every part was read, its page asked for again before its URLs expired, and again for the download
    np.testing.assert_array_equal(results.table["y_mean"], table["y_mean"])
    assert len(list(folder.iterdir())) == 6
    assert asked == [
        "parts_from=0 at 0 s",
        "parts_from=3 at 3600 s",
        "parts_from=0 at 14400 s",
        "parts_from=3 at 18000 s",
    ]


def test_a_parquet_download_that_fails_midway_leaves_no_folder_of_some_parts(tmp_path):
    # given a Parquet job of five parts whose fourth part's URL has expired
    _, scripted, _ = scripted_parquet_job(parts=5, rows=3)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/part-000003.parquet":
            return httpx.Response(403, content=b"<Error>Request has expired</Error>")
        return scripted.handler(request)

    # when it is downloaded to a folder
    with (
        SurrogateClient("https://api.example.org/prod", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ApiError) as refused,
    ):
        Job(client, "job-1", {"id": "job-1", "status": "SUCCEEDED"}).download(tmp_path / "results")
    # then the error is the part's, and nothing is left that a reader would take for the dataset (three parts of five)
    assert refused.value.status == 403
    assert list(tmp_path.iterdir()) == []


def test_a_parquet_download_into_a_folder_holding_other_files_is_refused_and_leaves_them(tmp_path):
    import pyarrow.parquet as pq

    # given a folder that already holds another job's part
    table, transport, _ = scripted_parquet_job(parts=2, rows=3)
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "part-000007.parquet").write_bytes(b"another job's part")
    # when a Parquet job is downloaded into it
    with (
        SurrogateClient("https://api.example.org/prod", transport=transport) as client,
        pytest.raises(FileExistsError, match="not an empty folder"),
    ):
        Job(client, "job-1", {"id": "job-1", "status": "SUCCEEDED"}).download(folder)
    # then it is refused (the dataset read from it would hold that part's rows too), and the folder is as it was
    assert [p.name for p in folder.iterdir()] == ["part-000007.parquet"]
    # and an empty folder is taken
    empty = tmp_path / "empty"
    empty.mkdir()
    with SurrogateClient("https://api.example.org/prod", transport=transport) as client:
        saved = Job(client, "job-1", {"id": "job-1", "status": "SUCCEEDED"}).download(empty)
    assert sorted(p.name for p in saved.iterdir()) == ["part-000000.parquet", "part-000001.parquet"]
    read = pq.read_table(saved).sort_by("y_mean")
    np.testing.assert_array_equal(read.column("y_mean").to_numpy(), table["y_mean"])


def test_a_download_that_fails_leaves_no_file(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/jobs/job-1"):
            results = {"url": "https://files.example.org/results.csv", "format": "csv", "rows": 4}
            return httpx.Response(200, json={"id": "job-1", "status": "SUCCEEDED", "results": results})
        return httpx.Response(403, content=b"<Error>Request has expired</Error>")

    with (
        SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ApiError) as refused,
    ):
        Job(client, "job-1", {"id": "job-1", "status": "SUCCEEDED"}).download(tmp_path / "results.csv")
    assert refused.value.status == 403
    assert list(tmp_path.iterdir()) == []


def test_a_csv_job_downloads_to_one_file(client, tmp_path):
    job = client.submit(design={"method": "sobol", "n": 1_000, "seed": 2}, format="csv")
    job.wait(progress=False, poll_interval_s=0.2, timeout_s=120)
    path = job.download(tmp_path / "results.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == '"x1","x2","x3","x4","y_mean","y_variance"'
    assert len(lines) == 1_001


def test_npy_results_are_a_writable_view_of_the_download_retried_on_s3s_503():
    # given an npy job whose results' first GET meets S3's 503 SlowDown
    table = np.zeros(5, dtype=[(f, "<f8") for f in (*FEATURES, "y_mean", "y_variance")])
    table["y_mean"] = np.arange(5.0)
    buffer = io.BytesIO()
    np.save(buffer, table)
    answers = [httpx.Response(503, content=b"<Error>SlowDown</Error>"), httpx.Response(200, content=buffer.getvalue())]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/model":
            return httpx.Response(200, json=PARK_MANIFEST)
        return answers.pop(0)

    results_link = {"url": "https://files.example.org/r.npy", "format": "npy"}
    done = {"id": "job-1", "status": "SUCCEEDED", "results": results_link}
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(handler)) as client:
        # when its results are read
        results = Job(client, "job-1", done).results()
    # then the table is the file's rows, without a copy of the bytes (a view), and one can still write into it
    np.testing.assert_array_equal(results.table["y_mean"], np.arange(5.0))
    assert results.table.base is not None
    results.table["y_mean"][0] = 7.0
    assert answers == []
