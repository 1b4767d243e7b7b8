"""Training on the service, in-process with moto: POST /models/{name}/train queues a job, the training function
fits, publishes and promotes; cancel, double delivery, failures, timeouts; every bad request a 4xx naming its field.

Small fits (40 Branin points, 2 features) keep each test to a few seconds on one core.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import orjson
import pytest

from benchmarks.simulators import SIMULATORS
from handler import registry_admin_app
from handler.registry.datasets import datasets_from_store
from handler.registry.store import Target
from handler.training import worker
from handler.training.fit import fit
from handler.training.jobs import MAX_ATTEMPTS, TrainingStore, largest_upload_bytes, upload_key
from scripts.local_jobs import sqs_event
from tests.conftest import ROOT
from tests.events import api_event, lambda_context, response_json
from tests.registry_harness import ADMIN_KEY_ID, Registry, start_registry

BRANIN = SIMULATORS["Branin"]
BOUNDS = {name: list(pair) for name, pair in BRANIN.bounds.items()}
QUICK = {"kernel": "Matern52", "restarts": 1}  # one optimisation: the tests' fits take well under a second


@dataclasses.dataclass
class Training:
    registry: Registry
    jobs: TrainingStore
    queue_url: str
    queue_arn: str

    def call(self, method: str, path: str, body: Any = None, key_id: str | None = ADMIN_KEY_ID) -> tuple[int, Any]:
        status, _, answer = self.registry.call(method, path, body, key_id)
        return status, answer

    def train(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = self.call("POST", f"/models/{name}/train", body)
        assert status == 202, answer
        return answer

    def job(self, name: str, job_id: str) -> dict[str, Any]:
        status, answer = self.call("GET", f"/models/{name}/training-jobs/{job_id}")
        assert status == 200, answer
        return answer

    def deliver(self, copies: int = 1) -> list[dict[str, Any]]:
        """The training function's SQS deliveries of what is queued (each message `copies` times), as Lambda's."""
        sqs = boto3.client("sqs")
        messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        events = []
        for message in messages:
            for _ in range(copies):
                events.append(worker.lambda_handler(sqs_event([message], self.queue_arn), training_context()))
            sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return events


def training_context() -> Any:
    """The training function's context: its 900 s ahead, as at the start of an invocation."""
    context = lambda_context("TrainingFunction")
    context.get_remaining_time_in_millis = lambda: 900_000
    return context


@pytest.fixture
def training(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model) -> Training:
    registry = start_registry(monkeypatch, tmp_path)
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="training")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    jobs = TrainingStore(registry.store, sqs, url)
    datasets = datasets_from_store(registry.store)
    settings = dataclasses.replace(registry_admin_app.settings, training_queue_url=url)
    monkeypatch.setattr(registry_admin_app, "settings", settings)
    monkeypatch.setattr(registry_admin_app, "_training", (datasets, jobs))
    monkeypatch.setattr(worker, "settings", settings)
    monkeypatch.setattr(worker, "_stores", (registry.store, datasets, jobs))
    return Training(registry, jobs, url, arn)


def branin_rows(n: int, seed: int) -> list[dict[str, float]]:
    X = BRANIN.design(n, seed)
    y = BRANIN.function(X).ravel()
    return [{"x1": float(a), "x2": float(b), "y": float(v)} for (a, b), v in zip(X, y, strict=True)]


def new_model(rows: list[dict[str, float]], **options: Any) -> dict[str, Any]:
    return {
        "data": {"rows": rows},
        "features": ["x1", "x2"],
        "outputs": ["y"],
        "bounds": BOUNDS,
        "units": {"x1": "m", "y": "kg"},
        **QUICK,
        **options,
    }


@pytest.fixture(scope="module")
def rows40() -> list[dict[str, float]]:
    return branin_rows(40, seed=3)


