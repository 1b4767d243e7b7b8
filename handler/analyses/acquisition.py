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

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from handler.analyses.budget import CROSS_PICK_S, GEMM_S, KERNEL_S, CostModel, Deadline, no_deadline
from handler.analyses.distributions import normal_cdf_array
from handler.analyses.function_draws import posterior_mean
from handler.analyses.sobol_sequence import sobol_points
from handler.gp.posterior import GPPosterior

ACQUISITIONS = ("variance", "integrated_variance", "expected_improvement", "upper_confidence_bound")
WORK_BUDGET = 2**28
MAX_CANDIDATES, MIN_CANDIDATES = 8_192, 256
MAX_REFERENCE, MIN_REFERENCE = 1_024, 128
LOCAL_SEEDS, LOCAL_ROUNDS, LOCAL_POINTS = 8, 6, 32
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass
class _Tracked:
    """Points whose covariance with the picks is kept.

    The latent posterior covariance before any pick is prior(a, b) - left(a) right(b)^T: exact inference whitens
    the kernel rows once, left = right = k(x, U) L^-T (a triangular solve, m^2 flops a row); sparse keeps
    left = k(x, U) A and right = k(x, U).
    """

    X: np.ndarray
    mean: np.ndarray  # latent posterior mean (standardised scale), (n, outputs)
    left: np.ndarray  # (n, m)
    right: np.ndarray  # (n, m): the same array as left for exact inference
    variance: np.ndarray  # latent posterior variance before any pick (standardised scale), (n,)
    V: np.ndarray  # L^-1 cov0(picks, X), (picks, n): L is the Cholesky factor of cov0(picks, picks) + noise I

    def extended(self, other: _Tracked) -> _Tracked:
        """This set followed by another tracked by the same conditioner."""
        left = np.vstack([self.left, other.left])
        return _Tracked(
            np.vstack([self.X, other.X]),
            np.vstack([self.mean, other.mean]),
            left,
            left if self.right is self.left else np.vstack([self.right, other.right]),
            np.concatenate([self.variance, other.variance]),
            np.hstack([self.V, other.V]),
        )

    def conditioned_variance(self) -> np.ndarray:
        return np.maximum(self.variance - np.vecdot(self.V.T, self.V.T), 0.0)


