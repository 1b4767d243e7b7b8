"""Request and response schemas of the API, and turning a raw request body into validated points."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

FEATURES: tuple[str, ...] = ("x1", "x2", "x3", "x4")
MAX_ERROR_DETAILS = 20  # a 10,000-point batch of bad rows must not produce a 10,000-line error

# Strict: booleans and numeric strings are refused rather than coerced; NaN and +-Infinity
# (which Python's json module accepts, and 1e400 becomes) are refused as well.
Feature = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class PredictPoint(BaseModel):
    """One input point; every feature is required and nothing else is allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: Feature
    x2: Feature
    x3: Feature
    x4: Feature


class PredictResponse(BaseModel):
    mean: float
    variance: float = Field(ge=0.0, description="Predictive variance of an observation (includes the noise).")


class ErrorDetail(BaseModel):
    field: str = Field(description="Where the problem is: `x1`, `[3].x2` for a batch item, or `body`.")
    message: str


class ErrorResponse(BaseModel):
    error: str
    details: list[ErrorDetail] = []


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool


_POINT = TypeAdapter(PredictPoint)
_POINTS = TypeAdapter(list[PredictPoint])


@dataclass
class RequestError(Exception):
    """A request the API refuses; becomes a 4xx JSON `ErrorResponse`."""

    status_code: int
    error: str
    details: list[ErrorDetail] = field(default_factory=list)

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(error=self.error, details=self.details[:MAX_ERROR_DETAILS])


@dataclass(frozen=True)
class PredictRequest:
    """Validated points as an (n, len(FEATURES)) array, and whether they came as a batch."""

    points: np.ndarray
    is_batch: bool

    def field_name(self, row: int, feature: str) -> str:
        return f"[{row}].{feature}" if self.is_batch else feature


def decode_body(body: str | None, is_base64_encoded: bool) -> str:
    """The request body as text; API Gateway base64-encodes bodies it treats as binary."""
    if not body:
        raise RequestError(
            400, "empty request body", [ErrorDetail(field="body", message="expected a JSON object or array")]
        )
    if not is_base64_encoded:
        return body
    try:
        return base64.b64decode(body, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise RequestError(400, "body is not valid base64-encoded UTF-8", [_body_detail(str(exc))]) from exc


def parse_predict_request(body: str, *, max_batch_size: int, max_body_bytes: int) -> PredictRequest:
    """Parse and validate a `/predict` body: one point object, or a non-empty array of them."""
    if len(body) > max_body_bytes:
        raise RequestError(
            413, "request body too large", [_body_detail(f"at most {max_body_bytes} bytes are accepted")]
        )
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestError(
            400, "body is not valid JSON", [_body_detail(f"{exc.msg} at line {exc.lineno} column {exc.colno}")]
        ) from exc
    except RecursionError as exc:
        raise RequestError(400, "body is not valid JSON", [_body_detail("JSON is nested too deeply")]) from exc

    if isinstance(data, dict):
        point = _validate(_POINT, data, is_batch=False)
        return PredictRequest(np.array([[getattr(point, name) for name in FEATURES]], dtype=float), is_batch=False)
    if isinstance(data, list):
        if not data:
            raise RequestError(422, "empty batch", [_body_detail("expected at least one point")])
        if len(data) > max_batch_size:
            raise RequestError(
                413, "batch too large", [_body_detail(f"{len(data)} points sent; at most {max_batch_size} per request")]
            )
        points = _validate(_POINTS, data, is_batch=True)
        return PredictRequest(
            np.array([[getattr(p, name) for name in FEATURES] for p in points], dtype=float), is_batch=True
        )
    raise RequestError(
        422, "wrong body type", [_body_detail(f"expected a JSON object or array of objects, got {_json_type(data)}")]
    )


def _validate(adapter: TypeAdapter[Any], data: Any, *, is_batch: bool) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        details = [_error_detail(error) for error in errors[:MAX_ERROR_DETAILS]]
        summary = f"{len(errors)} invalid field(s)" + (" in the batch" if is_batch else "")
        raise RequestError(422, summary, details) from exc


def _error_detail(error: Any) -> ErrorDetail:
    loc = error["loc"]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    message = error["msg"]
    if error["type"] != "missing":
        message += f", got {_describe(error['input'])}"
    return ErrorDetail(field=path or "body", message=message)


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _json_type(value)
    text = json.dumps(value)  # NaN and Infinity print as such
    return f"{_json_type(value)} {text[:40]}"


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


def _body_detail(message: str) -> ErrorDetail:
    return ErrorDetail(field="body", message=message)
