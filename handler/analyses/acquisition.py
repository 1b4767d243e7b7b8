"""The next points to simulate: a batch chosen jointly by an acquisition function over the GP posterior.

Candidates are scrambled Sobol' points in the search box, plus a local search around the best few of them.
The batch is greedy and joint: after each pick the posterior is conditioned on a noisy observation there (and,
first, at the caller's pending points). Variances after conditioning need no y, so the variance criteria are
exact sequential designs; for expected improvement and the confidence bound, the mean is held where it is (the
kriging believer: a fantasised y equal to the mean changes no mean). Values are Emukit's definitions on the
predictive (noisy) variance, as `emukit.core.acquisition`'s ModelVariance, ExpectedImprovement and
NegativeLowerConfidenceBound compute them on a GPy model; tests compare.

Conditioning is a growing Cholesky factor of the picks' joint covariance, with each tracked set (candidates,
the integrated-variance reference points) keeping L^-1 cov(picks, set): a pick costs O(set x (m + picks)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from handler.analyses.distributions import normal_cdf_array
from handler.analyses.sobol_sequence import sobol_points
from handler.gp.posterior import GPPosterior

ACQUISITIONS = ("variance", "integrated_variance", "expected_improvement", "upper_confidence_bound")
# Candidates and reference points cost (count x m^2) to set up: their number shrinks for large models.
WORK_BUDGET = 2**28
MAX_CANDIDATES, MIN_CANDIDATES = 8_192, 256
MAX_REFERENCE, MIN_REFERENCE = 1_024, 128
LOCAL_SEEDS, LOCAL_ROUNDS, LOCAL_POINTS = 8, 6, 32
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass
class _Tracked:
    """Points whose covariance with the picks is kept: K(set, U), K A, prior variance, L^-1 cov0(picks, set)."""

    X: np.ndarray
    K: np.ndarray  # k(X, U), (n, m)
    KA: np.ndarray  # k(X, U) A, (n, m)
    variance: np.ndarray  # latent posterior variance before any pick (standardised scale), (n,)
    V: np.ndarray  # L^-1 cov0(picks, X), (picks, n): L is the Cholesky factor of cov0(picks, picks) + noise I

    def extended(self, other: _Tracked) -> _Tracked:
        """This set followed by another tracked by the same conditioner."""
        return _Tracked(
            np.vstack([self.X, other.X]),
            np.vstack([self.K, other.K]),
            np.vstack([self.KA, other.KA]),
            np.concatenate([self.variance, other.variance]),
            np.hstack([self.V, other.V]),
        )

    def conditioned_variance(self) -> np.ndarray:
        return np.maximum(self.variance - np.vecdot(self.V.T, self.V.T), 0.0)


class Conditioner:
    """The latent posterior conditioned on noisy fantasies at picked points, on tracked point sets.

    Picks grow a Cholesky factor L of their joint covariance (plus the noise), one row at a time; a tracked set
    keeps V = L^-1 cov0(picks, set), so its conditioned covariance is cov0 - V^T V. A pick adds one row to each
    tracked set's V, at O(set x (m + picks)); a set tracked later gets all its rows from one triangular solve.
    """

    def __init__(self, posterior: GPPosterior) -> None:
        self.posterior = posterior
        self.noise = posterior.noise_variance
        d = posterior.inputs.shape[1]
        self.picks = np.empty((0, d))
        self._picks_KA = np.empty((0, posterior.n_inputs))  # k(picks, U) A
        self._L = np.empty((0, 0))

    def _cov0_with_picks(self, X: np.ndarray, K: np.ndarray, picks: np.ndarray, KA: np.ndarray) -> np.ndarray:
        """cov0(picks, X), (picks, n): the latent posterior covariance before any pick."""
        p = self.posterior
        prior = p._kernel_of_distance(p._distances(picks * p.inverse_lengthscale, X * p.inverse_lengthscale))[0]
        return prior - KA @ K.T

    def track(self, X: np.ndarray) -> _Tracked:
        """Start keeping X's covariance with the picks (those made so far included)."""
        K = self.posterior.cross_covariance(X)
        KA = self.posterior._times_inverse(K)
        variance = np.maximum(self.posterior.kernel_variance - np.vecdot(KA, K), 0.0)
        if len(self.picks):
            V = np.linalg.solve(self._L, self._cov0_with_picks(X, K, self.picks, self._picks_KA))
        else:
            V = np.empty((0, len(X)))
        return _Tracked(X, K, KA, variance, V)

    def condition(self, x: np.ndarray, tracked_sets: list[_Tracked]) -> None:
        """Condition on a noisy observation at x: every tracked set gains a row of V."""
        probe = self.track(x[None, :])
        pivot = probe.V[:, 0]
        diagonal = math.sqrt(max(float(probe.variance[0]) - float(pivot @ pivot) + self.noise, 1e-300))
        t = len(self.picks)
        L = np.zeros((t + 1, t + 1))
        L[:t, :t] = self._L
        L[t, :t], L[t, t] = pivot, diagonal
        for tracked in tracked_sets:
            row = (self._cov0_with_picks(tracked.X, tracked.K, x[None, :], probe.KA)[0] - pivot @ tracked.V) / diagonal
            tracked.V = np.vstack([tracked.V, row])
        self._L = L
        self.picks = np.vstack([self.picks, x])
        self._picks_KA = np.vstack([self._picks_KA, probe.KA])


