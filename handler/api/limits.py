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

# Analyses (/sensitivity, /propagate, /suggest): the counts below are the formats' limits; what a request may cost is
# a budget of the work itself on the model served (points x draws x outputs x this model's cost per point, in
# seconds of one vCPU, against half the function's timeout less a reserve: handler.analyses.budget), checked
# before the work (422 naming it) and, through Lambda's remaining time, during it (504).
ANALYSIS_DEFAULT_N = 1_024
ANALYSIS_MAX_N = 16_384
PROPAGATE_DEFAULT_N = 4_096
PROPAGATE_MAX_N = 65_536
MAX_POSTERIOR_SAMPLES = 100
# The design's numbers (points x features): 128 MB of float64, whatever the model's number of features
ANALYSIS_MAX_VALUES = 2**24
# The posterior draws' values (points x draws x outputs), held at once: 128 MB of float64
ANALYSIS_MAX_DRAW_VALUES = 2**24
MAX_QUANTILES = 99
MAX_THRESHOLDS = 100
MAX_BINS = 200
SUGGEST_MAX_Q = 50
SUGGEST_MAX_PENDING = 200
