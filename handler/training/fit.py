"""Fit a GP to a simulator's data, well by default whatever the data's units.

What a new user's fit gets wrong (issue 23: Borehole, inputs from 0.05 to 115,600, GPy's lengthscales of 1 never
moved, R^2 0) is done here once: the inputs are scaled to the unit cube by the declared bounds and the outputs
standardised inside the fit; each lengthscale starts from its feature's data range, with restarts drawn around it;
the noise is bounded away from zero (the Cholesky factor stays well conditioned) and from swallowing the signal.
The fit is then written back as the same GP in the caller's units (`FitResult.model`), which packaging turns into
the posterior file the service serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import GPy
import numpy as np
import scipy.optimize

from handler.gp.gpy_model import GPRegressionModel, SparseGPRegressionModel
from handler.training.validation import OutputMetrics, cross_validation, quality_problems

KERNELS = ("RBF", "Matern32", "Matern52", "Exponential")
KernelChoice = Literal["auto", "RBF", "Matern32", "Matern52", "Exponential"]

# Restarts: the first from the data's ranges, the others drawn around it, stopping early once two agree. On the
# benchmark functions (benchmarks/fit_quality.py) the first start reaches the best optimum in most fits and the
# others differ by a few nats where they differ (Borehole: 1274.3 against 1272.2); 3 is one start and two chances to
# leave a local optimum, at a cost linear in their number (each ~100 evaluations of the likelihood and gradient).
DEFAULT_RESTARTS = 3
# Exact GP up to EXACT_MAX_N points, sparse (DEFAULT_INDUCING inducing points, a random subset of the data, fixed)
# beyond it up to MAX_TRAINING_ROWS. Measured on Borehole, one core, Matern52, one start: at 2,000 points (exact) an
# optimisation took 84 evaluations of the likelihood and its gradient, 68 s of CPU (each evaluation factorises and
# inverts the 2,000 x 2,000 covariance); at 10,000 (sparse, 200 inducing points) 185 evaluations, 79 s, hold-out
# R^2 0.999997 (both with scipy's default tolerance: RELATIVE_TOLERANCE takes ~20% fewer). Kernel auto with 3
# restarts runs at most 6 optimisations: ~7-8 min of CPU at either size, inside Lambda's 15 minutes on one vCPU;
# 20,000 points would not be. Peak RSS: 0.9 GB exact at 2,000, 0.5 GB sparse at 10,000.
EXACT_MAX_N = 2_000
MAX_TRAINING_ROWS = 10_000
DEFAULT_INDUCING = 200
MAX_INDUCING = 500  # a sparse evaluation costs O(n m^2): 500 is 6x the default's
MAX_RESTARTS = 20
MAX_ITERS = 1_000  # L-BFGS-B iterations per restart; converged fits stop far sooner
# L-BFGS-B stops when an iteration gains less than this relative share of the log-likelihood (~1e-5 nats at the
# Borehole's 1,270): scipy's default, 2.2e-9, costs ~20% more evaluations for no change in hold-out R^2.
RELATIVE_TOLERANCE = 1e-8

# In standardised output units (variance 1): the noise at least 1e-6 (a relative error of 1e-3 of the outputs'
# spread, below any R^2 that matters, and a covariance conditioned at most ~1e6 x n) and at most 0.5: a model
# explaining more than half the outputs' variance as noise cannot pass the quality gate (R^2 >= 0.5) anyway, and
# the all-noise optimum is where a badly started fit ends (issue 21).
NOISE_BOUNDS = (1e-6, 0.5)
# In unit-cube inputs: shorter than 1e-3 of a feature's range interpolates nothing, longer than 1e3 switches the
# feature off; the kernel variance, in standardised units, a thousandfold either way of the outputs' variance.
LENGTHSCALE_BOUNDS = (1e-3, 1e3)
VARIANCE_BOUNDS = (1e-3, 1e3)
RESTART_SPREAD = (0.2, 2.0)  # random restarts: each lengthscale its first start times a log-uniform factor
INITIAL_NOISE = 1e-4
# Restarts stop once two have reached the same best log-likelihood (within 0.5 nats: a likelihood ratio of 1.6,
# nothing to choose between): a third rarely finds better, and each costs as much as the first.
SAME_OPTIMUM = 0.5
AGREEING_RESTARTS = 2


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
    for values, kind, names in ((X, "inputs", features), (Y, "outputs", outputs)):
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            row, column = bad[0]
            raise TrainingDataError(
                kind, f"row {row}: {names[column]} is {values[row, column]} ({len(bad)} values are not finite)"
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
    return CheckedData(X, Y, bounds, dropped)


@dataclass(frozen=True)
class Restart:
    """One optimisation: where it started (unit-cube lengthscales), where it ended, and why it stopped."""

    kernel: str
    start: tuple[float, ...]
    log_likelihood: float
    seconds: float
    stopped: Literal["converged", "iterations", "deadline", "failed"]


@dataclass
class FitResult:
    """The fitted GP in the caller's units (`model`: packaged as is), and how it was found and how well it predicts.

    `scaled`: the same GP as fitted (inputs in the unit cube of `bounds`). `validation`: leave-one-out accuracy per
    output; `problems`: what fails the quality gate on it ([] passes). `candidates`: each kernel tried, and its
    mean leave-one-out MSLL (the lower, the better; "auto" picks the lowest).
    """

    model: GPRegressionModel
    scaled: Any
    kernel: str
    inference: Literal["exact", "sparse"]
    bounds: np.ndarray
    validation: dict[str, OutputMetrics]
    problems: list[str]
    candidates: dict[str, float]
    restarts: list[Restart]
    dropped_duplicates: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What a version's record keeps of the fit (JSON-ready: a number that is not finite is None)."""
        return _finite_or_none(
            {
                "kernel": self.kernel,
                "inference": self.inference,
                "n_train": int(self.model.gp.num_data),
                "dropped_duplicates": self.dropped_duplicates,
                "candidates": self.candidates,
                "restarts": [vars(r) | {"start": list(r.start)} for r in self.restarts],
                "validation": {name: vars(m) for name, m in self.validation.items()},
                "problems": self.problems,
                "seconds": self.seconds,
                "notes": self.notes,
            }
        )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


