"""A model that answers what no model may: a number that is not finite, or a variance below zero.

Raised where predictions, draws and analyses' answers are made, so that every route answers one fixed 503 (the
reason goes to the log, never to a caller) rather than a 500, a `null` or a negative variance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from handler.gp.artifact import ModelUnavailableError


class ModelBrokenError(ModelUnavailableError):
    """The model loaded but answers non-finite numbers or negative variances: its file is wrong, not the request."""


def require_finite(what: str, *arrays: np.ndarray) -> None:
    for array in arrays:
        if not np.isfinite(array).all():
            raise ModelBrokenError(f"{what}: {np.size(array) - np.isfinite(array).sum()} values are not finite")


def require_finite_answer(answer: Any, what: str = "answer") -> Any:
    """`answer` (JSON-like: dicts, lists, numbers, arrays) unchanged, if every number in it is finite."""
    stack = [answer]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, np.ndarray):
            if value.dtype.kind in "fc":
                require_finite(what, value)
            elif value.dtype == object:
                stack.extend(value.ravel().tolist())
        elif isinstance(value, (float, np.floating)) and not math.isfinite(value):
            raise ModelBrokenError(f"{what} holds {value}")
    return answer
