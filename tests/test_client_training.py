"""The client's training, observations and active-learning loop.

Over HTTP (the local server, `make serve ADMIN_API_KEY=...`): train a model from rows and from an uploaded CSV, post
new simulations, run the loop with a full refit.

Without a server: the data each call sends (rows, columns, a DataFrame, arrays, a file), the arguments refused
before any request, polling a training job, and the loop's history and pending points against a scripted service.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from gpr_client import ApiError, JobFailedError, LoopHistory, SurrogateClient
from gpr_client import training as client_training
from gpr_client.training import LoopRound, Upload, table_of, training_body

from benchmarks.simulators import SIMULATORS
from tests.conftest import serving

BRANIN = SIMULATORS["Branin"]
FEATURES = tuple(BRANIN.bounds)
ADMIN_KEY = "tr41n"


# --- over HTTP: the local server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_server(tiny_posterior_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local server with its registry, training queue and worker on moto; writes take ADMIN_KEY."""
    with serving(tiny_posterior_path, tmp_path_factory.mktemp("client-training"), "--admin-api-key", ADMIN_KEY) as (
        base_url,
        _,
    ):
        yield base_url


def branin_rows(n: int, seed: int) -> list[dict[str, float]]:
    X = BRANIN.design(n, seed=seed)
    return [dict(zip([*FEATURES, "y"], [*x, y], strict=True)) for x, y in zip(X, BRANIN.function(X), strict=True)]


@pytest.mark.slow
@pytest.mark.xdist_group("training_server")
def test_train_from_rows_over_http_waits_for_a_promoted_version_that_predicts_branin(training_server: str):
    # given 40 Branin runs as rows, and progress reported to a callable
    seen: list[dict] = []
    with SurrogateClient(training_server, admin_key=ADMIN_KEY) as admin:
        # when a new model is trained from them, promoted always
        done = admin.train(
            "branin-rows", branin_rows(40, seed=0), features=FEATURES, outputs=["y"], bounds=BRANIN.bounds,
            promote="always", progress=seen.append, poll_interval_s=0.2, timeout_s=240,
        )  # fmt: skip
        # then the final document is a SUCCEEDED job with a READY version, promoted, with its validation
        assert (done["status"], done["version_state"], done["promoted"]) == ("SUCCEEDED", "READY", True)
        assert done["validation"]["y"]["r2"] > 0.9
        assert seen[-1]["status"] == "SUCCEEDED"
        assert admin.training_job("branin-rows", done["job_id"])["version"] == done["version"]
    # and the live alias predicts held-out Branin well
    X = BRANIN.design(200, seed=99)
    with SurrogateClient(training_server, model="branin-rows") as reader:
        mean = reader.predict(X).mean[:, 0]
    y = BRANIN.function(X)
    assert 1 - np.mean((mean - y) ** 2) / np.var(y) > 0.9


@pytest.mark.slow
@pytest.mark.xdist_group("training_server")
def test_train_from_an_uploaded_csv_over_http(training_server: str, tmp_path: Path):
    # given 40 Branin runs in a CSV file (a header naming the columns)
    path = tmp_path / "branin.csv"
    pd.DataFrame(branin_rows(40, seed=1)).to_csv(path, index=False)
    with SurrogateClient(training_server, admin_key=ADMIN_KEY) as admin:
        # when trained from the file (uploaded to the presigned URL, then started)
        done = admin.train(
            "branin-csv", path, features=FEATURES, outputs=["y"], bounds=BRANIN.bounds, promote="always",
            progress=False, poll_interval_s=0.2, timeout_s=240,
        )  # fmt: skip
    # then a version was made from all 40 rows
    assert (done["status"], done["version_state"]) == ("SUCCEEDED", "READY")
    assert done["dataset"]["rows"] == 40


@pytest.mark.slow
@pytest.mark.xdist_group("training_server")
def test_observe_and_the_loop_over_http_condition_each_round_and_refit(training_server: str):
    # given a Branin model trained on 12 runs
    with SurrogateClient(training_server, admin_key=ADMIN_KEY) as admin:
        first = admin.train(
            "branin-loop", branin_rows(12, seed=2), features=FEATURES, outputs=["y"], bounds=BRANIN.bounds,
            promote="always", progress=False, poll_interval_s=0.2, timeout_s=240,
        )  # fmt: skip
        # when 5 new runs are observed as a pair of arrays
        X = BRANIN.design(5, seed=3)
        answer = admin.observe("branin-loop", (X, BRANIN.function(X)))
        # then the served version was scored on them before it saw them, and a conditioned version was made
        assert answer["rows_before"] == 12
        assert answer["rows_added"] == 5
        assert answer["surprise"]["version"] == f"branin-loop/{first['version']}"
        assert answer["surprise"]["y"]["n"] == 5
        assert answer["version"]["version"] > first["version"]
        # and when the loop runs 4 rounds of 2, refitting every 2 rounds
        history = admin.loop("branin-loop", BRANIN.function, rounds=4, batch=2, refit_every=2, progress=False, seed=0)
    # then each round simulated 2 suggested points inside the bounds and made a version, in order
    assert [len(r.points) for r in history.rounds] == [2, 2, 2, 2]
    low, high = BRANIN.bounds_array.T
    assert np.all((history.points >= low) & (history.points <= high))
    np.testing.assert_allclose(history.outputs[:, 0], BRANIN.function(history.points), rtol=1e-12)
    made = [v for v in history.versions if v is not None]
    assert made == sorted(made)
    assert len(made) == 4
    # and rounds 2 and 4 each waited for a full refit, which ended
    assert [r.training_job is not None for r in history.rounds] == [False, True, False, True]
    assert all(r.training_job["status"] == "SUCCEEDED" for r in history.rounds if r.training_job)
    # and the last refit was fitted on every run: 12 + 5 + 8
    assert history.rounds[-1].training_job["dataset"]["rows"] == 25


