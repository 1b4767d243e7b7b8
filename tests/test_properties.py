"""Property tests: arbitrary bodies, headers and event variants against the handler, in-process.

Bounded and reproducible: the `ci` Hypothesis profile (tests/conftest.py) fixes the examples.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import event as record
from hypothesis import given
from hypothesis import strategies as st

from handler.api.errors import RequestError
from handler.api.parsing import RequestParser
from handler.api.schemas import explain_invalid
from handler.gp.artifact import PackagedArtifact
from handler.gp.model import LazyModel
from tests.conftest import FEATURES
from tests.events import api_event, lambda_context

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)
feature_values = st.one_of(
    st.floats(-0.3, 1.3),
    st.integers(-3, 3),
    st.floats(),  # NaN, infinities, huge values
    st.integers(min_value=2**63, max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.lists(st.floats(0, 1), max_size=2),
)
feature_names = st.sampled_from([*FEATURES, "x5", "X1", ""])
near_points = st.one_of(
    st.fixed_dictionaries({name: feature_values for name in FEATURES}),
    st.dictionaries(feature_names, feature_values, max_size=6),
)
near_columns = st.integers(0, 4).flatmap(
    lambda n: st.dictionaries(feature_names, st.lists(feature_values, min_size=n, max_size=n + 1), max_size=6)
)
in_domain = st.floats(0.0, 1.0)
valid_points = st.fixed_dictionaries({name: in_domain for name in FEATURES})
valid_columns = st.integers(1, 5).flatmap(
    lambda n: st.fixed_dictionaries({name: st.lists(in_domain, min_size=n, max_size=n) for name in FEATURES})
)
bodies = st.one_of(
    valid_points,
    st.lists(valid_points, min_size=1, max_size=4),
    valid_columns,
    near_points,
    st.lists(near_points, max_size=4),
    near_columns,
    json_values,
)


def to_text(body: Any) -> str:
    return json.dumps(body, allow_nan=True)


@pytest.fixture(scope="module")
def app(tiny_model_path):
    from handler import app as handler_app

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handler_app, "model", LazyModel(PackagedArtifact(tiny_model_path)))
        yield handler_app


def assert_well_formed(response: dict[str, Any]) -> Any:
    """A proxy response with a JSON body: a 2xx with finite numbers, or a 4xx error naming fields."""
    assert set(response) >= {"statusCode", "body", "multiValueHeaders"}
    assert response["multiValueHeaders"]["Content-Type"] == ["application/json"]
    status, body = response["statusCode"], json.loads(response["body"])
    assert status == 200 or 400 <= status < 500, (status, body)
    if status >= 400:
        assert isinstance(body["error"], str)
        assert body["error"]
        assert all(set(d) == {"field", "message"} and d["field"] and d["message"] for d in body["details"])
    return status, body


def numbers_in(body: Any) -> list[float]:
    if isinstance(body, dict):
        return [n for value in body.values() for n in numbers_in(value)]
    if isinstance(body, list):
        return [n for value in body for n in numbers_in(value)]
    return [body] if isinstance(body, float | int) and not isinstance(body, bool) else []


@given(
    body=bodies,
    raw=st.one_of(
        st.none(), st.none(), st.none(), st.text(max_size=30), st.binary(max_size=30).map(lambda b: b.decode("latin-1"))
    ),
    base64_encoded=st.booleans(),
    headers=st.one_of(
        st.none(),
        st.just({}),
        st.dictionaries(
            st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE", "Accept", "X-Forwarded-For"]),
            st.sampled_from(
                ["application/json", "text/plain", "multipart/form-data", "application/x-www-form-urlencoded"]
            ),
            max_size=3,
        ),
    ),
    query=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["variance", "include", "foo", ""]),
            st.sampled_from(["noisy", "latent", "std", "interval", "std,interval", "", "x", "std,,interval"]),
            max_size=3,
        ),
    ),
    method=st.sampled_from(["POST"] * 12 + ["GET", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE", "post"]),
    path=st.sampled_from(["/predict"] * 8 + ["/health", "/model", "/openapi.json", "/nope", "/predict/"]),
)
def test_every_event_gets_a_well_formed_2xx_or_4xx(app, body, raw, base64_encoded, headers, query, method, path):
    # given an event of any shape, body and headers
    text = raw if raw is not None else to_text(body)
    event = api_event(method, path, raw_body=text, base64_body=base64_encoded, headers=headers)
    event["queryStringParameters"] = query
    if headers is None:
        del event["headers"], event["multiValueHeaders"]
    # when
    status, answer = assert_well_formed(app.lambda_handler(event, lambda_context()))
    record(f"status {status}")  # shown by --hypothesis-show-statistics
    # then a prediction is finite, with no negative variance
    if status == 200 and path.startswith("/predict"):
        assert all(math.isfinite(n) for n in numbers_in(answer))
        variances = answer["variance"] if isinstance(answer, dict) else [a["variance"] for a in answer]
        assert min(variances if isinstance(variances, list) else [variances]) >= 0


@given(body=bodies)
def test_the_fast_parser_and_the_schema_agree(body):
    # Valid input skips pydantic; refusals are explained by it. Both must give the same verdict.
    try:
        request = RequestParser(FEATURES, max_batch_size=10_000, max_body_bytes=10**6).parse(to_text(body))
    except RequestError as refused:
        status = refused.status_code
    else:
        status = 200
    assert status in (200, 400, 413, 422)
    if status != 200:
        return
    assert explain_invalid(json.loads(to_text(body)), request.shape, FEATURES) == []
    assert np.isfinite(request.points).all()


@given(points=st.lists(valid_points, min_size=1, max_size=12), latent=st.booleans())
def test_a_batch_answers_what_single_requests_answer(app, points, latent):
    query = {"variance": "latent"} if latent else None
    batch_event = api_event(body=points)
    batch_event["queryStringParameters"] = query
    _, batch = assert_well_formed(app.lambda_handler(batch_event, lambda_context()))
    posterior = app.model.get().model.posterior
    prior_variance = float(posterior.kernel_variance * posterior.y_std[0] ** 2)
    for point, from_batch in zip(points, batch, strict=True):
        event = api_event(body=point)
        event["queryStringParameters"] = query
        _, single = assert_well_formed(app.lambda_handler(event, lambda_context()))
        assert single["mean"] == pytest.approx(from_batch["mean"], rel=0, abs=1e-9 * math.sqrt(prior_variance))
        assert single["variance"] == pytest.approx(from_batch["variance"], rel=0, abs=1e-11 * prior_variance)
        assert single["variance"] >= 0


@given(points=st.lists(valid_points, min_size=1, max_size=8))
def test_columns_answer_what_rows_answer(app, points):
    columns = {name: [p[name] for p in points] for name in FEATURES}
    _, by_rows = assert_well_formed(app.lambda_handler(api_event(body=points), lambda_context()))
    _, by_columns = assert_well_formed(app.lambda_handler(api_event(body=columns), lambda_context()))
    assert by_columns == {"mean": [r["mean"] for r in by_rows], "variance": [r["variance"] for r in by_rows]}


def test_base64_and_plain_bodies_get_the_same_answer(app):
    text = to_text({"x1": 0.3, "x2": 0.3, "x3": 0.3, "x4": 0.3})
    plain = app.lambda_handler(api_event(raw_body=text), lambda_context())
    encoded = app.lambda_handler(api_event(raw_body=text, base64_body=True), lambda_context())
    assert plain["body"] == encoded["body"]
    assert base64.b64decode(api_event(raw_body=text, base64_body=True)["body"]).decode() == text
