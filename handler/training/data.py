"""Training data and options checked before any fitting, with numpy alone: the admin function (no GPy, no scipy in
its package) refuses a bad training request with these checks before anything is queued, and the training worker
fits what they accept (handler/training/fit.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KERNELS = ("RBF", "Matern32", "Matern52", "Exponential")

# Restarts: the first from the data's ranges, the others drawn around it, stopping early once two agree. On the
# benchmark functions (benchmarks/fit_quality.py) the first start reaches the best optimum in most fits and the
# others differ by a few nats where they differ (Borehole: 1274.3 against 1272.2); 3 is one start and two chances to
# leave a local optimum, at a cost linear in their number (each ~100 evaluations of the likelihood and gradient).
DEFAULT_RESTARTS = 3
# Exact GP up to EXACT_MAX_N points, sparse (DEFAULT_INDUCING inducing points, a random subset of the data, fixed)
# beyond it up to MAX_TRAINING_ROWS. Measured on Borehole, one core: at 2,000 points (exact, numpy likelihood) the
# whole default fit (kernel auto: 4 screenings, the winner finished, 2 restarts) took 67 s of CPU, peak RSS 0.95 GB,
# hold-out R^2 1.000000; at 10,000 (sparse, 200 inducing points, GPy's likelihood) one optimisation took 185
# evaluations, 79 s, R^2 0.999997, peak RSS 0.5 GB: the default fit there is ~4 such optimisations plus 4 short
# screenings, ~6 min of CPU, inside Lambda's 15 minutes on one vCPU; 20,000 points would not be.
EXACT_MAX_N = 2_000
MAX_TRAINING_ROWS = 10_000
MAX_RESTARTS = 20
# Outputs are standardised inside the fit and a prediction's variance is the fit's times the outputs' variance: past
# 1e150 in size (or spread) that variance, a square, overflows float64 (the fit fails, predictions are infinite),
# and a spread whose square underflows (below ~1.5e-154) leaves nothing to standardise. Rescale such outputs.
MAX_OUTPUT_MAGNITUDE = 1e150
# GPy (and the served posterior, which must agree with it) forms a kernel's r^2 as |a|^2 + |b|^2 - 2 a.b in the
# caller's units: inputs far from zero against their range lose r^2's digits to that cancellation. Measured on
# Branin moved R ranges away: the same fit to rounding at R = 100; 3x the hold-out RMSE at 300, 22x at 1,000
# (another kernel chosen); at 10^5 a READY model whose batch predictions answered 503. So bounds whose centre lies
# more than MAX_OFFSET_WIDTHS of their widths from zero are refused, naming the feature and the shift that fixes it.
MAX_OFFSET_WIDTHS = 100.0
# A fitted lengthscale reaches 1e3 of its feature's width (handler.training.fit.LENGTHSCALE_BOUNDS, in units of the
# width): a wider range than this overflows it (the red team: bounds [1e308, 1.7e308] queued, then FAILED "lengthscale:
# holds values that are not finite"), so it is refused with the bounds.
MAX_WIDTH = float(np.finfo(float).max) / 1e3


class TrainingDataError(ValueError):
    """The data cannot be fitted: `field` names the request's field ("inputs", "outputs", "bounds" or "rows")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class CheckedData:
    """The training data as fitted: rows repeated exactly (inputs and outputs) kept once."""

    X: np.ndarray
    Y: np.ndarray
    bounds: np.ndarray  # (features, 2)
    dropped_duplicates: int


