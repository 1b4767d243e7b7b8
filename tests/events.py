"""One builder for API Gateway REST proxy events, based on `sam local generate-event` output."""

from __future__ import annotations

import base64
import copy
import json
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"


@cache
def _sam_sample() -> dict[str, Any]:
    # events/predict.json is `sam local generate-event apigateway aws-proxy` output (scripts/generate_events.py).
    return json.loads((EVENTS_DIR / "predict.json").read_text())


def api_event(
    method: str = "POST",
    path: str = "/predict",
    body: Any = None,
    *,
    raw_body: str | None = None,
    base64_body: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An event for `method path`; `body` is sent as JSON, `raw_body` as is (for malformed input)."""
    event = copy.deepcopy(_sam_sample())
    text = raw_body if raw_body is not None else (None if body is None else json.dumps(body))
    if text is not None and base64_body:
        text = base64.b64encode(text.encode()).decode()
    event.update(httpMethod=method, path=path, resource=path, body=text, isBase64Encoded=base64_body)
    event["requestContext"].update(httpMethod=method, resourcePath=path, path=f"/prod{path}")
    if headers is not None:
        event["headers"] = headers
        event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    return event


def lambda_context(name: str = "PredictFunction") -> SimpleNamespace:
    return SimpleNamespace(
        function_name=name,
        function_version="$LATEST",
        memory_limit_in_mb=2048,
        invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{name}",
        aws_request_id="c6af9ac6-7b61-11e6-9a41-93e812345678",
        get_remaining_time_in_millis=lambda: 15_000,
    )


def response_json(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])
