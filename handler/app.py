"""HTTP layer: API Gateway REST (proxy integration) events in, JSON out.

Routes:  POST /predict   GET /health   GET /model
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import numpy as np
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.config import load_settings
from handler.model import LazyModel, ModelUnavailableError
from handler.schemas import (
    FEATURES,
    ErrorDetail,
    ErrorResponse,
    HealthResponse,
    RequestError,
    decode_body,
    parse_predict_request,
)

settings = load_settings()
logger = Logger()
app = APIGatewayRestResolver()
# Module-level, so a warm execution environment loads the model once and keeps it.
model = LazyModel(settings.resolved_model_path, expected_features=FEATURES)


@app.post("/predict")
def predict() -> Any:
    event = app.current_event
    body = decode_body(event.body, bool(event.is_base64_encoded))
    request = parse_predict_request(
        body, max_batch_size=settings.max_batch_size, max_body_bytes=settings.max_body_bytes
    )
    loaded = model.get()
    violations = loaded.domain_violations(request.points, settings.domain_margin)
    if violations:
        raise RequestError(
            422,
            "point(s) outside the model's domain",
            [
                ErrorDetail(
                    field=request.field_name(v.row, v.feature),
                    message=f"{v.value:g} is outside the allowed range [{v.low:g}, {v.high:g}]",
                )
                for v in violations
            ],
        )
    mean, variance = loaded.model.predict(request.points)
    if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
        raise ArithmeticError("model returned non-finite predictions")
    # The noisy predictive variance is positive in exact arithmetic; clip rounding below zero.
    variance = np.maximum(variance, 0.0)
    if not request.is_batch:
        return {"mean": float(mean[0]), "variance": float(variance[0])}
    return [{"mean": m, "variance": v} for m, v in zip(mean.tolist(), variance.tolist(), strict=True)]


@app.get("/health")
def health() -> dict[str, Any]:
    return HealthResponse(status="ok", model_loaded=model.is_loaded).model_dump()


@app.get("/model")
def model_info() -> dict[str, Any]:
    return model.get().manifest.model_dump(mode="json")


def _error(status: int, body: ErrorResponse, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump(),
        headers=headers,
    )


@app.exception_handler(RequestError)
def handle_request_error(exc: RequestError) -> Response:
    logger.info("request refused", extra={"status": exc.status_code, "error": exc.error})
    return _error(exc.status_code, exc.to_response())


@app.exception_handler(ModelUnavailableError)
def handle_model_unavailable(exc: ModelUnavailableError) -> Response:
    logger.error("model unavailable", extra={"reason": str(exc)}, exc_info=exc)
    body = ErrorResponse(error="model unavailable", details=[ErrorDetail(field="model", message=str(exc))])
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, body, headers={"Retry-After": "5"})


@app.not_found
def handle_not_found(exc: NotFoundError) -> Response:
    path, method = app.current_event.path, app.current_event.http_method.upper()
    # Powertools answers 404 for a known path with another method; HTTP says 405 with Allow.
    allowed = sorted(route.method for route in app._static_routes if route.rule.match(path))
    if allowed:
        body = ErrorResponse(
            error="method not allowed",
            details=[
                ErrorDetail(field="method", message=f"{method} is not allowed on {path}; use {', '.join(allowed)}")
            ],
        )
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, body, headers={"Allow": ", ".join(allowed)})
    body = ErrorResponse(error="not found", details=[ErrorDetail(field="path", message=f"no route {method} {path}")])
    return _error(HTTPStatus.NOT_FOUND, body)


@app.exception_handler(Exception)
def handle_unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return _error(HTTPStatus.INTERNAL_SERVER_ERROR, ErrorResponse(error="internal error; it has been logged"))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