def test_a_new_model_is_trained_published_and_promoted(training: Training, rows40):
    # given 40 Branin points in their units, for a model the registry does not have
    queued = training.train("branin", new_model(rows40, kernel="auto", restarts=2))
    assert queued["status"] == "QUEUED"
    assert queued["links"]["self"] == f"/models/branin/training-jobs/{queued['job_id']}"
    # when the training function takes the job
    training.deliver()
    # then the job succeeded with a READY version 1, which the live alias now serves
    job = training.job("branin", queued["job_id"])
    assert job["status"] == "SUCCEEDED", job
    assert (job["version"], job["version_state"], job["promoted"]) == (1, "READY", True)
    assert job["promotion"]["rule"] == "if_better"
    assert job["progress"]["stage"] == "done"
    assert 1 <= job["progress"]["fits_done"] <= job["progress"]["fits_total"] == 4 + 2  # 4 screenings, 2 restarts
    assert job["validation"]["y"]["r2"] > 0.9
    assert training.registry.store.alias("branin", "live").target.version == 1
    # and the version records its data, how it was made and its validation
    record = training.registry.store.version("branin", 1)
    assert record.details["dataset"] == job["dataset"]
    assert record.details["dataset"]["rows"] == 40
    assert record.details["origin"]["how"] == "trained"
    assert record.details["origin"]["job_id"] == queued["job_id"]
    assert record.manifest["units"] == {"x1": "m", "y": "kg"}
    history = training.registry.store.history("branin")
    assert history[0]["reason"].startswith(f"training job {queued['job_id']}: if_better")
    # and the served model predicts Branin where it was not trained
    status, _, answer = training.registry.call("POST", "/models/branin/predict", {"x1": 2.0, "x2": 5.0})
    assert status == 200, answer


def test_observations_with_refit_full_are_kept_and_start_a_training_job_on_all_the_data(training: Training, rows40):
    # given a model trained on 40 points, live on version 1
    training.train("branin", new_model(rows40, restarts=1))
    training.deliver()
    # when 5 new simulations are posted with a full refit
    event = api_event(
        "POST", "/models/branin/observations", {"data": {"rows": branin_rows(5, seed=9)}, "refit": "full"}
    )
    event["requestContext"]["identity"]["apiKeyId"] = ADMIN_KEY_ID
    response = registry_admin_app.lambda_handler(event, lambda_context())
    answer = response_json(response)
    # then they are scored and appended at once, and a training job on all 45 rows is queued
    assert response["statusCode"] == 202, answer
    assert (answer["rows_before"], answer["rows_added"], answer["version"]) == (40, 5, None)
    assert answer["surprise"]["version"] == "branin/1"
    job_id = answer["training_job"]["job_id"]
    assert answer["training_job"]["status"] == "QUEUED"
    training.deliver()
    job = training.job("branin", job_id)
    assert job["status"] == "SUCCEEDED", job
    assert job["dataset"]["rows"] == 45
    assert training.registry.store.version("branin", job["version"]).details["origin"]["how"] == "trained"


def test_rows_where_the_model_answers_past_its_bounds_are_kept_and_the_refit_covers_them(training: Training, rows40):
    # given a model of x1 in [-5, 10], which answers up to 11.5 (the domain margin): where /suggest may propose
    training.train("branin", new_model(rows40, restarts=1))
    training.deliver()
    # when a simulation at x1 = 11 is observed, then refitted in full
    row = {"x1": 11.0, "x2": 5.0, "y": float(BRANIN.function(np.array([[11.0, 5.0]])).ravel()[0])}
    event = api_event("POST", "/models/branin/observations", {"data": {"rows": [row]}, "refit": "full"})
    event["requestContext"]["identity"]["apiKeyId"] = ADMIN_KEY_ID
    response = registry_admin_app.lambda_handler(event, lambda_context())
    assert response["statusCode"] == 202, response_json(response)
    training.deliver()
    # then the row is in the new version's data, and its bounds grew just enough to cover it
    job = training.job("branin", response_json(response)["training_job"]["job_id"])
    assert job["status"] == "SUCCEEDED", job
    manifest = training.registry.store.version("branin", job["version"]).manifest
    assert manifest["bounds"]["x1"] == [-5.0, 11.0]
    assert manifest["bounds"]["x2"] == [0.0, 15.0]


