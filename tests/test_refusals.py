"""Hostile bodies on every route that takes one: a 4xx naming the field, never a 5xx, and no work before the limits."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from handler.api.errors import MAX_ERROR_DETAILS, MAX_FIELD_CHARS, MAX_MESSAGE_CHARS, RequestError, brief
from handler.jobs.designs import grid_levels
from tests import test_jobs
from tests.conftest import FEATURES
from tests.events import api_event, lambda_context, response_json
from tests.jobs_harness import JobsHarness

jobs = test_jobs.jobs  # fixture: the jobs harness on the tiny model (moto's AWS: conftest's aws)

SURROGATE_KEY = '{"\\ud800": 1}'
DEEP = "[" * 260 + "0.5" + "]" * 260
HUGE_INTEGER = "1" + "0" * 400
POINT = json.dumps(dict.fromkeys(FEATURES, 0.5))
# Where each route carries points, as a template of raw JSON: POINTS is replaced by the hostile value.
ROUTES = {
    "/predict": "POINTS",
    "/sample": '{"points": POINTS, "samples": 2, "seed": 1}',
    "/jobs": '{"points": POINTS}',
}
HOSTILE_POINTS = {
    "400-digit integer": "[" + POINT.replace("0.5}", HUGE_INTEGER + "}") + "]",
    "lone-surrogate key": "[" + POINT.replace('"x1"', '"\\ud800"') + "]",
    "lone-surrogate value": "[" + POINT.replace("0.5}", '"\\ud800"}') + "]",
    "nested 260 deep": "[" + POINT.replace("0.5}", DEEP + "}") + "]",
    "rows nested 260 deep": DEEP,
    "an object as a row": "[" + SURROGATE_KEY + "]",
}


def call(jobs: JobsHarness, path: str, raw_body: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """The route's answer, through lambda_handler; the body must be JSON whatever the status."""
    status, _, answer = jobs.call("POST", path, raw_body=raw_body, headers=headers)
    return status, answer


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("name", sorted(HOSTILE_POINTS))
def test_hostile_points_get_a_422_naming_the_points_on_every_route(jobs: JobsHarness, route: str, name: str):
    # given points that the standard library decodes (orjson refuses them) into what orjson cannot re-encode
    body = ROUTES[route].replace("POINTS", HOSTILE_POINTS[name])
    # when
    status, answer = call(jobs, route, body)
    # then a 422 whose fields are under the points' place in the body
    assert status == 422, answer
    prefix = "" if route == "/predict" else "points"
    assert all(detail["field"].startswith(prefix) for detail in answer["details"]), answer


def test_a_lone_surrogate_key_is_named_escaped_in_the_error(jobs: JobsHarness):
    # given a design whose bounds name a feature with a lone surrogate
    body = '{"design": {"method": "lhs", "n": 10, "bounds": {"\\ud800": [0, 1]}}}'
    # when
    status, answer = call(jobs, "/jobs", body)
    # then the 422 names the field, the surrogate written out as the six characters \ud800
    assert status == 422, answer
    assert answer["details"] == [
        {"field": "design.bounds.\\ud800", "message": "not a feature of this model (x1, x2, x3, x4)"}
    ]


@pytest.mark.parametrize("n", [7**150, 10**400, 10**7 + 1], ids=["7**150", "10**400", "over-the-limit"])
def test_a_design_count_is_checked_against_the_job_limit_before_any_work(
    jobs: JobsHarness, n: int, monkeypatch: pytest.MonkeyPatch
):
    # given a grid of an n that the standard library reads exactly (the surrogate sends the body there), and a
    # record of every design whose size is worked out
    from handler.jobs import routes

    sized: list[int] = []
    real = routes.design_points
    monkeypatch.setattr(routes, "design_points", lambda method, count, d: sized.append(count) or real(method, count, d))
    body = '{"design": {"method": "grid", "n": ' + str(n) + ', "bounds": {"\\ud800": [0, 1]}}}'
    # when
    status, answer = call(jobs, "/jobs", body)
    # then a 422 naming n and the bound, and no work was done on n
    assert status == 422, answer
    fields = [detail["field"] for detail in answer["details"]]
    assert fields == ["design.bounds.\\ud800", "design.n"]
    assert "at most 10000000 per job" in answer["details"][1]["message"]
    assert sized == []


