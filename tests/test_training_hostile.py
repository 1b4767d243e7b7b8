"""Hostile uploads and data the training and observation routes must refuse with a 4xx naming the field, before any
fitting, appending or allocating: found by an outside review of issue 23 (each failed before its fix)."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pytest

from handler import registry_admin_app
from handler.registry.datasets import datasets_from_store
from handler.training.jobs import upload_key
from tests import test_training_jobs
from tests.events import api_event, lambda_context, response_json
from tests.registry_harness import ADMIN_KEY_ID
from tests.test_training_jobs import Training, new_model

training, rows40 = test_training_jobs.training, test_training_jobs.rows40  # their fixtures, shared


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A .npy file's magic and header (format 1.0) declaring `shape`, padded as numpy pads it."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def start_upload(training: Training, rows: list[dict[str, float]], kind: str, data: bytes) -> tuple[int, Any]:
    body = {key: value for key, value in new_model(rows).items() if key != "data"}
    created = training.train("upload", {**body, "data": {"upload": kind}})
    key = upload_key("upload", created["job_id"], kind)
    training.registry.store.s3.put_object(Bucket=training.registry.store.bucket, Key=key, Body=data)
    return training.call("POST", f"/models/upload/training-jobs/{created['job_id']}/start")


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("a-header-declaring-terabytes", 413),  # numpy would allocate it before reading: a MemoryError, a 500
        ("a-header-declaring-more-than-the-file", 422),
        ("complex-values", 422),  # astype(float) would drop the imaginary parts silently
    ],
)
def test_an_npy_upload_is_judged_by_its_header_before_its_array_is_read(training: Training, rows40, case, status):
    # given a job awaiting an .npy upload, and a file whose header is hostile
    table = np.array([[r["x1"], r["x2"], r["y"]] for r in rows40])
    data = {
        "a-header-declaring-terabytes": npy_header((10**11, 3)) + bytes(800),
        "a-header-declaring-more-than-the-file": npy_header((40, 3)) + bytes(80),
        "complex-values": _npy(table.astype(complex) + 1j),
    }[case]
    # when it is started
    answer_status, answer = start_upload(training, rows40, "npy", data)
    # then it is refused naming the upload, and nothing is queued
    assert (answer_status, answer["details"][0]["field"]) == (status, "upload"), answer
    assert training.deliver() == []


def _npy(table: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, table)
    return buffer.getvalue()


def test_a_csv_field_past_the_csv_modules_limit_is_a_422_naming_the_upload(training: Training, rows40):
    # given a CSV upload whose one field is 200,000 characters (within the largest upload's size)
    data = b"x1,x2,y\n" + b"1" * 200_000 + b",1,1\n"
    # when it is started
    status, answer = start_upload(training, rows40, "csv", data)
    # then it is a 422 naming the upload (csv.Error was a 500), and nothing is queued
    assert (status, answer["details"][0]["field"]) == (422, "upload"), answer
    assert training.deliver() == []


def post_observations(name: str, body: dict[str, Any]) -> tuple[int, Any]:
    event = api_event("POST", f"/models/{name}/observations", body)
    event["requestContext"]["identity"]["apiKeyId"] = ADMIN_KEY_ID
    response = registry_admin_app.lambda_handler(event, lambda_context())
    return response["statusCode"], response_json(response)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"x1": 1e6, "x2": 1.0, "y": 1.0}, "data.x1"),  # outside the bounds [-5, 10]: the data untrainable after
        ({"x1": 1.0, "x2": 1.0, "y": 1e300}, "data.y"),  # a conditioned version on it went live
    ],
)
def test_observations_a_refit_could_not_take_are_refused_and_change_nothing(training: Training, rows40, row, field):
    # given a model trained on 40 points in its bounds, live on version 1
    training.train("branin", new_model(rows40))
    training.deliver()
    datasets = datasets_from_store(training.registry.store)
    before = datasets.head("branin")
    # when a simulation outside the model's bounds, or too large for any variance, is posted
    status, answer = post_observations("branin", {"data": {"rows": [row]}})
    # then it is a 422 naming it; the data, the versions and the alias are as they were
    assert (status, answer["details"][0]["field"]) == (422, field), answer
    assert datasets.head("branin") == before
    assert [number for number, _, _ in training.registry.store.version_states("branin")] == [1]
    assert training.registry.store.alias("branin", "live").target.version == 1


@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_training_data_whose_output_variance_overflows_or_underflows_is_refused_before_queuing(
    training: Training, rows40, scale
):
    # given Branin's outputs scaled so that their variance is past float64's range (it was queued, then FAILED)
    rows = [{**row, "y": row["y"] * scale} for row in rows40]
    # when it is posted for training
    status, answer = training.call("POST", "/models/scaled/train", new_model(rows))
    # then it is a 422 naming the outputs, and nothing is queued
    assert (status, answer["details"][0]["field"]) == (422, "data.outputs"), answer
    assert training.deliver() == []


def test_bounds_far_from_zero_against_their_width_are_refused_before_queuing(training: Training, rows40):
    # given Branin's rows with x1 moved 10^5 of its ranges from zero (a READY model answering 503 before the limit)
    shift = 1e5 * 15.0
    rows = [{**row, "x1": row["x1"] + shift} for row in rows40]
    bounds = {"x1": [-5.0 + shift, 10.0 + shift], "x2": [0.0, 15.0]}
    # when it is posted for training
    status, answer = training.call("POST", "/models/far/train", new_model(rows, bounds=bounds))
    # then it is a 422 naming the bounds and the offset to subtract, and nothing is queued
    assert (status, answer["details"][0]["field"]) == (422, "bounds"), answer
    assert "x1 - " in answer["details"][0]["message"]
    assert training.deliver() == []


@pytest.mark.parametrize(
    ("width_shifts", "centred", "shift"),
    [
        (100.5, "100.5", "x1 - 1507.5"),  # past the limit, yet the domain widened by the margin lies 84 widths out
        (-110.0, "110", "x1 + 1650"),  # negative: the shift to add, not "x1 - -1655"
    ],
)
def test_bounds_past_the_offset_limit_but_not_their_widened_domain_are_refused_before_queuing(
    training: Training, rows40, width_shifts: float, centred: str, shift: str
):
    # given Branin's rows with x1's bounds [-5, 10] centred `width_shifts` of their widths from zero: past the limit,
    # though the answered domain (the bounds widened by the margin) is within it (the red team: 202, then the job
    # FAILED in the fit's own check)
    move = width_shifts * 15.0 - 2.5
    rows = [{**row, "x1": row["x1"] + move} for row in rows40]
    bounds = {"x1": [-5.0 + move, 10.0 + move], "x2": [0.0, 15.0]}
    # when it is posted for training
    status, answer = training.call("POST", "/models/nearly/train", new_model(rows, bounds=bounds))
    # then it is a 422 naming the bounds as given (not the widened domain), how far out they are centred (not
    # rounded to the limit) and the shift that centres them, and nothing is queued
    assert (status, answer["details"][0]["field"]) == (422, "bounds"), answer
    message = answer["details"][0]["message"]
    assert f"[{-5.0 + move:.6g}, {10.0 + move:.6g}]" in message
    assert f"centred {centred} of their widths" in message
    assert shift in message
    assert training.deliver() == []


def test_bounds_too_wide_for_their_lengthscales_are_refused_before_queuing(training: Training, rows40):
    # given Branin's rows with x1 scaled into [1e308, 1.7e308]: centred 2 of their widths from zero (within the offset
    # limit), but a lengthscale of 1e3 widths overflows (the red team: queued, then FAILED in packaging)
    rows = [{**row, "x1": 1e308 + (row["x1"] + 5.0) / 15.0 * 7e307} for row in rows40]
    bounds = {"x1": [1e308, 1.7e308], "x2": [0.0, 15.0]}
    # when it is posted for training, then it is a 422 naming the bounds, and nothing is queued
    status, answer = training.call("POST", "/models/wide/train", new_model(rows, bounds=bounds))
    assert (status, answer["details"][0]["field"]) == (422, "bounds"), answer
    assert "x1's bounds" in answer["details"][0]["message"]
    assert "wider than" in answer["details"][0]["message"]
    assert training.deliver() == []


def test_the_widest_bounds_allowed_leave_room_for_the_longest_lengthscale():
    from handler.training import data, fit

    assert np.isfinite(data.MAX_WIDTH * fit.LENGTHSCALE_BOUNDS[1])


def test_a_cancel_that_lands_while_the_version_is_published_stops_its_promotion(
    training: Training, rows40, monkeypatch
):
    # given a training job whose cancel arrives while its version is being published
    from handler.training import worker

    publish = worker.publish
    cancelled = []

    def cancelled_while_publishing(job: Any, result: Any, registry: Any) -> Any:
        version = publish(job, result, registry)
        cancelled.append(training.call("POST", f"/models/race/training-jobs/{job.job_id}/cancel")[0])
        return version

    monkeypatch.setattr(worker, "publish", cancelled_while_publishing)
    created = training.train("race", new_model(rows40, promote="always"))
    # when the training function runs it
    training.deliver()
    # then the cancel was accepted, the job is CANCELLED, and the version it published is not put live
    assert cancelled == [200]
    assert training.job("race", created["job_id"])["status"] == "CANCELLED"
    assert training.registry.store.alias("race", "live") is None