@dataclass(frozen=True)
class Pick:
    point: np.ndarray
    value: float


@dataclass(frozen=True)
class SuggestionProblem:
    acquisition: str
    output: int
    goal: str  # "maximize" or "minimize"
    low: np.ndarray
    high: np.ndarray
    best: float | None  # incumbent on the output's scale (EI); None: the best posterior mean at the training inputs
    beta: float  # confidence-bound width, in predictive standard deviations


def suggest(
    posterior: GPPosterior, problem: SuggestionProblem, q: int, pending: np.ndarray, rng: np.random.Generator
) -> list[Pick]:
    """q distinct points inside [low, high] (fewer if the box holds fewer), each with its value when it was picked."""
    m = posterior.n_inputs
    d = len(problem.low)
    n_candidates = int(np.clip(WORK_BUDGET // (m * m), MIN_CANDIDATES, MAX_CANDIDATES))
    conditioner = Conditioner(posterior)
    box = problem.high - problem.low
    # distinct, and none of them pending (a box a few floats wide holds few distinct points)
    candidates = _new_rows(np.unique(problem.low + sobol_points(n_candidates, d, rng) * box, axis=0), pending)
    reference = None
    if problem.acquisition == "integrated_variance":
        n_reference = int(np.clip(WORK_BUDGET // (4 * m * m), MIN_REFERENCE, MAX_REFERENCE))
        reference = conditioner.track(problem.low + sobol_points(n_reference, d, rng) * box)
    incumbent = _incumbent(posterior, problem)
    for x in pending:
        conditioner.condition(x, [] if reference is None else [reference])

    def values(tracked: _Tracked, cross: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The acquisition's values, and what ranks them (its logarithm for EI, which underflows far from hope)."""
        if reference is not None and cross is None:
            cross = _conditioned_cross(posterior, tracked, reference)
        return _acquisition(posterior, problem, tracked, cross, incumbent)

    # Local search from the best few candidates (on the acquisition before any pick), in shrinking boxes
    tracked = conditioner.track(candidates)
    # integrated variance: cov(reference, candidates) after the picks, kept up to date by one outer product a pick
    cross = None if reference is None else _conditioned_cross(posterior, tracked, reference)
    _, scores = values(tracked, cross)
    refined = []
    for start in np.argsort(scores)[::-1][:LOCAL_SEEDS]:
        best_x, best_score, improved = candidates[start], scores[start], False
        for round_ in range(1, LOCAL_ROUNDS + 1):
            half = box * 0.5 ** (round_ + 2)
            lo, hi = np.maximum(best_x - half, problem.low), np.minimum(best_x + half, problem.high)
            trial = lo + rng.random((LOCAL_POINTS, d)) * (hi - lo)
            _, trial_scores = values(conditioner.track(trial))
            if trial_scores.max() > best_score:
                best_x, best_score, improved = trial[trial_scores.argmax()], trial_scores.max(), True
        if improved:
            refined.append(best_x)
    refined_rows = _new_rows(np.unique(np.array(refined).reshape(-1, d), axis=0), np.vstack([candidates, pending]))
    best_found = conditioner.track(refined_rows)
    tracked = tracked.extended(best_found)
    candidates = tracked.X
    sets = [tracked] if reference is None else [tracked, reference]
    if cross is not None and reference is not None:
        cross = np.hstack([cross, _conditioned_cross(posterior, best_found, reference)])

    picks: list[Pick] = []
    taken = np.zeros(len(candidates), dtype=bool)
    for _ in range(min(q, len(candidates))):
        acquisition, scores = values(tracked, cross)
        scores[taken] = -np.inf
        index = int(np.argmax(scores))
        taken[index] = True
        picks.append(Pick(candidates[index], float(acquisition[index])))
        conditioner.condition(candidates[index], sets)
        if cross is not None and reference is not None:
            cross -= np.outer(reference.V[-1], tracked.V[-1])
    return picks


def _incumbent(posterior: GPPosterior, problem: SuggestionProblem) -> float:
    if problem.best is not None or problem.acquisition != "expected_improvement":
        return problem.best if problem.best is not None else 0.0
    mean = posterior.predict(posterior.inputs, latent=True).mean[:, problem.output]
    return float(mean.max() if problem.goal == "maximize" else mean.min())


def _acquisition(
    posterior: GPPosterior,
    problem: SuggestionProblem,
    tracked: _Tracked,
    cross: np.ndarray | None,
    incumbent: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The criterion at each tracked point, on the output's scale (larger is better), and what ranks it."""
    scale = float(posterior.y_std[problem.output])
    latent = tracked.conditioned_variance()
    predictive = (latent + posterior.noise_variance) * scale**2
    if problem.acquisition == "variance":
        return predictive, predictive
    if problem.acquisition == "integrated_variance":
        assert cross is not None
        # mean over the reference points of the variance a noisy observation at x removes: cov(r, x)^2 / var(x)
        reduction = np.mean(cross**2, axis=0) / (latent + posterior.noise_variance) * scale**2
        return reduction, reduction
    mean = tracked.K @ posterior.woodbury_vector[:, problem.output] * scale + posterior.y_mean[problem.output]
    std = np.sqrt(predictive)
    if problem.acquisition == "upper_confidence_bound":
        bound = mean + problem.beta * std if problem.goal == "maximize" else -(mean - problem.beta * std)
        return bound, bound
    improvement = mean - incumbent if problem.goal == "maximize" else incumbent - mean
    log_ei = _log_expected_improvement(improvement, std)
    return np.exp(log_ei), log_ei


def _log_expected_improvement(improvement: np.ndarray, std: np.ndarray) -> np.ndarray:
    """log(std (u Phi(u) + phi(u))), u = improvement / std: finite where EI itself underflows to 0.

    Far below hope (u < -30) u Phi(u) + phi(u) = phi(u) / u^2 (1 - 3 / u^2 + ...): its log is -u^2 / 2 - log(u^2)
    - log sqrt(2 pi) + log1p(-3 / u^2), to 1e-6 relative there.
    """
    u = np.clip(improvement / std, -1e150, 1e150)
    value = np.empty_like(u)
    near = u > -30
    un = u[near]
    with np.errstate(divide="ignore"):  # u Phi(u) + phi(u) > 0 always; log(0) only when phi underflows, not here
        value[near] = np.log(un * normal_cdf_array(un) + _INV_SQRT_2PI * np.exp(-0.5 * un**2))
    uf = u[~near]
    value[~near] = -0.5 * uf**2 - np.log(uf**2) - math.log(math.sqrt(2 * math.pi)) + np.log1p(-3.0 / uf**2)
    return value + np.log(std)


def _conditioned_cross(posterior: GPPosterior, tracked: _Tracked, reference: _Tracked) -> np.ndarray:
    """Latent covariance (after the picks) between reference points and tracked points, (n_reference, n)."""
    prior = posterior._kernel_of_distance(
        posterior._distances(reference.X * posterior.inverse_lengthscale, tracked.X * posterior.inverse_lengthscale)
    )[0]
    cov = prior - reference.KA @ tracked.K.T
    return cov - reference.V.T @ tracked.V


def _new_rows(rows: np.ndarray, existing: np.ndarray) -> np.ndarray:
    """The rows not already in `existing` (exactly equal coordinates)."""
    if not len(existing) or not len(rows):
        return rows
    seen = {row.tobytes() for row in np.ascontiguousarray(existing, dtype=float)}
    keep = [row.tobytes() not in seen for row in np.ascontiguousarray(rows, dtype=float)]
    return rows[np.array(keep, dtype=bool)]
