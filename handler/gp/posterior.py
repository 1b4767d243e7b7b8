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
from typing import NamedTuple

import numpy as np

from handler.gp.blas import lower_times

# Working memory of one prediction chunk. Measured (benchmarks/results.md, "chunk budget"): 64 MiB is
# ~25% faster than 16 MiB at n = 1000-3000; 128-512 MiB gain another ~20% for 2-4x the memory. 64 MiB
# keeps any request's working memory near 135 MB.
CHUNK_BYTES = 64 * 2**20
# OpenBLAS multiplies by a triangular matrix (TRMM) twice as fast as a full product (GEMM) for many rows,
# but several times slower for a few: measured on n = 200 to 3000, the crossover is a few hundred rows.
TRMM_MIN_ROWS = 512

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
    A = (K + noise I)^-1 = L^-T L^-1 and L^-1 is formed once at load, so each prediction multiplies by
    it (TRMM in place, or GEMM for a few rows), several times faster in BLAS than the triangular solve
    GPy does for the same result. For sparse inference A is GPy's (m x m) woodbury_inv. Computed on the
    model's standardised scale, then mapped back as GPy's normalizer does.
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
    cholesky_inverse: np.ndarray | None  # exact: L^-1, lower triangular, C order, (m, m)
    woodbury_inverse: np.ndarray | None  # sparse: A, (m, m)
    noise_variance: float
    y_mean: np.ndarray  # (n_outputs,)
    y_std: np.ndarray  # (n_outputs,)

    @classmethod
    def from_arrays(cls, kernel: str, arrays: Mapping[str, np.ndarray]) -> GPPosterior:
        """The posterior of a file's arrays (handler.gp.posterior_file): `cholesky_inverse` or `woodbury_inverse`."""
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
        cholesky_inverse = arrays.get("cholesky_inverse")
        woodbury_inverse = arrays.get("woodbury_inverse")
        if (cholesky_inverse is None) == (woodbury_inverse is None):
            raise ValueError("expected one of cholesky_inverse (exact) and woodbury_inverse (sparse)")
        return cls(
            kernel=kernel,
            kernel_variance=kernel_variance,
            inputs=inputs,
            lengthscale=lengthscale,
            inverse_lengthscale=inverse_lengthscale,
            inputs_augmented=np.column_stack([scaled, np.ones(len(scaled)), last]),
            woodbury_vector=woodbury_vector,
            cholesky_inverse=None if cholesky_inverse is None else _lower_triangle(cholesky_inverse),
            woodbury_inverse=None if woodbury_inverse is None else np.asarray(woodbury_inverse, dtype=float),
            noise_variance=float(arrays["noise_variance"]),
            y_mean=np.asarray(arrays["y_mean"], dtype=float).reshape(-1),
            y_std=np.asarray(arrays["y_std"], dtype=float).reshape(-1),
        )

    @property
    def inference(self) -> str:
        return "exact" if self.cholesky_inverse is not None else "sparse"

    def arrays(self) -> dict[str, np.ndarray]:
        """What a posterior file holds: `from_arrays(kernel, arrays())` is this posterior again."""
        factor = {"cholesky_inverse": self.cholesky_inverse} if self.cholesky_inverse is not None else {}
        if self.woodbury_inverse is not None:
            factor = {"woodbury_inverse": self.woodbury_inverse}
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
            assert self.cholesky_inverse is not None
            if stop - start < TRMM_MIN_ROWS:
                W = K @ self.cholesky_inverse.T
            else:  # L^-1 K^T in place of K: K^T of a C-ordered K is the Fortran-ordered array BLAS wants
                W = lower_times(self.cholesky_inverse, K.T).T
            reduction[start:stop] = np.vecdot(W, W)
        variance = self.kernel_variance - reduction
        if self.woodbury_inverse is not None:
            np.maximum(variance, 1e-15, out=variance)  # as GPy's sparse posterior does
        if not latent:
            variance += self.noise_variance
        mean *= self.y_std
        mean += self.y_mean
        return Prediction(mean, np.multiply.outer(variance, self.y_std**2))

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
        assert self.cholesky_inverse is not None
        return (K @ self.cholesky_inverse.T) @ self.cholesky_inverse

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
        return mean_grad * self.y_std, np.multiply.outer(var_grad, self.y_std**2)

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
            assert self.cholesky_inverse is not None
            W = K @ self.cholesky_inverse.T
            covariance = prior - W @ W.T
        covariance = 0.5 * (covariance + covariance.T)  # symmetric to the last bit
        if not latent:
            covariance[np.diag_indices_from(covariance)] += self.noise_variance
        return covariance[None, :, :] * (self.y_std**2)[:, None, None]


def _lower_triangle(factor: np.ndarray) -> np.ndarray:
    """The factor, C-ordered, with its upper triangle zeroed in place (row by row: no copy of an m x m array)."""
    factor = np.ascontiguousarray(factor, dtype=float)
    if not factor.flags.writeable:
        factor = factor.copy()
    for row in range(len(factor) - 1):
        factor[row, row + 1 :] = 0.0
    return factor
