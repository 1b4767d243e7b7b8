"""How well a fitted GP predicts points it did not see, and the quality gate: one implementation for packaging
(scripts/package_model.py) and training (handler/training/fit.py).

Per output: RMSE, R^2, the share of points inside the 95% predictive interval and the mean standardised log loss
(MSLL, Rasmussen & Williams 2006, section 2.5: the predictive's negative log density less that of a Gaussian with the
data's mean and variance; 0 is no better than the mean, lower is better). The training points' own predictions
come from closed-form leave-one-out, for exact GPs and sparse (DTC) ones alike (`leave_one_out`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from handler.gp.posterior import Z_95

if TYPE_CHECKING:  # the metrics are numpy only: surprise.py scores versions in the admin function, without GPy
    from handler.gp.gpy_model import GPRegressionModel


@dataclass(frozen=True)
class OutputMetrics:
    """One output's accuracy on `n_points` predictions: `msll` is NaN where the outputs are constant."""

    n_points: int
    rmse: float
    r2: float
    coverage_95: float
    msll: float


def output_metrics(
    Y: np.ndarray, mean: np.ndarray, variance: np.ndarray, outputs: list[str], reference: np.ndarray | None = None
) -> dict[str, OutputMetrics]:
    """RMSE, R^2, 95% coverage and MSLL of predictions (mean and predictive variance, (n, outputs)) of the values Y.

    `reference`: the training outputs whose mean and variance the MSLL's trivial model has (default: Y's own, as for
    leave-one-out of the training points).
    """
    reference = Y if reference is None else reference
    metrics = {}
    for j, name in enumerate(outputs):
        y, residual = Y[:, j], Y[:, j] - mean[:, j]
        spread = np.sum((y - y.mean()) ** 2)
        metrics[name] = OutputMetrics(
            n_points=len(y),
            rmse=float(np.sqrt(np.mean(residual**2))),
            r2=float(1 - np.sum(residual**2) / spread) if spread > 0 else float("nan"),
            coverage_95=float(np.mean(np.abs(residual) <= Z_95 * np.sqrt(variance[:, j]))),
            msll=_msll(y, mean[:, j], variance[:, j], reference[:, j]),
        )
    return metrics


def _msll(y: np.ndarray, mean: np.ndarray, variance: np.ndarray, reference: np.ndarray) -> float:
    """Mean of -log p(y | prediction) + log N(y; mean(reference), var(reference)); NaN for constant references."""
    trivial_mean, trivial_variance = float(reference.mean()), float(reference.var())
    if not trivial_variance > 0 or not np.all(variance > 0):
        return float("nan")
    model_loss = 0.5 * np.log(2 * np.pi * variance) + (y - mean) ** 2 / (2 * variance)
    trivial_loss = 0.5 * np.log(2 * np.pi * trivial_variance) + (y - trivial_mean) ** 2 / (2 * trivial_variance)
    return float(np.mean(model_loss - trivial_loss))


GPY_EXACT_JITTER = 1e-8  # GPy's ExactGaussianInference adds it to the noise when it factorises the covariance


@dataclass(frozen=True)
class LeaveOneOut:
    """Each training point predicted from the others: mean and predictive variance (n, outputs), in output units."""

    Y: np.ndarray
    mean: np.ndarray
    variance: np.ndarray


def leave_one_out(model: GPRegressionModel) -> LeaveOneOut | str:
    """Leave-one-out predictions of the training points in closed form, or why there is none.

    For a Gaussian process whose training outputs are jointly Gaussian with covariance A (K + noise I for an exact
    GP), predicting y_i from the others is conditioning that Gaussian: mean y_i - [A^-1 y]_i / [A^-1]_ii and
    variance 1 / [A^-1]_ii (Rasmussen & Williams 2006, eq. 5.12), the hyperparameters as fitted on all points.
    A sparse (VarDTC) model predicts as DTC: A = Q + noise I with Q = Kfu Kuu^-1 Kuf, and its predictive
    variance adds K_ii - Q_ii. Computed on the normalised outputs GPy fitted, then mapped back to their units.
    """
    import GPy
    import scipy.linalg
    from GPy.inference.latent_function_inference import ExactGaussianInference, VarDTC

    gp = model.gp
    if type(gp.likelihood) is not GPy.likelihoods.Gaussian:
        return f"likelihood {type(gp.likelihood).__name__} is not Gaussian: no closed form"
    Y = np.asarray(gp.Y_normalized, dtype=float)
    if isinstance(gp.inference_method, ExactGaussianInference):
        factor = np.asarray(gp.posterior.woodbury_chol, dtype=float)  # L L^T = K + (noise + jitter) I
        if factor.ndim != 2:
            return "the model has missing data (one posterior per output)"
        # diag(A^-1) = the squared column norms of L^-1: one triangular inverse, a third of forming A^-1
        inverse, info = scipy.linalg.lapack.dtrtri(factor, lower=1)
        if info != 0:
            return "the covariance's Cholesky factor is singular"
        diagonal = np.einsum("ij,ij->j", inverse, inverse)
        del inverse
        weights = np.asarray(gp.posterior.woodbury_vector, dtype=float)  # A^-1 (y - mean function)
        # GPy factorises K + (noise + 1e-8) I but adds only the noise to a prediction: take its jitter back out
        extra = np.full_like(diagonal, -GPY_EXACT_JITTER)
    elif (
        isinstance(gp.inference_method, VarDTC) and isinstance(gp, GPy.core.SparseGP) and not gp.has_uncertain_inputs()
    ):
        diagonal, weights, extra = _sparse_leave_one_out(gp, Y)
    else:
        return f"inference {type(gp.inference_method).__name__}: no closed form"
    mean = Y - weights / diagonal[:, None]
    variance = np.repeat((1 / diagonal + extra)[:, None], Y.shape[1], axis=1)
    if gp.normalizer is not None:
        mean, variance = gp.normalizer.inverse_mean(mean), gp.normalizer.inverse_variance(variance)
    if not (np.isfinite(mean).all() and np.isfinite(variance).all() and (variance > 0).all()):
        return "the closed form is not finite (the covariance is too ill-conditioned)"
    return LeaveOneOut(np.asarray(gp.Y, dtype=float), mean, variance)