@pytest.mark.slow
@pytest.mark.xdist_group("training_server")
def test_observe_a_csv_file_over_http_uploads_it_then_starts_it(training_server: str, tmp_path: Path):
    # given a Branin model trained on 12 runs, and 6 new runs in a CSV file
    path = tmp_path / "new-runs.csv"
    pd.DataFrame(branin_rows(6, seed=7)).to_csv(path, index=False)
    with SurrogateClient(training_server, admin_key=ADMIN_KEY) as admin:
        first = admin.train(
            "branin-observe-file", branin_rows(12, seed=6), features=FEATURES, outputs=["y"], bounds=BRANIN.bounds,
            promote="always", progress=False, poll_interval_s=0.2, timeout_s=240,
        )  # fmt: skip
        # when the file is observed
        answer = admin.observe("branin-observe-file", path, promote="always")
    # then its rows were appended after the 12, scored by the served version, and a conditioned version promoted
    assert (answer["rows_before"], answer["rows_added"]) == (12, 6)
    assert answer["surprise"]["version"] == f"branin-observe-file/{first['version']}"
    assert answer["version"]["origin"]["how"] == "conditioned"
    assert answer["promotion"]["promoted"] is True


@pytest.mark.slow
@pytest.mark.xdist_group("training_server")
def test_training_and_observations_without_the_admin_key_are_refused(training_server: str):
    with SurrogateClient(training_server, api_key="a-readers-key") as reader:
        for write in (
            lambda: reader.train(
                "branin-x", branin_rows(10, 0), features=FEATURES, outputs=["y"], bounds=BRANIN.bounds, wait=False
            ),
            lambda: reader.observe("branin-rows", branin_rows(2, 5)),
        ):
            with pytest.raises(ApiError) as refused:
                write()
            assert refused.value.status == 403
            assert refused.value.error == "admin permission required"
        # and no model was made
        assert "branin-x" not in {m["name"] for m in reader.models()}


# --- the data each call sends (no server) ------------------------------------------------------------------------


def test_rows_columns_a_dataframe_and_a_pair_of_arrays_send_the_same_columns():
    # given the same four runs in each form the client takes
    rows = branin_rows(4, seed=0)
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    X = np.array([[row[f] for f in FEATURES] for row in rows])
    y = np.array(columns["y"])
    # when each is made the request's data
    as_rows = table_of(rows)
    as_columns = table_of(columns)
    as_frame = table_of(pd.DataFrame(rows))
    as_pair = table_of((X, y), FEATURES, ["y"])
    as_array = table_of(np.column_stack([X, y]), FEATURES, ["y"])
    # then rows stay rows, and every other form is the same columns
    assert as_rows == {"rows": rows}
    assert as_columns == as_frame == as_pair == as_array == {"columns": columns}
    assert client_training.rows_in(as_rows) == client_training.rows_in(as_columns) == 4


@pytest.mark.parametrize(
    ("data", "names", "message"),
    [
        ({"x1": [1.0, 2.0], "y": [1.0]}, {}, "one length: x1 2, y 1"),
        ({"x1": 1.0}, {}, "lists of values; 'x1' is float"),
        ([{"x1": 1.0, "y": 2.0}, {"x1": 1.0}], {}, "data row 1"),
        ([{"x1": "one", "y": 2.0}], {}, r"rows\[0\].x1 must be a number"),
        (np.ones((3, 3)), {}, "give features= and outputs="),
        (np.ones((3, 2)), {"features": ["x1", "x2"], "outputs": ["y"]}, r"must be \(N, 3\)"),
        ((np.ones((3, 2)), np.ones(2)), {"features": ["x1", "x2"], "outputs": ["y"]}, r"Y must be \(3, 1\)"),
        ("runs.parquet", {}, "must be .csv or .npy"),
        (object(), {}, "data must be rows"),
    ],
)
def test_data_the_service_could_not_read_is_refused_naming_what_is_wrong(data, names: dict, message: str):
    with pytest.raises((ValueError, TypeError), match=message):
        table_of(data, names.get("features"), names.get("outputs"))


def test_a_file_is_an_upload_of_its_own_bytes(tmp_path: Path):
    path = tmp_path / "runs.npy"
    np.save(path, np.arange(6.0).reshape(2, 3))
    assert table_of(path) == Upload("npy", path.read_bytes())
    assert table_of(str(path)) == Upload("npy", path.read_bytes())
    with pytest.raises(FileNotFoundError, match="no data file"):
        table_of(tmp_path / "missing.csv")