def test_if_better_keeps_the_alias_when_the_new_version_is_worse(training: Training, rows40):
    # given a live version fitted with a smooth kernel
    first = training.train("branin", new_model(rows40))
    training.deliver()
    assert training.job("branin", first["job_id"])["promoted"] is True
    # when the same data is fitted with a rough kernel (Exponential: Branin is smooth) and promote if_better
    second = training.train("branin", {"kernel": "Exponential", "restarts": 1, "promote": "if_better"})
    training.deliver()
    # then version 2 is READY but not promoted, and the reason compares the two on the same rows
    job = training.job("branin", second["job_id"])
    assert (job["status"], job["version"], job["version_state"]) == ("SUCCEEDED", 2, "READY")
    assert job["promoted"] is False
    assert job["promotion"]["reason"].startswith("if_better: not better")
    scores = job["promotion"]["scores"]
    assert scores["new"]["y"]["msll"] > scores["current"]["y"]["msll"]
    assert training.registry.store.alias("branin", "live").target.version == 1


def test_a_fit_no_better_than_the_mean_is_rejected_unless_forced(training: Training):
    # given outputs that are noise, unrelated to the inputs
    rng = np.random.default_rng(5)
    rows = [{**row, "y": float(rng.normal())} for row in branin_rows(40, seed=4)]
    rejected = training.train("noise", new_model(rows, promote="always"))
    training.deliver()
    # then the version is REJECTED with the gate's reason, never served, and no alias moved
    job = training.job("noise", rejected["job_id"])
    assert (job["status"], job["version_state"], job["promoted"]) == ("SUCCEEDED", "REJECTED", False)
    record = training.registry.store.version("noise", job["version"])
    assert "R2" in record.reason or "R^2" in record.reason
    assert training.registry.store.alias("noise", "live") is None
    # when the same is forced
    forced = training.train("noise", {**QUICK, "force": True, "promote": "always"})
    training.deliver()
    # then it is READY and promoted as asked
    job = training.job("noise", forced["job_id"])
    assert (job["version_state"], job["promoted"]) == ("READY", True)


def test_a_cancelled_job_is_never_run_nor_revived(training: Training, rows40):
    # given a queued job, cancelled
    queued = training.train("branin", new_model(rows40))
    status, cancelled = training.call("POST", f"/models/branin/training-jobs/{queued['job_id']}/cancel")
    assert (status, cancelled["status"]) == (200, "CANCELLED")
    # when its message is delivered anyway
    training.deliver()
    # then nothing ran, and cancelling again is a conflict naming the job
    job = training.job("branin", queued["job_id"])
    assert (job["status"], job["version"], job["attempts"]) == ("CANCELLED", None, 0)
    assert training.registry.store.version_states("branin") == []
    status, again = training.call("POST", f"/models/branin/training-jobs/{queued['job_id']}/cancel")
    assert status == 409
    assert again["details"][0]["field"] == "job"


def test_a_cancel_while_fitting_stops_the_job_between_restarts(training: Training, rows40, monkeypatch):
    # given a job whose fit is cancelled by its caller after its first optimisation
    queued = training.train("branin", new_model(rows40, restarts=3))
    cancel = f"/models/branin/training-jobs/{queued['job_id']}/cancel"

    def fit_cancelled_on_the_way(*args: Any, progress: Any, **kwargs: Any) -> Any:
        def cancel_then_record(fits_done: int, fits_total: int) -> None:
            if fits_done == 1:
                assert training.call("POST", cancel)[0] == 200
            progress(fits_done, fits_total)

        return fit(*args, progress=cancel_then_record, **kwargs)

    monkeypatch.setattr(worker, "fit", fit_cancelled_on_the_way)
    # when it runs
    training.deliver()
    # then it stopped: CANCELLED, no version published
    job = training.job("branin", queued["job_id"])
    assert job["status"] == "CANCELLED"
    assert training.registry.store.version_states("branin") == []


