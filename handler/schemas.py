"""The API's contract as pydantic models: request, response and error bodies, and the model manifest.

These are the documentation (OpenAPI), the source of the precise messages for refused input and
the shape the training script writes. The request path does not import this module: valid input
is checked by `handler.parsing` without pydantic, which costs ~150 ms of every cold start, and
tests hold the two to the same verdicts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from handler.parsing import FEATURES, json_type

# Strict: booleans and numeric strings are refused rather than coerced; NaN and +-Infinity
# (which Python's json module accepts, and 1e400 becomes) are refused as well.
Feature = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# The batch limit (MAX_BATCH_SIZE) and the input domain (the manifest's bounds widened by DOMAIN_MARGIN)
# belong to a deployment: handler.openapi writes them into the document it serves; the app enforces them.
FeatureColumn = Annotated[list[Feature], Field(min_length=1)]


class PredictPoint(BaseModel):
    """One input point; every feature is required and nothing else is allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: Feature
    x2: Feature
    x3: Feature
    x4: Feature


PredictRows = Annotated[list[PredictPoint], Field(min_length=1)]


class PredictColumns(BaseModel):
    """A columnar batch: one array per feature, all of the same length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x1: FeatureColumn
    x2: FeatureColumn
    x3: FeatureColumn
    x4: FeatureColumn

    @model_validator(mode="after")
    def _same_length(self) -> Self:
        lengths = {name: len(getattr(self, name)) for name in FEATURES}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"feature arrays must have the same length, got {lengths}")
        return self


class Prediction(BaseModel):
    mean: float
    variance: float = Field(ge=0.0, description="Predictive variance: of an observation (default) or latent.")
    std: float | None = Field(default=None, description="sqrt(variance); with ?include=std.")
    lower_95: float | None = Field(default=None, description="mean - 1.96 std; with ?include=interval.")
    upper_95: float | None = Field(default=None, description="mean + 1.96 std; with ?include=interval.")


class ColumnarPrediction(BaseModel):
    mean: list[float]
    variance: list[float]
    std: list[float] | None = None
    lower_95: list[float] | None = None
    upper_95: list[float] | None = None


class ErrorDetail(BaseModel):
    field: str = Field(description="Where the problem is: `x1`, `[3].x2` in a batch, `x2[5]` in columns, or `body`.")
    message: str


class ErrorResponse(BaseModel):
    error: str
    details: list[ErrorDetail] = []


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model_loaded: bool


class HoldoutMetrics(BaseModel):
    n_points: int = Field(ge=1)
    rmse: float
    r2: float
    coverage_95: float = Field(ge=0.0, le=1.0, description="Share of hold-out points inside the 95% interval.")


class ModelManifest(BaseModel):
    """The JSON file beside the pickle: what the model expects and how good it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    model_type: str
    artifact: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    features: list[str] = Field(min_length=1)
    bounds: dict[str, tuple[float, float]]
    target: str
    n_train: int = Field(ge=1)
    holdout: HoldoutMetrics
    kernel: dict[str, Any]
    training: dict[str, Any]
    versions: dict[str, str]

    @model_validator(mode="after")
    def _bounds_cover_features(self) -> Self:
        if list(self.bounds) != self.features:
            raise ValueError("bounds must list exactly the features, in order")
        for name, (low, high) in self.bounds.items():
            if not low < high:
                raise ValueError(f"bounds of {name} must have lower < upper")
        return self


_REQUEST_SHAPES: dict[str, TypeAdapter[Any]] = {
    "point": TypeAdapter(PredictPoint),
    "rows": TypeAdapter(PredictRows),
    "columns": TypeAdapter(PredictColumns),
}


def explain_invalid(data: Any, shape: Literal["point", "rows", "columns"]) -> list[ErrorDetail]:
    """Why `data` is not a valid request of that shape, one detail per problem (empty if it is valid)."""
    try:
        _REQUEST_SHAPES[shape].validate_python(data)
    except ValidationError as exc:
        return [_detail(error) for error in exc.errors(include_url=False)]
    return []


def _detail(error: Any) -> ErrorDetail:
    loc = error["loc"]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    message = error["msg"]
    if error["type"] not in ("missing", "value_error"):
        message += f", got {describe_json(error['input'])}"
    return ErrorDetail(field=path or "body", message=message)


def describe_json(value: Any) -> str:
    """`boolean true`, `string "0.5"`, `number NaN`, `array`: what a caller sent, briefly."""
    if isinstance(value, (dict, list)):
        return json_type(value)
    import json

    return f"{json_type(value)} {json.dumps(value)[:40]}"
