"""The explorer function's entry point (ExplorerFunction): GET and HEAD /explore and /explore/{asset}, nothing else.

Composed apart from handler.app because these routes are open to anyone (no API key) while every other route is
keyed: in a function of their own, an anonymous flood spends this function's small reserved concurrency and its
routes' own throttle, never the prediction function's. And handler.app at import reads the model's manifest, sets
up metrics and the job, analysis and inference routes (numpy, orjson): a static page needs none of it, so this
package holds only the explorer's files, and its role no permission beyond writing its logs.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.api import explorer

logger = Logger()
app = APIGatewayRestResolver()
app.include_router(explorer.router)


@app.not_found
def handle_not_found(exc: NotFoundError) -> Response:
    path, method = app.current_event.path, app.current_event.http_method.upper()
    # A known path with another method: 405 with Allow (API Gateway itself answers 403 to methods it does not route).
    allowed = sorted({route.method for route in (*app._static_routes, *app._dynamic_routes) if route.rule.match(path)})
    if allowed:
        message = f"{method} is not allowed on the explorer's routes; use {', '.join(allowed)}"
        return explorer.error_response(
            HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed", [("method", message)], {"Allow": ", ".join(allowed)}
        )
    return explorer.error_response(HTTPStatus.NOT_FOUND, "not found", [("path", "this function serves GET /explore")])


@app.exception_handler(Exception)
def handle_unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return explorer.error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; it has been logged", [])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
