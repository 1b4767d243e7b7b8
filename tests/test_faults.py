"""Faults and concurrency at the handler: cold loads under contention, loading while requests arrive,
the largest batch allowed, and Lambda's time budget."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from handler.gp import gpy_model
from handler.gp import model as model_module
from handler.gp.artifact import PackagedArtifact, manifest_path_for
from handler.gp.model import LazyModel
from tests.conftest import FEATURES
from tests.events import api_event, lambda_context

POINT = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}


@pytest.fixture
def counted_loads(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Each real model load appends its start time; loads take 0.3 s longer, to widen any race."""
    starts: list[float] = []
    real_load = model_module.load_model

    def slow_counting_load(*args, **kwargs):
        starts.append(time.monotonic())
        time.sleep(0.3)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(model_module, "load_model", slow_counting_load)
    return starts


def test_a_cold_function_hit_by_many_requests_at_once_loads_the_model_once(
    monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, counted_loads: list[float]
):
    # given a cold function
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(tiny_model_path)))
    app.model.manifest()  # read at import, as the app does for a packaged model; the model itself is not loaded
    barrier = threading.Barrier(16)

    def request(i: int) -> dict:
        barrier.wait()
        return app.lambda_handler(api_event(body={**POINT, "x1": i / 16}), lambda_context())

    # when sixteen threads send requests at the same moment
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(request, range(16)))
    # then every request is answered, and the model was loaded once
    assert [r["statusCode"] for r in responses] == [200] * 16
    assert len(counted_loads) == 1
    assert len({json.loads(r["body"])["mean"] for r in responses}) == 16


def test_requests_during_the_load_wait_for_it_and_health_does_not(
    monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path, counted_loads: list[float]
):
    # given a first request that has started loading the model
    from handler import app

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(tiny_model_path)))
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = pool.submit(app.lambda_handler, api_event(body=POINT), lambda_context())
        while not counted_loads:
            time.sleep(0.01)
        # when a second prediction and a health check arrive while it loads
        second = pool.submit(app.lambda_handler, api_event(body=POINT), lambda_context())
        health = app.lambda_handler(api_event("GET", "/health"), lambda_context())
        # then health answers without waiting for the load (it would say loaded had it waited), saying it is not
        assert json.loads(health["body"]) == {"status": "ok", "model_loaded": False}
        # and both predictions succeed from the one load
        assert first.result()["statusCode"] == second.result()["statusCode"] == 200
    assert len(counted_loads) == 1
    assert json.loads(app.lambda_handler(api_event("GET", "/health"), lambda_context())["body"])["model_loaded"]


def test_the_largest_batch_allowed_is_answered_in_full(app_with_model):
    # given exactly MAX_BATCH_SIZE points, as rows and as columns
    count = app_with_model.settings.max_batch_size
    rows = [{**POINT, "x1": i / count} for i in range(count)]
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    # when
    by_rows = app_with_model.lambda_handler(api_event(body=rows), lambda_context())
    by_columns = app_with_model.lambda_handler(api_event(body=columns), lambda_context())
    # then
    assert by_rows["statusCode"] == by_columns["statusCode"] == 200
    assert len(json.loads(by_rows["body"])) == count
    assert len(json.loads(by_columns["body"])["mean"]) == count
    assert len(by_rows["body"]) < 6 * 1024 * 1024, "the answer fits Lambda's response payload limit"


def test_a_batch_that_would_outrun_the_deadline_gets_504_not_a_timeout(app_with_model, caplog):
    # given a function with 5 s left, whose clock then runs out after the first slice of the batch
    from handler.api.deadline import UNKNOWN_MODEL_SLICE_POINTS

    remaining = iter([5_000, 500])
    context = lambda_context()
    context.get_remaining_time_in_millis = lambda: next(remaining, 0)
    rows = [POINT] * (3 * UNKNOWN_MODEL_SLICE_POINTS)  # a pickle's slices: no cost model
    # when
    response = app_with_model.lambda_handler(api_event(body=rows), context)
    # then
    assert response["statusCode"] == 504
    body = json.loads(response["body"])
    assert body["error"] == "time budget exceeded"
    done = f"predicted {UNKNOWN_MODEL_SLICE_POINTS} of {len(rows)} points"
    assert body["details"][0]["message"].startswith(done)
    assert "time budget exceeded" in caplog.text
    # and the next request, with time to spare, succeeds
    assert app_with_model.lambda_handler(api_event(body=rows), lambda_context())["statusCode"] == 200


