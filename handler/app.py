"""HTTP layer: API Gateway REST (proxy integration) events in, JSON out.

Routes:  POST /predict   POST /sample   GET /health   GET /model   GET /model/training-data   GET /openapi.json
         POST /sensitivity   POST /propagate   POST /suggest  (handler.api.analyses)
         POST /jobs   GET /jobs/{job_id}   POST /jobs/{job_id}/start   POST /jobs/{job_id}/cancel  (handler.jobs.routes)
         /v2/...: the Open Inference Protocol  (handler.api.inference_protocol)

The model explorer's page (GET /explore) is open to anyone, so it is served by a function of its own
(handler.explorer_app), never by this one.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from functools import lru_cache
from http import HTTPStatus
from itertools import islice
from typing import Any

import numpy as np
import orjson
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.api import analyses, inference_protocol
from handler.api.deadline import (
    BatchLimits,
    batch_limits,
    check_deadline,
    cost_model_of,
    covariance_ms,
    covariance_points,
    predict_within_deadline,
    sample_points,
)
from handler.api.errors import RequestError, brief
from handler.api.limits import SAMPLE_MAX_POINTS, SAMPLE_MAX_SAMPLES, SAMPLE_MAX_VALUES, covariance_limit
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
from handler.config import load_settings
from handler.gp.artifact import Manifest, ModelUnavailableError
from handler.gp.broken import ModelBrokenError
from handler.gp.model import LazyModel, LoadedModel
from handler.gp.posterior import Z_95
from handler.jobs import routes as job_routes
from handler.jobs.sizing import fitting_chunk_points


def _to_json(value: Any) -> str:
    # orjson: many times faster than the standard library on large batches, and serialises numpy arrays.
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


settings = load_settings()
logger = Logger()
# CloudWatch metrics as EMF log lines (no API calls): namespace from POWERTOOLS_METRICS_NAMESPACE.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "GPRSurrogate")
# /health, /model and refusals (counted by their own single metric) have no request metrics: that is expected.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
# X-Ray subsegments around the model load and the prediction, when TRACING is on (the template's TracingMode).
# Off, the X-Ray SDK is not even imported: it adds ~0.5 s to every cold start that a snapshot does not absorb.
tracer = Tracer() if settings.tracing else None


def _subsegment(name: str) -> Any:
    return tracer.provider.in_subsegment(name) if tracer is not None else contextlib.nullcontext()


copy_config_to_registered_loggers(source_logger=logger, include={"handler"})
cors = (
    CORSConfig(allow_origin=settings.cors_allow_origin, allow_headers=["X-Api-Key", "Authorization"], max_age=600)
    if settings.cors_allow_origin
    else None
)
app = APIGatewayRestResolver(serializer=_to_json, cors=cors)
# Module-level, so a warm execution environment loads the model once and keeps it. The manifest (small
# JSON) is read now when the model is packaged; one from S3 is fetched on first use, so that a missing
# object is a 503 that the next request retries, not a failed start.
model = LazyModel(settings.artifact_source(), retry_interval_s=settings.model_retry_seconds)
if not settings.model_s3_uri:
    try:
        model.manifest()
    except ModelUnavailableError as exc:
        logger.error("model manifest unavailable", extra={"reason": str(exc)})


def load_before_snapshot() -> None:
    """SnapStart: load the model during the version's init, so that it is in the snapshot every restore starts from.

    A failure is logged and left to the first request (a 503 and a retry), as without SnapStart.
    """
    try:
        analyses.prepare(_loaded_model())  # and what the analyses cache of it (a sparse model's draw factors)
    except ModelUnavailableError as exc:
        logger.error("model not loaded before the snapshot", extra={"reason": str(exc)})
        model.clear_failure()  # restored environments start later: their first request tries at once
    metrics.clear_metrics()  # this is no request of anyone's


def reseed_after_restore() -> None:
    """SnapStart: every environment restored from one snapshot would share its random state; draw fresh seeds."""
    random.seed()
    np.random.seed()


# The runtime ships snapshot_restore_py where SnapStart is on (tests install it); elsewhere nothing registers
# and the model loads lazily on the first request.
try:
    from snapshot_restore_py import register_after_restore, register_before_snapshot
except ImportError:  # pragma: no cover - a runtime without SnapStart hooks
    pass
else:
    register_before_snapshot(load_before_snapshot)
    register_after_restore(reseed_after_restore)


@lru_cache(maxsize=1)
def request_parser(features: tuple[str, ...]) -> RequestParser:
    return RequestParser(features, max_batch_size=settings.max_batch_size, max_body_bytes=settings.max_body_bytes)


def sample_limits(features: tuple[str, ...]) -> BodyLimits:
    """/sample reads what its largest request (SAMPLE_MAX_POINTS points) needs, not what /predict's does."""
    return body_limits(features, SAMPLE_MAX_POINTS, settings.max_body_bytes)