def test_data_too_large_for_one_request_goes_as_an_npy_upload_in_feature_then_output_order(
    monkeypatch: pytest.MonkeyPatch,
):
    # given a limit on inline bodies smaller than these rows (whose keys are in another order)
    monkeypatch.setattr(client_training, "MAX_INLINE_BYTES", 100)
    rows = [{"y": float(i), "x2": 2.0 * i, "x1": 3.0 * i} for i in range(10)]
    # when they are made the request's data
    upload = table_of(rows, ["x1", "x2"], ["y"])
    # then they are an .npy file, features first in the order given, then the outputs
    assert isinstance(upload, Upload)
    assert upload.format == "npy"
    array = np.load(io.BytesIO(upload.content))
    np.testing.assert_array_equal(array, [[3.0 * i, 2.0 * i, float(i)] for i in range(10)])
    # and without the names, it is refused (an .npy file's columns have none)
    with pytest.raises(ValueError, match="features= and outputs="):
        table_of(rows)


def test_train_sends_the_documented_body_with_the_admin_key_and_uploads_a_file(tmp_path: Path):
    # given a scripted service that asks for an upload
    sent: list[tuple[str, str, dict | bytes, str | None]] = []

    def service(request: httpx.Request) -> httpx.Response:
        key = request.headers.get("x-api-key")
        if request.url.host == "bucket.s3.amazonaws.com":
            sent.append((request.method, request.url.path, request.content, key))
            return httpx.Response(200)
        sent.append((request.method, request.url.path, json.loads(request.content or b"{}"), key))
        if request.url.path.endswith("/train"):
            upload = "https://bucket.s3.amazonaws.com/uploads/t1.csv?sig=1"
            return httpx.Response(202, json={"job_id": "t1", "status": "AWAITING_UPLOAD", "upload_url": upload})
        return httpx.Response(202, json={"job_id": "t1", "status": "QUEUED", "progress": {"stage": "queued"}})

    path = tmp_path / "runs.csv"
    path.write_text("x1,x2,y\n1,2,3\n")
    client = SurrogateClient("https://api.example.org", api_key="reader", admin_key="admin",
                             transport=httpx.MockTransport(service))  # fmt: skip
    with client:
        # when a file is trained on without waiting
        doc = client.train("branin", path, bounds={"x1": (-5, 10), "x2": (0, 15)}, kernel="Matern52", wait=False)
    # then the body names the upload's format and the options given, the file went to the URL, the job was started
    (train, upload, start) = sent
    assert train == ("POST", "/models/branin/train",
                     {"data": {"upload": "csv"}, "bounds": {"x1": [-5.0, 10.0], "x2": [0.0, 15.0]},
                      "kernel": "Matern52"}, "admin")  # fmt: skip
    assert upload == ("PUT", "/uploads/t1.csv", path.read_bytes(), None)
    assert start[:2] == ("POST", "/models/branin/training-jobs/t1/start")
    assert start[3] == "admin"
    assert doc["status"] == "QUEUED"


