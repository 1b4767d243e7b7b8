"""Request and answer bodies of the analyses (/sensitivity, /propagate, /suggest), as pydantic models.

The routes validate with them (an analysis costs seconds; pydantic's import and checks cost milliseconds) and
the OpenAPI document publishes them. Strict: numbers are numbers, booleans booleans; unknown fields are refused.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from handler.api.errors import MAX_ERROR_DETAILS, RequestError, encodable
from handler.api.limits import (
    ANALYSIS_DEFAULT_N,
    ANALYSIS_MAX_N,
    MAX_BINS,
    MAX_POSTERIOR_SAMPLES,
    MAX_QUANTILES,
    MAX_THRESHOLDS,
    PROPAGATE_DEFAULT_N,
    PROPAGATE_MAX_N,
    SUGGEST_MAX_PENDING,
    SUGGEST_MAX_Q,
)
from handler.api.schemas import validation_details

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Positive = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
Seed = Annotated[int | None, Field(strict=True, ge=0, lt=2**63, description="Same seed, same answer; drawn if absent.")]
_FORBID = ConfigDict(extra="forbid")


class UniformInput(BaseModel):
    model_config = _FORBID
    distribution: Literal["uniform"]
    low: Number
    high: Number

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self


class NormalInput(BaseModel):
    model_config = _FORBID
    distribution: Literal["normal"]
    mean: Number
    std: Positive


class TruncatedNormalInput(BaseModel):
    model_config = _FORBID
    distribution: Literal["truncnormal"]
    mean: Number
    std: Positive
    low: Number
    high: Number

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self


class LogNormalInput(BaseModel):
    model_config = _FORBID
    distribution: Literal["lognormal"]
    mu: Number = Field(description="Mean of log x.")
    sigma: Positive = Field(description="Standard deviation of log x.")


class TriangularInput(BaseModel):
    model_config = _FORBID
    distribution: Literal["triangular"]
    low: Number
    mode: Number
    high: Number

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not (self.low <= self.mode <= self.high and self.low < self.high):
            raise ValueError(
                f"expected low <= mode <= high and low < high, got {self.low:g}, {self.mode:g}, {self.high:g}"
            )
        return self


InputSpec = Annotated[
    UniformInput | NormalInput | TruncatedNormalInput | LogNormalInput | TriangularInput,
    Field(discriminator="distribution"),
]
Inputs = Annotated[
    dict[str, InputSpec] | None,
    Field(description="A distribution per feature (any subset); a feature not listed is uniform over its bounds."),
]


def _not_one(k: int) -> int:
    if k == 1:  # one draw has no spread: its interval would leave the GP's uncertainty out
        raise ValueError("0 (the posterior mean only) or at least 2: one draw has no spread to measure")
    return k


PosteriorSamples = Annotated[int, Field(strict=True, ge=0, le=MAX_POSTERIOR_SAMPLES), AfterValidator(_not_one)]


class SensitivityRequest(BaseModel):
    """Sobol' indices: Saltelli's sample of n base points, SALib's estimators; GP draws widen the intervals."""

    model_config = _FORBID
    n: Annotated[int, Field(strict=True, ge=16, le=ANALYSIS_MAX_N, description="Base sample size (2^k is best).")] = (
        ANALYSIS_DEFAULT_N
    )
    posterior_samples: Annotated[
        PosteriorSamples,
        Field(description="Functions drawn from the posterior: 0 (the posterior mean only) or 2 to 100."),
    ] = 0
    second_order: Annotated[bool, Field(strict=True)] = False
    inputs: Inputs = None
    seed: Seed = None


class PropagateRequest(BaseModel):
    """The output distribution under input distributions: moments, quantiles, exceedance, histogram."""

    model_config = _FORBID
    n: Annotated[int, Field(strict=True, ge=16, le=PROPAGATE_MAX_N, description="Input samples.")] = PROPAGATE_DEFAULT_N
    posterior_samples: Annotated[
        PosteriorSamples,
        Field(description="Functions drawn from the posterior: 0 (the posterior mean only) or 2 to 100."),
    ] = 50
    quantiles: Annotated[list[Annotated[float, Field(strict=True, gt=0, lt=1)]], Field(max_length=MAX_QUANTILES)] = (
        Field(default_factory=lambda: [0.05, 0.5, 0.95])
    )
    thresholds: Annotated[list[Number], Field(max_length=MAX_THRESHOLDS)] = Field(default_factory=list)
    bins: Annotated[int, Field(strict=True, ge=1, le=MAX_BINS)] = 30
    inputs: Inputs = None
    seed: Seed = None


Acquisition = Literal["variance", "integrated_variance", "expected_improvement", "upper_confidence_bound"]