def test_a_job_delivered_twice_runs_once(training: Training, rows40, monkeypatch):
    # given a job whose message arrives a second time while the first delivery is fitting, and again after it
    queued = training.train("branin", new_model(rows40))
    sqs_body = orjson.dumps({"model": "branin", "job_id": queued["job_id"]}).decode()
    record = {"MessageId": "again", "Body": sqs_body, "ReceiptHandle": "r"}
    inner: list[Any] = []

    def fit_with_a_second_delivery(*args: Any, progress: Any, **kwargs: Any) -> Any:
        def deliver_again(fits_done: int, fits_total: int) -> None:
            if fits_done == 1:
                inner.append(worker.lambda_handler(sqs_event([record], training.queue_arn), training_context()))
            progress(fits_done, fits_total)

        return fit(*args, progress=deliver_again, **kwargs)

    monkeypatch.setattr(worker, "fit", fit_with_a_second_delivery)
    training.deliver(copies=2)
    # then one attempt fitted and published one version; the others found it held or finished
    job = training.job("branin", queued["job_id"])
    assert (job["status"], job["attempts"], job["version"]) == ("SUCCEEDED", 1, 1)
    assert [number for number, _, _ in training.registry.store.version_states("branin")] == [1]
    assert inner == [{"batchItemFailures": []}]


def test_a_fit_that_fails_leaves_the_job_failed_and_the_alias_untouched(training: Training, rows40, monkeypatch):
    # given a model whose live alias serves version 1
    first = training.train("branin", new_model(rows40))
    training.deliver()
    assert training.job("branin", first["job_id"])["promoted"] is True

    # when the next fit fails (every optimisation unable to factorise, as fit() reports it)
    def failing_fit(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Matern52: every optimisation failed (the covariance could not be factorised)")

    monkeypatch.setattr(worker, "fit", failing_fit)
    second = training.train("branin", {**QUICK, "promote": "always"})
    training.deliver()
    # then the job is FAILED with the reason, no version was made and the alias still serves version 1
    job = training.job("branin", second["job_id"])
    assert job["status"] == "FAILED"
    assert "every optimisation failed" in job["error"]
    assert [number for number, _, _ in training.registry.store.version_states("branin")] == [1]
    assert training.registry.store.alias("branin", "live").target == Target(1)


def test_a_fit_that_does_not_converge_fails_without_a_version(training: Training, rows40, monkeypatch):
    # given a fit allowed one iteration per optimisation: none converges
    monkeypatch.setattr(worker, "fit", functools.partial(fit, max_iters=1))
    queued = training.train("branin", new_model(rows40, promote="always"))
    # when it runs
    training.deliver()
    # then the job says so, and nothing was published
    job = training.job("branin", queued["job_id"])
    assert job["status"] == "FAILED"
    assert job["error"].startswith("the fit did not converge")
    assert training.registry.store.version_states("branin") == []


def test_a_timed_out_attempt_is_retried_once_then_the_job_fails(training: Training, rows40, monkeypatch):
    # given a queued job and a clock the test moves
    now = [training.jobs.clock()]
    monkeypatch.setattr(training.jobs, "clock", lambda: now[0])
    queued = training.train("branin", new_model(rows40))
    job = training.jobs.get("branin", queued["job_id"])
    # when an attempt claims it and dies with its function (no finish): a redelivery within its lease does nothing
    first = training.jobs.claim(job, remaining_s=900)
    assert first is not None
    assert first.attempts == 1
    assert training.jobs.claim(training.jobs.get("branin", job.job_id), remaining_s=900) is None
    # and after its lease, the next delivery is attempt 2, noting the first
    now[0] += 900 + 61
    second = training.jobs.claim(training.jobs.get("branin", job.job_id), remaining_s=900)
    assert second is not None
    assert (second.attempts, second.notes) == (2, ["attempt 1 did not finish (it timed out or was interrupted)"])
    # when that attempt dies too, past its lease: the job is FAILED "timed out" when next read, after MAX_ATTEMPTS
    now[0] += 900 + 61
    document = training.job("branin", job.job_id)
    assert MAX_ATTEMPTS == 2
    assert (document["status"], document["attempts"]) == ("FAILED", 2)
    assert document["error"].startswith("timed out")


def test_a_second_attempt_after_a_timeout_trains_and_records_both(training: Training, rows40, monkeypatch):
    # given a job whose first attempt died
    now = [training.jobs.clock()]
    monkeypatch.setattr(training.jobs, "clock", lambda: now[0])
    queued = training.train("branin", new_model(rows40))
    assert training.jobs.claim(training.jobs.get("branin", queued["job_id"]), remaining_s=900) is not None
    now[0] += 2_000
    # when the queue delivers it again
    training.deliver()
    # then the second attempt finished it
    job = training.job("branin", queued["job_id"])
    assert (job["status"], job["attempts"], job["version_state"]) == ("SUCCEEDED", 2, "READY")
    assert job["notes"][0] == "attempt 1 did not finish (it timed out or was interrupted)"


def test_an_uploaded_csv_is_checked_and_trained(training: Training, rows40):
    # given a job awaiting a CSV upload
    body = {key: value for key, value in new_model(rows40).items() if key != "data"}
    created = training.train("upload", {**body, "data": {"upload": "csv"}})
    assert created["status"] == "AWAITING_UPLOAD"
    assert created["upload_url"].startswith("https://")
    lines = ["x2,y,x1"] + [f"{r['x2']!r},{r['y']!r},{r['x1']!r}" for r in rows40]
    key = upload_key("upload", created["job_id"], "csv")
    training.registry.store.s3.put_object(Bucket=training.registry.store.bucket, Key=key, Body="\n".join(lines))
    # when it is started and run
    status, started = training.call("POST", f"/models/upload/training-jobs/{created['job_id']}/start")
    assert (status, started["status"]) == (202, "QUEUED"), started
    training.deliver()
    # then it trained on the 40 rows
    job = training.job("upload", created["job_id"])
    assert (job["status"], job["dataset"]["rows"]) == ("SUCCEEDED", 40)


def npy_bytes(table: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, table)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("upload", "field", "status"),
    [
        ("nan", "upload.inputs", 422),
        ("inf-output", "upload.outputs", 422),
        ("too-large", "upload", 413),
        ("wrong-columns", "upload", 422),
        ("not-npy", "upload", 422),
    ],
)
def test_a_bad_upload_is_refused_at_start_before_any_fitting(training: Training, rows40, upload, field, status):
    # given a job awaiting an .npy upload, and a bad file uploaded
    body = {key: value for key, value in new_model(rows40).items() if key != "data"}
    created = training.train("upload", {**body, "data": {"upload": "npy"}})
    table = np.array([[r["x1"], r["x2"], r["y"]] for r in rows40])
    if upload == "nan":
        table[3, 1] = np.nan
    elif upload == "inf-output":
        table[5, 2] = np.inf
    data = npy_bytes(table)
    if upload == "too-large":
        data = bytes(largest_upload_bytes("npy", 3) + 1)
    elif upload == "wrong-columns":
        data = npy_bytes(table[:, :2])
    elif upload == "not-npy":
        data = b"x1,x2,y\n1,2,3\n"
    key = upload_key("upload", created["job_id"], "npy")
    training.registry.store.s3.put_object(Bucket=training.registry.store.bucket, Key=key, Body=data)
    # when it is started
    answer_status, answer = training.call("POST", f"/models/upload/training-jobs/{created['job_id']}/start")
    # then it is refused naming the upload, and the job still awaits its upload (nothing queued, nothing fitted)
    assert (answer_status, answer["details"][0]["field"]) == (status, field), answer
    assert training.job("upload", created["job_id"])["status"] == "AWAITING_UPLOAD"
    assert training.deliver() == []