def test_observe_uploads_a_file_then_starts_it_with_the_admin_key(tmp_path: Path):
    # given a scripted service that answers an upload's URL and start route
    sent: list[tuple[str, str, dict | bytes, str | None]] = []
    upload_id = "ab" * 16

    def service(request: httpx.Request) -> httpx.Response:
        key = request.headers.get("x-api-key")
        if request.url.host == "bucket.s3.amazonaws.com":
            sent.append((request.method, request.url.path, request.content, key))
            return httpx.Response(200)
        sent.append((request.method, request.url.path, json.loads(request.content or b"{}"), key))
        if request.url.path.endswith("/observations"):
            start = f"/models/branin/observations/uploads/{upload_id}/start"
            url = f"https://bucket.s3.amazonaws.com/uploads/branin/observations/{upload_id}.npy?sig=1"
            return httpx.Response(202, json={"upload_id": upload_id, "upload_url": url, "start": start,
                                             "expires_at": "2026-01-01T00:00:00Z"})  # fmt: skip
        return httpx.Response(201, json={"rows_added": 2, "rows_before": 10})

    path = tmp_path / "runs.npy"
    np.save(path, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    client = SurrogateClient("https://api.example.org", api_key="reader", admin_key="admin",
                             transport=httpx.MockTransport(service))  # fmt: skip
    with client:
        # when the file is observed
        answer = client.observe("branin", path, refit="none", reason="batch 3")
    # then the body names the upload's format and the options, the file went to the URL, and the upload was started
    (asked, upload, start) = sent
    assert asked == ("POST", "/models/branin/observations",
                     {"data": {"upload": "npy"}, "refit": "none", "reason": "batch 3"}, "admin")  # fmt: skip
    assert upload == ("PUT", f"/uploads/branin/observations/{upload_id}.npy", path.read_bytes(), None)
    assert start == ("POST", f"/models/branin/observations/uploads/{upload_id}/start", {}, "admin")
    assert answer == {"rows_added": 2, "rows_before": 10}


def test_more_rows_than_a_request_takes_are_observed_as_an_upload():
    # given a scripted service, and 2,001 rows in memory (one more than POST .../observations takes inline)
    sent: list[tuple[str, str, object]] = []
    upload_id = "cd" * 16

    def service(request: httpx.Request) -> httpx.Response:
        if request.url.host == "bucket.s3.amazonaws.com":
            sent.append((request.method, request.url.path, request.content))
            return httpx.Response(200)
        sent.append((request.method, request.url.path, json.loads(request.content or b"{}")))
        if request.url.path == "/models/branin/manifest":
            return httpx.Response(200, json={"name": "branin", "version": "3", "features": ["x1", "x2"],
                                             "outputs": ["y"], "bounds": {"x1": [-5, 10], "x2": [0, 15]}})  # fmt: skip
        if request.url.path.endswith("/observations"):
            url = f"https://bucket.s3.amazonaws.com/uploads/branin/observations/{upload_id}.npy?sig=1"
            return httpx.Response(202, json={"upload_id": upload_id, "upload_url": url})
        return httpx.Response(201, json={"rows_added": 2_001})

    rows = [{"x2": float(i % 15), "x1": float(i % 10), "y": float(i)} for i in range(2_001)]
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        # when they are observed
        answer = client.observe("branin", rows, refit="none")
    # then they went as an .npy of the features then the outputs, in the model's order, and the upload was started
    (_, asked, upload, start) = sent
    assert asked[2] == {"data": {"upload": "npy"}, "refit": "none"}
    assert isinstance(upload[2], bytes)
    sent_rows = np.load(io.BytesIO(upload[2]), allow_pickle=False)
    np.testing.assert_array_equal(sent_rows, [[row["x1"], row["x2"], row["y"]] for row in rows])
    assert start[:2] == ("POST", f"/models/branin/observations/uploads/{upload_id}/start")
    assert answer == {"rows_added": 2_001}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel": "Matern"}, "kernel must be one of auto"),
        ({"promote": "sometimes"}, "promote must be one of never"),
        ({"restarts": 0}, "restarts must be a positive integer"),
        ({"restarts": True}, "restarts must be a positive integer"),
        ({"bounds": {"x1": (1.0, 1.0)}}, r"bounds.x1 must be finite with low < high"),
        ({"bounds": {"x1": (0.0,)}}, r"bounds.x1 must be \[low, high\]"),
        ({"limits": {"x1": (0.0, float("inf"))}}, "limits.x1 must be finite"),
    ],
)
def test_options_the_service_would_refuse_are_refused_before_any_request(options: dict, message: str):
    sent: list[str] = []
    transport = httpx.MockTransport(lambda request: sent.append(str(request.url)) or httpx.Response(500))
    with SurrogateClient("https://api.example.org", transport=transport) as client:
        with pytest.raises(ValueError, match=message):
            client.train("branin", branin_rows(3, 0), **options)
        with pytest.raises(ValueError, match="refit must be one of"):
            client.observe("branin", branin_rows(3, 0), refit="sometimes")
    assert sent == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"rounds": 0}, "rounds must be a positive integer"),
        ({"batch": 1.5}, "batch must be a positive integer"),
        ({"acquisition": "expected_improvement"}, "acquisition must be one of variance"),
        ({"refit_every": 0}, 'refit_every must be "auto", a positive integer or None'),
        ({"refit_every": "sometimes"}, 'refit_every must be "auto", a positive integer or None'),
        ({"promote": "maybe"}, "promote must be one of"),
    ],
)
def test_loop_arguments_are_refused_before_any_request(arguments: dict, message: str):
    sent: list[str] = []
    transport = httpx.MockTransport(lambda request: sent.append(str(request.url)) or httpx.Response(500))
    with (
        SurrogateClient("https://api.example.org", transport=transport) as client,
        pytest.raises(ValueError, match=message),
    ):
        client.loop("branin", BRANIN.function, **({"rounds": 2} | arguments))
    assert sent == []


@pytest.mark.parametrize(("status", "tries"), [(502, 1), (504, 1), (503, 3), (429, 3)])
def test_observations_are_retried_only_where_the_service_cannot_have_appended_them(status: int, tries: int):
    # given a service that answers every observation with `status` (API Gateway's 502 and 504 may come after the
    # function appended the rows; 429 and 503 come before any work)
    sent: list[str] = []

    def service(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(status, json={"error": "busy"}, headers={"retry-after": "0"})

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service), max_attempts=3) as client:
        # when new runs are observed, or trained on
        for write in (
            lambda: client.observe("branin", branin_rows(2, 0)),
            lambda: client.train("branin", branin_rows(2, 0), wait=False),
        ):
            sent.clear()
            with pytest.raises(ApiError) as refused:
                write()
            # then the same rows were sent again only where the first request cannot have appended them
            assert refused.value.status == status
            assert len(sent) == tries


def test_training_body_leaves_out_what_was_not_given():
    assert training_body(None, features=None, outputs=None, options={"kernel": None, "force": False}) == {
        "force": False
    }


# --- polling a training job and the loop's bookkeeping (a scripted service) -------------------------------------