def _whitened(posterior: GPPosterior, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) of the kernel rows K: exact K L^-T for both (K overwritten); sparse K A and K."""
    if posterior.woodbury_inverse is not None:
        return K @ posterior.woodbury_inverse, K
    W = posterior.whitened(K)
    return W, W


class Conditioner:
    """The latent posterior conditioned on noisy fantasies at picked points, on tracked point sets.

    Picks grow a Cholesky factor L of their joint covariance (plus the noise), one row at a time; a tracked set
    keeps V = L^-1 cov0(picks, set), so its conditioned covariance is cov0 - V^T V. A pick adds one row to each
    tracked set's V, at O(set x (m + picks)); a set tracked later gets all its rows from one triangular solve.

    Rank-aware: a pick whose conditional variance plus the noise is within rounding of zero (a duplicate of an
    earlier pick, or a point the picks already determine, on a model of zero noise) adds no information and no row,
    so L stays well conditioned (a zero pivot would make it singular).
    """

    def __init__(self, posterior: GPPosterior) -> None:
        self.posterior = posterior
        self.noise = posterior.noise_variance
        d = posterior.inputs.shape[1]
        self.picks = np.empty((0, d))
        self._picks_left = np.empty((0, posterior.n_inputs))
        self._L = np.empty((0, 0))

    @property
    def rank_tolerance(self) -> float:
        """Rounding of a conditional variance: sums of m + picks terms, each at most the prior variance."""
        eps = float(np.finfo(float).eps)
        return 4.0 * (self.posterior.n_inputs + len(self.picks) + 1) * eps * self.posterior.kernel_variance

    def _cov0(self, X: np.ndarray, left: np.ndarray, tracked: _Tracked) -> np.ndarray:
        """cov0(X, tracked.X), (len(X), n): the latent posterior covariance before any pick."""
        p = self.posterior
        prior = p._kernel_of_distance(p._distances(X * p.inverse_lengthscale, tracked.X * p.inverse_lengthscale))[0]
        return prior - left @ tracked.right.T

    def track(self, X: np.ndarray) -> _Tracked:
        """Start keeping X's covariance with the picks (those made so far included)."""
        K = self.posterior.cross_covariance(X)
        mean = K @ self.posterior.woodbury_vector
        left, right = _whitened(self.posterior, K)
        del K
        variance = np.maximum(self.posterior.kernel_variance - np.vecdot(left, right), 0.0)
        tracked = _Tracked(X, mean, left, right, variance, np.empty((0, len(X))))
        if len(self.picks):
            tracked.V = np.linalg.solve(self._L, self._cov0(self.picks, self._picks_left, tracked))
        return tracked

    def condition(self, tracked: _Tracked, index: int, tracked_sets: list[_Tracked]) -> bool:
        """Condition on a noisy observation at a tracked point: every set in tracked_sets (which must include
        `tracked`) gains a row of V. False, and nothing changes, when the observation adds no information."""
        pivot = tracked.V[:, index]
        conditional = float(tracked.variance[index]) - float(pivot @ pivot) + self.noise
        if conditional <= self.rank_tolerance:
            return False
        diagonal = math.sqrt(conditional)
        x, left = tracked.X[index : index + 1], tracked.left[index : index + 1]
        rows = [(self._cov0(x, left, kept)[0] - pivot @ kept.V) / diagonal for kept in tracked_sets]
        for kept, row in zip(tracked_sets, rows, strict=True):
            kept.V = np.vstack([kept.V, row])
        t = len(self.picks)
        L = np.zeros((t + 1, t + 1))
        L[:t, :t] = self._L
        L[t, :t], L[t, t] = pivot, diagonal
        self._L = L
        self.picks = np.vstack([self.picks, x])
        self._picks_left = np.vstack([self._picks_left, left])
        return True

    def condition_on_points(self, X: np.ndarray, tracked_sets: list[_Tracked], deadline: Deadline) -> None:
        """Condition on noisy observations at each of the points in turn (tracked together: one product)."""
        if not len(X):
            return
        probe = self.track(X)
        for i in range(len(X)):
            deadline.check(f"conditioned on {i} of {len(X)} pending points")
            self.condition(probe, i, [probe, *tracked_sets])


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


