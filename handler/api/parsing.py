"""A /predict request turned into a float array, fast.

Valid input never touches pydantic: orjson parses it and a few type checks validate it. A refusal
is explained by the pydantic schemas in `handler.api.schemas`, imported only then, so the messages
come from the published contract and valid requests do not pay for it.

Every route that takes a body reads it with `load_body` under its own `BodyLimits`: the bytes, and the arrays
and objects (counted as `[` and `{` characters before parsing, since they are what a JSON parser allocates most
for), that the route's largest valid request needs. Points inside a larger body are parsed from the decoded
JSON (`RequestParser.parse_data`), never re-serialised: whatever the standard library read (lone surrogates,
integers of hundreds of digits, deep nesting), they are checked as they are.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from operator import itemgetter
from typing import Any, Literal

import numpy as np
import orjson

from handler.api.errors import MAX_ERROR_DETAILS, RequestError, json_type

_NUMBER = frozenset({int, float})  # exact types: bool is an int subclass and must not pass
Shape = Literal["point", "rows", "columns"]


@dataclass(frozen=True)
class BodyLimits:
    """What a route reads of a body: its bytes, and the arrays and objects and object members they may hold."""

    max_bytes: int
    max_containers: int  # arrays and objects: '[' and '{' characters
    max_members: int  # key-value pairs of objects: ':' characters


def body_limits(features: tuple[str, ...], max_points: int, max_body_bytes: int) -> BodyLimits:
    """The limits of a body carrying at most `max_points` points of these features, and a few fields beside them.

    A valid body holds at most one array or object per point and one member per feature of a point, and a handful
    more. Twice that and 1,000 are read, so that a refusal is still explained field by field, while what parsing
    costs stays bounded by what the largest valid body's does: a JSON parser spends most on containers (~100
    bytes each: 2.8 MB of `[[[[...]]]]` would be ~130 MB of lists) and on keys.
    """
    return BodyLimits(
        body_limit(features, max_points, max_body_bytes), 2 * max_points + 1_000, 2 * len(features) * max_points + 1_000
    )


def load_body(body: str | bytes, limits: BodyLimits) -> Any:
    """The JSON body, after checks that cost a fraction of parsing it: its size (413), then its structure (422).

    The structure is counted before parsing, as characters: '[' and '{' (at least one per array or object) and
    ':' (one per object member). Inside strings they count too; a valid request's strings are names, not text.
    """
    # Bytes, not characters: a str body counts in UTF-8 (4 bytes a character at most, so most need no encoding).
    size = (
        len(body)
        if isinstance(body, bytes) or 4 * len(body) <= limits.max_bytes
        else len(body.encode("utf-8", "surrogatepass"))
    )
    if size > limits.max_bytes:
        message = f"at most {limits.max_bytes} bytes are accepted"
        raise RequestError(413, "request body too large", [("body", message)])
    if len(body) > min(limits.max_containers, limits.max_members):  # a shorter body cannot hold more of either
        containers, members = _structure(body)
        if containers > limits.max_containers:
            message = (
                f"{containers} '[' and '{{' characters; at most {limits.max_containers} arrays and objects are read"
            )
            raise RequestError(422, "too many arrays and objects", [("body", message)])
        if members > limits.max_members:
            message = f"{members} ':' characters; at most {limits.max_members} object members (key: value) are read"
            raise RequestError(422, "too many object members", [("body", message)])
    return load_json(body)


@dataclass(frozen=True)
class PredictRequest:
    """Validated points as an (n, n_features) array, and the shape they came in."""

    points: np.ndarray
    shape: Shape

    def field_name(self, row: int, feature: str) -> str:
        return {"point": feature, "rows": f"[{row}].{feature}", "columns": f"{feature}[{row}]"}[self.shape]


@dataclass(frozen=True)
class PredictOptions:
    """Query-string options of /predict."""

    latent: bool = False  # ?variance=latent: the noise-free function's variance (GPy predict_noiseless)
    include_std: bool = False  # ?include=std
    include_interval: bool = False  # ?include=interval: 95% interval, mean -+ 1.96 std
    include_gradient: bool = False  # ?include=gradient: d mean / dx and d variance / dx per feature
    include_covariance: bool = False  # ?include=covariance: the batch's joint covariance matrix


INCLUDE_OPTIONS = ("std", "interval", "gradient", "covariance")


def parse_options(query: Mapping[str, str] | None, allowed: tuple[str, ...] = INCLUDE_OPTIONS) -> PredictOptions:
    """Read the known query parameters strictly; others are ignored, as HTTP APIs usually do."""
    query = query or {}
    variance = query.get("variance", "noisy")
    if variance not in ("noisy", "latent"):
        raise RequestError(
            422, "invalid query parameter", [("variance", f"expected noisy or latent, got {variance!r}")]
        )
    text = query.get("include", "").strip()
    include = {item.strip() for item in text.split(",")} if text else set()
    if unknown := include - set(allowed):
        unknown_list = ", ".join(repr(item) for item in sorted(unknown))
        expected = ", ".join(allowed)
        raise RequestError(422, "invalid query parameter", [("include", f"expected {expected}, got {unknown_list}")])
    return PredictOptions(
        latent=variance == "latent",
        include_std="std" in include,
        include_interval="interval" in include,
        include_gradient="gradient" in include,
        include_covariance="covariance" in include,
    )


def decode_body(body: str | None, is_base64_encoded: bool) -> str | bytes:
    """The request body; API Gateway base64-encodes bodies it treats as binary."""
    if not body:
        raise RequestError(400, "empty request body", [("body", "expected a JSON object or array")])
    if not is_base64_encoded:
        return body
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise RequestError(400, "body is not valid base64", [("body", str(exc))]) from exc


def _structure(body: str | bytes) -> tuple[int, int]:
    """The '[' and '{' characters of a body, and its ':' characters.

    numpy's comparisons: ~0.3 ms for a 10,000-row body, 5x faster than three `bytes.count`s.
    """
    octets = np.frombuffer(body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    containers = np.count_nonzero(octets == ord("[")) + np.count_nonzero(octets == ord("{"))
    return int(containers), int(np.count_nonzero(octets == ord(":")))


def load_json(body: str | bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses NaN and Infinity (not JSON) and integers beyond 64 bits; the standard library reads
    # them, so the schema can name the field, and otherwise says where the JSON breaks. It would also guess
    # UTF-16 and UTF-32 from bytes: JSON between systems is UTF-8 (RFC 8259, 8.1), so decode strictly first.
    try:
        return json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
    except json.JSONDecodeError as exc:
        details = [("body", f"{exc.msg} at line {exc.lineno} column {exc.colno}")]
        if looks_like := _not_json_kind(body):
            details.append(("body", f"JSON is expected (Content-Type: application/json); this looks like {looks_like}"))
        raise RequestError(400, "body is not valid JSON", details) from exc
    except UnicodeError as exc:  # invalid UTF-8, or a lone surrogate in a str body
        raise RequestError(400, "body is not valid UTF-8", [("body", str(exc)[:200])]) from exc
    except RecursionError as exc:
        raise RequestError(400, "body is not valid JSON", [("body", "JSON is nested too deeply")]) from exc
    except ValueError as exc:  # an integer of more than 4,300 digits (sys.get_int_max_str_digits)
        message = "a number has more digits than this service reads (4300); send finite floats"
        raise RequestError(422, "number too long", [("body", message)]) from exc


# Only the body's start is looked at to say what it resembles: the hint costs the same whatever the body's size.
_SNIFF_CHARS = 512
_FORM_FIELD = re.compile(r"[A-Za-z0-9_.~%+-]+=[^&=]*")


def _not_json_kind(body: str | bytes) -> str | None:
    """What a body that is not JSON resembles ("CSV", "a form (key=value&...)"), from its first characters."""
    head = body[:_SNIFF_CHARS]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    first_line = text.lstrip().split("\n", 1)[0].strip()
    if not first_line or first_line[0] in "[{":
        return None
    fields = first_line.split("&")
    complete = fields if len(text) < _SNIFF_CHARS else fields[:-1]  # the last may be cut short
    if "=" in first_line and complete and all(_FORM_FIELD.fullmatch(field) for field in complete):
        return "a form (key=value&...), as curl -d sends it"
    if "," in first_line or "\t" in first_line or ";" in first_line:
        return "CSV; a CSV file of points can be sent as an asynchronous job (POST /jobs)"
    return None


class RequestParser:
    """Parses /predict bodies for one model's features (in the manifest's order)."""

    def __init__(self, features: tuple[str, ...], *, max_batch_size: int, max_body_bytes: int) -> None:
        self.features = features
        self.max_batch_size = max_batch_size
        self.limits = body_limits(features, max_batch_size, max_body_bytes)
        self.max_body_bytes = self.limits.max_bytes
        self._feature_set = frozenset(features)
        # itemgetter of one key returns the value, not a 1-tuple
        self._get_features = itemgetter(*features) if len(features) > 1 else lambda row: (row[features[0]],)

    @cached_property
    def example(self) -> str:
        """A one-line point of this model's features, as an error message shows it (built once per parser)."""
        shown = self.features[:8]
        members = ", ".join(f'"{name[:40]}": 0.5' for name in shown)
        more = f", ... (all {len(self.features)} features)" if len(self.features) > len(shown) else ""
        return "{" + members + more + "}"

    @cached_property
    def columns_example(self) -> str:
        shown = self.features[:4]
        members = ", ".join(f'"{name[:40]}": [0.5, 0.6]' for name in shown)
        more = ", ..." if len(self.features) > len(shown) else ""
        return "{" + members + more + "}"

    def parse(self, body: str | bytes) -> PredictRequest:
        """A point object, an array of them, or an object of feature arrays; RequestError otherwise."""
        try:
            data = load_body(body, self.limits)
        except RequestError as exc:
            if exc.error != "body is not valid JSON":
                raise
            example = ("body", f"expected a JSON point such as {self.example}, an array of them, or columns")
            raise RequestError(exc.status_code, exc.error, [*exc.details, example]) from None
        return self.parse_data(data)

    def parse_data(self, data: Any) -> PredictRequest:
        """`parse` for JSON already decoded (by orjson or the standard library): the same checks, the same errors."""
        if isinstance(data, dict):
            if data and all(type(value) is list for value in data.values()):
                return self._columns(data)
            return self._point(data)
        if isinstance(data, list):
            return self._rows(data)
        raise RequestError(
            422, "wrong body type", [("body", f"expected a JSON object or array, got {json_type(data)}")]
        )

    def parse_nested(self, value: Any, prefix: str) -> PredictRequest:
        """Points inside a larger body (`{"points": ...}`): parsed as a /predict body, errors named under `prefix`."""
        try:
            return self.parse_data(value)
        except RequestError as exc:
            details = [(prefix if f == "body" else under(prefix, f), m) for f, m in exc.details]
            raise RequestError(exc.status_code, exc.error, details) from None

    def _point(self, data: dict[str, Any]) -> PredictRequest:
        if data.keys() == self._feature_set and all(type(value) in _NUMBER for value in data.values()):
            points = _finite_array([[data[name] for name in self.features]], 1, len(self.features))
            if points is not None:
                return PredictRequest(points, "point")
        raise self._invalid(data, "point", "invalid point")

    def _rows(self, data: list[Any]) -> PredictRequest:
        _check_count(len(data), self.max_batch_size)
        d = len(self.features)
        # map() and itemgetter keep these checks in C: a few ms per 10,000 points, against ~15 ms as Python loops.
        if set(map(type, data)) == {dict} and set(map(len, data)) == {d}:
            try:
                rows = list(map(self._get_features, data))  # every dict of the right size: no KeyError = exact keys
            except KeyError:
                rows = None
            if rows is not None and set(map(type, chain.from_iterable(rows))) <= _NUMBER:
                points = _finite_array(rows, len(rows), d)
                if points is not None:
                    return PredictRequest(points, "rows")
        raise self._invalid(data, "rows", "invalid point(s) in the batch")

    def _columns(self, data: dict[str, list[Any]]) -> PredictRequest:
        if data.keys() == self._feature_set:
            lengths = {len(column) for column in data.values()}
            if len(lengths) == 1:
                count = lengths.pop()
                _check_count(count, self.max_batch_size)
                if set(map(type, chain.from_iterable(data.values()))) <= _NUMBER:
                    points = _finite_array([data[name] for name in self.features], len(self.features), count)
                    if points is not None:
                        return PredictRequest(np.ascontiguousarray(points.T), "columns")
        raise self._invalid(data, "columns", "invalid columns")

    def _invalid(self, data: Any, shape: Shape, summary: str) -> RequestError:
        from handler.api.schemas import explain_invalid  # pydantic, only when a request is refused

        explained = explain_invalid(data, shape, self.features, limit=MAX_ERROR_DETAILS)
        details = [(detail.field, detail.message) for detail in explained]
        if not details:  # the schema accepts what the fast checks refused: a bug here, not the caller's
            raise AssertionError(f"fast validation refused a valid {shape} request")
        if len(details) >= MAX_ERROR_DETAILS:  # explaining stops there, so the total is not known
            summary = f"{summary}: {MAX_ERROR_DETAILS} or more problems, the first listed"
        else:
            summary = f"{summary}: {len(details)} problem(s)"
        if shape == "rows" and type(data[0]) is list:  # rows of bare numbers (a matrix): say the two shapes there are
            hint = (
                f"rows are objects keyed by feature name, e.g. [{self.example}], not arrays of numbers; "
                f"or send columns: {self.columns_example}"
            )
            details = [*details[: MAX_ERROR_DETAILS - 1], ("body", hint)]  # last, and always kept
        return RequestError(422, summary, details)


