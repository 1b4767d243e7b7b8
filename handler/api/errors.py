"""A refused request and its JSON error body: what every route's refusals share, whatever the caller sent."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

MAX_ERROR_DETAILS = 20  # a 10,000-point batch of bad rows must not produce a 10,000-line error
MAX_FIELD_CHARS = 200  # a field's path quotes the caller's keys, which may be as long as the body
MAX_MESSAGE_CHARS = 1_000


@dataclass
class RequestError(Exception):
    """A request the API refuses; becomes a 4xx JSON error body."""

    status_code: int
    error: str
    details: list[tuple[str, str]] = field(default_factory=list)  # (field, message)

    def body(self) -> dict[str, Any]:
        """The error as JSON-ready data, whatever the caller sent: field names echo its keys, messages its values."""
        return {
            "error": encodable(self.error),
            "details": [
                {"field": encodable(f, MAX_FIELD_CHARS), "message": encodable(m)}
                for f, m in self.details[:MAX_ERROR_DETAILS]
            ],
        }


def encodable(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` as an error body can carry it: at most `limit` characters, every one encodable in UTF-8.

    A lone surrogate (JSON's `\\ud800` decodes to one; orjson cannot write it) becomes the six characters `\\ud800`.
    """
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class _BriefRepr(reprlib.Repr):
    """reprlib, whose work is bounded by what it shows, except that it sorts a dict's keys first: not here."""

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x or level <= 0:
            return "{}" if not x else "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"


_BRIEF = _BriefRepr(maxlevel=3, maxdict=4, maxlist=6, maxtuple=6, maxstring=60, maxlong=60, maxother=60)


def brief(value: Any, limit: int = 40) -> str:
    """A caller's value, quoted in an error message no longer than `limit` characters, whatever its size."""
    text = _BRIEF.repr(value)
    return encodable(text if len(text) <= limit else text[: limit - 3] + "...")


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type: null, boolean, number, string, array or object."""
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return names.get(type(value), "object" if isinstance(value, dict) else type(value).__name__)
