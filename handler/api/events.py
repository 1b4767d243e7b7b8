"""What a function reads of an API Gateway REST proxy event, checked before the resolver reads it."""

from __future__ import annotations

from typing import Any

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