class _OutOfTimeError(Exception):
    pass


def fit(
    X: Any,
    Y: Any,
    bounds: Any,
    *,
    kernel: KernelChoice = "auto",
    restarts: int = DEFAULT_RESTARTS,
    seed: int = 0,
    sparse_above: int = EXACT_MAX_N,
    inducing: int = DEFAULT_INDUCING,
    deadline: float | None = None,
    outputs: list[str] | None = None,
    features: list[str] | None = None,
    max_iters: int = MAX_ITERS,
) -> FitResult:
    """Fit a GP (exact up to `sparse_above` points, else sparse with `inducing` points) by maximum likelihood.

    `bounds`: (features, 2), the declared range of each input; `kernel`: one of KERNELS (all ARD), or "auto": each
    is fitted and the lowest mean leave-one-out MSLL wins. `restarts`: optimisations per kernel, the first from
    the data's ranges. `deadline`: a `time.monotonic()` instant after which no optimisation goes on (the best so
    far is kept; TimeoutError if none has finished a step). Deterministic for a seed and the library versions.
    """
    started = time.monotonic()
    if kernel != "auto" and kernel not in KERNELS:
        raise TrainingDataError("kernel", f"expected auto or one of {', '.join(KERNELS)}, got {kernel!r}")
    if not 1 <= restarts <= MAX_RESTARTS:
        raise TrainingDataError("restarts", f"expected 1 to {MAX_RESTARTS}, got {restarts}")
    if not 1 <= inducing <= MAX_INDUCING:
        raise TrainingDataError("inducing", f"expected 1 to {MAX_INDUCING}, got {inducing}")
    data = check_training_data(X, Y, bounds, features=features, outputs=outputs)
    n, d = data.X.shape
    outputs = outputs or (["y"] if data.Y.shape[1] == 1 else [f"y{j + 1}" for j in range(data.Y.shape[1])])
    low, width = data.bounds[:, 0], data.bounds[:, 1] - data.bounds[:, 0]
    X_unit = (data.X - low) / width
    sparse = n > sparse_above
    notes = []
    if data.dropped_duplicates:
        notes.append(f"{data.dropped_duplicates} rows repeated exactly were kept once")
    rng = np.random.default_rng(seed)
    Z = X_unit[np.sort(rng.choice(n, size=min(inducing, n), replace=False))] if sparse else None
    first_start = np.clip(np.ptp(X_unit, axis=0), 0.1, None)  # a feature constant in the data starts at 0.1
    starts = [first_start] + [
        first_start * np.exp(rng.uniform(*np.log(RESTART_SPREAD), size=d)) for _ in range(restarts - 1)
    ]
    # "auto": each kernel from the first start, the lowest leave-one-out MSLL wins and gets the other restarts
    # (on the benchmark functions the restarts rarely change the optimum: screening every kernel with all of them
    # would cost 4x for nothing). One kernel: all restarts on it.
    searches = {
        name: _Search(name, X_unit, data.Y, Z, deadline, max_iters)
        for name in (KERNELS if kernel == "auto" else (kernel,))
    }
    candidates: dict[str, float] = {}
    fitted: dict[str, tuple[GPRegressionModel, dict[str, OutputMetrics]]] = {}

    def score(name: str) -> None:
        model = _in_original_units(searches[name].best_model(), data.X, data.Y, low, width)
        validation = cross_validation(model, outputs)
        if isinstance(validation, str):  # a Gaussian likelihood and GPy's inference: never, but say so
            raise RuntimeError(f"no leave-one-out for the fitted model: {validation}")
        msll = [m.msll for m in validation.values()]
        candidates[name] = float(np.mean(msll)) if np.all(np.isfinite(msll)) else float("inf")
        fitted[name] = (model, validation)

    for name, search in searches.items():
        try:
            search.run(starts[:1] if len(searches) > 1 else starts)
        except TimeoutError:
            if not candidates:
                raise
            notes.append(f"{name} was not tried: the deadline passed")
            continue
        score(name)
    best = min(candidates, key=lambda k: (candidates[k], KERNELS.index(k)))
    if len(searches) > 1 and restarts > 1:
        searches[best].run(starts[1:])
        score(best)
    model, validation = fitted[best]
    log = [r for search in searches.values() for r in search.log]
    if any(r.stopped == "deadline" for r in log):
        notes.append("the deadline stopped the optimisation: the best point reached is kept")
    return FitResult(
        model=model,
        scaled=searches[best].best_model(),
        kernel=best,
        inference="sparse" if sparse else "exact",
        bounds=data.bounds,
        validation=validation,
        problems=quality_problems({"leave-one-out": validation}),
        candidates=candidates,
        restarts=log,
        dropped_duplicates=data.dropped_duplicates,
        seconds=time.monotonic() - started,
        notes=notes,
    )