# Lambdas, not model.manifest: the routes follow `model` when it is replaced (tests do).
services = Services(
    settings,
    manifest=lambda: model.manifest(),
    parser=lambda features: request_parser(features),
    loaded_model=lambda: _loaded_model(),
)
for router in (job_routes, inference_protocol, analyses):
    router.configure(services)
    app.include_router(router.router)


@app.post("/predict")
def predict() -> Any:
    event = app.current_event
    options = parse_options(event.query_string_parameters)
    body = decode_body(event.body, bool(event.is_base64_encoded))
    manifest = model.manifest()
    request = request_parser(manifest.features).parse(body)
    _within_batch_limits(len(request.points), model_batch_limits(), options.include_gradient)
    if violations := manifest.domain_violations(request.points, settings.domain_margin):
        raise outside_domain(request, violations)
    if options.include_covariance and len(request.points) > (limit := covariance_limit(len(manifest.outputs))):
        message = f"{len(request.points)} points; a covariance matrix is answered for at most {limit}"
        raise RequestError(422, "batch too large for include=covariance", [("include", message)])
    if options.include_covariance and len(request.points) > (
        limit := covariance_points(manifest, settings.function_timeout_seconds, limit)
    ):
        message = (
            f"{len(request.points)} points; a covariance matrix on this model fits its time budget for at most {limit}"
        )
        raise RequestError(422, "batch too large for include=covariance", [("include", message)])
    loaded = _loaded_model()
    with _subsegment("predict"):
        (mean, variance), gradients = predict_within_deadline(
            loaded.model,
            request.points,
            options.latent,
            app.lambda_context.get_remaining_time_in_millis,
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
            app.lambda_context.get_remaining_time_in_millis(),
            covariance_ms(loaded.model, len(request.points)),
            f"predicted {len(request.points)} points, not their covariance,",
        )
        with _subsegment("covariance"):
            extras["covariance"] = loaded.model.covariance(request.points, latent=options.latent)
    return _extended_body(request, options, manifest, mean, variance, **extras)


def model_batch_limits() -> BatchLimits:
    """This model's batch limits (/predict, V2 infer, GET /model), from its manifest: no load needed."""
    return batch_limits(model.manifest(), settings.max_batch_size, settings.function_timeout_seconds)


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


@app.post("/sample")
def sample() -> Any:
    """Joint draws of the latent function (or of observations) at the points: for Thompson sampling, q-EI."""
    from handler.gp.sampling import joint_draws

    event = app.current_event
    body = decode_body(event.body, bool(event.is_base64_encoded))
    manifest = model.manifest()
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
    if len(points) > (fits := sample_points(manifest, settings.function_timeout_seconds, len(points), spec["samples"])):
        batch = model_batch_limits()
        message = (
            f"{len(points)} points x {spec['samples']} samples do not fit {batch.describe()}: at most {fits} points "
            f"with {spec['samples']} samples"
        )
        raise RequestError(422, "sample too large for this model", [("points", message)])
    if violations := manifest.domain_violations(points, settings.domain_margin):
        raise outside_domain(request, violations, "points")
    loaded = _loaded_model()
    observations = spec["target"] == "observations"
    with _subsegment("sample"):
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


