"""The exact posterior of a GPy regression model as plain arrays, evaluated with numpy and BLAS.

Covers what Bayesian-optimisation and surrogate users pick: stationary RBF, Exponential, Matern-3/2
and Matern-5/2 kernels (ARD or not), Gaussian likelihood, exact (`GPRegression`) or sparse
variational-DTC (`SparseGPRegression`) inference, one or several outputs, GPy's Standardize
normalizer or none. Built from the arrays of a posterior file (handler.gp.posterior_file), or from a GPy model
by handler.gp.from_gpy; nothing here imports GPy or scipy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from handler.gp.blas import lower_solve, lower_times, lower_transpose_solve
from handler.gp.broken import ModelBrokenError, require_finite

# Working memory of one prediction chunk. Measured (benchmarks/results.md, "chunk budget"): 64 MiB is
# ~25% faster than 16 MiB at n = 1000-3000; 128-512 MiB gain another ~20% for 2-4x the memory. 64 MiB
# keeps any request's working memory near 135 MB.
CHUNK_BYTES = 64 * 2**20
# OpenBLAS multiplies by a triangular matrix (TRMM) twice as fast as a full product (GEMM) for many rows,
# but several times slower for a few: measured on n = 200 to 3000, the crossover is a few hundred rows.
# (Only posterior files written before the Cholesky factor itself was stored multiply by its inverse.)
TRMM_MIN_ROWS = 512
# The members a posterior file may hold for the variance: exact inference's Cholesky factor L of K + s2 I (or, in
# files written before it was stored, its inverse), sparse inference's woodbury_inv.
VARIANCE_MEMBERS = ("cholesky", "cholesky_inverse", "woodbury_inverse")

KERNELS = ("RBF", "Exponential", "Matern32", "Matern52")
Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal: the 95% predictive interval
_SQRT3, _SQRT5 = math.sqrt(3.0), math.sqrt(5.0)


class Prediction(NamedTuple):
    """Predictive mean and variance, (n_points, n_outputs) each."""

    mean: np.ndarray
    variance: np.ndarray


@dataclass(frozen=True)
class GPPosterior:
    """mean = k(x, U) w;  latent variance = k(x, x) - k(x, U) A k(U, x);  an observation adds the noise.

    U are the training inputs (exact inference) or the inducing inputs (sparse). For exact inference
    A = (K + noise I)^-1 = L^-T L^-1, and k(x, U) A k(U, x) = |L^-1 k(U, x)|^2 is found by forward substitution
    with L (BLAS TRSM, in place): backward stable, so a variance many orders below the prior's keeps its digits,
    which multiplying by an explicit L^-1 does not promise. Files written before L was stored hold L^-1 instead
    and are served as before (TRMM, or GEMM for a few rows). For sparse inference A is GPy's (m x m)
    woodbury_inv. Computed on the model's standardised scale, then mapped back as GPy's normalizer does.
    """

    kernel: str  # one of KERNELS
    kernel_variance: float
    inputs: np.ndarray  # U, (m, d): training inputs (exact) or inducing inputs (sparse)
    lengthscale: np.ndarray  # (d,)
    inverse_lengthscale: np.ndarray  # (d,)
    # [U / lengthscale, 1, -|U / lengthscale|^2 / 2 (+ log s2 for RBF)], (m, d + 2): with a query row augmented
    # as [z, -|z|^2 / 2, 1], one matrix product gives -r^2 / 2 (the RBF's log-covariance).
    inputs_augmented: np.ndarray
    woodbury_vector: np.ndarray  # (m, n_outputs)
    cholesky: np.ndarray | None  # exact: L, lower triangular, C order, (m, m), L L^T = K + factored_noise_variance I
    cholesky_inverse: np.ndarray | None  # exact, from a file written before L was stored: L^-1, as L
    woodbury_inverse: np.ndarray | None  # sparse: A, (m, m)
    noise_variance: float
    y_mean: np.ndarray  # (n_outputs,)
    y_std: np.ndarray  # (n_outputs,)

    @classmethod
    def from_arrays(cls, kernel: str, arrays: Mapping[str, np.ndarray]) -> GPPosterior:
        """The posterior of a file's arrays (handler.gp.posterior_file): one of VARIANCE_MEMBERS."""
        if kernel not in KERNELS:
            raise ValueError(f"kernel {kernel} is not one of {', '.join(KERNELS)}")
        inputs = np.asarray(arrays["inputs"], dtype=float)
        lengthscale = np.asarray(arrays["lengthscale"], dtype=float)
        inverse_lengthscale = 1.0 / lengthscale
        kernel_variance = float(arrays["kernel_variance"])
        woodbury_vector = np.asarray(arrays["woodbury_vector"], dtype=float)
        scaled = inputs * inverse_lengthscale
        last = -0.5 * np.vecdot(scaled, scaled)
        if kernel == "RBF":
            last += np.log(kernel_variance)
        held = [name for name in VARIANCE_MEMBERS if name in arrays]
        if len(held) != 1:
            raise ValueError(f"expected one of {', '.join(VARIANCE_MEMBERS)}, got {held or 'none'}")
        cholesky, cholesky_inverse = arrays.get("cholesky"), arrays.get("cholesky_inverse")
        woodbury_inverse = arrays.get("woodbury_inverse")
        return cls(
            kernel=kernel,
            kernel_variance=kernel_variance,
            inputs=inputs,
            lengthscale=lengthscale,
            inverse_lengthscale=inverse_lengthscale,
            inputs_augmented=np.column_stack([scaled, np.ones(len(scaled)), last]),
            woodbury_vector=woodbury_vector,
            cholesky=None if cholesky is None else _lower_triangle(cholesky),
            cholesky_inverse=None if cholesky_inverse is None else _lower_triangle(cholesky_inverse),
            woodbury_inverse=None if woodbury_inverse is None else np.asarray(woodbury_inverse, dtype=float),
            noise_variance=float(arrays["noise_variance"]),
            y_mean=np.asarray(arrays["y_mean"], dtype=float).reshape(-1),
            y_std=np.asarray(arrays["y_std"], dtype=float).reshape(-1),
        )

    @property
    def inference(self) -> str:
        return "sparse" if self.woodbury_inverse is not None else "exact"

    @property
    def variance_member(self) -> str:
        """Which of VARIANCE_MEMBERS this posterior holds."""
        return next(name for name in VARIANCE_MEMBERS if getattr(self, name) is not None)

    def arrays(self) -> dict[str, np.ndarray]:
        """What a posterior file holds: `from_arrays(kernel, arrays())` is this posterior again."""
        factor = {self.variance_member: getattr(self, self.variance_member)}
        return {
            "inputs": self.inputs,
            "lengthscale": self.lengthscale,
            "kernel_variance": np.asarray(self.kernel_variance),
            "noise_variance": np.asarray(self.noise_variance),
            "woodbury_vector": self.woodbury_vector,
            **factor,
            "y_mean": self.y_mean,
            "y_std": self.y_std,
        }

    @property
    def n_inputs(self) -> int:
        return len(self.woodbury_vector)

    @property
    def chunk_rows(self) -> int:
        # One (rows x m) array for the covariances, transformed in place; Matern kernels need a second
        # one for their polynomial factor, sparse inference one for K A.
        arrays = 1 + (self.kernel in ("Matern32", "Matern52")) + (self.woodbury_inverse is not None)
        return max(1, CHUNK_BYTES // (8 * arrays * self.n_inputs))

    def cross_covariance(self, X: np.ndarray) -> np.ndarray:
        """k(X, U), (len(X), m), C order."""
        d = X.shape[1]
        Z = np.empty((len(X), d + 2))
        np.multiply(X, self.inverse_lengthscale, out=Z[:, :d])
        Z[:, d] = np.vecdot(Z[:, :d], Z[:, :d])
        Z[:, d] *= -0.5
        Z[:, d + 1] = 1.0
        K = Z @ self.inputs_augmented.T  # -r^2 / 2 (+ log s2 for the RBF)
        if self.kernel == "RBF":
            # capped at log s2 where rounding would make r^2 < 0
            np.minimum(K, np.log(self.kernel_variance), out=K)
            return np.exp(K, out=K)
        np.minimum(K, 0.0, out=K)
        np.multiply(K, -2.0, out=K)
        r = np.sqrt(K, out=K)
        if self.kernel == "Exponential":
            np.negative(r, out=r)
            np.exp(r, out=r)
        elif self.kernel == "Matern32":
            polynomial = r * _SQRT3
            polynomial += 1.0
            np.multiply(r, -_SQRT3, out=r)
            np.exp(r, out=r)
            r *= polynomial
        else:  # Matern52
            polynomial = r * (5.0 / 3.0)  # (5/3 r + sqrt5) r + 1, with one temporary array
            polynomial += _SQRT5
            polynomial *= r
            polynomial += 1.0
            np.multiply(r, -_SQRT5, out=r)
            np.exp(r, out=r)
            r *= polynomial
        r *= self.kernel_variance
        return r

    def cross_covariance_rounding(self, X: np.ndarray) -> np.ndarray:
        """How far two correct float64 evaluations of k(X, U) may differ, entrywise, (len(X), m).

        This class and GPy both form r^2 = |z|^2 + |u|^2 - 2 z.u from z = x / lengthscale, in different orders:
        with eps per rounding (twice the unit roundoff), their sums of at most d + 2 terms are off by at most
        (d + 1) eps (|z| + |u|)^2 and the scaling (a relative eps per coordinate, times dr^2/dz = 2 (z - u)) by
        2 eps (|z| + |u|)^2, so r^2 is off by at most (d + 3) eps (|z| + |u|)^2 in each evaluation, and two
        differ by delta, twice that.
        k moves by |dk/d(r^2)| delta (first order in eps) or, for the Exponential, whose slope in r^2 is
        unbounded at 0, by k delta / max(r, sqrt(delta)), since r = sqrt(r^2) moves by at most that. The RBF
        here adds log s2 to -r^2 / 2 before exp: (d + 3) eps |log s2| more, relative; the few roundings of k
        from r add 8 eps k.
        """
        eps = np.finfo(float).eps
        d = X.shape[1]
        scaled = X * self.inverse_lengthscale
        spread = np.add.outer(np.linalg.norm(scaled, axis=1), np.linalg.norm(self._scaled_inputs, axis=1))
        spread **= 2
        spread *= 2 * (d + 3) * eps
        r = self._distances(scaled, self._scaled_inputs)
        k, g = self._kernel_of_distance(r)  # g = (dk/dr) / r = 2 dk/d(r^2)
        if self.kernel == "Exponential":
            change = k * spread / np.maximum(r, np.sqrt(spread))
        else:
            change = 0.5 * np.abs(g) * spread
        relative = 8 + (d + 3) * abs(math.log(self.kernel_variance)) * (self.kernel == "RBF")
        change += relative * eps * k
        return change

    def predict(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        n_outputs = self.woodbury_vector.shape[1]
        mean = np.empty((len(X), n_outputs))
        reduction = np.empty(len(X))
        for start in range(0, len(X), self.chunk_rows):
            stop = min(start + self.chunk_rows, len(X))
            K = self.cross_covariance(X[start:stop])
            if n_outputs == 1:  # a matrix-vector product, as GPy does for one output
                mean[start:stop, 0] = K @ self.woodbury_vector[:, 0]
            else:
                mean[start:stop] = K @ self.woodbury_vector
            if self.woodbury_inverse is not None:
                reduction[start:stop] = np.vecdot(K @ self.woodbury_inverse, K)
                continue
            W = self.whitened(K)
            reduction[start:stop] = np.vecdot(W, W)
        variance = self.kernel_variance - reduction
        require_finite("the predictive variance", variance)
        if variance.size and (lowest := float(variance.min())) < -self.variance_rounding:
            raise ModelBrokenError(
                f"a latent variance of {lowest:.3g} (standardised), below what rounding explains "
                f"(-{self.variance_rounding:.3g}): the variance factor does not belong to the kernel"
            )
        # What rounding leaves below zero is zero (GPy's sparse posterior clips at 1e-15: kept, to agree with it).
        np.maximum(variance, 1e-15 if self.woodbury_inverse is not None else 0.0, out=variance)
        if not latent:
            variance += self.noise_variance
        mean *= self.y_std
        mean += self.y_mean
        variance = np.multiply.outer(variance, self.y_std**2)
        require_finite("the predictive mean and variance", mean, variance)  # on the outputs' scale: it can overflow
        return Prediction(mean, variance)

    @cached_property
    def factored_noise_variance(self) -> float:
        """What exact inference's factor adds to the kernel's diagonal: L L^T = K + this I (standardised scale).

        The noise variance plus what GPy adds (1e-8, and jitter where its factorisation needed it), read off L
        (|L_i|^2 = k(u_i, u_i) + this, for these stationary kernels). Files that hold L^-1 instead: GPy's 1e-8.
        Draws of this posterior condition on noise of this variance (handler.analyses.function_draws).
        """
        if self.cholesky is not None:
            return float(np.mean(np.vecdot(self.cholesky, self.cholesky))) - self.kernel_variance
        return self.noise_variance + 1e-8

    @cached_property
    def variance_rounding(self) -> float:
        """How far below zero rounding may take a latent variance here (standardised scale).

        kxx - k A k cancels: it is off by ~(m + 2) eps kxx times how far A amplifies, estimated from the diagonal
        of the factor (exact: (max L_ii / min L_ii)^2, a lower estimate of cond(K + s2 I)) or of A's size
        (sparse: m kxx max|A_ij| bounds k A k / kxx); four times that is allowed. A factor that does not belong to
        the kernel answers variances far below it (a random one: -1e6 where the prior is 1).
        """
        eps, m, s2 = float(np.finfo(float).eps), self.n_inputs, self.kernel_variance
        if self.woodbury_inverse is not None:
            amplification = 1.0 + m * s2 * float(np.abs(self.woodbury_inverse).max(initial=0.0))
        else:
            factor = self.cholesky if self.cholesky is not None else self.cholesky_inverse
            assert factor is not None
            diagonal = np.abs(np.diagonal(factor))
            amplification = float(diagonal.max() / diagonal.min()) ** 2 if diagonal.min() > 0 else math.inf
        return 4 * (m + 2) * eps * s2 * amplification

    def factor_mismatch(self, columns: int, rng: np.random.Generator, outputs: np.ndarray | None = None) -> str | None:
        """Why the exact factor L (and the woodbury vector) cannot be this kernel's, or None: checked on `columns`
        columns drawn at random, so a file cannot be made to pass on a few chosen ones. Costs m^2 x columns flops.

        L L^T must be K + (noise + g) I, where g >= 0 is what GPy added to the diagonal (1e-8, and jitter up to
        1e-2 of the diagonal's mean when the factorisation failed without). A computed Cholesky factor has
        |L L^T - A| <= (m + 1) u |L| |L^T| (Higham, Thm 10.3), and |L| |L^T| <= r r^T for r the rows' norms; the
        product adds as much again, and k(U, U) here and GPy's differ by `cross_covariance_rounding`. Given the
        training `outputs` (standardised, (m, p)), the woodbury vector w must solve A w = outputs to the backward
        error of a factorisation and two solves, |A w - y| <= 4 (m + 1) eps r (r . |w|), plus what dk and the
        estimate of g move. A file written before L was stored (L^-1 only) is checked the same way, its columns of
        L L^T got by two triangular solves, to a tolerance widened by the factor's conditioning.
        """
        L, inverse = self.cholesky, self.cholesky_inverse
        if L is None and inverse is None:
            return None
        eps, m = float(np.finfo(float).eps), self.n_inputs
        chosen = np.sort(rng.choice(m, size=min(columns, m), replace=False))
        if L is None:
            assert inverse is not None
            return self._inverse_mismatch(inverse, columns, rng)
        rows = np.sqrt(np.vecdot(L, L))  # |L_i|; their squares are diag(L L^T)
        product = L @ L[chosen].T  # (L L^T)[:, chosen]
        tolerance = 2 * (m + 1) * eps * np.multiply.outer(rows, rows[chosen])
        kernel = self.cross_covariance(self.inputs[chosen]).T
        tolerance += self.cross_covariance_rounding(self.inputs[chosen]).T
        difference = product - kernel
        diagonal = difference[chosen, np.arange(len(chosen))] - self.noise_variance  # g, one per column
        difference[chosen, np.arange(len(chosen))] = 0.0
        if (np.abs(difference) > tolerance).any():
            i, j = np.unravel_index(np.argmax(np.abs(difference) / tolerance), difference.shape)
            return f"L L^T differs from the kernel's covariance at ({i}, {chosen[j]}) by {difference[i, j]:.3g}"
        allowed = tolerance[chosen, np.arange(len(chosen))]
        largest_jitter = 1e-8 + 1e-2 * (self.kernel_variance + self.noise_variance + 1e-8)
        spread = float(np.ptp(diagonal))
        if (diagonal < -allowed).any() or (diagonal > largest_jitter + allowed).any() or spread > 2 * allowed.max():
            return (
                "L L^T's diagonal is not the kernel's plus the noise and one jitter "
                f"(added: {diagonal.min():.3g} to {diagonal.max():.3g})"
            )
        # Every row's, not only the sampled columns': diag(L L^T) is the rows' squared norms, already at hand, and
        # k(x, x) is the kernel's variance (stationary kernels), so one wrong row cannot hide among the unsampled.
        everywhere = rows**2 - self.kernel_variance - self.noise_variance
        off = np.abs(everywhere - float(np.mean(diagonal))) - (2 * (m + 1) * eps * rows**2 + spread + allowed.max())
        if (off > 0).any():
            row = int(np.argmax(off))
            shown = f"{everywhere[row]:.3g}"
            return f"L L^T's diagonal at row {row} is not the kernel's plus the noise and the jitter ({shown})"
        if outputs is None:
            return None
        added = self.noise_variance + float(np.mean(diagonal))
        residual = self.cross_covariance(self.inputs[chosen]) @ self.woodbury_vector
        residual += added * self.woodbury_vector[chosen] - outputs[chosen]
        bound = 4 * (m + 1) * eps * np.multiply.outer(rows[chosen], rows @ np.abs(self.woodbury_vector))
        bound += self.cross_covariance_rounding(self.inputs[chosen]) @ np.abs(self.woodbury_vector)
        bound += (np.ptp(diagonal) + allowed.max()) * np.abs(self.woodbury_vector[chosen])  # g, as estimated
        if (np.abs(residual) > bound).any():
            return "the woodbury vector does not solve (K + noise I) w = the training outputs"
        return None

    def _inverse_mismatch(self, inverse: np.ndarray, columns: int, rng: np.random.Generator) -> str | None:
        """`factor_mismatch` for a file written before L was stored: it holds L^-1, whose rows a corruption may
        touch one at a time, so unit columns miss it; random directions Z do not. (L L^T) Z = L^-1 \\ (L^-T \\ Z)
        (two triangular solves) must be K Z + (noise + g) Z; K Z is computed by blocks of kernel rows (m^2 x d).
        The solves' error grows with cond(K + noise I), bounded from the hyperparameters, not the untrusted factor:
        its eigenvalues lie in [noise + 1e-8, m s2 + noise + 1e-2 s2] (K is semi-definite; Gershgorin, with GPy's
        largest jitter)."""
        eps, m, s2 = float(np.finfo(float).eps), self.n_inputs, self.kernel_variance
        Z = np.asfortranarray(rng.standard_normal((m, columns)))
        product = lower_solve(inverse, lower_transpose_solve(inverse, Z.copy(order="F")))
        kernel_times = np.empty_like(product)
        rows = max(1, CHUNK_BYTES // (8 * m))
        for start in range(0, m, rows):
            kernel_times[start : start + rows] = self.cross_covariance(self.inputs[start : start + rows]) @ Z
        residual = product - kernel_times - self.noise_variance * Z
        added = float(np.vdot(residual, Z) / np.vdot(Z, Z))  # g, least squares
        residual -= added * Z
        floor = self.noise_variance + 1e-8
        condition = (m * s2 + 1e-2 * s2 + floor) / floor
        tolerance = 4 * (m + 1) * eps * condition * (s2 + floor) * np.abs(Z).sum(axis=0)
        if not np.isfinite(residual).all() or (np.abs(residual) > tolerance).any():
            return "(L^-1)^-1 (L^-1)^-T differs from the kernel's covariance in random directions"
        if not -tolerance.max() <= added <= 1e-8 + 1e-2 * (s2 + floor) + tolerance.max():
            return f"(L^-1)^-1 (L^-1)^-T adds {added:.3g} to the kernel's diagonal, beyond the noise and GPy's jitter"
        return None

    def whitened(self, K: np.ndarray) -> np.ndarray:
        """K L^-T, (len(K), m): each row of K (C-ordered, overwritten) times the inverse of the exact factor."""
        if self.cholesky is not None:
            # L^-1 K^T in place of K: K^T of a C-ordered K is the Fortran-ordered array BLAS wants
            return lower_solve(self.cholesky, np.asarray(K, order="C").T).T
        assert self.cholesky_inverse is not None
        if len(K) < TRMM_MIN_ROWS:
            return K @ self.cholesky_inverse.T
        return lower_times(self.cholesky_inverse, np.asarray(K, order="C").T).T

    def solve(self, B: np.ndarray) -> np.ndarray:
        """(K + noise I)^-1 B for (m, c) B, exact inference only (a new array)."""
        if self.cholesky is not None:
            forward = lower_solve(self.cholesky, np.array(B, dtype=float, order="F"))
            return lower_transpose_solve(self.cholesky, forward)
        if self.cholesky_inverse is None:
            raise ValueError("solve is for exact inference")
        return self.cholesky_inverse.T @ (self.cholesky_inverse @ B)

    # --- what optimisers need: gradients, joint covariance ------------------------------------------------

    @property
    def _scaled_inputs(self) -> np.ndarray:
        return self.inputs_augmented[:, : len(self.inverse_lengthscale)]

    def _kernel_of_distance(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k(r), and g(r) = (dk/dr) / r, so that dk/dx = g (x - z) / lengthscale^2. r is scaled distance."""
        s2 = self.kernel_variance
        if self.kernel == "RBF":
            k = s2 * np.exp(-0.5 * r**2)
            return k, -k
        if self.kernel == "Exponential":
            k = s2 * np.exp(-r)
            with np.errstate(divide="ignore", invalid="ignore"):
                g = np.where(r > 0, -k / r, 0.0)  # a subgradient at r = 0, as GPy takes
            return k, g
        if self.kernel == "Matern32":
            e = np.exp(-_SQRT3 * r)
            return s2 * (1 + _SQRT3 * r) * e, -3.0 * s2 * e
        e = np.exp(-_SQRT5 * r)  # Matern52
        return s2 * (1 + _SQRT5 * r + (5.0 / 3.0) * r**2) * e, -(5.0 / 3.0) * s2 * (1 + _SQRT5 * r) * e

    def _distances(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """Scaled distances |(a - b) / lengthscale| between rows of A and B (already divided by the lengthscale)."""
        squared = np.vecdot(A, A)[:, None] + np.vecdot(B, B)[None, :] - 2.0 * (A @ B.T)
        return np.sqrt(np.maximum(squared, 0.0))

    def _times_inverse(self, K: np.ndarray) -> np.ndarray:
        """K A: the cross-covariance times the posterior's inverse (exact: L^-T L^-1; sparse: woodbury_inv)."""
        if self.woodbury_inverse is not None:
            return K @ self.woodbury_inverse
        return self.solve(K.T).T

    def gradients(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """d mean / dx, (n, d, n_outputs), and d variance / dx, (n, d, n_outputs), as GPy's predictive_gradients.

        The noise does not depend on x, so the latent and the noisy variance have the same gradient.
        """
        S = X * self.inverse_lengthscale
        U = self._scaled_inputs
        n_outputs = self.woodbury_vector.shape[1]
        mean_grad = np.empty((len(X), X.shape[1], n_outputs))
        var_grad = np.empty((len(X), X.shape[1]))
        rows = max(1, self.chunk_rows // 3)
        for start in range(0, len(X), rows):
            stop = min(start + rows, len(X))
            K, G = self._kernel_of_distance(self._distances(S[start:stop], U))
            # sum_j G_ij (s_iq - u_jq) B_j / l_q, for B = the woodbury vector (mean) and K A (variance)
            GW = G @ self.woodbury_vector  # (rows, outputs)
            GUW = G @ (U[:, :, None] * self.woodbury_vector[:, None, :]).reshape(len(U), -1)
            GUW = GUW.reshape(stop - start, X.shape[1], n_outputs)
            mean_grad[start:stop] = (S[start:stop, :, None] * GW[:, None, :] - GUW) * self.inverse_lengthscale[:, None]
            H = G * self._times_inverse(K)
            var_grad[start:stop] = -2.0 * (S[start:stop] * H.sum(axis=1)[:, None] - H @ U) * self.inverse_lengthscale
        mean_grad *= self.y_std
        var_grad = np.multiply.outer(var_grad, self.y_std**2)
        require_finite("the predictive gradients", mean_grad, var_grad)
        return mean_grad, var_grad

    def covariance(self, X: np.ndarray, *, latent: bool = False) -> np.ndarray:
        """The joint posterior covariance of the points, (n_outputs, n, n), as GPy's predict(full_cov=True)."""
        S = X * self.inverse_lengthscale
        K = self.cross_covariance(X)
        distances = self._distances(S, S)
        np.fill_diagonal(distances, 0.0)  # exactly, not the rounding of |a|^2 + |a|^2 - 2 a.a (as GPy does)
        prior, _ = self._kernel_of_distance(distances)
        if self.woodbury_inverse is not None:
            covariance = prior - self._times_inverse(K) @ K.T
        else:
            W = self.whitened(K)
            covariance = prior - W @ W.T
        covariance = 0.5 * (covariance + covariance.T)  # symmetric to the last bit
        if len(covariance) and (lowest := float(np.diagonal(covariance).min())) < -self.variance_rounding:
            raise ModelBrokenError(f"a latent variance of {lowest:.3g} in the joint covariance (standardised)")
        if not latent:
            covariance[np.diag_indices_from(covariance)] += self.noise_variance
        covariance = covariance[None, :, :] * (self.y_std**2)[:, None, None]
        require_finite("the predictive covariance", covariance)
        return covariance


def _lower_triangle(factor: np.ndarray) -> np.ndarray:
    """The factor, C-ordered, with its upper triangle zeroed in place (row by row: no copy of an m x m array)."""
    factor = np.ascontiguousarray(factor, dtype=float)
    if not factor.flags.writeable:
        factor = factor.copy()
    for row in range(len(factor) - 1):
        factor[row, row + 1 :] = 0.0
    return factor
