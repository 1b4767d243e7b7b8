"""Input an attacker would send: every one gets a 4xx, and refusing it costs work bounded by the limits."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import TypeAdapter

from handler.api import parsing
from handler.api.errors import MAX_ERROR_DETAILS, RequestError
from handler.api.parsing import RequestParser, body_limit
from tests.conftest import FEATURES, ROOT
from tests.events import api_event, lambda_context, response_json

LIMIT = body_limit(FEATURES, 10_000, 4_600_000)


def parser() -> RequestParser:
    return RequestParser(FEATURES, max_batch_size=10_000, max_body_bytes=4_600_000)


def at_limit(make) -> str:
    """The largest body of a shape (make(n) for the largest n) within the body limit."""
    low, high = 1, 1
    while len(make(high)) <= LIMIT:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if len(make(middle)) <= LIMIT else (low, middle)
    return make(low)


def point(value: str = "0.5") -> str:
    return "{" + ",".join(f'"{name}":{value}' for name in FEATURES) + "}"


PATHOLOGICAL = {
    "unequal-columns-of-strings": lambda n: '{"x1":[' + ",".join(['"a"'] * n) + '],"x2":[0.5],"x3":[0.5],"x4":[0.5]}',
    "columns-of-booleans": lambda n: "{" + ",".join(f'"{f}":[' + ",".join(["true"] * n) + "]" for f in FEATURES) + "}",
    "columns-of-nested-lists": lambda n: (
        "{" + ",".join(f'"{f}":[' + ",".join(["[1]"] * n) + "]" for f in FEATURES) + "}"
    ),
    "point-with-extra-keys": lambda n: (
        "{" + ",".join([*(f'"{f}":0.5' for f in FEATURES), *(f'"k{i}":1' for i in range(n))]) + "}"
    ),
    "rows-with-extra-keys": lambda n: (
        "["
        + ",".join(["{" + ",".join([*(f'"{f}":0.5' for f in FEATURES), *(f'"k{i}":1' for i in range(n))]) + "}"] * 2000)
        + "]"
    ),
    "rows-of-strings": lambda n: "[" + ",".join([point('"' + "a" * n + '"')] * 10_000) + "]",
    "rows-of-wrong-types": lambda n: "[" + ",".join(["[" + "1," * n + "1]", "true", "null", '"x"'] * 2500) + "]",
}


@pytest.fixture
def validated_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size (values, keys and containers) of every input pydantic is asked to validate."""
    sizes: list[int] = []
    real = TypeAdapter.validate_python

    def size(value: Any) -> int:
        if isinstance(value, dict):
            return 1 + sum(1 + size(v) for v in value.values())
        if isinstance(value, list):
            return 1 + sum(size(v) for v in value)
        return 1

    def counting(self, value, *args, **kwargs):
        sizes.append(size(value))
        return real(self, value, *args, **kwargs)

    monkeypatch.setattr(TypeAdapter, "validate_python", counting)
    return sizes


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_refusing_a_pathological_body_hands_pydantic_only_what_it_explains(name: str, validated_sizes: list[int]):
    # given a body of that shape as large as the limit allows
    body = at_limit(PATHOLOGICAL[name])
    assert len(body) > LIMIT // 2
    # when
    with pytest.raises(RequestError) as refused:
        parser().parse(body)
    # then it is a 422 listing at most the first 20 problems
    assert refused.value.status_code == 422
    assert 1 <= len(refused.value.details) <= MAX_ERROR_DETAILS
    # and pydantic saw a bounded amount: at most 20 small objects of the features and 20 unknown keys
    assert len(validated_sizes) <= MAX_ERROR_DETAILS + 1
    assert sum(validated_sizes) <= (MAX_ERROR_DETAILS + 1) * (3 * (len(FEATURES) + MAX_ERROR_DETAILS) + 2)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("nested-singleton-lists", lambda n: "[" + ",".join(["[" * 100 + "]" * 100] * n) + "]", "arrays and objects"),
        ("empty-objects", lambda n: "[" + ",".join(["{}"] * n) + "]", "arrays and objects"),
        ("many-keys", lambda n: "{" + ",".join(f'"k{i}":1' for i in range(n)) + "}", "object members"),
    ],
)
def test_a_body_of_too_many_containers_or_members_is_refused_before_it_is_parsed(
    name: str, make, message: str, monkeypatch: pytest.MonkeyPatch
):
    # given a body as large as the limit allows, of what a JSON parser spends most on (~130 MB of lists here)
    body = at_limit(make)
    monkeypatch.setattr(parsing, "load_json", lambda body: pytest.fail("parsed"))
    # when
    with pytest.raises(RequestError) as refused:
        parser().parse(body)
    # then a 422 saying what it holds too much of, without parsing it
    assert refused.value.status_code == 422
    assert message in refused.value.details[0][1]


