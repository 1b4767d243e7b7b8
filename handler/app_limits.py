"""Limits of the optional answers, in one place for the app and its OpenAPI document."""

# Lambda answers at most 6 MB; a covariance of n points per output is n^2 numbers of ~22 characters.
RESPONSE_BUDGET_BYTES = 4_000_000
# Joint samples: a covariance over the points (Cholesky: cubic in them), and an answer of points x samples
# numbers per output, ~22 characters each, kept within the response budget.
SAMPLE_MAX_POINTS = 1_000
SAMPLE_MAX_SAMPLES = 100_000
SAMPLE_MAX_VALUES = 200_000
