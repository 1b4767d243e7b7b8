"""What the function writes for CloudWatch: EMF metrics and JSON logs (with a correlation id, never a body)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handler.gp.artifact import PackagedArtifact
from handler.gp.model import LazyModel
from tests.events import api_event, lambda_context

POINT = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}


def output_lines(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def emf_metrics(lines: list[dict]) -> list[tuple[str, float, dict[str, str]]]:
    """(name, value, dimensions) of every metric in the EMF lines."""
    found = []
    for line in lines:
        for directive in line.get("_aws", {}).get("CloudWatchMetrics", []):
            assert directive["Namespace"] == "GPRSurrogate"
            dimensions = {name: line[name] for names in directive["Dimensions"] for name in names}
            for metric in directive["Metrics"]:
                values = line[metric["Name"]]
                for value in values if isinstance(values, list) else [values]:
                    found.append((metric["Name"], value, dimensions))
    return found


@pytest.fixture
def cold_app(app_with_model, monkeypatch: pytest.MonkeyPatch):
    """The app as a new execution environment sees it: cold start flags set, model not loaded."""
    from aws_lambda_powertools.logging import logger as logger_module
    from aws_lambda_powertools.metrics.provider import cold_start

    monkeypatch.setattr(cold_start, "is_cold_start", True)
    monkeypatch.setattr(logger_module, "is_cold_start", True)
    return app_with_model


def test_a_prediction_emits_points_batch_size_load_time_and_a_cold_start(cold_app, capsys):
    # when a cold function answers a batch of 3, then a warm one a single point
    assert cold_app.lambda_handler(api_event(body=[POINT] * 3), lambda_context())["statusCode"] == 200
    first = emf_metrics(output_lines(capsys))
    assert cold_app.lambda_handler(api_event(body=POINT), lambda_context())["statusCode"] == 200
    second = emf_metrics(output_lines(capsys))
    # then
    names = {name for name, _, _ in first}
    assert {"ColdStart", "PointsPredicted", "BatchSize", "ModelLoadTime"} <= names
    assert ("PointsPredicted", 3.0) in [(name, value) for name, value, _ in first]
    assert next(value for name, value, _ in first if name == "ModelLoadTime") > 0
    assert {name for name, _, _ in second} == {"PointsPredicted", "BatchSize"}, "warm: no cold start, no load"


def test_each_refusal_is_counted_with_its_status(cold_app, capsys):
    cold_app.lambda_handler(api_event(body={**POINT, "x1": True}), lambda_context())
    cold_app.lambda_handler(api_event("GET", "/nope"), lambda_context())
    cold_app.lambda_handler(api_event(raw_body="{"), lambda_context())
    refusals = [dims["status"] for name, _, dims in emf_metrics(output_lines(capsys)) if name == "Refusals"]
    assert refusals == ["422", "404", "400"]


def test_a_model_that_fails_to_load_is_counted(monkeypatch, model_copy: Path, capsys):
    from handler import app

    model_copy.write_bytes(b"not the model")
    monkeypatch.setattr(app, "model", LazyModel(PackagedArtifact(model_copy)))
    assert app.lambda_handler(api_event(body=POINT), lambda_context())["statusCode"] == 503
    metrics = emf_metrics(output_lines(capsys))
    assert ("ModelLoadFailures", 1.0) in [(name, value) for name, value, _ in metrics]
    assert ("Refusals", 1.0, {"status": "503"}) in metrics


def test_logs_are_json_with_correlation_id_and_cold_start_and_never_the_body(cold_app, capsys, caplog):
    # given a refused body holding a marker
    marker = "SECRET-MARKER-7f3a"
    with caplog.at_level("INFO"):
        cold_app.lambda_handler(api_event(body={**POINT, "x1": marker}), lambda_context())
        # then each record, formatted as the function's log handler formats it, is JSON with the context keys
        formatter = cold_app.logger.registered_formatter
        logged = [json.loads(formatter.format(record)) for record in caplog.records]
    refused = next(entry for entry in logged if entry["message"] == "request refused")
    assert refused["correlation_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    assert refused["cold_start"] is True
    assert (refused["level"], refused["status"]) == ("INFO", 422)
    # and the body is in none of it
    assert marker not in json.dumps(logged) + capsys.readouterr().out


def test_tracing_on_wraps_the_handler_and_it_still_answers(tiny_model_path):
    # Outside Lambda Powertools' tracer records nothing; what matters here is that the traced handler works.
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import handler.app as app; from tests.events import api_event, lambda_context;"
        "assert app.tracer is not None;"
        "r = app.lambda_handler(api_event(body={'x1': 0.5, 'x2': 0.5, 'x3': 0.5, 'x4': 0.5}), lambda_context());"
        "print(r['statusCode'])"
    )
    env = {**os.environ, "TRACING": "true", "MODEL_PATH": str(tiny_model_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "200"