def hostile(rows40: list[dict[str, float]]) -> dict[str, tuple[dict[str, Any], str, int]]:
    """Bad /train requests: the body, the field the refusal must name, its status."""
    base = new_model(rows40)
    same = [rows40[0]] * 10
    constant = [{**row, "y": 1.0} for row in rows40]
    three_features = {
        **base,
        "features": ["x1", "x2", "x3"],
        "bounds": {**BOUNDS, "x3": [0, 1]},
        "data": {"rows": [{**r, "x3": 0.5} for r in rows40[:2]]},
    }
    # x1's bounds are [-5, 10]: the model answers up to 11.5 (a 10% margin), so 12 is outside
    outside = [{**row, "x1": 12.0} if i == 7 else row for i, row in enumerate(rows40)]
    return {
        "duplicates-only": ({**base, "data": {"rows": same}}, "data.rows", 422),
        "constant-output": ({**base, "data": {"rows": constant}}, "data.outputs", 422),
        "single-point": ({**base, "data": {"rows": rows40[:1]}}, "data.rows", 422),
        "more-features-than-points": (three_features, "data.rows", 422),
        "outside-bounds": ({**base, "data": {"rows": outside}}, "data.inputs", 422),
        "value-not-a-number": ({**base, "data": {"rows": [{**rows40[0], "y": "1"}, *rows40]}}, "data.rows[0].y", 422),
        "row-missing-a-column": ({**base, "data": {"rows": [{"x1": 1.0}, *rows40]}}, "data.rows[0]", 422),
        "columns-of-unequal-length": (
            {**base, "data": {"columns": {"x1": [1.0, 2.0], "x2": [1.0], "y": [1.0, 2.0]}}},
            "data.columns",
            422,
        ),
        "too-many-rows": ({**base, "data": {"rows": [{}] * 10_001}}, "data.rows", 413),
        "two-kinds-of-data": ({**base, "data": {"rows": rows40, "upload": "csv"}}, "data", 422),
        "upload-format": ({**base, "data": {"upload": "xlsx"}}, "data.upload", 422),
        "unknown-field": ({**base, "epochs": 3}, "epochs", 422),
        "no-bounds-for-a-new-model": ({k: v for k, v in base.items() if k != "bounds"}, "bounds", 422),
        "bounds-missing-a-feature": ({**base, "bounds": {"x1": [-5, 10]}}, "bounds", 422),
        "bounds-reversed": ({**base, "bounds": {**BOUNDS, "x2": [15, 0]}}, "bounds.x2", 422),
        "no-features": ({k: v for k, v in base.items() if k != "features"}, "features", 422),
        "feature-name": ({**base, "features": ["x 1", "x2"]}, "features", 422),
        "output-is-a-feature": ({**base, "outputs": ["x1"]}, "outputs", 422),
        "units-of-no-column": ({**base, "units": {"z": "m"}}, "units", 422),
        "limits-inside-bounds": ({**base, "limits": {"x1": [0, 1]}}, "limits", 422),
        "kernel": ({**base, "kernel": "Linear"}, "kernel", 422),
        "restarts-zero": ({**base, "restarts": 0}, "restarts", 422),
        "restarts-too-many": ({**base, "restarts": 21}, "restarts", 422),
        "restarts-boolean": ({**base, "restarts": True}, "restarts", 422),
        "inference": ({**base, "inference": "variational"}, "inference", 422),
        "promote": ({**base, "promote": "sometimes"}, "promote", 422),
        "alias": ({**base, "alias": "Live!"}, "alias", 422),
        "force": ({**base, "force": "yes"}, "force", 422),
        "seed": ({**base, "seed": -1}, "seed", 422),
        "description": ({**base, "description": "x" * 2001}, "description", 422),
    }


