"""Request parsing (the fast path), the schema's explanations of refusals, and the settings."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from handler.api.errors import MAX_ERROR_DETAILS, RequestError
from handler.api.parsing import PredictOptions, RequestParser, decode_body, parse_options
from handler.api.schemas import explain_invalid
from handler.config import PROJECT_ROOT, SettingsError, load_settings
from tests.conftest import FEATURES

POINT = '{"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}'


def parse(body: str, max_batch_size: int = 100, max_body_bytes: int = 1_000_000):
    return RequestParser(FEATURES, max_batch_size=max_batch_size, max_body_bytes=max_body_bytes).parse(body)


def refusal(body: str, **limits) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(body, **limits)
    return caught.value


def test_a_single_point_becomes_one_row_in_feature_order():
    # given keys in another order, and an integer value
    request = parse('{"x4": 0.72, "x3": 1, "x2": 0.76, "x1": 0.51}')
    # then
    assert request.shape == "point"
    np.testing.assert_array_equal(request.points, [[0.51, 0.76, 1.0, 0.72]])
    assert request.field_name(0, "x2") == "x2"


def test_a_batch_keeps_its_order():
    request = parse(f'[{POINT}, {{"x1": 0, "x2": 0.1, "x3": 0.2, "x4": 0.3}}]')
    assert request.shape == "rows"
    np.testing.assert_array_equal(request.points, [[0.51, 0.76, 0.94, 0.72], [0, 0.1, 0.2, 0.3]])
    assert request.field_name(1, "x2") == "[1].x2"


def test_columns_become_rows():
    request = parse('{"x1": [0.1, 0.2], "x2": [0.3, 0.4], "x3": [0.5, 0.6], "x4": [0.7, 1]}')
    assert request.shape == "columns"
    np.testing.assert_array_equal(request.points, [[0.1, 0.3, 0.5, 0.7], [0.2, 0.4, 0.6, 1.0]])
    assert request.points.flags.c_contiguous
    assert request.field_name(1, "x2") == "x2[1]"


def test_a_base64_body_parses_as_bytes():
    body = decode_body(base64.b64encode(POINT.encode()).decode(), is_base64_encoded=True)
    np.testing.assert_array_equal(parse(body).points, [[0.51, 0.76, 0.94, 0.72]])


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ('{"x1": 0.5, "x2": 0.5, "x3": 0.5}', "x4", "Field required"),
        ('{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5, "x5": 1}', "x5", "Extra inputs are not permitted"),
        ('{"x1": "0.5", "x2": 0.5, "x3": 0.5, "x4": 0.5}', "x1", 'valid number, got string "0.5"'),
        ('{"x1": true, "x2": 0.5, "x3": 0.5, "x4": 0.5}', "x1", "valid number, got boolean true"),
        ('{"x1": null, "x2": 0.5, "x3": 0.5, "x4": 0.5}', "x1", "valid number, got null"),
        ('{"x1": [0.5], "x2": 0.5, "x3": 0.5, "x4": 0.5}', "x1", "valid number, got array"),
        ('{"x1": NaN, "x2": 0.5, "x3": 0.5, "x4": 0.5}', "x1", "finite number, got number NaN"),
        ('{"x1": 0.5, "x2": Infinity, "x3": 0.5, "x4": 0.5}', "x2", "finite number, got number Infinity"),
        ('{"x1": 0.5, "x2": 0.5, "x3": -Infinity, "x4": 0.5}', "x3", "finite number"),
        ('{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 1e400}', "x4", "finite number"),
        ('{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 1' + "0" * 400 + "}", "x4", "got number 1000"),
        (f'[{POINT}, {{"x1": 0.5, "x2": false, "x3": 0.5, "x4": 0.5}}]', "[1].x2", "got boolean"),
        ('[{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}, 7]', "[1]", "Input should be an object"),
        ('{"x1": [0.1, 0.2], "x2": [0.3, true], "x3": [0.5, 0.6], "x4": [0.7, 0.8]}', "x2[1]", "got boolean"),
        ('{"x1": [0.1, 0.2], "x2": [0.3], "x3": [0.5, 0.6], "x4": [0.7, 0.8]}', "body", "the same length"),
        ('{"x1": [0.1], "x2": [0.3], "x3": [0.5]}', "x4", "Field required"),
        ('{"x1": [], "x2": [], "x3": [], "x4": []}', "body", "at least one point"),
    ],
    ids=[
        "missing", "extra", "string", "boolean", "null", "array", "nan", "inf", "-inf", "overflow", "huge-int",
        "batch-boolean", "batch-not-object", "column-boolean", "column-lengths", "column-missing", "columns-empty",
    ],
)  # fmt: skip
def test_a_bad_field_is_named_with_its_problem(body: str, field: str, message: str):
    error = refusal(body)
    assert error.status_code == 422
    assert error.details[0][0] == field
    assert message in error.details[0][1]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("x1=0.5", 400, "Expecting value"),
        ('{"x1": 0.5, "x2": 0.', 400, "line 1 column"),
        (b'{"x1": "\xff"}', 400, "can't decode byte 0xff"),
        ('"a string"', 422, "got string"),
        ("0.5", 422, "got number"),
        ("null", 422, "got null"),
        ("[]", 422, "at least one point"),
        ("[" * 10_000 + "]" * 10_000, 400, "nested too deeply"),
        ("[" * 40_000 + "]" * 40_000, 422, "at most 21000 arrays and objects"),
        ("{" + ",".join(f'"k{i}":1' for i in range(90_000)) + "}", 422, "at most 81000 object members"),
        ("[[" * 10 + "]]" * 10, 422, "Input should be an object"),
    ],
    ids=[
        "form-encoded",
        "truncated",
        "not-utf8",
        "string",
        "number",
        "null",
        "empty-list",
        "deep-nesting",
        "too-many-arrays",
        "too-many-members",
        "nested-lists",
    ],
)
def test_a_malformed_body_is_refused_with_a_4xx(body, status: int, message: str):
    error = refusal(body, max_batch_size=10_000)
    assert error.status_code == status
    assert error.details
    assert message in error.details[0][1]


def test_a_batch_over_the_limit_is_refused_before_validation():
    error = refusal(f"[{','.join([POINT] * 11)}]", max_batch_size=10)
    assert error.status_code == 422
    [(field, message)] = error.details
    assert field == "body"
    assert message.startswith("11 points sent; at most 10 per request")
    # and it says where larger batches go: a job, or the client that splits them
    assert "POST /jobs" in message
    assert "predict()" in message
    columns = json.dumps({name: [0.5] * 11 for name in ("x1", "x2", "x3", "x4")})
    assert refusal(columns, max_batch_size=10).status_code == 422


def test_a_body_over_the_size_limit_is_refused():
    error = refusal(f"[{','.join([POINT] * 100)}]", max_body_bytes=2048)
    assert error.status_code == 413
    assert "at most 2048 bytes" in error.details[0][1]


def test_a_batch_of_bad_points_reports_each_with_its_index_but_not_all_of_them():
    # given 50 points, each missing x2
    body = "[" + ",".join(['{"x1": 0.1, "x3": 0.1, "x4": 0.1}'] * 50) + "]"
    # when
    error = refusal(body)
    # then
    assert error.error == "invalid point(s) in the batch: 20 or more problems, the first listed"
    assert [d["field"] for d in error.body()["details"]] == [f"[{i}].x2" for i in range(MAX_ERROR_DETAILS)]


@pytest.mark.parametrize(
    "data",
    [
        {"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5},
        {"x1": 0, "x2": 1, "x3": -3, "x4": 10**15},
        [{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}] * 3,
        {"x1": [0.5], "x2": [0.5], "x3": [0.5], "x4": [1]},
    ],
)
def test_what_the_fast_path_accepts_the_schema_accepts_too(data):
    request = parse(json.dumps(data))
    assert explain_invalid(data, request.shape, FEATURES) == []


def test_decode_body_reads_base64_as_api_gateway_sends_it():
    assert decode_body(base64.b64encode(POINT.encode()).decode(), is_base64_encoded=True) == POINT.encode()
    assert decode_body(POINT, is_base64_encoded=False) == POINT


@pytest.mark.parametrize(("body", "is_base64"), [(None, False), ("", False), ("not base64!", True)])
def test_decode_body_refuses_empty_or_broken_bodies(body, is_base64):
    with pytest.raises(RequestError) as caught:
        decode_body(body, is_base64)
    assert caught.value.status_code == 400
    assert caught.value.details[0][0] == "body"


@pytest.mark.parametrize(
    ("query", "options"),
    [
        (None, PredictOptions()),
        ({"foo": "bar"}, PredictOptions()),
        ({"variance": "latent"}, PredictOptions(latent=True)),
        ({"variance": "noisy", "include": "std"}, PredictOptions(include_std=True)),
        ({"include": "interval, std"}, PredictOptions(include_std=True, include_interval=True)),
    ],
)
def test_query_options(query, options):
    assert parse_options(query) == options


@pytest.mark.parametrize(
    ("query", "field"), [({"variance": "noiseless"}, "variance"), ({"include": "std,ci"}, "include")]
)
def test_a_bad_query_option_is_refused_naming_it(query, field):
    with pytest.raises(RequestError) as caught:
        parse_options(query)
    assert caught.value.status_code == 422
    assert caught.value.details[0][0] == field


def test_settings_default_to_the_packaged_artifact():
    settings = load_settings({})
    assert settings.resolved_model_path == PROJECT_ROOT / "model_artifacts" / "pretrained-model.npz"
    assert settings.max_batch_size == 10_000


def test_settings_read_the_environment():
    settings = load_settings({"MODEL_PATH": "/opt/model.pkl", "MAX_BATCH_SIZE": "500", "DOMAIN_MARGIN": "0"})
    assert settings.resolved_model_path == Path("/opt/model.pkl")
    assert settings.max_batch_size == 500
    assert settings.domain_margin == 0.0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MAX_BATCH_SIZE": "lots"}, "MAX_BATCH_SIZE: expected an integer, got 'lots'"),
        ({"MAX_BATCH_SIZE": "0"}, "MAX_BATCH_SIZE: must be between 1 and 50000, got 0"),
        ({"DOMAIN_MARGIN": "-1"}, "DOMAIN_MARGIN: must be between 0 and 10, got -1"),
    ],
)
def test_an_invalid_setting_fails_at_start_up_naming_the_variable(environ, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ)


@pytest.mark.parametrize(
    "body",
    [
        '{"x1": null, "x2": 0.5, "x3": 0.5, "x4": 0.5}',
        '[{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}, 7, "a", null, []]',
        '{"x1": [0.5, 0.2], "x2": [0.5], "x3": [0.5], "x4": [0.5]}',
    ],
    ids=["null", "rows-not-objects", "unequal-columns"],
)
def test_messages_speak_json_not_python_or_pydantic(body: str):
    # Regression: "got null null", pydantic's "Value error, " prefix and the class name PredictPoint showed through.
    messages = " | ".join(message for _, message in refusal(body).details)
    for leak in ("null null", "Value error", "PredictPoint", "PredictColumns", "dictionary", "instance of"):
        assert leak not in messages, messages


def test_a_model_with_one_feature_parses_every_shape():
    parser = RequestParser(("t",), max_batch_size=10, max_body_bytes=10_000)
    assert parser.parse('{"t": 1.5}').points.tolist() == [[1.5]]
    assert parser.parse('[{"t": 1}, {"t": 2}]').points.tolist() == [[1.0], [2.0]]
    assert parser.parse('{"t": [1, 2, 3]}').points.tolist() == [[1.0], [2.0], [3.0]]
    with pytest.raises(RequestError) as caught:
        parser.parse('[{"t": 1}, {"u": 2}]')
    assert caught.value.details[0][0] == "[1].t"


@pytest.mark.parametrize(
    "body",
    [
        POINT,
        f"[{POINT}, {POINT}]",
        '{"x1": [0.1, 0.2], "x2": [0.3, 0.4], "x3": [0.5, 0.6], "x4": [0.7, 1]}',
        '{"x1": 0.5, "x2": "a", "x3": 0.5}',
        '[{"x1": 0.5}, 7]',
        '{"x1": 1' + "0" * 400 + ', "x2": 0.5, "x3": 0.5, "x4": 0.5}',
    ],
    ids=["point", "rows", "columns", "bad-point", "bad-rows", "400-digit-integer"],
)
def test_decoded_json_parses_as_its_text_does(body: str):
    # given a body, and the same body already decoded (as /sample and /jobs hold their points)
    parser = RequestParser(FEATURES, max_batch_size=100, max_body_bytes=1_000_000)
    # when
    outcomes = []
    for parse_one in (lambda: parser.parse(body), lambda: parser.parse_data(json.loads(body))):
        try:
            outcomes.append(parse_one().points.tolist())
        except RequestError as exc:
            outcomes.append(exc)
    # then the same points, or the same refusal
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"\ud800": 1}, "points.\\ud800"),
        ([{"x1": "\ud800", "x2": 0.5, "x3": 0.5, "x4": 0.5}], "points[0].x1"),
        ([{"x1": 10**400, "x2": 0.5, "x3": 0.5, "x4": 0.5}], "points[0].x1"),
        ([{"x1": json.loads("[" * 260 + "0.5" + "]" * 260), "x2": 0.5, "x3": 0.5, "x4": 0.5}], "points[0].x1"),
        ("a string", "points"),
    ],
    ids=["lone-surrogate-key", "lone-surrogate-value", "400-digit-integer", "nested-260-deep", "string"],
)
def test_nested_points_are_checked_as_decoded_never_re_encoded(value, field: str):
    # given points that orjson could not write back (surrogates, huge integers, nesting beyond 255)
    parser = RequestParser(FEATURES, max_batch_size=100, max_body_bytes=1_000_000)
    # when
    with pytest.raises(RequestError) as refused:
        parser.parse_nested(value, "points")
    # then a 422 naming the field under the prefix, in a body that can be written
    assert refused.value.status_code == 422
    body = refused.value.body()
    assert field in [detail["field"] for detail in body["details"]]
    json.dumps(body, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize(
    ("body", "looks_like"),
    [
        ("x1,x2,x3,x4\n0.51,0.76,0.94,0.72\n", "CSV"),
        ("0.51;0.76;0.94;0.72", "CSV"),
        ("x1=0.51&x2=0.76&x3=0.94&x4=0.72", "a form"),
        (b"x1=0.51&x2=0.76", "a form"),
        ("x1=0.51&x2=" + "7" * 5_000, "a form"),  # longer than what is looked at
        ("hello", None),
        ("{'x1': 0.51}", None),  # Python, not CSV
    ],
    ids=["csv", "csv-semicolons", "form", "form-bytes", "long-form", "word", "python-dict"],
)
def test_a_body_that_is_not_json_says_json_is_expected_with_this_models_example(body, looks_like: str | None):
    # when
    error = refusal(body)
    # then it is still a 400 saying where the JSON breaks, and then how to send it
    assert (error.status_code, error.error) == (400, "body is not valid JSON")
    messages = [message for _, message in error.details]
    assert "at line 1 column" in messages[0]
    example = '{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}'
    assert messages[-1] == f"expected a JSON point such as {example}, an array of them, or columns"
    json.loads(example)  # the example is JSON, of this model's features
    sniffed = [m for m in messages if m.startswith("JSON is expected (Content-Type: application/json)")]
    if looks_like is None:
        assert sniffed == []
    else:
        [said] = sniffed
        assert f"this looks like {looks_like}" in said


def test_the_example_is_built_once_and_stays_short_for_a_wide_model():
    # given a model of 5,000 long feature names
    features = tuple(f"feature_{i:04d}_" + "x" * 60 for i in range(5_000))
    parser = RequestParser(features, max_batch_size=10, max_body_bytes=10_000_000)
    # when
    error = refusal_of(parser, "a,b\n1,2")
    # then the example names the first features, says how many there are, and fits an error message
    example = error.details[-1][1]
    assert "(all 5000 features)" in example
    assert len(example) < 1_000
    assert parser.example is parser.example  # cached: no per-request (or per-element) cost


def refusal_of(parser: RequestParser, body: str) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parser.parse(body)
    return caught.value


@pytest.mark.parametrize("rows", [1, 2, 10_000])
def test_an_array_of_arrays_says_rows_are_objects_or_columns_with_examples(rows: int):
    # given a matrix of numbers, as numpy's tolist() gives it
    body = json.dumps([[0.51, 0.76, 0.94, 0.72]] * rows)
    # when
    error = refusal(body, max_batch_size=10_000)
    # then each row is still named, and the last detail (always kept) shows both shapes with this model's features
    assert error.status_code == 422
    assert error.details[0] == ("[0]", "Input should be an object, got array")
    assert len(error.details) <= MAX_ERROR_DETAILS
    field, hint = error.details[-1]
    assert field == "body"
    assert '[{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}]' in hint
    assert '{"x1": [0.5, 0.6], "x2": [0.5, 0.6], "x3": [0.5, 0.6], "x4": [0.5, 0.6]}' in hint
    expected_problems = min(rows, MAX_ERROR_DETAILS)
    assert str(expected_problems) in error.error, "the count is of the rows' problems, not of the hint"
