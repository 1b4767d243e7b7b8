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

# Analyses (/sensitivity, /propagate, /suggest): each answers within the function's 15 s for its maxima on one
# vCPU (benchmarks/analyses.py measures them). What costs is the points the model is evaluated at times the
# posterior draws (each draw has its own Fourier features): that product's limit is a setting,
# ANALYSIS_DRAW_BUDGET (handler.config).
ANALYSIS_DEFAULT_N = 1_024
ANALYSIS_MAX_N = 16_384
PROPAGATE_DEFAULT_N = 4_096
PROPAGATE_MAX_N = 65_536
MAX_POSTERIOR_SAMPLES = 100
# The design's numbers (points x features): 128 MB of float64, whatever the model's number of features
ANALYSIS_MAX_VALUES = 2**24
MAX_QUANTILES = 99
MAX_THRESHOLDS = 100
MAX_BINS = 200
SUGGEST_MAX_Q = 50
SUGGEST_MAX_PENDING = 200