def test_the_structure_limits_admit_the_largest_batch_and_explain_one_with_a_wrong_value_in_every_row():
    # given the largest batch (10,001 arrays and objects, 40,000 members), and the same with every x1 an array
    valid = "[" + ",".join([point()] * 10_000) + "]"
    wrapped = "[" + ",".join([point().replace('"x1":0.5', '"x1":[0.5]')] * 10_000) + "]"
    # then the first parses, and the second (20,001 arrays and objects) is explained field by field
    assert parser().parse(valid).points.shape == (10_000, len(FEATURES))
    with pytest.raises(RequestError) as refused:
        parser().parse(wrapped)
    assert [field for field, _ in refused.value.details[:2]] == ["[0].x1", "[1].x1"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (point("1" * 4301), 422, "more digits than this service reads"),
        (point("-" + "9" * 5000), 422, "more digits than this service reads"),
        (point("1e400"), 422, "finite number"),
    ],
    ids=["4301-digits", "5000-digits-negative", "float-overflow"],
)
def test_long_numbers_get_a_4xx(app_with_model, body: str, status: int, message: str):
    response = app_with_model.lambda_handler(api_event(raw_body=body), lambda_context())
    assert response["statusCode"] == status
    assert message in response_json(response)["details"][0]["message"]


@pytest.mark.parametrize(
    ("encoding", "error"),
    [
        ("utf-16", "body is not valid UTF-8"),
        ("utf-32", "body is not valid UTF-8"),
        # Without a byte-order mark, ASCII text in UTF-16/32 is valid UTF-8 with NUL characters: not JSON.
        ("utf-16-le", "body is not valid JSON"),
        ("utf-32-be", "body is not valid JSON"),
    ],
)
def test_utf16_and_utf32_bodies_are_refused(app_with_model, encoding: str, error: str):
    body = base64.b64encode(point().encode(encoding)).decode()
    response = app_with_model.lambda_handler(api_event(raw_body=body, base64_body=False) | {"isBase64Encoded": True},
                                             lambda_context())  # fmt: skip
    assert response["statusCode"] == 400
    assert response_json(response)["error"] == error


def test_the_size_limit_counts_bytes_not_characters():
    # given a str body (not base64) of 3-byte characters: under the limit in characters, over it in bytes
    text = '{"x1": "' + "€" * (LIMIT // 3 + 10) + '"}'
    assert len(text) < LIMIT < len(text.encode())
    with pytest.raises(RequestError) as refused:
        parser().parse(text)
    assert refused.value.status_code == 413


def test_the_body_limit_is_what_the_largest_batch_needs_and_at_most_the_gateways():
    # a 10,000-row batch of long numbers, indented, fits; the limit stays under what reaches Lambda
    rows = [{name: -1.2345678901234567e-300 for name in FEATURES}] * 10_000
    assert len(json.dumps(rows, indent=8)) <= LIMIT
    assert LIMIT <= 4_600_000
    assert body_limit(tuple(f"feature_{i}" for i in range(60)), 10_000, 4_600_000) == 4_600_000


@pytest.mark.parametrize(
    "change",
    [
        {"body": {"x1": 0.5}},
        {"body": 42},
        {"queryStringParameters": "variance=latent"},
        {"queryStringParameters": {"variance": ["latent"]}},
        {"headers": ["Content-Type"]},
        {"httpMethod": None},
        {"isBase64Encoded": "yes"},
        {"requestContext": "prod"},
    ],
    ids=["dict-body", "number-body", "string-query", "list-query-value", "list-headers", "null-method", "string-flag",
         "string-context"],
)  # fmt: skip
def test_a_malformed_event_gets_400_not_an_exception(app_with_model, change: dict):
    response = app_with_model.lambda_handler(api_event(body={"x1": 0.5}) | change, lambda_context())
    assert response["statusCode"] == 400
    body = response_json(response)
    assert body["error"] == "malformed event"
    assert body["details"][0]["field"] == "event"


@pytest.mark.parametrize("missing", ["httpMethod", "path"])
def test_an_event_without_method_or_path_gets_400(app_with_model, missing: str):
    event = api_event(body={"x1": 0.5})
    del event[missing]
    response = app_with_model.lambda_handler(event, lambda_context())
    assert response["statusCode"] == 400
    assert response_json(response)["details"][0]["message"] == f"the event has no {missing}"


@pytest.mark.parametrize("event", [[], "GET /predict", None, 7])
def test_an_event_that_is_not_an_object_gets_400(app_with_model, event):
    assert app_with_model.lambda_handler(event, lambda_context())["statusCode"] == 400


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_refusal_cost_benchmark_runs_and_every_refusal_is_a_4xx():
    # The CPU and memory targets are the benchmark's to report (machines are noisy); here: it runs (every route's
    # bodies are made; /sample's, the quickest to answer, are measured) and every refusal is a 4xx.
    result = subprocess.run(
        [sys.executable, "benchmarks/refusal_cost.py", "--quick", "--route", "/sample"], cwd=ROOT,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert "every refusal a 4xx" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| POST /sample | valid: " in result.stdout


def test_the_largest_body_accepted_fits_the_event_lambda_takes_with_the_largest_headers():
    # API Gateway base64-encodes the body into the event, beside up to 10 KB of headers (twice: multiValueHeaders)
    from handler.config import LAMBDA_PAYLOAD_LIMIT_BYTES, LARGEST_BODY_BYTES

    headers = {f"X-Header-{i}": "h" * 90 for i in range(100)}  # ~10 KB
    event = api_event(raw_body=base64.b64encode(b"x" * LARGEST_BODY_BYTES).decode(), headers=headers)
    event["isBase64Encoded"] = True
    assert len(json.dumps(event).encode()) < LAMBDA_PAYLOAD_LIMIT_BYTES
    # while a body a tenth larger would not reach the function at all
    event["body"] = base64.b64encode(b"x" * (LARGEST_BODY_BYTES * 11 // 10)).decode()
    assert len(json.dumps(event).encode()) > LAMBDA_PAYLOAD_LIMIT_BYTES