def test_waiting_reports_each_document_and_a_failed_job_raises_the_services_reason():
    # given a job that runs, then fails
    documents = iter(
        [
            {"job_id": "t2", "status": "RUNNING", "progress": {"stage": "fitting", "fits_done": 1, "fits_total": 3}},
            {"job_id": "t2", "status": "FAILED", "error": "the fit did not converge"},
        ]
    )
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=next(documents)))
    seen: list[str] = []
    first = {"job_id": "t2", "status": "QUEUED", "progress": {"stage": "queued"}}
    # when it is waited for, each document reported
    with (
        SurrogateClient("https://api.example.org", transport=transport) as client,
        pytest.raises(JobFailedError, match="did not converge") as failed,
    ):
        client.wait_training("branin", "t2", first=first, progress=lambda d: seen.append(d["status"]), sleep=id)
    # then each poll's document was reported, and the error carries the job and the reason
    assert seen == ["QUEUED", "RUNNING", "FAILED"]
    assert (failed.value.job_id, failed.value.reason) == ("t2", "the fit did not converge")


def test_a_training_job_is_polled_first_after_a_tenth_of_a_second_then_ever_less_often():
    # given a job that runs for 7 polls
    documents = iter([{"job_id": "t3", "status": "RUNNING", "progress": {"stage": "fitting"}}] * 6 + [
        {"job_id": "t3", "status": "SUCCEEDED", "progress": {"stage": "done"}}])  # fmt: skip
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=next(documents)))
    waits: list[float] = []
    first = {"job_id": "t3", "status": "QUEUED", "progress": {"stage": "queued"}}
    # when it is waited for with a poll interval of 1 s
    with SurrogateClient("https://api.example.org", transport=transport) as client:
        client.wait_training("branin", "t3", first=first, progress=False, poll_interval_s=1.0, sleep=waits.append)
    # then the first wait is 0.1 s, each next one twice the last, up to the poll interval
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


class ScriptedLoopService:
    """/manifest, /suggest, /observations and /train of a two-feature model: each observation makes the next
    version, promoted unless `unpromoted` holds its round; a refit makes a version too."""

    def __init__(
        self, unpromoted: set[int], answers_from: int | None = None, rows: int | None = None, z: float = 0.5
    ) -> None:
        self.unpromoted = unpromoted
        self.rows = rows  # the model's rows before the loop (None: answers without rows_before, as a stub)
        self.z = z  # every observation's mean |z|
        self.answers_from = answers_from  # the version every /suggest says answered (X-Model-Version)
        self.version = 1
        self.observations = 0
        self.pending: list[list[dict]] = []
        self.suggested_at: list[str] = []
        self.trained = 0
        self.train_bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content or b"{}")
        if path.endswith("/manifest"):
            manifest = {"name": "branin", "version": "1", "features": list(FEATURES), "outputs": ["y"],
                        "bounds": {f: list(b) for f, b in BRANIN.bounds.items()}}  # fmt: skip
            return httpx.Response(200, json=manifest)
        if path.endswith("/suggest"):
            self.suggested_at.append(path)
            self.pending.append(body.get("pending", []))
            point = {"x": {"x1": float(len(self.pending)), "x2": 1.0}, "prediction": {"mean": 0.0, "variance": 1.0},
                     "acquisition": 1.0}  # fmt: skip
            headers = {} if self.answers_from is None else {"X-Model-Version": f"branin/{self.answers_from}"}
            return httpx.Response(200, json={"points": [point] * body["q"]}, headers=headers)
        if path.endswith("/observations"):
            self.version += 1
            promoted = self.observations not in self.unpromoted
            self.observations += 1
            n = len(body["data"]["columns"]["y"])
            counts = {}
            if self.rows is not None:
                counts, self.rows = {"rows_before": self.rows}, self.rows + n
            return httpx.Response(201, json=counts | {
                "rows_added": n, "surprise": {"version": "branin/1", "y": {"mean_abs_z": self.z, "n": n}},
                "version": {"version": self.version},
                "promotion": {"rule": "always", "alias": "live", "from": 1, "to": self.version, "promoted": promoted},
            })  # fmt: skip
        if path.endswith("/train"):
            self.trained += 1
            self.version += 1
            self.train_bodies.append(body)
            return httpx.Response(202, json={"job_id": "t", "status": "SUCCEEDED", "version": self.version,
                                             "version_state": "READY",
                                             "promoted": body.get("promote") != "never"})  # fmt: skip
        return httpx.Response(404, json={"error": "not scripted"})


def test_the_loop_sends_unseen_points_as_pending_and_records_each_round():
    # given a service whose first two conditioned versions are not promoted
    service = ScriptedLoopService(unpromoted={0, 1})
    simulated: list[np.ndarray] = []

    def simulator(X: np.ndarray) -> np.ndarray:
        simulated.append(X)
        return X[:, 0] + X[:, 1]

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        # when the loop runs 4 rounds of 2 points, refitting every 3 rounds
        history = client.loop("branin", simulator, rounds=4, batch=2, refit_every=3, progress=False)
    # then the points the served version had not seen went to /suggest as pending, until a promotion or refit
    assert [len(p) for p in service.pending] == [0, 2, 4, 0]
    assert service.pending[2] == [{"x1": 1.0, "x2": 1.0}] * 2 + [{"x1": 2.0, "x2": 1.0}] * 2
    # and each round records its points, the simulator's values, the version made and whether it is served
    assert isinstance(history, LoopHistory)
    assert len(history.rounds) == 4
    np.testing.assert_array_equal(history.points, np.vstack(simulated))
    np.testing.assert_array_equal(history.outputs[:, 0], np.vstack(simulated).sum(axis=1))
    assert history.versions == [2, 3, 4, 6]
    assert [r.promoted for r in history.rounds] == [False, False, True, True]
    assert [r.pending for r in history.rounds] == [0, 2, 4, 0]
    # and the version the alias serves after each round: none known (the one before the loop) until version 4,
    # then the refit's 5, then 6
    assert [r.served for r in history.rounds] == [None, None, 5, 6]
    # and round 3 refitted (version 5), which the history's rows show beside the surprise and the seconds
    assert service.trained == 1
    assert history.rounds[2].training_job["version"] == 5
    rows = history.rows()
    assert [r["refit_version"] for r in rows] == [None, None, 5, None]
    assert [r["refit_reason"] is not None for r in rows] == [False, False, True, False]
    assert [r["served"] for r in rows] == [None, None, 5, 6]
    assert rows[0]["y mean |z|"] == 0.5
    assert all(r["total s"] >= r["suggest s"] + r["observe s"] - 1e-9 for r in rows)
    assert list(history.to_frame().columns[:3]) == ["round", "points", "version"]


