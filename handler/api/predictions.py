"""POST /predict and POST /sample: the model's predictive distribution at the caller's points (and its draws)."""

from __future__ import annotations

from functools import lru_cache
from itertools import islice
from typing import Any

import numpy as np
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.metrics import MetricUnit

from handler.api.deadline import (
    BatchLimits,
    batch_limits,
    check_deadline,
    covariance_ms,
    covariance_points,
    predict_within_deadline,
    sample_points,
)
from handler.api.errors import RequestError, brief
from handler.api.limits import SAMPLE_MAX_POINTS, SAMPLE_MAX_SAMPLES, SAMPLE_MAX_VALUES, covariance_limit
from handler.api.model_routes import model_route
from handler.api.observability import metrics, subsegment
from handler.api.parsing import (
    BodyLimits,
    PredictOptions,
    PredictRequest,
    RequestParser,
    body_limits,
    decode_body,
    load_body,
    outside_domain,
    parse_options,
)
from handler.api.services import Services
from handler.gp.artifact import Manifest
from handler.gp.posterior import Z_95

router = Router()
_services: Services | None = None


def configure(services: Services) -> None:
    global _services
    _services = services


def _context() -> Services:
    assert _services is not None, "handler.api.predictions.configure() was not called"
    return _services


@lru_cache(maxsize=64)  # one per feature list: the registry serves many models
def request_parser(features: tuple[str, ...]) -> RequestParser:
    return RequestParser(
        features, max_batch_size=_context().settings.max_batch_size, max_body_bytes=_context().settings.max_body_bytes
    )


def sample_limits(features: tuple[str, ...]) -> BodyLimits:
    """/sample reads what its largest request (SAMPLE_MAX_POINTS points) needs, not what /predict's does."""
    return body_limits(features, SAMPLE_MAX_POINTS, _context().settings.max_body_bytes)


@model_route(router, "POST", "/predict")
def predict() -> Any:
    event = router.current_event
    options = parse_options(event.query_string_parameters)
    body = decode_body(event.body, bool(event.is_base64_encoded))
    manifest = _context().manifest()
    request = request_parser(manifest.features).parse(body)
    _within_batch_limits(len(request.points), model_batch_limits(), options.include_gradient)
    if violations := manifest.domain_violations(request.points, _context().settings.domain_margin):
        raise outside_domain(request, violations)
    if options.include_covariance and len(request.points) > (limit := covariance_limit(len(manifest.outputs))):
        message = f"{len(request.points)} points; a covariance matrix is answered for at most {limit}"
        raise RequestError(422, "batch too large for include=covariance", [("include", message)])
    if options.include_covariance and len(request.points) > (
        limit := covariance_points(manifest, _context().settings.function_timeout_seconds, limit)
    ):
        message = (
            f"{len(request.points)} points; a covariance matrix on this model fits its time budget for at most {limit}"
        )
        raise RequestError(422, "batch too large for include=covariance", [("include", message)])
    loaded = _context().loaded_model()
    with subsegment("predict"):
        (mean, variance), gradients = predict_within_deadline(
            loaded.model,
            request.points,
            options.latent,
            router.lambda_context.get_remaining_time_in_millis,
            options.include_gradient,
        )
    metrics.add_metric(name="PointsPredicted", unit=MetricUnit.Count, value=len(request.points))
    metrics.add_metric(name="BatchSize", unit=MetricUnit.Count, value=len(request.points))
    if not (options.include_gradient or options.include_covariance):
        return _prediction_body(request, options, manifest, mean, variance)
    extras: dict[str, Any] = {}
    if gradients is not None:
        extras["gradients"] = gradients
    if options.include_covariance:
        # one piece (at most covariance_limit points): started only if its estimate fits the time left
        check_deadline(
            router.lambda_context.get_remaining_time_in_millis(),
            covariance_ms(loaded.model, len(request.points)),
            f"predicted {len(request.points)} points, not their covariance,",
        )
        with subsegment("covariance"):
            extras["covariance"] = loaded.model.covariance(request.points, latent=options.latent)
    return _extended_body(request, options, manifest, mean, variance, **extras)


def model_batch_limits() -> BatchLimits:
    """This model's batch limits (/predict, V2 infer, GET /model), from its manifest: no load needed."""
    return batch_limits(
        _context().manifest(), _context().settings.max_batch_size, _context().settings.function_timeout_seconds
    )


