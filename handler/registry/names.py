"""How models, aliases and versions are named and addressed: `name`, `name@alias`, or a version number."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from handler.gp.artifact import NAME_PATTERN

ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_\-]{0,31}")
DEFAULT_ALIAS = "live"
MAX_VERSION = 10**9
MAX_REF_CHARS = 64 + 1 + 32


class BadNameError(ValueError):
    """A model name, alias or version that does not follow its rule; the message says the rule."""


def check_model_name(value: Any) -> str:
    if not (isinstance(value, str) and NAME_PATTERN.fullmatch(value)):
        raise BadNameError("a model name starts with a letter or _ and holds only letters, digits, _ or - (64 at most)")
    return value


def check_alias(value: Any) -> str:
    if not (isinstance(value, str) and ALIAS_PATTERN.fullmatch(value)):
        raise BadNameError("an alias starts with a lower-case letter and holds only a-z, 0-9, _ or - (32 at most)")
    return value


def check_version(value: Any) -> int:
    """A version as a path gives it (text) or a body does (an integer): 1 to 10^9."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_VERSION:
        raise BadNameError(f"a version is an integer from 1 to {MAX_VERSION}")
    return value


@dataclass(frozen=True)
class ModelRef:
    """A model as a caller addresses it: its `live` alias, another alias, or a pinned version."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, text: str, version: str | None = None) -> ModelRef:
        """`name` or `name@alias` (a path segment, `@` possibly sent as %40), and a path's version if any."""
        if not isinstance(text, str) or len(text) > MAX_REF_CHARS:
            raise BadNameError(f"a model is addressed as name or name@alias ({MAX_REF_CHARS} characters at most)")
        # API Gateway has decoded the path once (%40 is @ here); nothing is decoded twice
        name, at, alias = text.partition("@")
        check_model_name(name)
        if version is not None:
            if at:
                raise BadNameError("address a model by name@alias or by a version, not both")
            return cls(name, version=check_version(version))
        return cls(name, alias=check_alias(alias) if at else None)

    def describe(self) -> str:
        if self.version is not None:
            return f"{self.name} version {self.version}"
        return f"{self.name}@{self.alias or DEFAULT_ALIAS}"
