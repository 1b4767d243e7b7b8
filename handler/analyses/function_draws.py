"""Whole functions drawn from the GP posterior, cheap to evaluate at any number of points.

Pathwise conditioning (Wilson et al. 2020, "Efficiently sampling functions from Gaussian process posteriors"):
a draw from the prior by random Fourier features (Rahimi and Recht 2007), f(x) = phi(x) theta, is moved onto
the posterior by an update that uses the exact posterior's factors:

    exact:   f_post(x) = f(x) + k(x, X) [w - (K + s2 I)^-1 (f(X) + e)],   e ~ N(0, s2 I)
    sparse:  f_post(x) = f(x) + k(x, Z) Kzz^-1 (u - f(Z)),                u ~ q(u) = N(Kzz w, Kzz - Kzz A Kzz)

Each draw costs O(features + m) per point, against O(N^3) for a joint draw at N points; its mean is the exact
posterior mean (the update is exact), and its covariance differs from the exact one only by the Fourier
features' error in the prior, which the update removes near the data (tests measure both at test points).
Features are drawn from each kernel's spectral density: normal for the RBF, Student-t with 2 nu degrees of
freedom for a Matern-nu (nu = 1/2 for the Exponential).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

from handler.analyses.budget import Deadline, no_deadline
from handler.gp.broken import require_finite
from handler.gp.posterior import GPPosterior
from handler.gp.sampling import factor

FOURIER_FEATURES = 256  # per draw
# Matern smoothness nu of each kernel; the RBF is the limit nu -> infinity (a normal spectral density).
_SMOOTHNESS = {"Exponential": 0.5, "Matern32": 1.5, "Matern52": 2.5, "RBF": math.inf}
CHUNK_BYTES = 32 * 2**20
# A sparse model's draw factors are two m x m arrays: cached for models up to this many inducing points (2 x 200 MB)
SPARSE_FACTORS_MAX_INPUTS = 5_000


@dataclass(frozen=True)
class SparseDrawFactors:
    """What a sparse model's draws need of it, once per model rather than per request (an O(m^3) factorisation).

    With u ~ q(u) = N(Kzz w, Kzz - Kzz A Kzz), the update Kzz^-1 (u - f(Z)) is w + S e - Kzz^-1 f(Z), e ~ N(0, I),
    where S S^T = Kzz^-1 - A (the covariance of Kzz^-1 u).
    """

    kzz_inverse: np.ndarray  # (m, m)
    root: np.ndarray  # S, (m, m)


_sparse_factors: dict[int, tuple[weakref.ref[GPPosterior], SparseDrawFactors]] = {}


def sparse_factors(posterior: GPPosterior, *, compute: bool = True) -> SparseDrawFactors | None:
    """The posterior's cached draw factors (computed now if `compute`), or None; only for sparse models."""
    assert posterior.woodbury_inverse is not None
    cached = _sparse_factors.get(id(posterior))
    if cached is not None and cached[0]() is posterior:
        return cached[1]
    if not compute:
        return None
    Kzz = posterior.cross_covariance(posterior.inputs)
    Kzz = 0.5 * (Kzz + Kzz.T)
    root_kzz, _, _ = factor(Kzz)
    root_inverse = np.linalg.inv(root_kzz)
    kzz_inverse = root_inverse.T @ root_inverse
    del root_inverse, root_kzz, Kzz
    covariance = kzz_inverse - posterior.woodbury_inverse
    covariance += covariance.T
    covariance *= 0.5
    root, _, _ = factor(covariance)
    factors = SparseDrawFactors(kzz_inverse, root)
    _sparse_factors.clear()  # one model per process: a replaced model's factors go with it
    _sparse_factors[id(posterior)] = (weakref.ref(posterior), factors)
    return factors


def sparse_draws_cacheable(posterior: GPPosterior) -> bool:
    return posterior.n_inputs <= SPARSE_FACTORS_MAX_INPUTS