@pytest.mark.parametrize("case", list(hostile([{"x1": 0.0, "x2": 0.0, "y": 0.0}])))
def test_a_bad_training_request_is_a_4xx_naming_its_field_and_queues_nothing(training: Training, rows40, case):
    # given a bad request
    body, field, expected = hostile(rows40)[case]
    # when it is sent
    status, answer = training.call("POST", "/models/branin/train", body)
    # then it is refused naming the field, with nothing written or queued
    assert (status, answer["details"][0]["field"]) == (expected, field), answer
    assert training.deliver() == []
    assert datasets_from_store(training.registry.store).head("branin") is None


def test_training_without_the_admin_key_is_forbidden(training: Training, rows40):
    status, answer = training.call("POST", "/models/branin/train", new_model(rows40), key_id="someone")
    assert (status, answer["details"][0]["field"]) == (403, "permission")


def test_an_unknown_training_job_is_a_404_naming_it(training: Training):
    for job_id in ("0" * 32, "not-hex"):
        status, answer = training.call("GET", f"/models/branin/training-jobs/{job_id}")
        assert (status, answer["details"][0]["field"]) == (404, "job_id")


def test_an_existing_model_with_no_data_and_no_dataset_is_refused(training: Training):
    status, answer = training.call("POST", "/models/branin/train", {**QUICK})
    assert (status, answer["details"][0]["field"]) == (422, "data")


