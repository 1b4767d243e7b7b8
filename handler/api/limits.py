"""Limits of the optional answers, in one place for the app and its OpenAPI document."""

import math

# Lambda answers at most 6 MB; a covariance of n points per output is n^2 numbers of ~22 characters.
RESPONSE_BUDGET_BYTES = 4_000_000


def covariance_limit(n_outputs: int) -> int:
    """Most points of a batch whose joint covariance fits the response: 426 for one output, 301 for two."""
    return int(math.sqrt(RESPONSE_BUDGET_BYTES / (22 * n_outputs)))


# Joint samples: a covariance over the points (Cholesky: cubic in them), and an answer of points x samples
# numbers per output, ~22 characters each, kept within the response budget.
SAMPLE_MAX_POINTS = 1_000
SAMPLE_MAX_SAMPLES = 100_000
SAMPLE_MAX_VALUES = 200_000