@dataclass(frozen=True)
class SearchSizes:
    """How many points /suggest evaluates: candidates, local-search trials and integrated-variance references."""

    candidates: int
    reference: int
    local_seeds: int = LOCAL_SEEDS
    local_rounds: int = LOCAL_ROUNDS

    @property
    def local_points(self) -> int:
        return self.local_seeds * self.local_rounds * LOCAL_POINTS

    @classmethod
    def of(cls, m: int, cost: CostModel | None = None, seconds: float | None = None) -> SearchSizes:
        """The search for a model of m inputs; with its cost and budget, the local search shrinks (fewer seeds,
        then fewer rounds) until the search itself takes at most half the budget, leaving the rest to q and the
        pending points: on a model of 8,000 points a local-search trial costs 2 m^2 flops (a GEMM by L^-T)."""
        # Candidates and reference points cost (count x m^2) to set up: their number shrinks for large models.
        sizes = cls(
            int(np.clip(WORK_BUDGET // (m * m), MIN_CANDIDATES, MAX_CANDIDATES)),
            int(np.clip(WORK_BUDGET // (4 * m * m), MIN_REFERENCE, MAX_REFERENCE)),
        )
        if cost is None or seconds is None:
            return sizes
        for seeds, rounds in ((LOCAL_SEEDS, LOCAL_ROUNDS), (4, 6), (2, 6), (1, 6), (1, 3), (1, 2)):
            sizes = dataclasses.replace(sizes, local_seeds=seeds, local_rounds=rounds)
            if sizes.seconds(cost, 0, 0, integrated=True, incumbent=True) <= seconds / 2:
                break
        return sizes

    def seconds(self, cost: CostModel, q: int, pending: int, integrated: bool, incumbent: bool = False) -> float:
        """Estimated seconds of a request: tracking every point (the local search in sets of LOCAL_POINTS),
        conditioning on each pending point and pick (a row per tracked point of each set), the integrated variance's
        reference-by-candidate products, and EI's default incumbent (the posterior mean at the m inputs)."""
        reference = self.reference if integrated else 0
        sets = [self.candidates, pending, reference]
        tracked = sum(cost.track(size, size) for size in sets) + cost.track(self.local_points, LOCAL_POINTS)
        tracked += cost.mean(cost.m) if incumbent else 0.0
        kept = self.candidates + pending + reference  # the sets conditioning updates
        kernel = KERNEL_S[cost.kernel_name]
        conditioning = (pending + q) * (cost.track_row() + kept * ((2 * cost.m + 2 * (pending + q)) * GEMM_S + kernel))
        # integrated variance: cov(reference, candidates and trials), then each pick's pass over it
        cross = reference * (self.candidates + self.local_points) * (2 * cost.m * GEMM_S + kernel)
        cross += q * reference * self.candidates * CROSS_PICK_S
        return tracked + conditioning + cross


def suggest(
    posterior: GPPosterior,
    problem: SuggestionProblem,
    q: int,
    pending: np.ndarray,
    rng: np.random.Generator,
    deadline: Deadline | None = None,
    sizes: SearchSizes | None = None,
) -> list[Pick]:
    """q distinct points inside [low, high] (fewer if the box holds fewer), each with its value when it was picked."""
    deadline = deadline or no_deadline()
    d = len(problem.low)
    sizes = sizes or SearchSizes.of(posterior.n_inputs)
    conditioner = Conditioner(posterior)
    box = problem.high - problem.low
    # distinct, and none of them pending (a box a few floats wide holds few distinct points)
    candidates = _new_rows(np.unique(problem.low + sobol_points(sizes.candidates, d, rng) * box, axis=0), pending)
    reference = None
    if problem.acquisition == "integrated_variance":
        reference = conditioner.track(problem.low + sobol_points(sizes.reference, d, rng) * box)
    incumbent = _incumbent(posterior, problem)
    conditioner.condition_on_points(pending, [] if reference is None else [reference], deadline)

    def values(tracked: _Tracked, cross: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The acquisition's values, and what ranks them (its logarithm for EI, which underflows far from hope)."""
        if reference is not None and cross is None:
            cross = _conditioned_cross(posterior, tracked, reference)
        return _acquisition(posterior, problem, tracked, cross, incumbent, conditioner.rank_tolerance)

    # Local search from the best few candidates (on the acquisition before any pick), in shrinking boxes
    deadline.check("conditioned on the pending points")
    tracked = conditioner.track(candidates)
    # integrated variance: cov(reference, candidates) after the picks, kept up to date by one outer product a pick
    cross = None if reference is None else _conditioned_cross(posterior, tracked, reference)
    _, scores = values(tracked, cross)
    refined = []
    for seed, start in enumerate(np.argsort(scores)[::-1][: sizes.local_seeds]):
        deadline.check(f"searched around {seed} of {sizes.local_seeds} candidates")
        best_x, best_score, improved = candidates[start], scores[start], False
        for round_ in range(1, sizes.local_rounds + 1):
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
        deadline.check(f"picked {len(picks)} of {q} points")
        acquisition, scores = values(tracked, cross)
        scores[taken] = -np.inf
        index = int(np.argmax(scores))
        taken[index] = True
        picks.append(Pick(candidates[index], float(acquisition[index])))
        informative = conditioner.condition(tracked, index, sets)
        if informative and cross is not None and reference is not None:
            cross -= np.outer(reference.V[-1], tracked.V[-1])
    return picks


def _incumbent(posterior: GPPosterior, problem: SuggestionProblem) -> float:
    if problem.best is not None or problem.acquisition != "expected_improvement":
        return problem.best if problem.best is not None else 0.0
    mean = posterior_mean(posterior, posterior.inputs)[:, problem.output]  # the mean alone: m^2, not predict's m^3
    return float(mean.max() if problem.goal == "maximize" else mean.min())


def _acquisition(
    posterior: GPPosterior,
    problem: SuggestionProblem,
    tracked: _Tracked,
    cross: np.ndarray | None,
    incumbent: float,
    rank_tolerance: float,
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
        # a point the picks already determine (zero noise) removes nothing: 0, not 0 / 0
        observed = latent + posterior.noise_variance
        informative = observed > rank_tolerance
        removed = np.einsum("ij,ij->j", cross, cross) / len(cross)  # mean of cross^2 by column, with no temporary
        reduction = np.divide(removed, observed, out=np.zeros_like(observed), where=informative) * scale**2
        return reduction, reduction
    mean = tracked.mean[:, problem.output] * scale + posterior.y_mean[problem.output]
    std = np.sqrt(predictive)
    if problem.acquisition == "upper_confidence_bound":
        bound = mean + problem.beta * std if problem.goal == "maximize" else -(mean - problem.beta * std)
        return bound, bound
    improvement = mean - incumbent if problem.goal == "maximize" else incumbent - mean
    log_ei = _log_expected_improvement(improvement, std)
    # far above hope EI is the improvement itself: answered as it is, not through exp(log), which loses |log| eps
    value = np.where(improvement > 30 * std, improvement, np.exp(log_ei))
    return value, log_ei


def _log_expected_improvement(improvement: np.ndarray, std: np.ndarray) -> np.ndarray:
    """log(std (u Phi(u) + phi(u))), u = improvement / std: finite where EI itself underflows to 0.

    Far above hope (u > 30) EI = improvement Phi(u) + std phi(u) is the improvement to within phi(30) / 30 ~ 1e-198
    relative: its log is taken directly, so a huge improvement (an incumbent of -1e300) is answered as itself, not
    through u, which overflows. Far below hope (u < -30) u Phi(u) + phi(u) = phi(u) / u^2 (1 - 3 / u^2 + ...): its
    log is -u^2 / 2 - log(u^2) - log sqrt(2 pi) + log1p(-3 / u^2), to 1e-6 relative there; u is held above -1e150
    there so that -u^2 / 2 stays finite and still ranks (EI is 0.0 either way). Where std is 0 EI is the improvement
    or nothing.
    """
    value = np.full(improvement.shape, -np.inf)
    certain = std <= 0
    with np.errstate(divide="ignore"):
        value[certain] = np.log(np.maximum(improvement[certain], 0.0))
    uncertain = ~certain
    s, i = std[uncertain], improvement[uncertain]
    with np.errstate(over="ignore"):
        u = i / s
    result = np.empty_like(u)
    above, below = u > 30, u < -30
    near = ~(above | below)
    result[above] = np.log(i[above])
    un = u[near]
    result[near] = np.log(un * normal_cdf_array(un) + _INV_SQRT_2PI * np.exp(-0.5 * un**2)) + np.log(s[near])
    uf = np.maximum(u[below], -1e150)
    result[below] = (
        -0.5 * uf**2 - np.log(uf**2) - math.log(math.sqrt(2 * math.pi)) + np.log1p(-3.0 / uf**2) + np.log(s[below])
    )
    value[uncertain] = result
    return value


def _conditioned_cross(posterior: GPPosterior, tracked: _Tracked, reference: _Tracked) -> np.ndarray:
    """Latent covariance (after the picks) between reference points and tracked points, (n_reference, n)."""
    prior = posterior._kernel_of_distance(
        posterior._distances(reference.X * posterior.inverse_lengthscale, tracked.X * posterior.inverse_lengthscale)
    )[0]
    cov = prior - reference.left @ tracked.right.T
    return cov - reference.V.T @ tracked.V


def _new_rows(rows: np.ndarray, existing: np.ndarray) -> np.ndarray:
    """The rows not already in `existing` (exactly equal coordinates)."""
    if not len(existing) or not len(rows):
        return rows
    seen = {row.tobytes() for row in np.ascontiguousarray(existing, dtype=float)}
    keep = [row.tobytes() not in seen for row in np.ascontiguousarray(rows, dtype=float)]
    return rows[np.array(keep, dtype=bool)]