@pytest.mark.parametrize(
    ("n", "message"),
    [("true", "valid integer"), ("2.0", "valid integer"), ('"16"', "valid integer"), ("0", "greater than or equal")],
)
def test_a_design_count_must_be_an_integer(jobs: JobsHarness, n: str, message: str):
    status, answer = call(jobs, "/jobs", '{"design": {"method": "grid", "n": ' + n + "}}")
    assert status == 422, answer
    assert answer["details"][0]["field"] == "design.n"
    assert message in answer["details"][0]["message"]


@pytest.mark.parametrize("bounds", [{"x1": ["0.1", "0.9"]}, {"x1": [True, 1]}], ids=["numeric-strings", "boolean"])
def test_bounds_are_numbers_as_strictly_as_features_are(jobs: JobsHarness, bounds: dict[str, Any]):
    status, answer = call(jobs, "/jobs", json.dumps({"design": {"method": "lhs", "n": 10, "bounds": bounds}}))
    assert status == 422, answer
    assert answer["details"][0]["field"] == "design.bounds.x1[0]"
    assert "valid number" in answer["details"][0]["message"]


def test_many_bounds_are_refused_by_name_and_pydantic_sees_only_what_it_reports(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch
):
    # given a design with 60,000 bound entries that are not features (numbers, not arrays: within the structure limits)
    from handler.api import schemas

    handed_to_pydantic: list[int] = []
    real = schemas._trimmed_submission

    def recording(data: Any, features: tuple[str, ...]) -> Any:
        trimmed = real(data, features)
        handed_to_pydantic.append(len(trimmed["design"]["bounds"]))
        return trimmed

    monkeypatch.setattr(schemas, "_trimmed_submission", recording)
    bounds = ",".join(f'"k{i}": 0' for i in range(60_000))
    body = '{"design": {"method": "lhs", "n": 10, "bounds": {' + bounds + "}}}"
    # when
    status, answer = call(jobs, "/jobs", body)
    # then at most 20 problems are listed, and the bounds handed to pydantic were the first 20 names
    assert status == 422, answer
    assert 1 <= len(answer["details"]) <= MAX_ERROR_DETAILS
    assert answer["details"][0]["field"] == "design.bounds.k0"
    assert handed_to_pydantic == [MAX_ERROR_DETAILS]


def test_unknown_submission_fields_are_listed_up_to_the_limit(jobs: JobsHarness):
    fields = ",".join(f'"f{i}": 1' for i in range(50_000))
    status, answer = call(jobs, "/jobs", '{"design": {"method": "lhs", "n": 10, ' + fields + "}}")
    assert status == 422, answer
    assert [d["field"] for d in answer["details"]] == [f"design.f{i}" for i in range(MAX_ERROR_DETAILS)]