class SuggestRequest(BaseModel):
    """The next q points to simulate, chosen jointly."""

    model_config = _FORBID
    q: Annotated[int, Field(strict=True, ge=1, le=SUGGEST_MAX_Q)] = 1
    acquisition: Acquisition = "variance"
    goal: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Required for expected_improvement and upper_confidence_bound."
    )
    output: str | None = Field(default=None, description="Which output; required for EI and UCB with several.")
    bounds: Annotated[
        dict[str, tuple[Number, Number]] | None,
        Field(
            description="[low, high] per feature (any subset; low = high holds it fixed), inside the domain; "
            "the others span the model's bounds."
        ),
    ] = None
    pending: Annotated[
        list[dict[str, Number]] | None,
        Field(max_length=SUGGEST_MAX_PENDING, description="Points already planned: the batch avoids them."),
    ] = None
    best: Annotated[float | None, Field(strict=True, allow_inf_nan=False, ge=-1e300, le=1e300)] = Field(
        default=None, description="EI's incumbent; default: the best posterior mean at the training inputs."
    )
    beta: Annotated[float, Field(strict=True, gt=0, le=100)] = Field(
        default=2.0, description="UCB: mean + beta std (maximize), or -(mean - beta std)."
    )
    seed: Seed = None


def parse_request[M: BaseModel](model: type[M], data: Any, features: tuple[str, ...]) -> M:
    """The request, or a 422 naming each problem (at most MAX_ERROR_DETAILS). Work is bounded as for jobs:
    pydantic sees the known fields and the first few unknown ones, and of `inputs`/`bounds` the model's features
    and the first few other names."""
    if type(data) is not dict:
        raise RequestError(422, "invalid request", [("body", "expected a JSON object")])
    trimmed = _trimmed(data, tuple(model.model_fields))
    unknown = []
    for name in ("inputs", "bounds"):
        if name in model.model_fields and type(trimmed.get(name)) is dict:
            trimmed[name] = _trimmed(trimmed[name], features)
            message = f"unknown feature; the model's are {', '.join(features)}"
            unknown += [(f"{name}.{key}", message) for key in trimmed[name] if key not in features]
    if unknown:
        raise RequestError(422, "unknown feature", unknown[:MAX_ERROR_DETAILS])
    try:
        request = model.model_validate(trimmed)
    except ValidationError as exc:
        details = [(_without_tag(d.field), d.message) for d in validation_details(exc)]
        raise RequestError(422, "invalid request", details) from None
    if getattr(request, "goal", "") is None and getattr(request, "acquisition", "") in _GOAL_DIRECTED:
        message = f"required for {request.acquisition}: maximize or minimize"  # type: ignore[attr-defined]
        raise RequestError(422, "invalid request", [("goal", message)])
    return request


_GOAL_DIRECTED = ("expected_improvement", "upper_confidence_bound")
_TAGS = ("uniform", "normal", "truncnormal", "lognormal", "triangular")


def _without_tag(field: str) -> str:
    """`inputs.x1.normal.mean` -> `inputs.x1.mean`: pydantic names the union's member, which the body does not hold."""
    parts = field.split(".")
    if len(parts) >= 4 and parts[0] == "inputs" and parts[2] in _TAGS:
        del parts[2]
    return ".".join(parts)


def _trimmed(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    if len(data) <= len(known) and all(key in known for key in data):
        return dict(data)
    kept = {key: data[key] for key in known if key in data}
    unknown = itertools.islice((key for key in data if key not in known), MAX_ERROR_DETAILS)
    return kept | {encodable(key): data[key] for key in unknown}


# --- answers (documentation) -----------------------------------------------------------------------------


class Interval(BaseModel):
    estimate: float
    ci_low: float = Field(description="Lower end of the 95% interval.")
    ci_high: float


class SensitivityAnswer(BaseModel):
    """One output's indices (a model with several outputs answers {output: this})."""

    seed: int
    n: int
    evaluations: int = Field(description="Input points the model was evaluated at: n (d + 2), or n (2d + 2).")
    posterior_samples: int
    confidence: float
    variance: Interval = Field(description="The output's variance under the input distributions.")
    first_order: dict[str, Interval]
    total: dict[str, Interval]
    second_order: dict[str, dict[str, Interval]] | None = None


class QuantileInterval(Interval):
    probability: float


class ExceedanceInterval(Interval):
    threshold: float


class Histogram(BaseModel):
    edges: list[float]
    counts: list[float] = Field(description="Points per bin: the mean over the posterior draws.")
    counts_low: list[float] | None = None
    counts_high: list[float] | None = None


class PropagateAnswer(BaseModel):
    """One output's distribution (a model with several outputs answers {output: this})."""

    seed: int
    n: int
    posterior_samples: int
    confidence: float
    points_outside_domain: int = Field(description="Input samples outside the model's domain (the GP extrapolates).")
    mean: Interval
    std: Interval
    quantiles: list[QuantileInterval]
    exceedance: list[ExceedanceInterval] = Field(description="P(y > threshold).")
    histogram: Histogram
    note: str | None = Field(
        default=None,
        description="Present when the default posterior_samples (50) was lowered to fit this model's budget: why.",
    )


class SuggestedPoint(BaseModel):
    x: dict[str, float]
    acquisition: float = Field(description="The criterion's value when the point was picked (after earlier picks).")
    prediction: dict[str, Any] = Field(description="As POST /predict answers for the point.")


class SuggestAnswer(BaseModel):
    seed: int
    acquisition: Acquisition
    output: str
    goal: str | None
    points: list[SuggestedPoint]