def test_an_over_limit_body_is_refused_before_it_is_parsed(training: Training, monkeypatch):
    # given a body one byte over the limit, and a JSON parser that must not be reached
    def parse(*args: Any) -> Any:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(registry_admin_app, "orjson", types.SimpleNamespace(loads=parse, dumps=orjson.dumps))
    body = '{"data": {"rows": [' + " " * registry_admin_app.MAX_TRAIN_BODY_BYTES + "]}}"
    # when it is sent
    status, answer = training.call("POST", "/models/branin/train", body)
    # then it is refused by its size
    assert (status, answer["details"][0]["field"]) == (413, "body")


def test_the_admin_function_imports_no_gpy_scipy_or_paramz():
    # given a process where GPy, scipy and paramz cannot be imported (the admin function's package has none)
    probe = (
        "import importlib.abc, sys\n"
        "class Forbidden(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('GPy', 'scipy', 'paramz'):\n"
        "            raise ImportError(f'{name} is forbidden here')\n"
        "sys.meta_path.insert(0, Forbidden())\n"
        "import handler.registry_admin_app, handler.training.jobs, handler.training.promotion\n"
    )
    # when the admin function and the training modules it uses are imported
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    # then they import
    assert result.returncode == 0, result.stderr[-2000:]


def test_only_training_jobs_records_expire(training: Training, rows40):
    # given a model trained and promoted: a dataset, a version, an alias, its history and the job's record
    training.train("branin", new_model(rows40))
    training.deliver()
    # when the registry table's items are read
    items = training.registry.store.table.scan()["Items"]
    # then only the training job's record carries the TTL attribute (RegistryTable's TimeToLiveSpecification)
    expiring = {str(item["sk"]).split("#")[0] for item in items if "expires_at" in item}
    assert expiring == {"TRAINING"}
    assert {str(item["sk"]).split("#")[0] for item in items} >= {"TRAINING", "VERSION", "DATA", "DATASET"}


def test_a_queue_that_fails_is_a_503_naming_the_model(training: Training, rows40, monkeypatch):
    # given SQS refusing the job's message
    from botocore.exceptions import ClientError

    def refuse(**kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "down"}}, "SendMessage")

    monkeypatch.setattr(training.jobs.sqs, "send_message", refuse)
    # when a model is trained
    status, answer = training.call("POST", "/models/branin/train", new_model(rows40))
    # then the caller is told to try again, naming what failed
    assert (status, answer["details"][0]["field"]) == (503, "model")


def test_the_promotion_rules_leave_one_out_is_the_fits_own_on_its_data(rows40):
    # given a fitted GP, and its posterior as the published file holds it
    from handler.gp.from_gpy import posterior_arrays
    from handler.gp.posterior import GPPosterior
    from handler.training.promotion import leave_one_out_scores
    from handler.training.validation import leave_one_out

    X = np.array([[r["x1"], r["x2"]] for r in rows40])
    Y = np.array([[r["y"]] for r in rows40])
    result = fit(X, Y, np.array(list(BOUNDS.values())), kernel="Matern52", restarts=1)
    kernel, _, arrays = posterior_arrays(result.model.gp)
    posterior = GPPosterior.from_arrays(kernel, arrays)
    # when the promotion rule scores it on its own training data (numpy), and GPy's closed form does (scipy)
    ours = leave_one_out_scores(posterior, X, Y, ["y"])["y"]
    reference = leave_one_out(result.model)
    # then the left-out predictions agree to what the factorisation's rounding allows: cond(K) eps, relative
    K = result.model.gp.kern.K(X) + (result.model.gp.likelihood.variance.values[0] + 1e-8) * np.eye(len(X))
    tolerance = 100 * np.linalg.cond(K) * np.finfo(float).eps
    scale = float(np.std(Y))
    assert abs(ours.rmse - float(np.sqrt(np.mean((reference.Y - reference.mean) ** 2)))) <= tolerance * scale
    assert ours.msll == pytest.approx(result.validation["y"].msll, rel=tolerance, abs=tolerance)
    assert ours.r2 == pytest.approx(result.validation["y"].r2, rel=tolerance, abs=tolerance)