def _unit_cube_model(kernel: str, X: np.ndarray, Y: np.ndarray, Z: np.ndarray | None) -> Any:
    """A GPy model on unit-cube inputs, outputs standardised by GPy's normaliser, its parameters bounded."""
    d = X.shape[1]
    kern = getattr(GPy.kern, kernel)(d, ARD=True)
    if Z is None:
        gp = GPy.models.GPRegression(X, Y, kern, normalizer=True)
    else:
        gp = GPy.models.SparseGPRegression(X, Y, kern, Z=Z.copy(), normalizer=True)
        # Fixed: optimising them adds inducing x features parameters (1,600 at 200 x 8), and L-BFGS-B needs several
        # times the iterations; a random subset of the data covers it as the data do.
        gp.inducing_inputs.fix(warning=False)
    gp.kern.lengthscale.constrain_bounded(*LENGTHSCALE_BOUNDS, warning=False)
    gp.kern.variance.constrain_bounded(*VARIANCE_BOUNDS, warning=False)
    gp.likelihood.variance.constrain_bounded(*NOISE_BOUNDS, warning=False)
    return gp


class _Search:
    """Restarts of one kernel, each by L-BFGS-B from its start, remembering the best likelihood reached."""

    def __init__(
        self, kernel: str, X: np.ndarray, Y: np.ndarray, Z: np.ndarray | None, deadline: float | None, max_iters: int
    ) -> None:
        self.kernel, self.Z, self.deadline, self.max_iters = kernel, Z, deadline, max_iters
        self.gp = _unit_cube_model(kernel, X, Y, Z)
        self.best_x: np.ndarray | None = None
        self.best_f = np.inf
        self.agreeing = 0  # restarts that reached the best likelihood (to SAME_OPTIMUM)
        self.log: list[Restart] = []

    def run(self, starts: list[np.ndarray]) -> None:
        for start in starts:
            if self.deadline is not None and time.monotonic() > self.deadline and self.best_x is not None:
                break
            clock = time.monotonic()
            self.gp.kern.lengthscale[:] = np.clip(start, *LENGTHSCALE_BOUNDS)
            self.gp.kern.variance[:] = 1.0
            self.gp.likelihood.variance[:] = INITIAL_NOISE
            x, f, stopped = _minimise(self.gp, self.max_iters, self.deadline)
            seconds = time.monotonic() - clock
            self.log.append(Restart(self.kernel, tuple(map(float, start)), -float(f), seconds, stopped))
            if x is not None and f < self.best_f - SAME_OPTIMUM:
                self.best_x, self.best_f, self.agreeing = x, f, 1
            elif x is not None and f < self.best_f + SAME_OPTIMUM:
                self.agreeing += 1
                if f < self.best_f:
                    self.best_x, self.best_f = x, f
            if self.agreeing >= AGREEING_RESTARTS:
                break
        if self.best_x is None:
            if any(r.stopped == "deadline" for r in self.log):
                raise TimeoutError(f"{self.kernel}: the deadline passed before the first optimisation step")
            raise RuntimeError(f"{self.kernel}: every optimisation failed (the covariance could not be factorised)")

    def best_model(self) -> Any:
        """The GPy model (unit-cube inputs) at the best parameters found."""
        self.gp.optimizer_array = self.best_x
        return self.gp