def _sparse_leave_one_out(gp: Any, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """diag(A^-1), A^-1 Y and K_ii - Q_ii for A = Q + s2 I, Q = Kfu Kuu^-1 Kuf, in O(n m^2) and columns of m x n.

    With V = Luu^-1 Kuf (Q = V^T V) and M = s2 I + V V^T: A^-1 = (I - V^T M^-1 V) / s2 (Woodbury). M's eigenvalues
    are at least s2, so its factor is as well conditioned as the noise allows.
    """
    from GPy.util.linalg import jitchol
    from scipy.linalg import solve_triangular

    X, Z, kern = np.asarray(gp.X, dtype=float), np.asarray(gp.Z, dtype=float), gp.kern
    # As GPy's VarDTC: its jitter on Kuu's diagonal, and the noise at least that jitter
    jitter = float(gp.inference_method.const_jitter)
    noise = max(float(gp.likelihood.variance.values[0]), jitter)
    L_uu = jitchol(kern.K(Z) + jitter * np.eye(len(Z)))
    columns = max(1, 2**24 // (8 * len(Z)))  # V in slices of ~16 MB

    def slices() -> Any:
        for start in range(0, len(X), columns):
            part = slice(start, start + columns)
            yield part, solve_triangular(L_uu, kern.K(Z, X[part]), lower=True)

    M, VY = noise * np.eye(len(Z)), np.zeros((len(Z), Y.shape[1]))
    for part, V in slices():
        M += V @ V.T
        VY += V @ Y[part]
    L_m = jitchol(M)
    MVY = solve_triangular(L_m.T, solve_triangular(L_m, VY, lower=True), lower=False)  # M^-1 V Y
    diagonal, weights, extra = np.empty(len(X)), np.empty_like(Y), np.empty(len(X))
    for part, V in slices():
        W = solve_triangular(L_m, V, lower=True)
        diagonal[part] = (1 - np.sum(W**2, axis=0)) / noise
        weights[part] = (Y[part] - V.T @ MVY) / noise
        extra[part] = kern.Kdiag(X[part]) - np.sum(V**2, axis=0)
    return diagonal, weights, np.maximum(extra, 0.0)


# The gate: a model whose predictions explain less than half of its outputs' variance, on points it was not fitted
# to, is refused. R^2 = 0 is the constant mean; GPy stuck at its initial lengthscales gives R^2 ~ 0 (issue 21).
# 0.5 leaves room for honest, rough surrogates of hard functions and is far above what an unfitted model reaches.
MIN_R2 = 0.5
# Coverage refuses only intervals that are plainly wrong. A calibrated 95% interval covers 95% +- 2 sd (sd =
# sqrt(0.95 x 0.05 / n): 1.3% at n = 300, 4.9% at n = 20); under 50% means intervals ~3x too narrow (+-1.96 s/3
# holds half of a normal's mass). Fitted interpolating GPs of deterministic simulators sit lower than 95% (the
# suite's: 83-100% leave-one-out), so a tighter rule would refuse honest models. Wide intervals are not refused.
MIN_COVERAGE_95 = 0.5
MIN_COVERAGE_POINTS = 20


class Scored(Protocol):
    """What the gate reads of one output's metrics (`OutputMetrics`, or the manifest's `HoldoutMetrics`)."""

    @property
    def n_points(self) -> int: ...
    @property
    def rmse(self) -> float: ...
    @property
    def r2(self) -> float: ...
    @property
    def coverage_95(self) -> float: ...


def quality_problems(checks: Mapping[str, Mapping[str, Scored] | None]) -> list[str]:
    """What fails the gate, one line each: {"hold-out": metrics or None, "leave-one-out": ...}; [] passes."""
    problems = []
    for where, metrics in checks.items():
        for output, m in (metrics or {}).items():
            if m.r2 < MIN_R2:  # NaN (constant outputs) compares False: it says nothing, and fails nothing
                problems.append(f"{where} {output}: R2 {m.r2:.6f} < {MIN_R2} (RMSE {m.rmse:.4g}, {m.n_points} points)")
            if m.n_points >= MIN_COVERAGE_POINTS and m.coverage_95 < MIN_COVERAGE_95:
                problems.append(
                    f"{where} {output}: the 95% interval covers {m.coverage_95:.1%} of {m.n_points} points "
                    f"(< {MIN_COVERAGE_95:.0%}: over-confident)"
                )
    return problems


def log_losses(loo: LeaveOneOut) -> np.ndarray:
    """-log p(y_i | the others) of each point and output, (n, outputs): two models' differ by what they predict
    (the outputs' units cancel in a difference)."""
    return 0.5 * np.log(2 * np.pi * loo.variance) + (loo.Y - loo.mean) ** 2 / (2 * loo.variance)


def cross_validation(model: GPRegressionModel, outputs: list[str]) -> dict[str, OutputMetrics] | str:
    """Leave-one-out accuracy of the training points per output, or why there is no closed form."""
    loo = leave_one_out(model)
    if isinstance(loo, str):
        return loo
    return output_metrics(loo.Y, loo.mean, loo.variance, outputs)