def test_the_loop_asks_the_version_known_to_serve_by_its_number_not_the_alias():
    # given a service whose every version is promoted, and whose alias reads lag (an environment that read the alias
    # before the moves would answer /suggest from version 1, its hyperparameters rounds stale)
    service = ScriptedLoopService(unpromoted=set(), answers_from=1)
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        # when the loop runs 3 rounds of 2
        history = client.loop("branin", BRANIN.function, rounds=3, batch=2, progress=False)
    # then the first round asked the alias (no version of the loop yet), and each later one the version the round
    # before made and promoted, by its number, once, with nothing pending (that version holds every point)
    assert service.suggested_at == [
        "/models/branin/suggest",
        f"/models/branin/versions/{history.rounds[0].served}/suggest",
        f"/models/branin/versions/{history.rounds[1].served}/suggest",
    ]
    assert [len(p) for p in service.pending] == [0, 0, 0]
    assert [r.pending for r in history.rounds] == [0, 0, 0]


def test_a_loop_told_never_to_promote_refits_without_promoting_either():
    # given a service whose observations are not promoted (promote="never") and whose refits are promoted unless
    # told never (the red team: forced past the quality gate, a refit on a simulator's noise, judged if_better on the
    # noise, took the alias from a model 6,000x more accurate)
    service = ScriptedLoopService(unpromoted={0, 1, 2}, rows=10)
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        # when the loop runs 3 rounds with promote="never", refitting every round
        history = client.loop("branin", BRANIN.function, rounds=3, refit_every=1, promote="never", progress=False)
    # then every refit was asked not to promote, nothing is known to serve, and /suggest went to the alias with every
    # point of the loop pending
    assert [body["promote"] for body in service.train_bodies] == ["never"] * 3
    assert [r.served for r in history.rounds] == [None, None, None]
    assert service.suggested_at == ["/models/branin/suggest"] * 3
    assert [len(p) for p in service.pending] == [0, 1, 2]


def test_a_loop_that_promotes_refits_if_better():
    service = ScriptedLoopService(unpromoted=set(), rows=10)
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        client.loop("branin", BRANIN.function, rounds=2, refit_every=1, promote="if_better", progress=False)
    assert [(body["promote"], body["force"]) for body in service.train_bodies] == [("if_better", True)] * 2


def test_by_default_a_small_model_refits_every_round_while_a_refit_is_cheap():
    # given a model fitted on 10 rows (fewer than REFIT_UNMEASURED_ROWS) whose refits end at once (a scripted service)
    service = ScriptedLoopService(unpromoted=set(), rows=10)
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        # when the loop runs 8 rounds of 1 point with the default refit policy
        history = client.loop("branin", BRANIN.function, rounds=8, batch=1, progress=False)
    # then every round refitted: the first because no refit had been measured and the data is small, the others
    # because the last refit cost far less than REFIT_CHEAP_S
    assert all(r.training_job is not None for r in history.rounds)
    reasons = [r.training_job["refit_reason"] for r in history.rounds]
    assert reasons[0].startswith("no refit measured yet, and 11 rows")
    assert all(reason.startswith("the last refit took") for reason in reasons[1:])


def test_by_default_a_larger_model_refits_when_the_data_has_grown_then_every_round_while_a_refit_is_cheap():
    # given a model fitted on 200 rows (more than REFIT_UNMEASURED_ROWS) whose refits end at once
    service = ScriptedLoopService(unpromoted=set(), rows=200)
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        # when the loop runs 6 rounds of 10 points
        history = client.loop("branin", BRANIN.function, rounds=6, batch=10, progress=False)
    # then the first refit ran when the rows reached (1 + REFIT_GROWTH) x 200 (its cost was not known before), and
    # every round after it refitted
    first = next(n for n in range(6) if 200 + 10 * (n + 1) >= (1 + client_training.REFIT_GROWTH) * 200)
    assert [r.training_job is not None for r in history.rounds] == [n >= first for n in range(6)]
    reasons = [r.training_job["refit_reason"] for r in history.rounds if r.training_job]
    assert reasons[0] == "the data grew from 200 to 240 rows since the last fit"
    assert all(reason.startswith("the last refit took") for reason in reasons[1:])


