"""How many points one chunk of a job holds on the model served: what fits the worker's time, at most JOB_CHUNK_POINTS.

A chunk is predicted in one worker invocation, so its cost grows with the model: 1.1 ms a point on an exact model
of m = 8,000 (x86_64, one thread), 2.0 ms sparse, so 200,000 points would outrun the worker's 300 s. A chunk holds
what handler.analyses.budget estimates to cost at most (timeout - 1 s) / ANALYSIS_SAFETY seconds: the same margin as
an analysis (the cost model within 0.5-1.1x of what is measured, arm64's matrix products ~2.5x x86_64's). The size
is recorded in the job when it is planned, so every chunk of a job covers the same points.
"""

from __future__ import annotations

from handler.analyses.budget import CostModel, analysis_budget_seconds
from handler.gp.model import PosteriorModel, SurrogateModel

CHUNK_ROUNDING_POINTS = 1_000  # sizes above this are whole thousands: easier to read in a job's record


def model_chunk_points(
    surrogate: SurrogateModel, configured: int, worker_timeout_seconds: float, least: int = 0
) -> int:
    """Points a chunk holds on this model; a model served through GPy (no cost model) keeps `configured`.

    `least`: raise the size to this where the model's time allows (a part of a stitched results file needs 5 MiB).
    """
    if not isinstance(surrogate, PosteriorModel):
        return max(configured, least)
    return fitting_chunk_points(CostModel.of(surrogate.posterior, 0), configured, worker_timeout_seconds, least)


def fitting_chunk_points(cost: CostModel, configured: int, worker_timeout_seconds: float, least: int = 0) -> int:
    fits = int(analysis_budget_seconds(worker_timeout_seconds) / cost.predict(1))
    if fits > CHUNK_ROUNDING_POINTS:
        fits -= fits % CHUNK_ROUNDING_POINTS
    return max(1, min(configured, fits), min(least, fits))
