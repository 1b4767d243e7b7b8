"""Fit a GP to a simulator's data, well by default whatever the data's units.

What a new user's fit gets wrong (issue 23: Borehole, inputs from 0.05 to 115,600, GPy's lengthscales of 1 never
moved, R^2 0) is done here once: the inputs are scaled to the unit cube by the declared bounds and the outputs
standardised inside the fit; each lengthscale starts from its feature's data range, with restarts drawn around it;
the noise is bounded away from zero (the Cholesky factor stays well conditioned) and from swallowing the signal.
The fit is then written back as the same GP in the caller's units (`FitResult.model`), which packaging turns into
the posterior file the service serves.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import GPy
import numpy as np
import scipy.linalg
import scipy.optimize

from handler.gp.gpy_model import GPRegressionModel, SparseGPRegressionModel
from handler.training.data import DEFAULT_RESTARTS as DEFAULT_RESTARTS
from handler.training.data import EXACT_MAX_N as EXACT_MAX_N
from handler.training.data import KERNELS as KERNELS
from handler.training.data import MAX_OFFSET_WIDTHS as MAX_OFFSET_WIDTHS
from handler.training.data import MAX_RESTARTS as MAX_RESTARTS
from handler.training.data import MAX_TRAINING_ROWS as MAX_TRAINING_ROWS
from handler.training.data import CheckedData as CheckedData
from handler.training.data import TrainingDataError as TrainingDataError
from handler.training.data import check_training_data as check_training_data
from handler.training.validation import (
    GPY_EXACT_JITTER,
    OutputMetrics,
    leave_one_out,
    log_losses,
    output_metrics,
    quality_problems,
)

KernelChoice = Literal["auto", "RBF", "Matern32", "Matern52", "Exponential"]

DEFAULT_INDUCING = 200
MAX_INDUCING = 500  # a sparse evaluation costs O(n m^2): 500 is 6x the default's
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
# feature off. The kernel variance, in standardised units, from 1e-3 to 1e5 of the outputs' variance: a smooth
# function seen on few points (Branin at 25-30) has its likelihood rising towards long lengthscales with a variance
# of 1e3-3e4 (GPy, unbounded, goes there; a bound of 1e3 held the fit short of it, 0.60 hold-out RMSE against
# 0.46); 1e5 over a 1e-6 noise keeps the covariance's condition under 1e11 x n, factorisable at the exact GP's n.
LENGTHSCALE_BOUNDS = (1e-3, 1e3)
VARIANCE_BOUNDS = (1e-3, 1e5)
RESTART_SPREAD = (0.2, 2.0)  # random restarts: each lengthscale its first start times a log-uniform factor
INITIAL_NOISE = 1e-4
# Restarts stop once two have reached the same best log-likelihood (within 0.5 nats: a likelihood ratio of 1.6,
# nothing to choose between): a third rarely finds better, and each costs as much as the first.
SAME_OPTIMUM = 0.5
AGREEING_RESTARTS = 2
# Kernel auto: each candidate is optimised at most this many L-BFGS-B iterations from the first start and scored by
# leave-one-out; only the winner is optimised on (and restarted). On the benchmark functions (benchmarks/
# fit_quality.py, 15 fits) the screened ranking picks the kernel that full optimisations of all four picked, and
# 20 iterations bring the winner within a few nats of its optimum (Borehole: 0.1 of 1,237 at 300 points, 7 of
# 10,899 at 2,000): all four screenings cost about one full optimisation.
SCREENING_ITERS = 20
# Kernel auto keeps Matern-5/2 (the usual default of GP surrogates: Emukit, BoTorch, scikit-optimize) unless
# another kernel's leave-one-out log loss is lower by more than this many standard errors of the per-point
# differences: a paired test, not the raw means. Leave-one-out misleads on the designs an active-learning loop
# makes (most points on the box's edges, each predicted by extrapolation): on Branin's at 25 points the raw means
# preferred RBF in 5 of 8 seeds where Matern-5/2 predicts a hold-out set better in 7 of 8. On space-filling designs
# the other kernels that predict better win by 2.8-25 standard errors (benchmarks/fit_quality.py's functions).
DEFAULT_KERNEL = "Matern52"
SIGNIFICANT_Z = 2.0
# From this many points a discarded candidate's GPy models (~5 n x n arrays each, 40 MB at 1,000) are collected at
# once: at 2,000 points that halves the peak RSS (1.9 to 0.95 GB).
COLLECT_ABOVE_N = 1_000


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
    mean leave-one-out MSLL (the lower, the better; "auto" picks the lowest if significantly below Matern-5/2's).
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


class FitCancelledError(Exception):
    """`should_stop` returned True: the fit stopped between two optimisations, and nothing was kept."""


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
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Fit a GP (exact up to `sparse_above` points, else sparse with `inducing` points) by maximum likelihood.

    `bounds`: (features, 2), the declared range of each input; `kernel`: one of KERNELS (all ARD), or "auto": each
    is optimised briefly (SCREENING_ITERS) from the data's ranges and scored by leave-one-out MSLL; the lowest, if it
    beats Matern-5/2 point by point by more than SIGNIFICANT_Z standard errors (else Matern-5/2), is finished and
    gets the restarts. `restarts`: optimisations of the chosen kernel, the first from the data's ranges;
    they stop early once two agree. `deadline`: a `time.monotonic()` instant after which no optimisation goes on
    (the best so far is kept; TimeoutError if none has finished a step). `progress(fits_done, fits_total)`: called
    at the start and after each optimisation (a screening counts as one); when restarts stop early the last call
    has fits_done == fits_total. `should_stop()`: asked before each optimisation; True raises FitCancelledError.
    Deterministic for a seed and the library versions.
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
    names = KERNELS if kernel == "auto" else (kernel,)
    screening = len(names) > 1
    # "auto": screen, then finish the winner (one more optimisation), then its other restarts
    tracker = _Tracker(len(names) + restarts if screening else restarts, progress, should_stop)
    searches = {name: _Search(name, X_unit, data.Y, Z, deadline, max_iters, tracker) for name in names}
    candidates: dict[str, float] = {}
    point_losses: dict[str, np.ndarray] = {}  # each kernel's leave-one-out log loss per point (outputs averaged)
    fitted: dict[str, tuple[GPRegressionModel, dict[str, OutputMetrics]]] = {}

    def score(name: str) -> None:
        model = _in_original_units(searches[name].best_model(), data.X, data.Y, low, width)
        searches[name].release()  # the unit-cube model is rebuilt for the winner only
        loo = leave_one_out(model)
        if isinstance(loo, str):  # a Gaussian likelihood and GPy's inference: never, but say so
            raise RuntimeError(f"no leave-one-out for the fitted model: {loo}")
        validation = output_metrics(loo.Y, loo.mean, loo.variance, outputs)
        msll = [m.msll for m in validation.values()]
        candidates[name] = float(np.mean(msll)) if np.all(np.isfinite(msll)) else float("inf")
        point_losses[name] = np.mean(log_losses(loo), axis=1)
        fitted[name] = (model, validation)

    def rank(name: str) -> tuple[float, int]:
        return candidates[name], KERNELS.index(name)

    for name, search in searches.items():
        try:
            search.run(starts[:1], SCREENING_ITERS) if screening else search.run(starts)
        except TimeoutError:
            if not candidates:
                raise
            notes.append(f"{name} was not tried: the deadline passed")
            continue
        score(name)
        # only the best so far is kept: at n = 2,000 a GPy model holds ~150 MB of n x n arrays, and its
        # observers make reference cycles that only the cycle collector frees (a full collection costs tens of ms
        # in a busy process: only where the memory matters)
        for other in [k for k in fitted if k != min(candidates, key=rank)]:
            del fitted[other]
        if n >= COLLECT_ABOVE_N:
            gc.collect()
    # with screening the winner is scored again below once finished, so it need not be the one kept above
    best = _significant_winner(candidates, point_losses, rank)
    for other in [k for k in fitted if k != best]:
        del fitted[other]
    if screening:
        searches[best].finish()
        searches[best].run(starts[1:])
        score(best)
    tracker.close()
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


def _significant_winner(
    candidates: dict[str, float], point_losses: dict[str, np.ndarray], rank: Callable[[str], tuple[float, int]]
) -> str:
    """The kernel of the lowest mean leave-one-out log loss if it beats DEFAULT_KERNEL's per point by more than
    SIGNIFICANT_Z standard errors (or the default was not scored, or failed); else DEFAULT_KERNEL."""
    best = min(candidates, key=rank)
    if best == DEFAULT_KERNEL or not np.isfinite(candidates.get(DEFAULT_KERNEL, np.inf)):
        return best  # Matern-5/2 itself, or not scored (a deadline) or not finite: the lowest
    gain = point_losses[DEFAULT_KERNEL] - point_losses[best]  # > 0 where the best predicts the point better
    # the gain beyond SIGNIFICANT_Z standard errors (of at least two points; a gain with no spread is all beyond)
    error = float(np.std(gain, ddof=1)) / np.sqrt(len(gain)) if len(gain) > 1 else 0.0
    return best if float(np.mean(gain)) > SIGNIFICANT_Z * error else DEFAULT_KERNEL


class _Tracker:
    """Counts optimisations for `progress` and asks `should_stop` before each one."""

    def __init__(
        self, total: int, progress: Callable[[int, int], None] | None, should_stop: Callable[[], bool] | None
    ) -> None:
        self.done, self.total, self.progress, self.should_stop = 0, total, progress, should_stop
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)

    def before(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise FitCancelledError(f"cancelled after {self.done} of {self.total} optimisations")

    def after(self) -> None:
        self.done += 1
        self._report()

    def close(self) -> None:
        """Restarts that stopped early (or a deadline) leave fewer fits than planned: the last report says done."""
        if self.done != self.total:
            self.total = self.done
            self._report()


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
    """Restarts of one kernel, each by L-BFGS-B from its start, remembering the best likelihood reached.

    Exact GPs are optimised on `_ExactLikelihood` (numpy, log parameters inside box bounds), sparse ones on GPy's
    objective (paramz's transformed parameters); either way the GPy model is set to the best point at the end.
    """

    def __init__(
        self,
        kernel: str,
        X: np.ndarray,
        Y: np.ndarray,
        Z: np.ndarray | None,
        deadline: float | None,
        max_iters: int,
        tracker: _Tracker,
    ) -> None:
        self.kernel, self.Z, self.deadline, self.max_iters, self.tracker = kernel, Z, deadline, max_iters, tracker
        self.X, self.Y = X, Y
        self.exact = Z is None
        self.d = X.shape[1]
        self.objective: Callable[[np.ndarray], tuple[float, np.ndarray]]
        self.box: list[tuple[float, float]] | None = None
        self.gp: Any = None  # exact: built once at the best point (each GPy parameter set costs a factorisation)
        self._gp_at: np.ndarray | None = None
        if self.exact:
            standardised = (Y - Y.mean(axis=0)) / Y.std(axis=0)  # as GPy's normaliser (Standardize)
            self.objective = _ExactLikelihood(kernel, X, standardised)
            self.box = [_log(LENGTHSCALE_BOUNDS)] * self.d + [_log(VARIANCE_BOUNDS), _log(NOISE_BOUNDS)]
        else:
            self.gp = _unit_cube_model(kernel, X, Y, Z)
            self.objective = self.gp._objective_grads
        self.best_x: np.ndarray | None = None
        self.best_f = np.inf
        self.agreeing = 0  # restarts that reached the best likelihood (to SAME_OPTIMUM)
        self.log: list[Restart] = []

    def _initial(self, start: np.ndarray) -> np.ndarray:
        lengthscale = np.clip(start, *LENGTHSCALE_BOUNDS)
        if self.exact:
            return np.concatenate([np.log(lengthscale), [0.0, np.log(INITIAL_NOISE)]])
        self.gp.kern.lengthscale[:] = lengthscale
        self.gp.kern.variance[:] = 1.0
        self.gp.likelihood.variance[:] = INITIAL_NOISE
        return np.asarray(self.gp.optimizer_array, dtype=float).copy()

    def _optimise(self, x0: np.ndarray, start: tuple[float, ...], max_iters: int) -> tuple[np.ndarray | None, float]:
        self.tracker.before()
        clock = time.monotonic()
        x, f, stopped = _minimise(self.objective, x0, self.box, max_iters, self.deadline)
        self.log.append(Restart(self.kernel, start, -float(f), time.monotonic() - clock, stopped))
        self.tracker.after()
        return x, f

    def run(self, starts: list[np.ndarray], max_iters: int | None = None) -> None:
        for start in starts:
            if self.deadline is not None and time.monotonic() > self.deadline and self.best_x is not None:
                break
            x, f = self._optimise(self._initial(start), tuple(map(float, start)), max_iters or self.max_iters)
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

    def finish(self) -> None:
        """Optimise on from the screening's best point to convergence: it becomes the first restart's optimum."""
        if self.best_x is None or (self.deadline is not None and time.monotonic() > self.deadline):
            return
        start = self.log[0].start
        x, f = self._optimise(self.best_x.copy(), start, self.max_iters)
        if x is not None and f <= self.best_f:
            self.best_x, self.best_f = x, f
        self.agreeing = 1  # the screening's point is not an optimum of its own

    def release(self) -> None:
        """Drop the exact GP's GPy model (rebuilt if asked for again)."""
        if self.exact:
            self.gp, self._gp_at = None, None

    def best_model(self) -> Any:
        """The GPy model (unit-cube inputs) at the best parameters found."""
        assert self.best_x is not None
        if not self.exact:
            self.gp.optimizer_array = self.best_x
            return self.gp
        if self._gp_at is not self.best_x:
            d, x = self.d, self.best_x
            kern = getattr(GPy.kern, self.kernel)(
                d,
                ARD=True,
                lengthscale=np.clip(np.exp(x[:d]), *LENGTHSCALE_BOUNDS),
                variance=float(np.clip(np.exp(x[d]), *VARIANCE_BOUNDS)),
            )
            noise = float(np.clip(np.exp(x[d + 1]), *NOISE_BOUNDS))
            self.gp = GPy.models.GPRegression(self.X, self.Y, kern, noise_var=noise, normalizer=True)
            self._gp_at = self.best_x
        return self.gp


def _log(bounds: tuple[float, float]) -> tuple[float, float]:
    return float(np.log(bounds[0])), float(np.log(bounds[1]))


_SQRT3, _SQRT5 = float(np.sqrt(3.0)), float(np.sqrt(5.0))


class _ExactLikelihood:
    """The exact GP's negative log marginal likelihood and its gradient in numpy, as GPy's ExactGaussianInference
    computes them (the same kernels of r, the same 1e-8 jitter), at ~60% of GPy's cost per evaluation (no paramz
    bookkeeping, no per-dimension n x n arrays).

    Parameters: log lengthscales (d), log kernel variance, log noise variance; Y the standardised outputs (n, p), each
    column an independent GP with the same kernel. With A = s k(r) + (noise + jitter) I, alpha = A^-1 Y and
    W = alpha alpha^T - p A^-1, d nll / d theta = -tr(W dA/dtheta) / 2 (Rasmussen & Williams 2006, eq. 5.9).
    """

    def __init__(self, kernel: str, X: np.ndarray, Y: np.ndarray) -> None:
        self.kernel, self.X, self.Y = kernel, X, Y
        self.n, self.d = X.shape
        self.constant = 0.5 * self.n * Y.shape[1] * np.log(2 * np.pi)

    def _shape(self, r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k(r) / s and g(r) with dk / dlog l_j = s g(r) (x_j - x'_j)^2 / l_j^2 (g = -k'(r) / r)."""
        if self.kernel == "RBF":
            k = np.exp(-0.5 * r2)
            return k, k
        r = np.sqrt(r2)
        if self.kernel == "Matern52":
            e = np.exp(-_SQRT5 * r)
            return (1 + _SQRT5 * r + 5 / 3 * r2) * e, 5 / 3 * (1 + _SQRT5 * r) * e
        if self.kernel == "Matern32":
            e = np.exp(-_SQRT3 * r)
            return (1 + _SQRT3 * r) * e, 3 * e
        e = np.exp(-r)  # Exponential: g = e^-r / r, and 0 where r = 0 (where (x_j - x'_j)^2 is 0 too)
        return e, np.divide(e, r, out=np.zeros_like(r), where=r > 0)

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        d, Y = self.d, self.Y
        scaled = self.X / np.exp(theta[:d])
        variance, noise = float(np.exp(theta[d])), float(np.exp(theta[d + 1]))
        # n x n arrays in place where it is clear: at n = 2,000 each is 32 MB
        squares = np.einsum("ij,ij->i", scaled, scaled)
        r2 = scaled @ scaled.T
        r2 *= -2
        r2 += squares[:, None]
        r2 += squares[None, :]
        np.maximum(r2, 0.0, out=r2)
        np.fill_diagonal(r2, 0.0)
        k, g = self._shape(r2)
        del r2
        A = variance * k
        A[np.diag_indices_from(A)] += noise + GPY_EXACT_JITTER
        L, info = scipy.linalg.lapack.dpotrf(A, lower=1, clean=1, overwrite_a=1)
        del A
        if info != 0:  # not positive definite to rounding: L-BFGS-B backs off
            return float("inf"), np.zeros_like(theta)
        alpha, _ = scipy.linalg.lapack.dpotrs(L, Y, lower=1)
        p = Y.shape[1]
        nll = 0.5 * float(np.sum(Y * alpha)) + p * float(np.sum(np.log(np.diag(L)))) + self.constant
        W, _ = scipy.linalg.lapack.dpotri(L, lower=1, overwrite_c=1)  # A^-1's lower triangle; the upper: L's zeros
        del L
        W += W.T
        W[np.diag_indices_from(W)] *= 0.5
        W *= -p
        W += alpha @ alpha.T  # W = alpha alpha^T - p A^-1
        gradient = np.empty_like(theta)
        gradient[d] = -0.5 * variance * float(np.vdot(W, k))
        gradient[d + 1] = -0.5 * float(np.trace(W)) * noise
        W *= g  # M = W g s: for symmetric M, sum_ab M_ab (x_aj - x_bj)^2 / l_j^2 = 2 s_j^2 . (M 1) - 2 s_j^T M s_j
        W *= variance
        gradient[:d] = -((scaled**2).T @ W.sum(axis=1) - np.einsum("ij,ij->j", scaled, W @ scaled))
        return nll, gradient


def _minimise(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    box: list[tuple[float, float]] | None,
    max_iters: int,
    deadline: float | None,
) -> tuple[np.ndarray | None, float, Any]:
    """L-BFGS-B on a negative log-likelihood and its gradient, stoppable at a deadline; the best point evaluated."""
    best: list[Any] = [None, np.inf]

    def tracked(x: np.ndarray) -> tuple[float, np.ndarray]:
        if deadline is not None and time.monotonic() > deadline:
            raise _OutOfTimeError
        f, g = objective(x)  # inf (and clipped or zero gradients) where the factorisation fails
        if np.isfinite(f) and f < best[1]:
            best[0], best[1] = x.copy(), float(f)
        return f, g

    stopped = "converged"
    try:
        # With every parameter inside a box, L-BFGS-B's first step is the whole negative gradient (projected), not
        # a unit step along it: from a poor start (Branin: a gradient of ~5,000) that lands in a corner (every
        # lengthscale at its lower bound, all noise) and stays. Dividing the objective by its first gradient's norm
        # makes that step a unit one, as without bounds; the optimum and the later quasi-Newton steps are unchanged.
        scale = 1.0
        if box is not None:
            _, g0 = tracked(x0)
            scale = max(1.0, float(np.linalg.norm(g0))) if np.all(np.isfinite(g0)) else 1.0

        def scaled(x: np.ndarray) -> tuple[float, np.ndarray]:
            f, g = tracked(x)
            return f / scale, g / scale

        result = scipy.optimize.minimize(
            scaled,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=box,
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
    noise = float(scaled.likelihood.variance.values[0])
    if isinstance(scaled, GPy.models.SparseGPRegression):
        Z = low + np.asarray(scaled.Z, dtype=float) * width
        gp = GPy.models.SparseGPRegression(X, Y, kern, Z=Z, normalizer=True)
        gp.likelihood.variance[:] = noise
        wrapper: type[GPRegressionModel] = SparseGPRegressionModel
    else:
        gp = GPy.models.GPRegression(X, Y, kern, noise_var=noise, normalizer=True)
        wrapper = GPRegressionModel
    return wrapper(gp)
