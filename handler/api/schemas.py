"""The API's contract as pydantic models: request, response and error bodies, and the model manifest.

These are the documentation (OpenAPI), the source of the precise messages for refused input and
the shape the training script writes. The request path does not import this module: valid input
is checked by `handler.api.parsing` without pydantic, which costs ~150 ms of every cold start, and
tests hold the two to the same verdicts.
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from typing import Annotated, Any, Literal, NamedTuple, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, model_validator

from handler.api.errors import MAX_ERROR_DETAILS, encodable, json_type
from handler.gp.artifact import MAX_UNIT_CHARACTERS, NAME_PATTERN, check_limits, check_units

# Strict: booleans and numeric strings are refused rather than coerced; NaN and +-Infinity
# (which Python's json module accepts, and 1e400 becomes) are refused as well.
Feature = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# The batch limit (MAX_BATCH_SIZE, lowered for a model whose batch would not fit its time budget) and the input
# domain (the manifest's bounds widened by DOMAIN_MARGIN, within its physical limits: `Manifest.domain`) belong to
# a deployment and its model: handler.api.openapi writes them into the document it serves; the app enforces them.
FeatureColumn = Annotated[list[Feature], Field(min_length=1)]
Name = Annotated[str, Field(pattern=NAME_PATTERN.pattern)]


class RequestSchemas(NamedTuple):
    """The /predict body's three shapes for one model's features."""

    point: type[BaseModel]
    rows: Any  # list[point], at least one
    columns: type[BaseModel]


def _same_length(self: Any) -> Any:
    lengths = {name: len(values) for name, values in self.model_dump(by_alias=True).items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"feature arrays must have the same length, got {lengths}")
    return self


@cache
def request_schemas(features: tuple[str, ...]) -> RequestSchemas:
    """Pydantic models of a point and of columns with exactly these features (by alias: any valid name)."""
    config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)
    point = create_model(  # type: ignore[call-overload]
        "PredictPoint",
        __config__=config,
        __doc__="One input point; every feature is required and nothing else is allowed.",
        **{f"feature_{i}": (Feature, Field(alias=name)) for i, name in enumerate(features)},
    )
    columns = create_model(  # type: ignore[call-overload]
        "PredictColumns",
        __config__=config,
        __doc__="A columnar batch: one array per feature, all of the same length.",
        __validators__={"same_length": model_validator(mode="after")(_same_length)},
        **{f"feature_{i}": (FeatureColumn, Field(alias=name)) for i, name in enumerate(features)},
    )
    return RequestSchemas(point, Annotated[list[point], Field(min_length=1)], columns)  # type: ignore[valid-type]


class Prediction(BaseModel):
    """One output's prediction at one point."""

    mean: float
    variance: float = Field(ge=0.0, description="Predictive variance: of an observation (default) or latent.")
    std: float | None = Field(default=None, description="sqrt(variance); with ?include=std.")
    lower_95: float | None = Field(default=None, description="mean - 1.96 std; with ?include=interval.")
    upper_95: float | None = Field(default=None, description="mean + 1.96 std; with ?include=interval.")
    mean_gradient: dict[str, float] | None = Field(
        default=None, description="d mean / d feature, by feature name; with ?include=gradient."
    )
    variance_gradient: dict[str, float] | None = Field(
        default=None, description="d variance / d feature (the same for noisy and latent); with ?include=gradient."
    )


class ColumnarPrediction(BaseModel):
    """One output's predictions at a batch of points, as columns."""

    mean: list[float]
    variance: list[float]
    std: list[float] | None = None
    lower_95: list[float] | None = None
    upper_95: list[float] | None = None
    mean_gradient: dict[str, list[float]] | None = None
    variance_gradient: dict[str, list[float]] | None = None
    covariance: list[list[float]] | None = Field(
        default=None,
        description="The batch's joint posterior covariance (n x n, of observations or latent as `variance` says); "
        "with ?include=covariance, which answers as columns whatever the request's shape.",
    )