def _within_batch_limits(points: int, limits: BatchLimits, gradient: bool) -> None:
    """A 422 naming this model's limit, before any work, when the batch's estimated cost exceeds the budget."""
    if points > limits.points:
        message = f"{points} points; at most {limits.points} per request on {limits.describe()}: send smaller batches"
        raise RequestError(422, "batch too large for this model", [("body", message)])
    if gradient and points > limits.with_gradient:
        message = (
            f"{points} points; at most {limits.with_gradient} per request with include=gradient on "
            f"{limits.describe()}: send smaller batches"
        )
        raise RequestError(422, "batch too large for include=gradient", [("include", message)])


def _extended_body(
    request: PredictRequest,
    options: PredictOptions,
    manifest: Manifest,
    mean: np.ndarray,
    variance: np.ndarray,
    gradients: tuple[np.ndarray, np.ndarray] | None = None,
    covariance: np.ndarray | None = None,
) -> Any:
    """The answer with gradients and/or the joint covariance (per output, by feature name).

    Gradients follow the request's shape; with the covariance (a property of the batch, not of a point)
    each output answers as columns, with `covariance` an n x n matrix beside them.
    """
    per_output = []
    for o in range(len(manifest.outputs)):
        # contiguous copies: orjson serialises C-contiguous arrays only
        columns: dict[str, Any] = _output_columns(
            options, np.ascontiguousarray(mean[:, o]), np.ascontiguousarray(variance[:, o])
        )
        if gradients is not None:
            for name, values in zip(("mean_gradient", "variance_gradient"), gradients, strict=True):
                columns[name] = {f: np.ascontiguousarray(values[:, i, o]) for i, f in enumerate(manifest.features)}
        if covariance is not None:
            columns["covariance"] = covariance[o]
        per_output.append(columns)
    shape = "columns" if covariance is not None else request.shape
    shaped = [_shape_nested(shape, columns) for columns in per_output]
    if len(shaped) == 1:
        return shaped[0]
    if shape == "rows":
        return [dict(zip(manifest.outputs, answers, strict=True)) for answers in zip(*shaped, strict=True)]
    return dict(zip(manifest.outputs, shaped, strict=True))


def _shape_nested(shape: str, columns: dict[str, Any]) -> Any:
    """One output's columns (arrays, or objects of arrays by feature) in the answer's shape."""
    if shape == "columns":
        return columns
    lists = {
        k: {f: v.tolist() for f, v in c.items()} if isinstance(c, dict) else c.tolist() for k, c in columns.items()
    }
    rows = [
        {k: {f: v[i] for f, v in c.items()} if isinstance(c, dict) else c[i] for k, c in lists.items()}
        for i in range(len(lists["mean"]))
    ]
    return rows[0] if shape == "point" else rows


@model_route(router, "POST", "/sample")
def sample() -> Any:
    """Joint draws of the latent function (or of observations) at the points: for Thompson sampling, q-EI."""
    from handler.gp.sampling import joint_draws

    event = router.current_event
    body = decode_body(event.body, bool(event.is_base64_encoded))
    manifest = _context().manifest()
    data = load_body(body, sample_limits(manifest.features))
    spec = _sample_spec(data)
    request = request_parser(manifest.features).parse_nested(data["points"], "points")
    points = request.points
    if len(points) > SAMPLE_MAX_POINTS or len(points) * spec["samples"] * len(manifest.outputs) > SAMPLE_MAX_VALUES:
        message = (
            f"{len(points)} points x {spec['samples']} samples x {len(manifest.outputs)} output(s); at most "
            f"{SAMPLE_MAX_POINTS} points and {SAMPLE_MAX_VALUES} values in all"
        )
        raise RequestError(422, "too many samples", [("samples", message)])
    # before any work: the covariance, its factor (cubic in the points) and the draws, on this model
    if len(points) > (
        fits := sample_points(manifest, _context().settings.function_timeout_seconds, len(points), spec["samples"])
    ):
        batch = model_batch_limits()
        message = (
            f"{len(points)} points x {spec['samples']} samples do not fit {batch.describe()}: at most {fits} points "
            f"with {spec['samples']} samples"
        )
        raise RequestError(422, "sample too large for this model", [("points", message)])
    if violations := manifest.domain_violations(points, _context().settings.domain_margin):
        raise outside_domain(request, violations, "points")
    loaded = _context().loaded_model()
    observations = spec["target"] == "observations"
    with subsegment("sample"):
        mean, _ = loaded.model.predict(points, latent=not observations)
        covariance = loaded.model.covariance(points, latent=not observations)
        rng = np.random.default_rng(spec["seed"])
        draws = [joint_draws(mean[:, o], covariance[o], spec["samples"], rng) for o in range(len(manifest.outputs))]
    metrics.add_metric(name="PointsSampled", unit=MetricUnit.Count, value=len(points) * spec["samples"])
    answer: dict[str, Any] = {"target": spec["target"], "seed": spec["seed"], "points": len(points)}
    if len(draws) == 1:
        answer |= {"samples": draws[0].samples, "jitter": draws[0].jitter, "method": draws[0].method}
    else:
        answer["samples"] = {name: d.samples for name, d in zip(manifest.outputs, draws, strict=True)}
        answer["jitter"] = {name: d.jitter for name, d in zip(manifest.outputs, draws, strict=True)}
        answer["method"] = {name: d.method for name, d in zip(manifest.outputs, draws, strict=True)}
    return answer


