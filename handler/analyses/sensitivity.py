"""Sobol' sensitivity indices of a surrogate, with the GP's own uncertainty in their intervals.

The sample and the estimators are SALib's (`SALib.sample.sobol.sample`, `SALib.analyze.sobol.analyze`): Saltelli's
scheme on a scrambled Sobol' sequence of 2d dimensions, first-order indices by Saltelli et al. (2010), total
ones by Jansen (1999), second-order ones by Saltelli (2002), all on outputs standardised as SALib does, and the
sampling error by SALib's bootstrap (the same resamples for a given seed). Tests feed SALib the same sample and
outputs and compare.

With posterior draws (k >= 2), each of k whole functions from the posterior (handler.analyses.function_draws) gets
its own indices; an index's interval is then their mean plus or minus z times the square root of (their variance
+ the posterior mean's bootstrap variance): what the GP does not know about the function, and what the finite
sample does not know about the integrals. (SALib reads a seed of 0 as none: the same resamples for seeds >= 1.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from handler.analyses.distributions import InputDistribution
from handler.analyses.sobol_sequence import sobol_points

BOOTSTRAP_RESAMPLES = 100  # SALib's default num_resamples
BOOTSTRAP_BLOCK_VALUES = 2**22  # 32 MB of resampled outputs at a time
Z_95 = 1.959963984540054


def saltelli_sample(base: np.ndarray, second_order: bool) -> np.ndarray:
    """SALib's cross-sampled design from an (n, 2d) base: per base row A, AB_1..AB_d, [BA_1..BA_d,] B."""
    n, two_d = base.shape
    d = two_d // 2
    A, B = base[:, :d], base[:, d:]
    blocks = [A]
    for j in range(d):
        AB = A.copy()
        AB[:, j] = B[:, j]
        blocks.append(AB)
    if second_order:
        for j in range(d):
            BA = B.copy()
            BA[:, j] = A[:, j]
            blocks.append(BA)
    blocks.append(B)
    return np.stack(blocks, axis=1).reshape(n * len(blocks), d)  # row-major per base row, as SALib orders them


def uniform_design(n: int, d: int, second_order: bool, rng: np.random.Generator) -> np.ndarray:
    """Saltelli's sample in (0, 1)^d: n (d + 2) points, or n (2d + 2) with second-order indices."""
    return saltelli_sample(sobol_points(n, 2 * d, rng), second_order)


def sensitivity_design(
    distributions: list[InputDistribution], n: int, second_order: bool, rng: np.random.Generator
) -> np.ndarray:
    """The points to evaluate: the uniform design through each input's quantile function."""
    uniform = uniform_design(n, len(distributions), second_order, rng)
    return np.column_stack([dist.ppf(uniform[:, j]) for j, dist in enumerate(distributions)])


@dataclass(frozen=True)
class IndexEstimate:
    estimate: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "ci_low": self.ci_low, "ci_high": self.ci_high}


@dataclass(frozen=True)
class SobolIndices:
    """Indices of one function, (d,) and (d, d), and their bootstrap standard deviations."""

    first: np.ndarray  # (d,)
    total: np.ndarray  # (d,)
    second: np.ndarray | None  # (d, d), upper triangle
    variance: np.ndarray  # of the standardised output: 1
    first_sd: np.ndarray
    total_sd: np.ndarray
    second_sd: np.ndarray | None
    variance_sd: np.ndarray