class PosteriorFunctionDraws:
    """`draws` functions from the posterior of each output, evaluated together: `evaluate(X)` is (n, draws, outputs).

    Every draw has its own Fourier features. With shared ones, every draw carries the same error of the features'
    kernel, which the update amplifies where the posterior is much surer than the prior; with features of its
    own, a draw's covariance is the exact posterior's plus an error linear in its features' kernel error, zero
    on average over features. Measured against the exact posterior (benchmarks/posterior_draws.py, 2,000 draws,
    256 features each): variances within 0.92-1.08x where the posterior sd is a tenth or more of the prior's,
    and 0.94-1.12x for the Park model; but for a 400-point fit whose posterior sd is 2e-5 of the prior's, heavy
    tailed (median 2.3x, up to 38x). There the GP's share of any interval is negligible.
    """

    def __init__(
        self, posterior: GPPosterior, draws: int, rng: np.random.Generator, features: int = FOURIER_FEATURES
    ) -> None:
        self.posterior = posterior
        self.draws = draws
        self.features = features
        self.outputs = posterior.woodbury_vector.shape[1]
        d = posterior.inputs.shape[1]
        nu = _SMOOTHNESS[posterior.kernel]
        total = draws * features  # feature block s belongs to draw s
        frequencies = rng.standard_normal((total, d))
        if math.isfinite(nu):  # Student-t: a normal over sqrt(chi2_{2 nu} / (2 nu))
            frequencies *= np.sqrt(2.0 * nu / rng.chisquare(2.0 * nu, size=(total, 1)))
        self.frequencies = frequencies * posterior.inverse_lengthscale  # (draws * features, d)
        self.phases = rng.uniform(0.0, 2.0 * math.pi, size=total)
        self.amplitude = math.sqrt(2.0 * posterior.kernel_variance / features)
        self.weights = rng.standard_normal((draws, features, self.outputs))
        U = posterior.inputs
        prior_at_inputs = self._prior(U).reshape(len(U), draws * self.outputs)  # column s * outputs + j
        w = np.tile(posterior.woodbury_vector, draws)  # (m, draws * outputs), in the same order
        if posterior.inference == "exact":
            # the noise the factor holds (GPy adds 1e-8 to it): draws of the very posterior predict answers for
            noise = rng.standard_normal(prior_at_inputs.shape) * math.sqrt(posterior.factored_noise_variance)
            self.update = w - posterior.solve(prior_at_inputs + noise)
        else:
            factors = sparse_factors(posterior)
            assert factors is not None
            self.update = w + factors.root @ rng.standard_normal(w.shape) - factors.kzz_inverse @ prior_at_inputs

    def _prior(self, X: np.ndarray, exact: bool = True) -> np.ndarray:
        """The draws' prior functions at the points, (len(X), draws, outputs).

        `exact=False` takes the cosines in float32 (numpy's float64 cosine is ~15x slower here): each angle is
        first reduced to [-pi, pi] in float64, so a value is off by ~1e-7 of the prior's standard deviation. The
        values at the training inputs, which the update multiplies by (K + s2 I)^-1, stay float64.
        """
        values = np.empty((len(X), self.draws, self.outputs))
        angles = np.empty((len(X), self.features))
        reduced = None if exact else np.empty((len(X), self.features), dtype=np.float32)
        weights = self.weights if exact else self.weights.astype(np.float32)
        for s in range(self.draws):
            block = slice(s * self.features, (s + 1) * self.features)
            np.matmul(X, self.frequencies[block].T, out=angles)
            angles += self.phases[block]
            if reduced is None:
                np.cos(angles, out=angles)
                np.matmul(angles, weights[s], out=values[:, s, :])
                continue
            turns = np.rint(angles * (0.5 / math.pi))
            angles -= turns * (2.0 * math.pi)
            reduced[...] = angles
            np.cos(reduced, out=reduced)
            values[:, s, :] = reduced @ weights[s]
        values *= self.amplitude
        return values

    def evaluate(self, X: np.ndarray) -> np.ndarray:
        """The draws at the points, on the outputs' scale: (len(X), draws, outputs)."""
        return self.evaluate_with_mean(X)[1]

    def evaluate_with_mean(self, X: np.ndarray, deadline: Deadline | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The posterior mean (len(X), outputs) and the draws (len(X), draws, outputs) at the points, on the outputs'
        scale: the mean from the same kernel rows as the draws' update. The deadline is checked between chunks."""
        deadline = deadline or no_deadline()
        mean = np.empty((len(X), self.outputs))
        values = np.empty((len(X), self.draws, self.outputs))
        rows = max(1, CHUNK_BYTES // (8 * (len(self.phases) + self.posterior.n_inputs)))
        deadline.lap()  # the draws' setup (in __init__) ran since the deadline began: not a chunk's time
        for start in range(0, len(X), rows):
            deadline.check(f"{start} of {len(X)} points evaluated for {self.draws} posterior draws")
            chunk = X[start : start + rows]
            K = self.posterior.cross_covariance(chunk)
            mean[start : start + rows] = K @ self.posterior.woodbury_vector
            update = K @ self.update
            del K
            prior = self._prior(chunk, exact=False)
            values[start : start + rows] = prior + update.reshape(len(chunk), self.draws, self.outputs)
        values *= self.posterior.y_std
        values += self.posterior.y_mean
        mean *= self.posterior.y_std
        mean += self.posterior.y_mean
        require_finite("the posterior mean and draws", mean, values)  # a broken file: a 503, as predict's
        return mean, values


def posterior_mean(posterior: GPPosterior, X: np.ndarray, deadline: Deadline | None = None) -> np.ndarray:
    """The posterior mean alone, (len(X), outputs): m per point, without predict's variance (m^2 per point)."""
    deadline = deadline or no_deadline()
    mean = np.empty((len(X), posterior.woodbury_vector.shape[1]))
    rows = max(1, CHUNK_BYTES // (8 * posterior.n_inputs))
    for start in range(0, len(X), rows):
        deadline.check(f"{start} of {len(X)} points evaluated")
        mean[start : start + rows] = posterior.cross_covariance(X[start : start + rows]) @ posterior.woodbury_vector
    mean *= posterior.y_std
    mean += posterior.y_mean
    require_finite("the posterior mean", mean)  # a broken file: a 503, as predict's
    return mean
