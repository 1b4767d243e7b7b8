"""Routes that answer from a model exist once per way of addressing one: at the root (the packaged model), at
`/models/{name}/...` (`name` or `name@alias`) and at `/models/{name}/versions/{version}/...`.

`model_route` registers all three; the route's code asks `served()` for its model, which the one resolver chose
for this request (`handler.registry.resolver`). The version that answered is `answered_by()`: `X-Model-Version`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

from handler.api.errors import RequestError
from handler.registry.names import BadNameError, ModelRef
from handler.registry.resolver import ModelResolver, ServedModel

_resolver: ModelResolver | None = None
_served: ContextVar[ServedModel | None] = ContextVar("served_model", default=None)
_answered_by: ContextVar[str | None] = ContextVar("answered_by", default=None)


def configure(resolver: ModelResolver) -> None:
    global _resolver
    _resolver = resolver


def resolver() -> ModelResolver:
    assert _resolver is not None, "handler.api.model_routes.configure() was not called"
    return _resolver


def served() -> ServedModel:
    """The model this request is answered by: the one its path addressed, else the packaged model."""
    model = _served.get()
    if model is None:
        model = resolver().packaged_model()
        _answered_by.set(model.label)
    return model


def answered_by() -> str | None:
    return _answered_by.get()


def begin_request() -> None:
    _served.set(None)
    _answered_by.set(None)


def parse_ref(name: str, version: str | None = None) -> ModelRef:
    try:
        return ModelRef.parse(name, version)
    except BadNameError as exc:
        field = "version" if version is not None and _valid_name(name) else "model"
        raise RequestError(HTTPStatus.NOT_FOUND, f"{field} not found", [(field, str(exc))]) from None


def _valid_name(name: str) -> bool:
    try:
        ModelRef.parse(name)
    except BadNameError:
        return False
    return True


def serve(ref: ModelRef | None, route: Callable[[], Any]) -> Any:
    model = resolver().resolve(ref)
    token = _served.set(model)
    _answered_by.set(model.label)
    try:
        return route()
    finally:
        _served.reset(token)


def model_route(router: Any, method: str, path: str, model_path: str | None = None) -> Callable[[Any], Any]:
    """Register `route` at `path` and under both model prefixes (at `model_path` there, if it differs)."""
    inner = model_path or path

    def register(route: Callable[[], Any]) -> Callable[[], Any]:
        router.route(path, method)(lambda: serve(None, route))
        router.route(f"/models/<name>{inner}", method)(lambda name: serve(parse_ref(name), route))
        router.route(f"/models/<name>/versions/<version>{inner}", method)(
            lambda name, version: serve(parse_ref(name, version), route)
        )
        return route

    return register
