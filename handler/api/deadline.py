"""Predicting a batch within the function's deadline: slices sized by this model's cost, the time left checked
before each, a 504 rather than a function Lambda kills. Shared by /predict and the V2 infer routes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aws_lambda_powertools import Logger

from handler.api.errors import RequestError
from handler.gp.artifact import Manifest
from handler.gp.model import PosteriorModel, SurrogateModel
from handler.gp.posterior import Prediction

logger = Logger(child=True)

# The reserve covers serialising and returning the answer (~20 ms for 10,000 points) with a wide margin. A slice is
# sized by this model's cost per point (m^2 for a variance: handler.analyses.budget.CostModel) to take about
# SLICE_SECONDS, between MIN and MAX points: the deadline is checked during the work whatever the model, and small
# models keep large slices (2,000-point slices make a 10,000-point request ~20% slower than one slice on Park).
SLICE_SECONDS = 0.25
MIN_SLICE_POINTS, MAX_SLICE_POINTS, UNKNOWN_MODEL_SLICE_POINTS = 64, 10_000, 2_000
RESERVED_MS = 1_000

Gradients = tuple[np.ndarray, np.ndarray]


def slice_points(surrogate: SurrogateModel, gradients: bool) -> int:
    """Points per slice for this model: about SLICE_SECONDS of its estimated work each."""
    if not isinstance(surrogate, PosteriorModel):  # a GPy pickle: no cost model; 2,000 points per slice
        return UNKNOWN_MODEL_SLICE_POINTS
    from handler.analyses.budget import CostModel

    cost = CostModel.of(surrogate.posterior, 0)
    per_point = cost.predict(1) + (cost.gradients(1) if gradients else 0.0)
    return int(np.clip(SLICE_SECONDS / per_point, MIN_SLICE_POINTS, MAX_SLICE_POINTS))


def predict_within_deadline(
    surrogate: SurrogateModel,
    points: np.ndarray,
    latent: bool,
    remaining_ms: Callable[[], float],
    gradients: bool = False,
) -> tuple[Prediction, Gradients | None]:
    """Predict (and the gradients, if asked) slice by slice; a slice starts only while the time left exceeds the
    reserve plus what the previous slice took."""
    n, p, d = len(points), surrogate.output_dim, points.shape[1]
    mean, variance = np.empty((n, p)), np.empty((n, p))
    mean_gradient, variance_gradient = (np.empty((n, d, p)), np.empty((n, d, p))) if gradients else (None, None)
    size = slice_points(surrogate, gradients)
    last_slice_ms = 0.0
    for start in range(0, n, size):
        check_deadline(remaining_ms(), last_slice_ms, f"predicted {start} of {n} points")
        started = time.perf_counter()
        stop = start + size
        mean[start:stop], variance[start:stop] = surrogate.predict(points[start:stop], latent=latent)
        if mean_gradient is not None and variance_gradient is not None:
            mean_gradient[start:stop], variance_gradient[start:stop] = surrogate.gradients(points[start:stop])
        last_slice_ms = (time.perf_counter() - started) * 1000
    both = None if mean_gradient is None or variance_gradient is None else (mean_gradient, variance_gradient)
    return Prediction(mean, variance), both


def covariance_ms(surrogate: SurrogateModel, points: int) -> float:
    """The estimated time of a joint covariance of `points` points on this model (0 where none is known)."""
    if not isinstance(surrogate, PosteriorModel):
        return 0.0
    from handler.analyses.budget import CostModel

    return CostModel.of(surrogate.posterior, 0).covariance(points) * 1000


def check_deadline(remaining_ms: float, next_ms: float, done: str) -> None:
    """A 504 naming what was done, when the next piece of work would not end before the reserve."""
    if remaining_ms < RESERVED_MS + next_ms:
        logger.warning("time budget exceeded", extra={"done": done})
        message = f"{done} before the function's deadline; send smaller batches"
        raise RequestError(504, "time budget exceeded", [("body", message)])


@dataclass(frozen=True)
class BatchLimits:
    """Most points of one /predict (or V2 infer) request on this model: the deployment's MAX_BATCH_SIZE, lowered
    where this model's estimated cost of a batch (handler.analyses.budget) would exceed the time budget."""

    points: int
    with_gradient: int
    seconds: float  # the budget: analysis_budget_seconds of the function's timeout
    m: int | None = None  # the model's training (or inducing) points; None: no cost model (a GPy pickle)
    sparse: bool = False

    def describe(self) -> str:
        kind = "inducing" if self.sparse else "training"
        return f"this model (m = {self.m} {kind} points) within its time budget of {self.seconds:.1f} s"


def cost_model_of(manifest: Manifest) -> Any:
    """The CostModel of a posterior file's model from its manifest (the shapes the file is checked against when
    loaded), without loading it; None for a GPy pickle."""
    from handler.analyses.budget import KERNEL_S, CostModel

    posterior = manifest.document.get("posterior")
    if manifest.format != "npz" or not isinstance(posterior, dict):
        return None
    try:
        m, d = posterior["arrays"]["inputs"]["shape"]
        p = posterior["arrays"]["woodbury_vector"]["shape"][1]
    except (KeyError, TypeError, ValueError, IndexError):  # not a posterior file's description: its load says why
        return None
    kernel = str((manifest.document.get("kernel") or {}).get("name"))
    if kernel not in KERNEL_S:
        return None
    return CostModel(int(m), int(d), int(p), posterior.get("inference") == "sparse", 0, kernel)


def batch_limits(manifest: Manifest, max_batch_size: int, timeout_seconds: float) -> BatchLimits:
    """This model's batch limits: the most points whose estimated prediction (and gradients) fit the budget."""
    from handler.analyses.budget import analysis_budget_seconds

    seconds = analysis_budget_seconds(timeout_seconds)
    cost = cost_model_of(manifest)
    if cost is None:
        return BatchLimits(max_batch_size, max_batch_size, seconds)
    # both costs are linear in the points: the limit is the budget over the cost of one
    plain = min(max_batch_size, int(seconds / cost.predict(1)))
    gradient = min(max_batch_size, int(seconds / (cost.predict(1) + cost.gradients(1))))
    return BatchLimits(max(plain, 1), max(gradient, 1), seconds, cost.m, cost.sparse)


def covariance_points(manifest: Manifest, timeout_seconds: float, high: int) -> int:
    """The most points (up to `high`) whose predictions and joint covariance fit this model's time budget."""
    return _largest(manifest, timeout_seconds, high, lambda cost, points: cost.covariance(points))


def sample_points(manifest: Manifest, timeout_seconds: float, high: int, samples: int) -> int:
    """The most points (up to `high`) of which /sample draws `samples` joint samples within this model's budget."""
    return _largest(manifest, timeout_seconds, high, lambda cost, points: cost.sample(points, samples))


def _largest(manifest: Manifest, timeout_seconds: float, high: int, seconds_of: Callable[[Any, int], float]) -> int:
    """The most points in [0, high] whose work, seconds_of(cost model, points), fits the budget (it grows with them
    faster than linearly: found by bisection); `high` for a model without a cost model."""
    from handler.analyses.budget import analysis_budget_seconds

    cost = cost_model_of(manifest)
    if cost is None:
        return high
    seconds, low = analysis_budget_seconds(timeout_seconds), 0
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if seconds_of(cost, middle) <= seconds else (low, middle - 1)
    return low