def _loaded_model() -> LoadedModel:
    """The model, loading it on first use: the load's time is a metric and an X-Ray subsegment."""
    if model.is_loaded:
        return model.get()
    started = time.perf_counter()
    with _subsegment("load model"):
        try:
            loaded = model.get()
        except ModelUnavailableError:
            metrics.add_metric(name="ModelLoadFailures", unit=MetricUnit.Count, value=1)
            raise
    metrics.add_metric(name="ModelLoadTime", unit=MetricUnit.Milliseconds, value=(time.perf_counter() - started) * 1000)
    return loaded


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


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "model_loaded": model.is_loaded}


def _job_chunk_points() -> int | None:
    """Points a job's chunk holds on the model served, from its manifest (GET /model loads no model; the worker
    sizes chunks from the loaded model's same shapes); None while the manifest cannot be read (said elsewhere)."""
    try:
        cost = cost_model_of(model.manifest())
    except ModelUnavailableError:
        return None
    if cost is None:  # a GPy pickle: no cost model
        return settings.job_chunk_points
    return fitting_chunk_points(cost, settings.job_chunk_points, settings.job_worker_timeout_seconds)


@app.get("/model")
def model_info() -> dict[str, Any]:
    jobs = settings.jobs_enabled
    batch = model_batch_limits()
    limits: dict[str, Any] = {
        "max_batch_size": batch.points,
        "max_job_points": settings.job_max_points if jobs else None,
        "job_chunk_points": _job_chunk_points() if jobs else None,
    }
    if batch.with_gradient != batch.points:
        limits["max_batch_size_with_gradient"] = batch.with_gradient
    document = dict(model.manifest().document)
    # `limits` here is this deployment's (as before manifests had any); the manifest's are its features' physical ones
    if (physical_limits := document.pop("limits", None)) is not None:
        document["physical_limits"] = physical_limits
    return {**document, "limits": limits}


@app.get("/model/training-data")
def training_data() -> dict[str, Any]:
    """The training points the manifest publishes, as columns; 404 where it publishes none."""
    loaded = _loaded_model()
    published = loaded.training_data
    if published is None:
        raise RequestError(
            HTTPStatus.NOT_FOUND,
            "training data not published",
            [("path", "this model's manifest publishes no training data (package_model.py --publish-training-data)")],
        )
    manifest = loaded.manifest
    outputs = published.outputs
    return {
        "published": manifest.published_training_data,
        "n_points": len(published.inputs),
        # Columns, C-ordered for orjson (which writes only contiguous arrays)
        "inputs": dict(zip(manifest.features, np.ascontiguousarray(published.inputs.T), strict=True)),
        "outputs": None
        if outputs is None
        else dict(zip(manifest.outputs, np.ascontiguousarray(outputs.T), strict=True)),
    }


@app.get("/openapi.json")
def openapi() -> dict[str, Any]:
    from handler.api.openapi import openapi_document  # pydantic and the schema build: only for this route

    return openapi_document(model.manifest(), settings)


def _error(status: int, error: str, details: list[tuple[str, str]], headers: dict[str, str] | None = None) -> Response:
    _count_refusal(status)
    body = RequestError(status, error, details).body()
    if status == HTTPStatus.SERVICE_UNAVAILABLE:  # every 503 says when to try again, whichever route raised it
        headers = {"Retry-After": _retry_after(), **(headers or {})}
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers)


def _count_refusal(status: int) -> None:
    """One `Refusals` data point with the status as its dimension (a metric of its own, flushed at once)."""
    with single_metric(
        name="Refusals", unit=MetricUnit.Count, value=1, namespace=metrics.namespace,
        default_dimensions=metrics.default_dimensions,
    ) as metric:  # fmt: skip
        metric.add_dimension(name="status", value=str(int(status)))


@app.exception_handler(RequestError)
def handle_request_error(exc: RequestError) -> Response:
    logger.info("request refused", extra={"status": exc.status_code, "error": exc.error})
    return _error(exc.status_code, exc.error, exc.details)


@app.exception_handler(ModelUnavailableError)
def handle_model_unavailable(exc: ModelUnavailableError) -> Response:
    # The reason can quote the artifact (an exception raised while unpickling it, bytes of a file): the log gets it,
    # callers a fixed message.
    logger.error("model unavailable", extra={"reason": str(exc)}, exc_info=exc)
    detail = ("model", "the model could not be loaded; the reason is logged, and a later request tries again")
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, "model unavailable", [detail])