def test_an_unmeasured_refit_is_taken_as_cheap_only_on_small_data():
    # given the auto policy, no refit run yet
    small, large = client_training.RefitPolicy(), client_training.RefitPolicy()
    # when a round adds a row to 50 rows, and one to 150
    small.observed(answer(50), seconds=0.5)
    large.observed(answer(150), seconds=0.5)
    # then a refit is due on the small data only
    assert small.due().startswith("no refit measured yet")
    assert large.due() is None


@pytest.mark.parametrize(
    ("refit_s", "round_s", "due"),
    [
        (0.3, 0.2, True),  # cheaper than REFIT_CHEAP_S
        (client_training.REFIT_CHEAP_S * 3, 0.2, False),  # dearer than a second and than the round
        (30.0, 60.0, True),  # a slow simulator: a refit cheaper than the round's simulation
        (90.0, 60.0, False),
    ],
)
def test_the_refit_policy_refits_every_round_while_the_last_refit_cost_at_most_the_round(
    refit_s: float, round_s: float, due: bool
):
    # given the auto policy on a model of 10,000 rows (growth far off), whose last refit took refit_s
    policy = client_training.RefitPolicy()
    policy.observed(answer(10_000, mean_abs_z=0.8, coverage_95=1.0, msll=-2.0), seconds=round_s)
    policy.refitted(seconds=refit_s)
    # when a round of round_s seconds observes calibrated runs
    policy.observed(answer(10_001, mean_abs_z=0.8, coverage_95=1.0, msll=-2.0), seconds=round_s)
    # then a refit is due only if the last one took at most the round or REFIT_CHEAP_S
    assert (policy.due() is not None) == due
    if due:
        assert policy.due().startswith(f"the last refit took {refit_s:.2g} s")


def test_a_cheap_refit_is_not_due_again_before_new_rows():
    # given a cheap refit that ran on all the rows
    policy = client_training.RefitPolicy()
    policy.observed(answer(100), seconds=0.5)
    policy.refitted(seconds=0.1)
    # when nothing new is observed (a round that added no row)
    policy.observed(answer(101, added=0), seconds=0.5)
    # then no refit is due
    assert policy.due() is None


def test_by_default_the_loop_refits_when_the_new_runs_surprised_the_served_versions(monkeypatch: pytest.MonkeyPatch):
    # given versions whose every prediction of a new run misses by far more than they claim (mean |z| 3), and refits
    # dearer than any round (so that only the surprise calls for them)
    service = ScriptedLoopService(unpromoted=set(), rows=1_000, z=3.0)
    refitted = client_training.RefitPolicy.refitted
    monkeypatch.setattr(
        client_training.RefitPolicy, "refitted", lambda policy, seconds=None: refitted(policy, seconds=math.inf)
    )
    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        # when the loop runs rounds of 1 point (the data grows by far less than the growth rule's fraction)
        history = client.loop("branin", BRANIN.function, rounds=2 * client_training.SURPRISE_MIN_RUNS, progress=False)
    # then a refit ran once SURPRISE_MIN_RUNS runs had been scored, and again SURPRISE_MIN_RUNS runs after it
    refitted = [r.training_job is not None for r in history.rounds]
    every = client_training.SURPRISE_MIN_RUNS
    assert refitted == [(number + 1) % every == 0 for number in range(2 * every)]
    assert "mean |z| 3 over 3 new runs" in history.rounds[every - 1].training_job["refit_reason"]


def answer(rows_before: int, added: int = 1, **scores: float | None) -> dict:
    """An observation answer with one output y's surprise scores."""
    return {"rows_before": rows_before, "rows_added": added, "surprise": {"version": "m/1", "y": {"n": added} | scores}}


def test_the_refit_policy_schedule_is_geometric_in_the_rows():
    # given the auto policy on a model fitted on 100 rows, observing calibrated runs (mean |z| 0.8) one at a time
    policy = client_training.RefitPolicy()
    due_at = []
    for rows in range(100, 400):
        policy.observed(answer(rows, mean_abs_z=0.8, coverage_95=1.0, msll=-2.0))
        if policy.due() is not None:
            due_at.append(rows + 1)
            policy.refitted()
    # then each refit came when the rows first reached (1 + REFIT_GROWTH) times those at the one before
    growth = 1 + client_training.REFIT_GROWTH
    previous = [100, *due_at[:-1]]
    assert all(
        rows >= growth * before and rows - 1 < growth * before for rows, before in zip(due_at, previous, strict=True)
    )
    assert len(due_at) == int(np.log(due_at[-1] / 100) / np.log(growth) + 0.5)