def _split(Y: np.ndarray, d: int, second_order: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """A, AB (n, d), BA (n, d) or None, B from outputs in the sample's order; Y is (n * step, ...)."""
    step = 2 * d + 2 if second_order else d + 2
    blocks = Y.reshape(-1, step, *Y.shape[1:])
    A, B = blocks[:, 0], blocks[:, step - 1]
    AB = blocks[:, 1 : d + 1]
    BA = blocks[:, d + 1 : 2 * d + 1] if second_order else None
    return A, AB, BA, B


def _first(A: np.ndarray, AB: np.ndarray, B: np.ndarray, variance: np.ndarray) -> np.ndarray:
    # Saltelli 2010: mean(f(B) (f(AB_j) - f(A))) / V; arrays carry the sample on axis -2 (AB: axis -3 is j)
    return np.mean(B[..., None, :] * (AB - A[..., None, :]), axis=-1) / variance[..., None]


def _total(A: np.ndarray, AB: np.ndarray, variance: np.ndarray) -> np.ndarray:
    # Jansen 1999: mean((f(A) - f(AB_j))^2) / 2V
    return 0.5 * np.mean((A[..., None, :] - AB) ** 2, axis=-1) / variance[..., None]


def _second(
    A: np.ndarray, AB: np.ndarray, BA: np.ndarray, B: np.ndarray, variance: np.ndarray, first: np.ndarray
) -> np.ndarray:
    # Saltelli 2002: V_jk = mean(f(BA_j) f(AB_k) - f(A) f(B)) / V - S_j - S_k, for j < k
    d = AB.shape[-2]
    AfB = np.mean(A * B, axis=-1)
    joint = np.einsum("...jn,...kn->...jk", BA, AB) / A.shape[-1]
    second = (joint - AfB[..., None, None]) / variance[..., None, None] - first[..., :, None] - first[..., None, :]
    upper = np.triu(np.ones((d, d), dtype=bool), k=1)
    return np.where(upper, second, np.nan)


def sobol_indices(Y: np.ndarray, d: int, second_order: bool, resamples: np.ndarray | None) -> SobolIndices:
    """Indices of one function's outputs Y (n * step,) in the sample's order, and their bootstrap deviations.

    `resamples` is (n, R) base-row indices, as SALib draws them; None: no bootstrap (deviations None).
    """
    spread = Y.std()
    if not np.isfinite(spread):
        raise ValueError("the outputs are not all finite")
    if spread <= np.finfo(float).eps * max(1.0, float(np.abs(Y).max())):
        # a constant output (as SALib answers, with a warning): no input matters, and nothing is uncertain
        zeros, upper = np.zeros(d), np.triu(np.zeros((d, d)), 1) + np.tril(np.full((d, d), np.nan))
        second = upper if second_order else None
        return SobolIndices(zeros, zeros, second, np.ones(()), zeros, zeros, second, np.zeros(()))
    Y = (Y - Y.mean()) / spread  # SALib standardises the outputs: its estimators are not shift-free
    A, AB, BA, B = _split(Y, d, second_order)  # A, B (n,); AB, BA (n, d)
    estimates = _indices(A, AB.T, None if BA is None else BA.T, B)
    if resamples is None:
        return SobolIndices(*estimates, None, None, None, None)  # type: ignore[arg-type]
    # Bootstrap: the estimators on resampled base rows (SALib: A[r], AB[r], B[r]), a block of resamples at a time,
    # so that memory stays ~BOOTSTRAP_BLOCK_VALUES numbers whatever n, d and R are
    boot: list[list[np.ndarray]] = [[], [], [], []]
    per_resample = len(A) * (2 * d + 2)
    block = max(1, BOOTSTRAP_BLOCK_VALUES // per_resample)
    for start in range(0, resamples.shape[1], block):
        rows = resamples[:, start : start + block].T  # (b, n)
        BA_rows = None if BA is None else BA[rows].transpose(0, 2, 1)
        for kept, value in zip(boot, _indices(A[rows], AB[rows].transpose(0, 2, 1), BA_rows, B[rows]), strict=True):
            if value is not None:
                kept.append(value)
    sd = [np.std(np.concatenate(values), axis=0, ddof=1) if values else None for values in boot]
    return SobolIndices(*estimates, *sd)  # type: ignore[arg-type]


def _indices(
    A: np.ndarray, AB: np.ndarray, BA: np.ndarray | None, B: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """First, total, second-order indices and the output variance; the sample on the last axis (AB: (..., d, n))."""
    variance = np.var(np.concatenate([A, B], axis=-1), axis=-1)
    first = _first(A, AB, B, variance)
    total = _total(A, AB, variance)
    second = None if BA is None else _second(A, AB, BA, B, variance, first)
    return first, total, second, variance


def bootstrap_resamples(n: int, seed: int) -> np.ndarray:
    """(n, R) row indices: SALib's `analyze(..., seed=seed)` draws the same ones."""
    return np.random.default_rng(seed).integers(n, size=(n, BOOTSTRAP_RESAMPLES))


@dataclass(frozen=True)
class SensitivityResult:
    first_order: list[IndexEstimate]
    total: list[IndexEstimate]
    second_order: list[list[IndexEstimate | None]] | None  # [j][k] for j < k
    variance: IndexEstimate


def analyse(mean: np.ndarray, draws: np.ndarray | None, d: int, second_order: bool, seed: int) -> SensitivityResult:
    """Indices of the posterior mean's outputs (n * step,), or of draws' (n * step, k): intervals as the module says.

    The sampling error is the bootstrap's on the posterior mean's outputs, for draws too: each draw's would be
    about the same (the same sample, a function as variable), at k times the cost.
    """
    step = 2 * d + 2 if second_order else d + 2
    n = len(mean) // step
    resamples = bootstrap_resamples(n, seed)
    of_mean = sobol_indices(mean, d, second_order, resamples)
    of_draws = [] if draws is None else [sobol_indices(Y, d, second_order, None) for Y in draws.T]

    def interval(name: str, *at: int) -> IndexEstimate:
        sampling = float(getattr(of_mean, name + "_sd")[at])
        if not of_draws:
            return _estimate(float(getattr(of_mean, name)[at]), sampling)
        across = np.array([getattr(s, name)[at] for s in of_draws])
        return _estimate(float(np.mean(across)), math.sqrt(float(np.var(across, ddof=1)) + sampling**2))

    second = None
    if second_order:
        second = [[interval("second", j, k) if j < k else None for k in range(d)] for j in range(d)]
    return SensitivityResult(
        first_order=[interval("first", j) for j in range(d)],
        total=[interval("total", j) for j in range(d)],
        second_order=second,
        variance=_output_variance(mean, draws, d, second_order, resamples),
    )


def _output_variance(
    mean: np.ndarray, draws: np.ndarray | None, d: int, second_order: bool, resamples: np.ndarray
) -> IndexEstimate:
    """The output's variance over the input distribution (A and B rows), with the same kind of interval."""
    A, _, _, B = _split(mean, d, second_order)
    both = np.concatenate([A, B])  # (2n,)
    n = len(A)
    boot = [np.var(both[np.concatenate([rows, rows + n])]) for rows in resamples.T]  # the same rows of A and B
    sampling = float(np.std(boot, ddof=1))
    if draws is None:
        return _nonnegative(_estimate(float(np.var(both)), sampling))
    A, _, _, B = _split(draws, d, second_order)
    values = np.var(np.concatenate([A, B], axis=0), axis=0)  # (k,)
    return _nonnegative(_estimate(float(np.mean(values)), math.sqrt(float(np.var(values, ddof=1)) + sampling**2)))


def _nonnegative(estimate: IndexEstimate) -> IndexEstimate:
    """A variance's interval held at 0 from below: a normal interval around a variance near 0 reaches below it."""
    return IndexEstimate(estimate.estimate, max(0.0, estimate.ci_low), estimate.ci_high)


def _estimate(value: float, sd: float) -> IndexEstimate:
    return IndexEstimate(value, value - Z_95 * sd, value + Z_95 * sd)