def _retry_after() -> str:
    """Seconds until a failed model load is tried again (at least 1): what every 503 asks a caller to wait."""
    return str(max(1, round(settings.model_retry_seconds)))


@app.exception_handler(ModelBrokenError)
def handle_model_broken(exc: ModelBrokenError) -> Response:
    # Raised where predictions, draws and analyses' answers are made: a non-finite number or a negative variance.
    logger.error("model broken", extra={"reason": str(exc)})
    detail = ("model", "the model answered numbers that are not finite or a negative variance; the reason is logged")
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, "model broken", [detail])


@app.not_found
def handle_not_found(exc: NotFoundError) -> Response:
    path, method = app.current_event.path, app.current_event.http_method.upper()
    # Powertools answers 404 for a known path with another method; HTTP says 405 with Allow.
    allowed = sorted(route.method for route in (*app._static_routes, *app._dynamic_routes) if route.rule.match(path))
    if allowed:
        message = f"{method} is not allowed on {path}; use {', '.join(allowed)}"
        return _error(
            HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed", [("method", message)], {"Allow": ", ".join(allowed)}
        )
    return _error(HTTPStatus.NOT_FOUND, "not found", [("path", f"no route {method} {path}")])


@app.exception_handler(Exception)
def handle_unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; it has been logged", [])


# What the resolver reads of an API Gateway REST proxy event, and the types it needs them in. A hand-made
# event that differs (a test console, another integration) gets a 400 rather than an exception.
_EVENT_FIELDS: dict[str, tuple[type, ...]] = {
    "httpMethod": (str,),
    "path": (str,),
    "body": (str, type(None)),
    "isBase64Encoded": (bool, type(None)),
    "headers": (dict, type(None)),
    "multiValueHeaders": (dict, type(None)),
    "queryStringParameters": (dict, type(None)),
    "multiValueQueryStringParameters": (dict, type(None)),
    "pathParameters": (dict, type(None)),
    "requestContext": (dict, type(None)),
}


def malformed_event(event: Any) -> str | None:
    """Why `event` is not an API Gateway REST proxy event the resolver can read, or None."""
    if not isinstance(event, dict):
        return f"expected an API Gateway REST proxy event (a JSON object), got {type(event).__name__}"
    for name, types in _EVENT_FIELDS.items():
        if name in ("httpMethod", "path") and name not in event:
            return f"the event has no {name}"
        if not isinstance(event.get(name), types):
            return f"the event's {name} is a {type(event[name]).__name__}"
    for name in ("queryStringParameters", "headers"):
        if any(not isinstance(value, str) for value in (event.get(name) or {}).values()):
            return f"the event's {name} must map names to strings"
    identity = (event.get("requestContext") or {}).get("identity")
    if not isinstance(identity, (dict, type(None))):
        return f"the event's requestContext.identity is a {type(identity).__name__}"
    return None


# What lambda_handler answers when even building an answer failed: a constant, so that it cannot fail too.
_LAST_RESORT_BODY = '{"error":"internal error; it has been logged","details":[]}'


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if problem := malformed_event(event):
        logger.info("malformed event refused", extra={"reason": problem})
        _count_refusal(HTTPStatus.BAD_REQUEST)
        body = RequestError(HTTPStatus.BAD_REQUEST, "malformed event", [("event", problem)]).body()
        return {
            "statusCode": HTTPStatus.BAD_REQUEST,
            "multiValueHeaders": {"Content-Type": [content_types.APPLICATION_JSON]},
            "body": _to_json(body),
            "isBase64Encoded": False,
        }
    try:
        return app.resolve(event, context)
    except Exception:  # the routes' errors are answered by handle_unexpected; this is what escapes the resolver
        logger.exception("unhandled error outside the routes")
        _count_refusal(HTTPStatus.INTERNAL_SERVER_ERROR)
        return {
            "statusCode": HTTPStatus.INTERNAL_SERVER_ERROR,
            "multiValueHeaders": {"Content-Type": [content_types.APPLICATION_JSON]},
            "body": _LAST_RESORT_BODY,
            "isBase64Encoded": False,
        }


if tracer is not None:
    lambda_handler = tracer.capture_lambda_handler(lambda_handler, capture_response=False)  # answers can be big