def _sample_spec(data: Any) -> dict[str, Any]:
    """`samples`, `seed` (drawn when absent, and answered, so a draw can be repeated) and `target`."""
    problems = []
    if not isinstance(data, dict):
        raise RequestError(422, "invalid sample request", [("body", "expected an object with points and samples")])
    known = ("points", "samples", "seed", "target")
    if len(data) > len(known) or not data.keys() <= set(known):
        unknown = islice((name for name in data if name not in known), 5)  # in the body's order: no sort of them all
        problems += [(brief(name), "unknown field (points, samples, seed, target)") for name in unknown]
    if "points" not in data:
        problems.append(("points", "Field required"))
    samples = data.get("samples")
    if type(samples) is not int or not 1 <= samples <= SAMPLE_MAX_SAMPLES:
        problems.append(("samples", f"expected an integer from 1 to {SAMPLE_MAX_SAMPLES}, got {brief(samples)}"))
    seed = data.get("seed", None)
    if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
        problems.append(("seed", f"expected a non-negative integer, got {brief(seed)}"))
    target = data.get("target", "latent")
    if target not in ("latent", "observations"):
        problems.append(("target", f"expected latent or observations, got {brief(target)}"))
    if problems:
        raise RequestError(422, "invalid sample request", problems)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**63))
    return {"samples": samples, "seed": seed, "target": target}


def _prediction_body(
    request: PredictRequest, options: PredictOptions, manifest: Manifest, mean: np.ndarray, variance: np.ndarray
) -> Any:
    """One output answers flat (`{"mean", "variance"}`); several answer one such object per named output."""
    # One contiguous row per output: orjson serialises contiguous arrays only.
    means, variances = np.ascontiguousarray(mean.T), np.ascontiguousarray(variance.T)
    per_output = [_output_columns(options, m, v) for m, v in zip(means, variances, strict=True)]
    if len(per_output) == 1:
        return _shape(request, per_output[0])
    named = dict(zip(manifest.outputs, per_output, strict=True))
    if request.shape == "columns":
        return named
    shaped = [_shape(request, columns) for columns in per_output]
    if request.shape == "point":
        return dict(zip(manifest.outputs, shaped, strict=True))
    return [dict(zip(manifest.outputs, answers, strict=True)) for answers in zip(*shaped, strict=True)]


def _output_columns(options: PredictOptions, mean: np.ndarray, variance: np.ndarray) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {"mean": mean, "variance": variance}
    if options.include_std or options.include_interval:
        std = np.sqrt(variance)
        if options.include_std:
            columns["std"] = std
        if options.include_interval:
            columns["lower_95"] = mean - Z_95 * std
            columns["upper_95"] = mean + Z_95 * std
    return columns


def _shape(request: PredictRequest, columns: dict[str, np.ndarray]) -> Any:
    """One output's answer in the request's shape."""
    if request.shape == "columns":
        return columns
    lists = {name: values.tolist() for name, values in columns.items()}
    if request.shape == "point":
        return {name: values[0] for name, values in lists.items()}
    if len(lists) == 2:  # the usual answer, built ~3x faster than the general case below
        return [{"mean": m, "variance": v} for m, v in zip(lists["mean"], lists["variance"], strict=True)]
    names = list(lists)
    return [dict(zip(names, values, strict=True)) for values in zip(*lists.values(), strict=True)]
