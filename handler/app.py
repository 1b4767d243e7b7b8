"""The API function: composes the routers, the model resolver and the error handlers. API Gateway REST (proxy
integration) events in, JSON out.

Routes (each model's also under /models/{name}/... and /models/{name}/versions/{version}/...: api.model_routes):
  POST /predict   POST /sample  (handler.api.predictions)
  GET /health   GET /model   GET /model/training-data   GET /openapi.json  (handler.api.model_info)
  GET /models   GET /models/{name}   POST /v2/repository/index  (handler.api.registry_routes)
  POST /sensitivity   POST /propagate   POST /suggest  (handler.api.analyses)
  POST /jobs   GET /jobs/{job_id}   POST /jobs/{job_id}/start   POST /jobs/{job_id}/cancel  (handler.jobs.routes)
  /v2/...: the Open Inference Protocol  (handler.api.inference_protocol)

The registry's write routes are another function's (handler.registry_admin_app), with the only write permissions;
the model explorer's page (GET /explore) is open to anyone, so it too is served by a function of its own
(handler.explorer_app), never by this one.
"""

from __future__ import annotations

import random
import time
from http import HTTPStatus
from typing import Any

import numpy as np
import orjson
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.api import analyses, inference_protocol, model_info, model_routes, predictions, registry_routes
from handler.api.errors import RequestError
from handler.api.events import malformed_event
from handler.api.model_routes import served
from handler.api.observability import logger, metrics, tracer
from handler.api.observability import subsegment as _subsegment
from handler.api.services import Services
from handler.config import load_settings
from handler.gp.artifact import ModelUnavailableError
from handler.gp.broken import ModelBrokenError
from handler.gp.model import LazyModel, LoadedModel
from handler.jobs import routes as job_routes
from handler.registry.resolver import ModelResolver
from handler.registry.store import (
    RegistryConflictError,
    RegistryNotConfiguredError,
    RegistryNotFoundError,
    RegistryUnavailableError,
    store_from_settings,
)


def _to_json(value: Any) -> str:
    # orjson: many times faster than the standard library on large batches, and serialises numpy arrays.
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


settings = load_settings()
copy_config_to_registered_loggers(source_logger=logger, include={"handler"})
cors = (
    CORSConfig(
        allow_origin=settings.cors_allow_origin,
        allow_headers=["X-Api-Key", "Authorization"],
        expose_headers=["X-Model-Version"],
        max_age=600,
    )
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
# Every route's model comes from here: the packaged one (a lambda, so that tests replacing `model` are followed) or
# a registry version.
resolver = ModelResolver(
    packaged=lambda: model,
    store=(lambda: store_from_settings(settings)) if settings.registry_enabled else None,
    bucket=settings.registry_bucket,
    cache_budget_bytes=settings.registry_cache_bytes,
    cache_dir=settings.model_cache_dir / "registry",
    retry_interval_s=settings.model_retry_seconds,
)
model_routes.configure(resolver)


def load_before_snapshot() -> None:
    """SnapStart: load the model during the version's init, so that it is in the snapshot every restore starts from.

    A failure is logged and left to the first request (a 503 and a retry), as without SnapStart.
    """
    if resolver.configured:  # boto3's import and the registry's clients: ~0.5 s of a registry model's first request
        try:
            resolver.store  # noqa: B018 - made now, for the snapshot
        except Exception as exc:  # made again on first use, where a failure is that request's 503
            logger.warning("registry clients not made before the snapshot", extra={"reason": str(exc)[:300]})
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


services = Services(
    settings,
    manifest=lambda: served().model.manifest(),
    parser=lambda features: predictions.request_parser(features),
    loaded_model=lambda: _loaded_model(),
)
ROUTERS = (predictions, model_info, registry_routes, job_routes, inference_protocol, analyses)
for router in ROUTERS:
    router.configure(services)
    app.include_router(router.router)


def _loaded_model() -> LoadedModel:
    """The request's model, loading it on first use: the load's time is a metric and an X-Ray subsegment."""
    model = served().model
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


@app.exception_handler(RegistryNotFoundError)
def handle_registry_not_found(exc: RegistryNotFoundError) -> Response:
    return _error(HTTPStatus.NOT_FOUND, f"{exc.field} not found", [(exc.field, str(exc))])


@app.exception_handler(RegistryConflictError)
def handle_registry_conflict(exc: RegistryConflictError) -> Response:
    return _error(HTTPStatus.CONFLICT, "conflict", [(exc.field, str(exc))])


@app.exception_handler(RegistryNotConfiguredError)
def handle_registry_not_configured(exc: RegistryNotConfiguredError) -> Response:
    detail = (
        "model",
        "this deployment has no model registry (REGISTRY_BUCKET, REGISTRY_TABLE); the packaged model serves",
    )
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, "registry not configured", [detail])


@app.exception_handler(RegistryUnavailableError)
def handle_registry_unavailable(exc: RegistryUnavailableError) -> Response:
    logger.error("registry unavailable", extra={"reason": str(exc)})
    detail = ("model", "the model registry could not be read; the reason is logged, and a later request tries again")
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, "registry unavailable", [detail])


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
    model_routes.begin_request()
    try:
        return _with_model_version(app.resolve(event, context))
    except Exception:  # the routes' errors are answered by handle_unexpected; this is what escapes the resolver
        logger.exception("unhandled error outside the routes")
        _count_refusal(HTTPStatus.INTERNAL_SERVER_ERROR)
        return {
            "statusCode": HTTPStatus.INTERNAL_SERVER_ERROR,
            "multiValueHeaders": {"Content-Type": [content_types.APPLICATION_JSON]},
            "body": _LAST_RESORT_BODY,
            "isBase64Encoded": False,
        }


def _with_model_version(answer: dict[str, Any]) -> dict[str, Any]:
    """`X-Model-Version: name/3` on every answer a model gave (or failed to give)."""
    label = model_routes.answered_by()
    if label is not None:
        headers = answer.setdefault("multiValueHeaders", {})
        headers["X-Model-Version"] = [label]
    return answer


if tracer is not None:
    lambda_handler = tracer.capture_lambda_handler(lambda_handler, capture_response=False)  # answers can be big
