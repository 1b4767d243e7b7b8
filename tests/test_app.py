"""The Lambda handler, driven with API Gateway REST proxy events."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from handler.api.schemas import ModelManifest
from handler.gp.artifact import PackagedArtifact, manifest_path_for, sha256_of
from handler.gp.model import LazyModel
from scripts import generate_events
from scripts.train_model import park1991
from tests.conftest import DEPLOYED_MODEL, FEATURES, PARK_PICKLE, PARK_POSTERIOR
from tests.events import EVENTS_DIR, api_event, lambda_context, response_json

POINT = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}
# What every caller gets when the model cannot be loaded, whatever the reason (which can quote the artifact).
MODEL_UNAVAILABLE = {
    "error": "model unavailable",
    "details": [
        {
            "field": "model",
            "message": "the model could not be loaded; the reason is logged, and a later request tries again",
        }
    ],
}


def call(app, event):
    response = app.lambda_handler(event, lambda_context())
    assert response["multiValueHeaders"]["Content-Type"] == ["application/json"]
    return response["statusCode"], response_json(response)


def gpy_predict(path: Path, points: list[dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as handle:
        gp = pickle.load(handle)
    mean, variance = gp.predict(np.array([[p[k] for k in ("x1", "x2", "x3", "x4")] for p in points]))
    return mean[:, 0], variance[:, 0]


def test_a_single_point_gets_gpys_mean_and_variance(app_with_model, tiny_model_path):
    # when
    status, body = call(app_with_model, api_event(body=POINT))
    # then
    assert status == 200
    assert set(body) == {"mean", "variance"}
    mean, variance = gpy_predict(tiny_model_path, [POINT])
    assert body["mean"] == pytest.approx(mean[0], rel=1e-7)
    assert body["variance"] == pytest.approx(variance[0], rel=1e-7)


def test_a_batch_answers_each_point_in_order_as_a_single_request_would(app_with_model, tiny_model_path):
    # given
    points = [
        {k: float(v) for k, v in zip(POINT, row, strict=True)} for row in np.random.default_rng(5).uniform(size=(40, 4))
    ]
    # when
    status, body = call(app_with_model, api_event(body=points))
    # then
    assert status == 200
    assert len(body) == 40
    mean, variance = gpy_predict(tiny_model_path, points)
    np.testing.assert_allclose([b["mean"] for b in body], mean, rtol=1e-7)
    np.testing.assert_allclose([b["variance"] for b in body], variance, rtol=1e-6)
    for point, answer in zip(points[:5], body[:5], strict=True):
        _, single = call(app_with_model, api_event(body=point))
        assert single["mean"] == pytest.approx(answer["mean"], rel=1e-9)
        assert single["variance"] == pytest.approx(answer["variance"], rel=1e-6)


def test_columns_in_give_columns_out_equal_to_rows(app_with_model):
    # given the same points as rows and as columns
    rows = [{**POINT, "x1": x} for x in (0.1, 0.4, 0.9)]
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    # when
    _, by_rows = call(app_with_model, api_event(body=rows))
    status, by_columns = call(app_with_model, api_event(body=columns))
    # then
    assert status == 200
    assert by_columns == {"mean": [r["mean"] for r in by_rows], "variance": [r["variance"] for r in by_rows]}


def test_latent_variance_std_and_interval_on_request(app_with_model, tiny_model_path):
    # given
    event = api_event(body=POINT)
    event["queryStringParameters"] = {"variance": "latent", "include": "std,interval"}
    # when
    status, body = call(app_with_model, event)
    # then the latent variance is GPy's predict_noiseless, and the rest follows from it
    assert status == 200
    with tiny_model_path.open("rb") as handle:
        gp = pickle.load(handle)
    _, latent = gp.predict_noiseless(np.array([[POINT[k] for k in FEATURES]]))
    assert body["variance"] == pytest.approx(latent[0, 0], rel=1e-6)
    assert body["std"] == pytest.approx(np.sqrt(body["variance"]))
    assert body["lower_95"] == pytest.approx(body["mean"] - 1.959964 * body["std"])
    assert body["upper_95"] == pytest.approx(body["mean"] + 1.959964 * body["std"])
    _, noisy = call(app_with_model, api_event(body=POINT))
    assert noisy["variance"] > body["variance"], "an observation adds the noise variance"


def test_the_event_exactly_as_sam_generates_it_is_answered(app_with_model):
    # given `sam local generate-event` output: base64 body, no Content-Type, a {proxy+} resource
    sam = str(Path(sys.executable).with_name("sam"))
    command = [sam, "local", "generate-event", "apigateway", "aws-proxy", "--method", "POST", "--path", "predict"]
    generated = subprocess.run(
        [*command, "--body", json.dumps(POINT)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "SAM_CLI_TELEMETRY": "0"},
    )
    event = json.loads(generated.stdout)
    assert event["isBase64Encoded"] is True
    assert "Content-Type" not in event["headers"]
    # when
    status, body = call(app_with_model, event)
    # then
    assert status == 200
    assert set(body) == {"mean", "variance"}


@pytest.mark.parametrize("name", sorted(p.stem for p in EVENTS_DIR.glob("*.json")))
def test_each_sample_event_gets_the_status_its_name_promises(deployed_app, name: str):
    # (events/ are generated for the deployed model, whatever it is)
    event = json.loads((EVENTS_DIR / f"{name}.json").read_text())
    status, body = call(deployed_app, event)
    if name.startswith("bad-"):
        assert 400 <= status < 500
        assert body["error"]
        assert body["details"][0]["field"]
    else:
        assert status == 200


@pytest.mark.parametrize("published", [False, True])
def test_the_sample_events_promise_what_the_models_manifest_publishes(
    monkeypatch: pytest.MonkeyPatch, tiny_posterior_path: Path, published: bool
):
    # given a model whose manifest publishes nothing (the packaging default), or its training points
    from handler import app

    model_path = tiny_posterior_path if published else PARK_POSTERIOR
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_path)))
    assert (app.model.manifest().published_training_data is not None) == published
    # when the sample events for it are made (scripts/generate_events.py) and sent
    answered = {
        name: call(app, api_event(method, path, raw_body=body))
        for name, (method, path, body, _) in generate_events.cases(app.model.manifest()).items()
    }
    # then each gets the status its name promises: GET /model/training-data among them, a 404 where unpublished
    assert ("model-training-data" in answered) == published
    assert ("bad-training-data-not-published" in answered) != published
    for name, (status, body) in answered.items():
        if name.startswith("bad-"):
            assert 400 <= status < 500, (name, status)
            assert body["details"][0]["field"], name
        else:
            assert status == 200, (name, status, body)


def test_health_says_whether_the_model_is_loaded_without_loading_it(app_with_model):
    assert call(app_with_model, api_event("GET", "/health")) == (200, {"status": "ok", "model_loaded": False})
    call(app_with_model, api_event(body=POINT))
    assert call(app_with_model, api_event("GET", "/health")) == (200, {"status": "ok", "model_loaded": True})


def test_model_route_returns_the_manifest(app_with_model, tiny_model_path):
    status, body = call(app_with_model, api_event("GET", "/model"))
    assert status == 200
    limits = body.pop("limits")
    assert body == json.loads(manifest_path_for(tiny_model_path).read_text())
    ModelManifest.model_validate(body)
    # and the deployment's limits, for clients that split their work (no jobs in this deployment)
    assert limits == {"max_batch_size": 10_000, "max_job_points": None, "job_chunk_points": None}


@pytest.mark.parametrize(
    ("event", "status", "field", "message"),
    [
        (api_event(raw_body='{"x1": 0.5,'), 400, "body", "line 1 column"),
        (api_event(raw_body=""), 400, "body", "expected a JSON object"),
        (api_event(body={**POINT, "x2": True}), 422, "x2", "got boolean"),
        (api_event(raw_body='{"x1": NaN, "x2": 0.5, "x3": 0.5, "x4": 0.5}'), 422, "x1", "finite"),
        (api_event(body=[POINT, {**POINT, "x3": None}]), 422, "[1].x3", "got null"),
        (api_event(body=[]), 422, "body", "at least one point"),
        (api_event(body=[POINT] * 10_001), 422, "body", "at most 10000 per request"),
        (api_event(body={**POINT, "x1": 1e300}), 422, "x1", "outside the allowed range [-0.1, 1.1]"),
        (api_event(body=[POINT, {**POINT, "x4": -0.5}]), 422, "[1].x4", "outside the allowed range"),
        (api_event(raw_body="e30=!", base64_body=False, headers={}), 400, "body", "Expecting value"),
        (api_event("GET", "/predict"), 405, "method", "use POST"),
        (api_event("DELETE", "/health"), 405, "method", "use GET"),
        (api_event("GET", "/nope"), 404, "path", "no route GET /nope"),
        (
            api_event(body={"x1": [0.1, 0.2], "x2": [0.1], "x3": [0.1, 0.2], "x4": [0.1, 0.2]}),
            422,
            "body",
            "same length",
        ),
        (
            api_event(body={"x1": [0.1, 2.0], "x2": [0.1] * 2, "x3": [0.1] * 2, "x4": [0.1] * 2}),
            422,
            "x1[1]",
            "outside",
        ),
    ],
    ids=[
        "truncated-json",
        "empty-body",
        "boolean",
        "nan",
        "null-in-batch",
        "empty-batch",
        "batch-over-limit",
        "huge-value",
        "outside-domain-in-batch",
        "not-json",
        "wrong-method",
        "wrong-method-health",
        "unknown-route",
        "columns-of-unequal-length",
        "column-value-outside-domain",
    ],
)
def test_bad_requests_get_a_4xx_json_error_naming_the_field(app_with_model, event, status, field, message):
    got_status, body = call(app_with_model, event)
    assert got_status == status
    assert set(body) == {"error", "details"}
    assert body["details"][0]["field"] == field
    assert message in body["details"][0]["message"]


def test_wrong_method_lists_the_allowed_ones(app_with_model):
    response = app_with_model.lambda_handler(api_event("PUT", "/predict"), lambda_context())
    assert response["statusCode"] == 405
    assert response["multiValueHeaders"]["Allow"] == ["POST"]


def test_a_missing_artifact_gives_503_and_a_logged_error_then_recovers(
    monkeypatch, model_copy: Path, tmp_path: Path, caplog
):
    # given a cold function whose artifact is missing
    from handler import app
    from handler.gp.model import LazyModel

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy), retry_interval_s=0))
    model_copy.rename(tmp_path / "elsewhere.pkl")
    # when
    status, body = call(app, api_event(body=POINT))
    # then the caller is told the model is unavailable, and only the log says why
    assert status == 503
    assert body == MODEL_UNAVAILABLE
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["model unavailable"]
    assert errors[0].reason == "model artifact pretrained-model.pkl is missing"
    assert errors[0].exc_info is not None, "the cause is logged with its traceback"

    # when the artifact is back, the next request loads it
    (tmp_path / "elsewhere.pkl").rename(model_copy)
    assert call(app, api_event(body=POINT))[0] == 200


def test_a_corrupt_artifact_gives_503(monkeypatch, model_copy: Path, caplog):
    from handler import app
    from handler.gp.model import LazyModel

    model_copy.write_bytes(model_copy.read_bytes()[:-100])
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy)))
    status, body = call(app, api_event(body=POINT))
    assert status == 503
    assert body == MODEL_UNAVAILABLE
    [error] = [r for r in caplog.records if r.getMessage() == "model unavailable"]
    assert "does not match its manifest checksum" in error.reason


def test_an_unexpected_failure_gives_500_without_a_traceback(app_with_model, monkeypatch):
    # given a model that fails inside predict
    loaded = app_with_model.model.get()

    def broken(X, latent=False):
        raise ValueError("secret internals at /var/task/handler/model.py line 1")

    monkeypatch.setattr(loaded.model, "predict", broken)
    # when
    status, body = call(app_with_model, api_event(body=POINT))
    # then
    assert status == 500
    assert body == {"error": "internal error; it has been logged", "details": []}


def test_the_deployed_artifact_is_what_its_manifest_says_and_the_app_serves_it():
    """Whatever model_artifacts/ holds (the Park example, or a user's model): checksum, and an answer."""
    from handler import app

    manifest = ModelManifest.model_validate_json(manifest_path_for(DEPLOYED_MODEL).read_text())
    artifact = DEPLOYED_MODEL.with_name(manifest.artifact)
    assert manifest.sha256 == sha256_of(artifact)
    assert app.settings.resolved_model_path == DEPLOYED_MODEL
    point = {f: (low + high) / 2 for f, (low, high) in manifest.bounds.items()}
    status, body = call(app, api_event(body=point))
    assert status == 200, body
    answers = [body] if len(manifest.outputs) == 1 else list(body.values())
    assert all(np.isfinite(a["mean"]) and a["variance"] >= 0 for a in answers)


def test_smoke_the_park_example(monkeypatch):
    """The Park example (as first packaged: a pickle, served through GPy): quality, and the true Park function."""
    from handler import app
    from handler.gp.model import LazyModel

    manifest = ModelManifest.model_validate_json(manifest_path_for(PARK_PICKLE).read_text())
    assert manifest.sha256 == sha256_of(PARK_PICKLE)
    assert manifest.n_train == 200
    assert manifest.holdout is not None
    assert manifest.holdout["y"].r2 > 0.999

    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(PARK_PICKLE)))
    status, body = call(app, api_event(body=POINT))
    assert status == 200
    truth = park1991(np.array([[POINT[k] for k in FEATURES]]))[0]
    assert body["mean"] == pytest.approx(truth, abs=0.05)
    assert 0 < body["variance"] < 1e-3