def test_a_request_with_less_time_left_than_the_reserve_gets_504_at_once(app_with_model):
    context = lambda_context()
    context.get_remaining_time_in_millis = lambda: 300
    response = app_with_model.lambda_handler(api_event(body=POINT), context)
    assert response["statusCode"] == 504
    assert json.loads(response["body"])["details"][0]["message"].startswith("predicted 0 of 1 points")


SECRET = "TOPSECRET-0123456789abcdef"


def _unpickling_raises_quoting_the_file(monkeypatch: pytest.MonkeyPatch, model_copy: Path) -> None:
    """Loading raises as GPy's Netpbm reader did, with the first bytes of the file it was pointed at."""

    def failing_load(path: Path) -> None:
        raise ValueError(f"Not a Netpbm file:\n{SECRET.encode()!r}")

    monkeypatch.setattr(gpy_model, "load_pickle", failing_load)


def _manifest_quoting_a_name(monkeypatch: pytest.MonkeyPatch, model_copy: Path) -> None:
    """A manifest whose invalid name its error quotes."""
    path = manifest_path_for(model_copy)
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": f"{SECRET} name"}))


@pytest.mark.parametrize(
    ("breaks", "method", "path", "body"),
    [
        (_unpickling_raises_quoting_the_file, "POST", "/predict", POINT),
        (_unpickling_raises_quoting_the_file, "POST", "/sample", {"points": [POINT], "samples": 3}),
        (_manifest_quoting_a_name, "POST", "/predict", POINT),
        (_manifest_quoting_a_name, "GET", "/model", None),
        (_manifest_quoting_a_name, "GET", "/openapi.json", None),
    ],
    ids=["predict-unpickling", "sample-unpickling", "predict-manifest", "model-manifest", "openapi-manifest"],
)
def test_what_made_a_load_fail_is_logged_and_never_answered(
    monkeypatch: pytest.MonkeyPatch, model_copy: Path, caplog: pytest.LogCaptureFixture, breaks, method, path, body
):
    # given an artifact whose loading fails with an error quoting what it read
    from handler import app

    breaks(monkeypatch, model_copy)
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy)))
    # when
    response = app.lambda_handler(api_event(method, path, body), lambda_context())
    # then the caller gets 503 "model unavailable" with a retry hint, and nothing of the error
    assert response["statusCode"] == 503
    assert json.loads(response["body"])["error"] == "model unavailable"
    assert response["multiValueHeaders"]["Retry-After"] == [str(max(1, round(app.settings.model_retry_seconds)))]
    assert SECRET not in response["body"]
    # and the log has the error
    [error] = [record for record in caplog.records if record.getMessage() == "model unavailable"]
    assert SECRET in error.reason


@pytest.mark.parametrize("breaks", [_unpickling_raises_quoting_the_file, _manifest_quoting_a_name])
@pytest.mark.parametrize("route", ["infer", "ready", "metadata"])
def test_the_v2_routes_answer_a_failed_load_with_a_fixed_message(
    monkeypatch: pytest.MonkeyPatch, model_copy: Path, caplog: pytest.LogCaptureFixture, breaks, route
):
    # given an artifact whose loading fails with an error quoting what it read
    from handler import app

    name = json.loads(manifest_path_for(model_copy).read_text())["name"]
    breaks(monkeypatch, model_copy)
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy)))
    # when a V2 client asks
    infer_body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [0.5] * 4}]}
    method, path, body = {
        "infer": ("POST", f"/v2/models/{name}/infer", infer_body),
        "ready": ("GET", f"/v2/models/{name}/ready", None),
        "metadata": ("GET", f"/v2/models/{name}", None),
    }[route]
    response = app.lambda_handler(api_event(method, path, body), lambda_context())
    # then it gets 503 "model unavailable", nothing of the error, and the log has it
    if route == "metadata" and breaks is _unpickling_raises_quoting_the_file:
        assert response["statusCode"] == 200  # metadata needs only the manifest, which is fine
        return
    assert response["statusCode"] == 503, response["body"]
    assert json.loads(response["body"]) == {"error": "model unavailable"}
    assert SECRET not in response["body"]
    assert any(SECRET in str(getattr(record, "reason", "")) for record in caplog.records)