class ErrorDetail(BaseModel):
    field: str = Field(
        description="Where the problem is: a feature (`name`), `[3].name` in a batch of rows, `name[3]` in columns, "
        "a query parameter, `body`, `method`, `path` or `model`."
    )
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
    coverage_95: float = Field(ge=0.0, le=1.0, description="Share of the points inside the 95% interval.")


# A physical limit's end: a finite number, or null where that side is open.
LimitEnd = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]
Unit = Annotated[str, Field(min_length=1, max_length=MAX_UNIT_CHARACTERS)]


class PosteriorArray(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: list[int]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class PosteriorDescription(BaseModel):
    """The arrays of a posterior file (docs/model-format.md), each checked before it is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inference: Literal["exact", "sparse"]
    arrays: dict[str, PosteriorArray]


class ModelManifest(BaseModel):
    """The JSON file beside the pickle: what the model expects and how good it is (scripts/package_model.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[2, 3] = Field(
        default=3, description="2: a pickle, before posterior files; 3: either format."
    )
    format: Literal["npz", "pickle"] = Field(
        default="npz", description="npz: a posterior file, served with numpy alone; pickle: served through GPy."
    )
    name: Name
    version: str = Field(min_length=1)
    description: str = ""
    model_type: str
    artifact: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    features: list[Name] = Field(min_length=1, description="Input names, in the model's column order.")
    outputs: list[Name] = Field(min_length=1, description="Output names, in the model's column order.")
    bounds: dict[str, tuple[float, float]] = Field(description="Each feature's training range [lower, upper].")
    n_train: int = Field(ge=1)
    holdout: dict[str, HoldoutMetrics] | None = Field(description="Accuracy on held-out points, per output.")
    leave_one_out: dict[str, HoldoutMetrics] | None = Field(
        default=None,
        exclude_if=lambda metrics: metrics is None,
        description="Accuracy on the training points, each predicted from the others (closed form: leave-one-out), "
        "per output; absent where the model's inference has no closed form or the manifest predates it.",
    )
    limits: dict[Name, tuple[LimitEnd, LimitEnd]] | None = Field(
        default=None,
        exclude_if=lambda limits: limits is None,
        description="Physical limits [low, high] of some features (null: open on that side), never widened: the "
        "service answers within the training bounds widened by DOMAIN_MARGIN and within these.",
    )
    units: dict[Name, Unit] | None = Field(
        default=None,
        exclude_if=lambda units: units is None,
        description="A unit per feature or output (any subset), for labels: `m`, `m3/yr`, `1` for a fraction.",
    )
    kernel: dict[str, Any]
    training: dict[str, Any] = {}
    versions: dict[str, str]
    posterior: PosteriorDescription | None = Field(
        default=None,
        exclude_if=lambda posterior: posterior is None,
        description="The posterior file's arrays (format npz).",
    )
    published_training_data: Literal["inputs", "inputs_and_outputs"] | None = Field(
        default=None,
        exclude_if=lambda published: published is None,
        description="What GET /model/training-data serves of the points the model was fitted on: their inputs, or "
        "their inputs and outputs (package_model.py --publish-training-data); absent: nothing, and it answers 404.",
    )
    predict_through_gpy: str | None = Field(
        default=None,
        exclude_if=lambda reason: reason is None,  # absent, not null: manifests written before it stay as they are
        min_length=1,
        description="Why this model predicts through GPy's own predict rather than the numpy/BLAS fast path (set "
        "by packaging when the fast path differs from GPy by more than rounding explains); absent: the fast path.",
    )

    @model_validator(mode="before")
    @classmethod
    def _pickle_before_version_3(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_version") == 2 and "format" not in data:
            return {**data, "format": "pickle"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for kind, names in (("features", self.features), ("outputs", self.outputs)):
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be distinct")
        if list(self.bounds) != self.features:
            raise ValueError("bounds must list exactly the features, in order")
        for name, (low, high) in self.bounds.items():
            if not low < high:
                raise ValueError(f"bounds of {name} must have lower < upper")
        for kind, metrics in (("holdout", self.holdout), ("leave_one_out", self.leave_one_out)):
            if metrics is not None and list(metrics) != self.outputs:
                raise ValueError(f"{kind} must list exactly the outputs, in order")
        # The loader's checks (handler.gp.artifact), so that what packaging writes is what the function reads
        bounds = np.array(list(self.bounds.values()), dtype=float)
        check_limits(
            None if self.limits is None else {k: list(v) for k, v in self.limits.items()}, tuple(self.features), bounds
        )
        check_units(self.units, (*self.features, *self.outputs))
        if (self.format == "npz") != (self.posterior is not None):
            raise ValueError("a posterior file (format npz) and only one has a posterior description")
        if self.schema_version == 2 and self.format != "pickle":
            raise ValueError("schema_version 2 manifests describe pickles")
        if self.posterior is not None and self.published_training_data is not None:
            wanted = {"training_inputs"} | ({"training_outputs"} if self.published_training_data != "inputs" else set())
            if not wanted <= set(self.posterior.arrays):
                raise ValueError(f"published_training_data needs the posterior arrays {sorted(wanted)}")
        return self


@cache
def response_schemas(outputs: tuple[str, ...]) -> tuple[type[BaseModel], type[BaseModel]]:
    """The answer for a point and for columns: flat for one output, one object per named output otherwise."""
    if len(outputs) == 1:
        return Prediction, ColumnarPrediction
    shapes = []
    for name, inner, doc in (
        ("Predictions", Prediction, "Each output's prediction at one point."),
        ("ColumnarPredictions", ColumnarPrediction, "Each output's predictions at a batch of points, as columns."),
    ):
        fields = {f"output_{i}": (inner, Field(alias=output)) for i, output in enumerate(outputs)}
        shapes.append(create_model(name, __doc__=doc, **fields))  # type: ignore[call-overload]
    return shapes[0], shapes[1]


def explain_invalid(
    data: Any, shape: Literal["point", "rows", "columns"], features: tuple[str, ...], limit: int = 20
) -> list[ErrorDetail]:
    """Why `data` is not a valid request of that shape: at most `limit` problems (none if it is valid).

    The work is bounded by `limit`, not by the body: what is handed to pydantic is only the offending keys,
    rows and values, found by cheap checks that stop once `limit` problems are found.
    """
    if shape == "point":
        return _explain_object(data, features, limit, ())
    if shape == "rows":
        if not data:
            return _explain_whole(data, features, "rows")
        details: list[ErrorDetail] = []
        for index, row in enumerate(data):
            if not _valid_point(row, features):
                details += _explain_object(row, features, limit - len(details), (index,))
                if len(details) >= limit:
                    break
        return details
    return _explain_columns(data, features, limit)


def _finite_number(value: Any) -> bool:
    try:
        return type(value) in (int, float) and math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def _valid_point(row: Any, features: tuple[str, ...]) -> bool:
    return type(row) is dict and len(row) == len(features) and all(_finite_number(row.get(f, None)) for f in features)


def _explain_object(data: Any, features: tuple[str, ...], limit: int, prefix: tuple[Any, ...]) -> list[ErrorDetail]:
    """A point's problems: its features and at most `limit` of its unknown keys go to pydantic."""
    if type(data) is not dict:  # pydantic only says it is not an object: show it no more than that
        stand_in: Any = [] if isinstance(data, list) else data[:40] if isinstance(data, str) else data
        return _explain_whole(stand_in, features, "point", prefix)
    kept = {name: data[name] for name in features if name in data}
    unknown = (key for key in data if key not in kept)
    # pydantic refuses a key it cannot encode without saying which: it sees the key escaped, and names it
    kept |= {encodable(key): data[key] for key in itertools.islice(unknown, limit)}
    return _explain_whole(kept, features, "point", prefix)[:limit]


def _explain_columns(data: dict[str, Any], features: tuple[str, ...], limit: int) -> list[ErrorDetail]:
    """Columns' problems: keys, then lengths, then the first `limit` bad values, each explained on its own."""
    present = [name for name in features if name in data]
    unknown = list(itertools.islice((key for key in data if key not in features), limit))
    if len(present) != len(features) or unknown:
        kept = {encodable(key): data[key][:1] for key in (*present, *unknown)}
        return [d for d in _explain_whole(kept, features, "columns") if "[" not in d.field][:limit]
    lengths = {name: len(data[name]) for name in features}
    if len(set(lengths.values())) > 1:
        return [ErrorDetail(field="body", message=f"feature arrays must have the same length, got {lengths}")]
    if not any(lengths.values()):
        return _explain_whole({name: [] for name in features}, features, "columns")[:limit]
    details: list[ErrorDetail] = []
    value_adapter = _adapter(features, "value")
    for name in features:
        for index, value in enumerate(data[name]):
            if _finite_number(value):
                continue
            try:
                value_adapter.validate_python(value)
                details.append(ErrorDetail(field=f"{name}[{index}]", message="Input should be a finite number"))
            except ValidationError as exc:
                details += [_detail({**e, "loc": (name, index)}) for e in exc.errors(include_url=False)]
            if len(details) >= limit:
                return details[:limit]
    return details


def _explain_whole(data: Any, features: tuple[str, ...], shape: str, prefix: tuple[Any, ...] = ()) -> list[ErrorDetail]:
    """pydantic's own verdict on a small, already trimmed input."""
    try:
        _adapter(features, shape).validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        return [_detail({**error, "loc": (*prefix, *error["loc"])}) for error in errors]
    return []


@cache
def _adapter(features: tuple[str, ...], shape: str) -> TypeAdapter[Any]:
    if shape == "value":
        return TypeAdapter(Feature)
    return TypeAdapter(getattr(request_schemas(features), shape))


# pydantic's wording where it names our classes or its own machinery
_MESSAGES = {
    "model_type": "Input should be an object",
    "model_attributes_type": "Input should be an object",
    "dict_type": "Input should be an object",
}


def validation_details(exc: ValidationError) -> list[ErrorDetail]:
    """A pydantic error's first MAX_ERROR_DETAILS problems, named by field path."""
    return [_detail(error) for error in exc.errors()[:MAX_ERROR_DETAILS]]


def _detail(error: Any) -> ErrorDetail:
    loc = error["loc"]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    message = _MESSAGES.get(error["type"], error["msg"]).removeprefix("Value error, ")
    if error["type"] not in ("missing", "value_error"):
        message += f", got {describe_json(error['input'])}"
    return ErrorDetail(field=path or "body", message=message)


def describe_json(value: Any) -> str:
    """`boolean true`, `string "0.5"`, `number NaN`, `null`, `array`: what a caller sent, briefly."""
    if value is None or isinstance(value, (dict, list)):
        return json_type(value)
    import json

    shown = value[:40] if isinstance(value, str) else value  # not all of a long string
    return f"{json_type(value)} {json.dumps(shown)[:40]}"


class DeploymentLimits(BaseModel):
    max_batch_size: int = Field(
        description="Most points per POST /predict (and V2 infer) on this model: MAX_BATCH_SIZE, lowered where a "
        "batch's estimated cost on this model exceeds the function's time budget."
    )
    max_batch_size_with_gradient: int | None = Field(
        None, description="Most points per POST /predict with include=gradient, where lower than max_batch_size."
    )
    max_job_points: int | None = Field(description="Most points per job; null where jobs are not deployed.")
    job_chunk_points: int | None = Field(
        description="Points a job worker predicts per message on this model (at most JOB_CHUNK_POINTS)."
    )


class PackagedAs(BaseModel):
    name: str
    version: str


class ModelDescription(ModelManifest):
    """GET /model: the manifest, and the limits of this deployment (for clients that split their work).

    The manifest's own `limits` (physical limits of the features) are served as `physical_limits`: `limits` named
    this deployment's before manifests had any.
    """

    limits: DeploymentLimits  # type: ignore[assignment]
    physical_limits: dict[Name, tuple[LimitEnd, LimitEnd]] | None = Field(
        default=None,
        exclude_if=lambda limits: limits is None,
        description="The manifest's `limits`: physical limits [low, high] of some features (null: open on that "
        "side), never widened; absent where the manifest gives none.",
    )
    packaged_as: PackagedAs | None = Field(
        default=None,
        description="A registry version's: the name and version its manifest was packaged with (`name` is then the "
        "registry model's); absent for the packaged model.",
    )


def training_data_schema(features: tuple[str, ...], outputs: tuple[str, ...]) -> type[BaseModel]:
    """GET /model/training-data's answer for these features and outputs."""
    inputs = create_model(  # type: ignore[call-overload]
        "TrainingInputs",
        __doc__="Each feature's values at the training points, in the same order for every feature.",
        **{f"feature_{i}": (list[float], Field(alias=name)) for i, name in enumerate(features)},
    )
    values = create_model(  # type: ignore[call-overload]
        "TrainingOutputs",
        __doc__="Each output's observed values at the training points, in the inputs' order.",
        **{f"output_{i}": (list[float], Field(alias=name)) for i, name in enumerate(outputs)},
    )
    return create_model(
        "TrainingData",
        __doc__="The points the model was fitted on, as far as its manifest publishes them.",
        published=(Literal["inputs", "inputs_and_outputs"], Field(description="The manifest's choice.")),
        n_points=(int, Field(ge=1)),
        inputs=(inputs, ...),
        outputs=(values | None, Field(description="null where only the inputs are published.")),
    )


# --- asynchronous jobs --------------------------------------------------------------------------------

# Strict as a point's features are: a bound sent as "0.5" is refused, not read as a number.
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class DesignSpec(BaseModel):
    """A design made server-side: scipy's scrambled Sobol' or Halton sequence, a Latin hypercube, or a full grid."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["sobol", "lhs", "halton", "grid"]
    n: Annotated[int, Field(strict=True, ge=1, description="Points; a grid takes the largest levels**d <= n.")]
    seed: Annotated[int | None, Field(strict=True, ge=0, lt=2**63, description="Same seed, same points.")] = None
    bounds: Annotated[
        dict[str, tuple[FiniteNumber, FiniteNumber]] | None,
        Field(description="[low, high] per feature (any subset); the others span the model's training bounds."),
    ] = None


class UploadSpec(BaseModel):
    """Points in a file: the answer holds a URL to PUT it to, then POST /jobs/{id}/start."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["csv", "npy"] = Field(
        description="csv: a header of the feature names (any order), one point per line. "
        "npy: a 2-D float array, columns in the model's feature order."
    )


class JobSubmission(BaseModel):
    """Exactly one of: `points` (as /predict takes a batch), `design`, `upload`."""

    model_config = ConfigDict(extra="forbid")
    points: Any = None
    design: DesignSpec | None = None
    upload: UploadSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [name for name in ("points", "design", "upload") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of points, design, upload; got {len(given) or 'none'}")
        return self


def submission_errors(data: Any, features: tuple[str, ...]) -> tuple[JobSubmission | None, list[ErrorDetail]]:
    """The submission, or why not (at most MAX_ERROR_DETAILS reasons).

    pydantic is handed the body trimmed to what it can report on: at each level the known fields and the first
    MAX_ERROR_DETAILS unknown ones, and of a design's bounds the model's features and the first MAX_ERROR_DETAILS
    other names (refused by name later). A valid submission is unchanged; a body of 100,000 unknown keys or
    bounds costs what 20 do. `points` is not looked into: the request parser reads it.
    """
    try:
        return JobSubmission.model_validate(_trimmed_submission(data, features)), []
    except ValidationError as exc:
        return None, [_detail(error) for error in exc.errors()[:MAX_ERROR_DETAILS]]


def _trimmed_submission(data: Any, features: tuple[str, ...]) -> Any:
    if type(data) is not dict:
        return data
    submission = _trimmed(data, tuple(JobSubmission.model_fields))
    if type(design := submission.get("design")) is dict:
        design = _trimmed(design, tuple(DesignSpec.model_fields))
        if type(bounds := design.get("bounds")) is dict:
            design = {**design, "bounds": _trimmed(bounds, features)}
        submission = {**submission, "design": design}
    if type(upload := submission.get("upload")) is dict:
        submission = {**submission, "upload": _trimmed(upload, tuple(UploadSpec.model_fields))}
    return submission


def _trimmed(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """`data`'s known keys, then its first MAX_ERROR_DETAILS others; `data` itself when it has no others."""
    if len(data) <= len(known) and all(key in known for key in data):
        return data
    kept = {key: data[key] for key in known if key in data}
    unknown = itertools.islice((key for key in data if key not in known), MAX_ERROR_DETAILS)
    return kept | {encodable(key): data[key] for key in unknown}  # escaped, so that pydantic can name them


class JobProgress(BaseModel):
    chunks_done: int
    chunks: int | None = Field(description="Known once the points are (inline: at once; designs and uploads: planned).")
    points_done: int
    points: int | None
    fraction: float


class JobUpload(BaseModel):
    method: Literal["PUT"]
    url: str = Field(description="Presigned S3 URL: PUT the file there (curl -T points.csv URL).")
    format: Literal["csv", "npy"]
    then: str = Field(description="What to call once the file is uploaded.")
    expires_in_seconds: int


class JobResultsPart(BaseModel):
    """One part of a Parquet job's results: a whole Parquet file of rows first_row to first_row + rows - 1."""

    index: int
    url: str = Field(description="Presigned S3 URL of the part.")
    rows: int
    first_row: int


class JobResultsLink(BaseModel):
    """Where a SUCCEEDED job's results are: one file (csv, npy), or a Parquet dataset of parts, in order."""

    url: str | None = Field(None, description="Presigned S3 URL of the results file (csv, npy).")
    format: Literal["csv", "npy", "parquet"]
    columns: list[str] = Field(description="The features, then OUTPUT_mean, OUTPUT_variance (and std, interval).")
    rows: int = Field(description="One per point, in input order.")
    layout: Literal["dataset"] | None = Field(None, description="parquet: the results are a dataset of parts.")
    parts_total: int | None = Field(None, description="parquet: how many parts.")
    parts: list[JobResultsPart] | None = Field(None, description="parquet: the parts, 500 at most an answer.")
    parts_next: str | None = Field(None, description="parquet: the path listing the next parts (?parts_from=).")
    expires_in_seconds: int


class JobModel(BaseModel):
    """The version that computes every chunk of the job: resolved when it was submitted, whatever its alias serves
    afterwards."""

    name: str
    version: str = Field(description="A registry version's number, or the packaged model's manifest version.")
    source: Literal["packaged", "registry"] = Field(
        description="packaged: the function's own model (its manifest's name and version); registry: a published "
        "version."
    )


class JobStatus(BaseModel):
    """An asynchronous job: its state, progress and timings; the upload or results URL when there is one."""

    id: str
    status: Literal["AWAITING_UPLOAD", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED"]
    source: Literal["inline", "design", "upload"]
    model: JobModel
    options: dict[str, Any]
    progress: JobProgress
    created_at: str
    started_at: str | None
    finished_at: str | None
    elapsed_seconds: float
    expires_at: str
    design: dict[str, Any] | None = Field(None, description="The design with every default resolved (seed, bounds).")
    error: str | None = Field(None, description="Why the job FAILED.")
    upload: JobUpload | None = None
    results: JobResultsLink | None = None


class SampleAnswer(BaseModel):
    """Joint draws at the points: `samples[s][i]` is draw s at point i (one such array per output if several)."""

    target: Literal["latent", "observations"]
    seed: int = Field(
        description="The seed used (drawn when none was sent): the same request and seed, the same draws."
    )
    points: int
    samples: list[list[float]] | dict[str, list[list[float]]]
    jitter: float | dict[str, float] = Field(
        description="Added to the covariance's diagonal to factor it; 0 when none was needed."
    )
    method: Literal["cholesky", "eigh"] | dict[str, Literal["cholesky", "eigh"]]


class InferenceTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Literal["FP64", "FP32"]
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="Row-major, flat or nested.")


class InferenceRequest(BaseModel):
    """Open Inference Protocol V2: one input tensor [N, n_features]; parameters.variance noisy or latent."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferenceTensor] = Field(min_length=1, max_length=1)
    outputs: list[dict[str, Any]] | None = Field(default=None, description='[{"name": "mean"}, ...]: a subset.')


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferenceTensor]


class InferenceErrorBody(BaseModel):
    error: str


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class InferenceModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = None


class InferenceServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]