def check_training_data(
    X: Any, Y: Any, bounds: Any, *, features: list[str] | None = None, outputs: list[str] | None = None
) -> CheckedData:
    """The data, checked before any fitting; TrainingDataError names the field and what is wrong.

    Sizes first (a refusal costs no more than the checks of the largest valid set): at most MAX_TRAINING_ROWS
    rows. Then every value finite, every input inside its declared bounds, no constant output. Rows repeated
    exactly (the same inputs and outputs, as a retried upload makes) are kept once; the same inputs with different
    outputs are replicates, kept: they are what tells the noise from the signal. At least features + 1 distinct
    input points: fewer cannot tell the features' effects apart (nor even fix a plane through the points).
    """
    X, Y, bounds = np.asarray(X), np.asarray(Y), np.asarray(bounds)
    if X.ndim != 2 or X.shape[1] < 1:
        raise TrainingDataError("inputs", f"expected a table of rows x features, got shape {X.shape}")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[1] < 1:
        raise TrainingDataError("outputs", f"expected a table of rows x outputs, got shape {Y.shape}")
    n, d = X.shape
    if n > MAX_TRAINING_ROWS:
        raise TrainingDataError("rows", f"{n} rows: at most {MAX_TRAINING_ROWS} can be fitted")
    if len(Y) != n:
        raise TrainingDataError("outputs", f"{len(Y)} rows of outputs for {n} rows of inputs")
    if bounds.shape != (d, 2):
        raise TrainingDataError("bounds", f"expected a [low, high] pair for each of the {d} features")
    features = features or [f"x{j + 1}" for j in range(d)]
    outputs = outputs or (["y"] if Y.shape[1] == 1 else [f"y{j + 1}" for j in range(Y.shape[1])])
    if n < 2:
        raise TrainingDataError("rows", f"{n} row: a GP needs at least 2 points (and more than the features)")
    if not (np.issubdtype(X.dtype, np.number) and np.issubdtype(Y.dtype, np.number)):
        raise TrainingDataError("inputs" if not np.issubdtype(X.dtype, np.number) else "outputs", "expected numbers")
    if not np.issubdtype(bounds.dtype, np.number):
        raise TrainingDataError("bounds", "expected numbers")
    X, Y, bounds = X.astype(float), Y.astype(float), bounds.astype(float)
    low, high = bounds.T
    for j in np.flatnonzero(~(np.isfinite(low) & np.isfinite(high) & (low < high) & np.isfinite(high - low))):
        raise TrainingDataError("bounds", f"{features[j]} needs finite low < high, got [{low[j]:g}, {high[j]:g}]")
    for j in np.flatnonzero(high - low > MAX_WIDTH):
        raise TrainingDataError(
            "bounds",
            f"{features[j]}'s bounds [{low[j]:.6g}, {high[j]:.6g}] are wider than {MAX_WIDTH:.3g} (its lengthscales "
            f"would overflow): rescale {features[j]}",
        )
    check_offsets(bounds, features)
    for values, kind, names in ((X, "inputs", features), (Y, "outputs", outputs)):
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            row, column = bad[0]
            raise TrainingDataError(
                kind, f"row {row}: {names[column]} is {values[row, column]} ({len(bad)} values are not finite)"
            )
    if (too_large := np.argwhere(np.abs(Y) > MAX_OUTPUT_MAGNITUDE)).size:
        row, column = too_large[0]
        raise TrainingDataError(
            "outputs",
            f"row {row}: {outputs[column]} is {Y[row, column]:g}: outputs larger than {MAX_OUTPUT_MAGNITUDE:g} "
            "cannot be fitted (their variance overflows); rescale them",
        )
    outside = np.argwhere((low > X) | (high < X))
    if len(outside):
        row, j = outside[0]
        raise TrainingDataError(
            "inputs",
            f"row {row}: {features[j]} = {X[row, j]:g} is outside its bounds [{low[j]:g}, {high[j]:g}] "
            f"({len(outside)} values are)",
        )
    _, first = np.unique(np.column_stack([X, Y]), axis=0, return_index=True)
    kept = np.sort(first)
    dropped = n - len(kept)
    X, Y = X[kept], Y[kept]
    distinct = len(np.unique(X, axis=0))
    if distinct <= d:
        raise TrainingDataError(
            "rows", f"{distinct} distinct input points for {d} features: at least {d + 1} are needed"
        )
    for k, name in enumerate(outputs):
        # constant to rounding: a spread of a few ulps of the values is no signal
        if np.ptp(Y[:, k]) <= 8 * np.finfo(float).eps * float(np.max(np.abs(Y[:, k]))):
            raise TrainingDataError("outputs", f"{name} is constant ({Y[0, k]:g}): there is nothing to fit")
        if np.std(Y[:, k]) ** 2 < np.finfo(float).tiny:
            spread = np.ptp(Y[:, k])
            raise TrainingDataError(
                "outputs", f"{name} varies by {spread:g}: too little to standardise (its variance underflows)"
            )
    return CheckedData(X, Y, bounds, dropped)


def check_offsets(bounds: Any, features: list[str]) -> None:
    """TrainingDataError ("bounds") when a feature's bounds (finite, low < high) are centred more than
    MAX_OFFSET_WIDTHS of their widths from zero, naming the feature, its bounds and the shift that fixes it. The
    training route checks the bounds as given (not the domain widened by the margin, whose offset is smaller), so
    that what it accepts the fit accepts too."""
    low, high = np.asarray(bounds, dtype=float).T
    with np.errstate(all="ignore"):  # halves first: low + high may overflow
        offsets = np.abs(low / 2 + high / 2) / (high - low)
    for j in np.flatnonzero(offsets > MAX_OFFSET_WIDTHS):
        centre = low[j] / 2 + high[j] / 2
        shift = f"{features[j]} - {centre:.6g}" if centre > 0 else f"{features[j]} + {-centre:.6g}"
        raise TrainingDataError(
            "bounds",
            f"{features[j]}'s bounds [{low[j]:.6g}, {high[j]:.6g}] are centred {offsets[j]:.4g} of their widths from "
            f"zero (at most {MAX_OFFSET_WIDTHS:g}): the kernel's distances lose their digits there; fit "
            f"{features[j]} minus an offset (e.g. {shift})",
        )


def answered_domain(bounds: np.ndarray, limits: np.ndarray | None, margin: float) -> np.ndarray:
    """Where a model answers (handler.gp.artifact.Manifest.domain): its bounds widened by `margin` x each range,
    within its physical limits. A model's data may lie anywhere in it: /suggest proposes points there, and the
    rows simulated at them are observations like any other."""
    width = bounds[:, 1] - bounds[:, 0]
    low, high = bounds[:, 0] - margin * width, bounds[:, 1] + margin * width
    if limits is not None:
        low, high = np.maximum(low, limits[:, 0]), np.minimum(high, limits[:, 1])
    return np.column_stack([low, high])


def covering(bounds: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The bounds widened just enough to hold every row of X: what a fit on data reaching past its model's bounds
    (inside the answered domain) declares, so that the new version's domain grows with its data."""
    if len(X) == 0:
        return bounds
    return np.column_stack([np.minimum(bounds[:, 0], X.min(axis=0)), np.maximum(bounds[:, 1], X.max(axis=0))])


def limits_array(limits: Any, features: Any) -> np.ndarray | None:
    """{feature: [low or None, high or None]} as a (d, 2) array with open ends infinite; None without limits."""
    if not limits:
        return None
    pairs = [limits.get(name) or [None, None] for name in features]
    return np.array([[-np.inf if lo is None else lo, np.inf if hi is None else hi] for lo, hi in pairs], dtype=float)