@pytest.mark.parametrize(
    ("scores", "runs", "reason"),
    [
        ({"mean_abs_z": 2 * client_training.SURPRISE_MEAN_ABS_Z}, client_training.SURPRISE_MIN_RUNS, "mean |z|"),
        ({"mean_abs_z": None}, client_training.SURPRISE_MIN_RUNS, "mean |z| inf"),
        ({"msll": client_training.SURPRISE_MSLL + 1.0}, client_training.SURPRISE_MIN_RUNS, "MSLL"),
        ({"coverage_95": 0.0}, client_training.SURPRISE_COVERAGE_MIN_RUNS, "95% coverage 0%"),
    ],
)
def test_the_refit_policy_is_due_when_enough_new_runs_surprised_the_versions(scores: dict, runs: int, reason: str):
    # given the auto policy on a model with so many rows that growth alone is far off
    policy = client_training.RefitPolicy("auto")
    # when runs one at a time carry the surprising score
    due = []
    for number in range(runs):
        policy.observed(answer(10_000 + number, **scores))
        due.append(policy.due())
    # then nothing is due before the rule's number of runs, and then the reason names the score
    assert due[:-1] == [None] * (runs - 1)
    assert due[-1] is not None
    assert reason in due[-1]
    # and a refit resets the pooled scores
    policy.refitted()
    policy.observed(answer(10_000 + runs, mean_abs_z=0.8, coverage_95=1.0, msll=-1.0))
    assert policy.due() is None


def test_one_miss_among_few_runs_is_not_a_coverage_collapse():
    # given calibrated runs of which one fell outside its 95% interval
    policy = client_training.RefitPolicy()
    for number, covered in enumerate([1.0, 0.0, 1.0, 1.0]):
        policy.observed(answer(10_000 + number, mean_abs_z=0.8, coverage_95=covered, msll=-1.0))
    # then no refit is due (coverage 75% over 4 runs says little)
    assert policy.due() is None


def test_an_integer_refits_every_k_rounds_and_none_never():
    every_two, never = client_training.RefitPolicy(2), client_training.RefitPolicy(None)
    due_two, due_never = [], []
    for number in range(6):
        for policy, due in ((every_two, due_two), (never, due_never)):
            policy.observed(answer(10 + number, mean_abs_z=10.0))  # surprise and growth do not matter here
            due.append(policy.due() is not None)
    assert due_two == [False, True] * 3
    assert due_never == [False] * 6


def test_a_version_holds_every_batch_observed_before_it_was_made():
    observed = client_training.Observed()
    first, second, third = np.zeros((1, 2)), np.ones((2, 2)), np.full((1, 2), 2.0)
    observed.add(first)
    observed.made(3)  # conditioned on the first batch
    observed.add(second)  # observed, but no version made (refit "none")
    observed.add(third)
    observed.made(5)  # a refit on everything
    assert observed.unseen_by(None).tolist() == np.vstack([first, second, third]).tolist()
    assert observed.unseen_by(2).tolist() == np.vstack([first, second, third]).tolist()
    assert observed.unseen_by(3).tolist() == np.vstack([second, third]).tolist()
    assert observed.unseen_by(5) is None


def test_a_simulator_that_returns_the_wrong_shape_is_named_before_anything_is_observed():
    service = ScriptedLoopService(unpromoted=set())
    with (
        SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client,
        pytest.raises(ValueError, match=r"the simulator must return \(2, 1\) values"),
    ):
        client.loop("branin", lambda X: np.ones((3,)), rounds=1, batch=2, progress=False)
    assert service.observations == 0


def test_an_empty_history_has_no_points():
    history = LoopHistory("branin", FEATURES, ("y",))
    assert history.points.shape == (0, 2)
    assert history.outputs.shape == (0, 1)
    assert history.rows() == []
    entry = LoopRound(0, np.zeros((1, 2)), np.zeros((1, 1)), None, False, None, None, {"total": 0.0})
    history.rounds.append(entry)
    assert history.rows()[0]["y mean |z|"] is None


@pytest.mark.parametrize("interval", [0, 0.0, -1.0, float("nan"), float("inf"), "1", True])
def test_a_poll_interval_that_would_spin_fail_late_or_grow_without_end_is_refused_before_any_request(interval):
    # given a service that records every request (a job that would run for ever)
    sent: list[str] = []

    def service(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url.path}")
        return httpx.Response(202 if request.method == "POST" else 200, json={"job_id": "t", "status": "RUNNING"})

    with SurrogateClient("https://api.example.org", transport=httpx.MockTransport(service)) as client:
        # when a training job is waited for, or trained and waited for, with that poll interval
        # then a ValueError names poll_interval_s (0 polled without pause: thousands of requests a second; a
        # negative one failed in time.sleep after the first poll; NaN or infinity doubled the wait without end)
        with pytest.raises(ValueError, match="poll_interval_s"):
            client.wait_training("branin", "t", progress=False, poll_interval_s=interval, timeout_s=1.0)
        with pytest.raises(ValueError, match="poll_interval_s"):
            client.train("branin", poll_interval_s=interval, progress=False, timeout_s=1.0)
    # and nothing was asked of the service: no job queued
    assert sent == []


@pytest.mark.parametrize(
    "answer",
    [
        {"rows_before": -50, "rows_added": 1},
        {"rows_before": 10, "rows_added": -5},
        {"rows_before": "lots"},
        {"rows_before": 2.5},
        {"rows_added": float("inf")},
    ],
)
def test_an_observation_answer_whose_row_counts_are_not_counts_is_named(answer: dict):
    # given the default refit policy
    policy = client_training.RefitPolicy()
    # when an answer's rows_before or rows_added is negative, fractional, not a number or not finite
    # then a ValueError names the field (instead of refitting every round on "grew from -50 to -51 rows", or an
    # int() error that names nothing)
    with pytest.raises(ValueError, match=r"rows_(before|added)"):
        policy.observed(answer)