def body_limit(features: tuple[str, ...], max_batch_size: int, max_body_bytes: int) -> int:
    """The largest body accepted: what the largest batch can need, and never more than `max_body_bytes`.

    Parsing costs time and memory in proportion to the body, so a body is allowed what `max_batch_size`
    points of these features take as generously written JSON (each value: its name, a 25-character number,
    quotes, separators and indentation), not the payload limit: refusing a body then costs no more than
    answering the largest batch.
    """
    per_point = sum(len(name) + 64 for name in features) + 16
    return min(max_body_bytes, max_batch_size * per_point + 65_536)


def _check_count(count: int, max_batch_size: int) -> None:
    if count == 0:
        raise RequestError(422, "empty batch", [("body", "expected at least one point")])
    if count > max_batch_size:  # 422 like any schema violation (maxItems); 413 is for bodies over the byte limit
        message = (
            f"{count} points sent; at most {max_batch_size} per request: split them, or send them as an asynchronous "
            "job (POST /jobs, up to its JobMaxPoints, 10^7 by default), or use the Python client's predict(), which "
            "splits a batch"
        )
        raise RequestError(422, "batch too large", [("body", message)])


def _finite_array(values: list[Any], rows: int, columns: int) -> np.ndarray | None:
    """(rows x columns) floats from nested sequences already checked to hold ints and floats; None unless finite."""
    try:
        array = np.fromiter(chain.from_iterable(values), dtype=float, count=rows * columns).reshape(rows, columns)
    except OverflowError:  # an integer beyond float range
        return None
    return array if np.isfinite(array).all() else None


def outside_domain(request: PredictRequest, violations: list[Any], prefix: str = "") -> RequestError:
    """422 naming each point outside the model's domain (`manifest.domain_violations`), under `prefix` if nested."""
    details = []
    for v in violations:
        field = request.field_name(v.row, v.feature)
        details.append((under(prefix, field) if prefix else field, v.describe()))
    return RequestError(422, "point(s) outside the model's domain", details)


def under(prefix: str, field: str) -> str:
    """A field's path inside `prefix`: `points[3].name`, `points.name[3]`."""
    return f"{prefix}{field}" if field.startswith("[") else f"{prefix}.{field}"