@pytest.mark.parametrize("key", ["abc\n", "abc\r\n", "", "a b", "é"], ids=["newline", "crlf", "empty", "space", "é"])
def test_an_idempotency_key_is_visible_ascii_to_its_end(jobs: JobsHarness, key: str):
    status, answer = call(jobs, "/jobs", '{"upload": {"format": "csv"}}', headers={"Idempotency-Key": key})
    assert status == 400, answer
    assert answer["details"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize(
    "context",
    [{}, None, {"identity": None}, {"identity": {"apiKeyId": 7}}],
    ids=["empty", "null", "null-identity", "numeric-key-id"],
)
def test_a_jobs_event_without_a_usable_identity_is_a_malformed_event(jobs: JobsHarness, context: Any):
    # given a /jobs event whose requestContext does not say who calls
    event = api_event("POST", "/jobs", {"upload": {"format": "csv"}})
    event["requestContext"] = context
    # when
    from handler import app

    response = app.lambda_handler(event, lambda_context())
    # then 400, as the README says of events that are not API Gateway's
    assert response["statusCode"] == 400, response
    assert response_json(response)["error"] == "malformed event"


@pytest.mark.parametrize("route", ["/predict", "/jobs"])
def test_an_identity_that_is_not_an_object_is_a_malformed_event(app_with_model, route: str):
    event = api_event("POST", route, {"upload": {"format": "csv"}})
    event["requestContext"]["identity"] = "someone"
    response = app_with_model.lambda_handler(event, lambda_context())
    assert response["statusCode"] == 400
    assert response_json(response)["details"][0]["message"] == "the event's requestContext.identity is a str"


def test_sample_reads_only_what_its_largest_request_needs(app_with_model):
    # given the largest /sample request, written generously (indented, 17 significant digits)
    from handler.api.limits import SAMPLE_MAX_POINTS

    largest = {"points": [dict.fromkeys(FEATURES, 0.12345678901234567)] * SAMPLE_MAX_POINTS, "samples": 200}
    text = json.dumps(largest, indent=8)
    from handler.api import predictions

    limit = predictions.sample_limits(FEATURES).max_bytes
    # then it fits /sample's limit, which is a fraction of /predict's
    assert len(text) <= limit < predictions.request_parser(FEATURES).max_body_bytes / 5
    response = app_with_model.lambda_handler(api_event(path="/sample", raw_body=text), lambda_context())
    assert response["statusCode"] == 200, response["body"][:300]
    # and a body beyond it is a 413
    response = app_with_model.lambda_handler(api_event(path="/sample", raw_body=" " * limit + "{}"), lambda_context())
    assert response["statusCode"] == 413


def test_sample_lists_a_few_unknown_fields_in_the_bodys_order(app_with_model):
    fields = ",".join(f'"f{i:06d}": 1' for i in reversed(range(8_000)))
    body = '{"points": [' + POINT + '], "samples": 1, ' + fields + "}"
    response = app_with_model.lambda_handler(api_event(path="/sample", raw_body=body), lambda_context())
    assert response["statusCode"] == 422
    assert [d["field"] for d in response_json(response)["details"]][:5] == [
        f"'f{i:06d}'" for i in range(7_999, 7_994, -1)
    ]


def test_a_response_that_cannot_be_serialised_is_still_a_json_500(app_with_model, monkeypatch: pytest.MonkeyPatch):
    # given an error body that orjson cannot write (as a lone surrogate was before error bodies were made safe)
    monkeypatch.setattr(RequestError, "body", lambda self: {"error": "\ud800", "details": []})
    # when a request is refused
    response = app_with_model.lambda_handler(api_event(body={"x1": "a"}), lambda_context())
    # then lambda_handler still answers API Gateway: a 500 with a JSON body, not an exception (a 502 deployed)
    assert response["statusCode"] == 500
    assert response_json(response) == {"error": "internal error; it has been logged", "details": []}


@pytest.mark.parametrize("text", ["\ud800", "x" * 5000, "ok é"], ids=["lone-surrogate", "long", "non-ascii"])
def test_every_error_body_string_is_encodable_and_bounded(text: str):
    body = RequestError(422, text, [(text, text)]).body()
    encoded = json.dumps(body, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    assert len(encoded) <= 2 * MAX_MESSAGE_CHARS + MAX_FIELD_CHARS + 100
    if text == "ok é":
        assert body["details"][0] == {"field": "ok é", "message": "ok é"}


@pytest.mark.parametrize(
    "value",
    [dict.fromkeys(range(1_000_000), 1), list(range(1_000_000)), "\ud800" * 100, 10**400],
    ids=["large-dict", "large-list", "surrogates", "huge-integer"],
)
def test_brief_is_short_cheap_and_encodable(value: Any):
    started = time.process_time()
    text = brief(value)
    assert time.process_time() - started < 0.05
    assert len(text) <= 40
    text.encode("utf-8")


def test_grid_levels_are_the_exact_integer_root_for_any_count():
    for dimensions in (1, 2, 3, 4, 7):
        for n in (*range(1, 300), 10**7, 2**53 + 1, 7**150, 10**400):
            levels = grid_levels(n, dimensions)
            assert levels**dimensions <= n < (levels + 1) ** dimensions