def _minimise(gp: Any, max_iters: int, deadline: float | None) -> tuple[np.ndarray | None, float, Any]:
    """L-BFGS-B on GPy's negative log-likelihood (paramz's transformed parameters), stoppable at a deadline."""
    best: list[Any] = [None, np.inf]

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        if deadline is not None and time.monotonic() > deadline:
            raise _OutOfTimeError
        f, g = gp._objective_grads(x)  # inf (and clipped gradients) where the factorisation fails
        if np.isfinite(f) and f < best[1]:
            best[0], best[1] = x.copy(), float(f)
        return f, g

    stopped = "converged"
    try:
        result = scipy.optimize.minimize(
            objective,
            gp.optimizer_array.copy(),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iters, "ftol": RELATIVE_TOLERANCE},
        )
        if result.status == 1:
            stopped = "iterations"
    except _OutOfTimeError:
        stopped = "deadline"
    except np.linalg.LinAlgError:
        stopped = "failed"
    return best[0], best[1], stopped


def _in_original_units(scaled: Any, X: np.ndarray, Y: np.ndarray, low: np.ndarray, width: np.ndarray) -> Any:
    """The same GP on the caller's inputs: a stationary kernel of (x - x') / lengthscale is unchanged by the shift,
    so each lengthscale is multiplied by its feature's width; the outputs keep GPy's normaliser (the same Y, so the
    same mean and std). Inducing points map as the inputs do."""
    kern = type(scaled.kern)(
        X.shape[1],
        variance=float(scaled.kern.variance.values[0]),
        lengthscale=np.asarray(scaled.kern.lengthscale.values, dtype=float) * width,
        ARD=True,
    )
    if isinstance(scaled, GPy.models.SparseGPRegression):
        Z = low + np.asarray(scaled.Z, dtype=float) * width
        gp = GPy.models.SparseGPRegression(X, Y, kern, Z=Z, normalizer=True)
        wrapper: type[GPRegressionModel] = SparseGPRegressionModel
    else:
        gp = GPy.models.GPRegression(X, Y, kern, normalizer=True)
        wrapper = GPRegressionModel
    gp.likelihood.variance[:] = float(scaled.likelihood.variance.values[0])
    return wrapper(gp)
