"""The output distribution under input distributions, with the GP's own uncertainty in every number.

n points are drawn from the inputs (scrambled Sobol' points through each input's quantile function) and every
statistic (mean, standard deviation, quantiles, exceedance probabilities P(y > t), histogram counts) is computed
for each of k functions drawn from the posterior (handler.analyses.function_draws). A statistic's estimate is its
mean over the draws; its 95% interval is the estimate plus or minus z times the square root of (its variance
across draws + its sampling variance), the sampling variance by the bootstrap over the n points of the posterior
mean's outputs. Probabilities' intervals are clipped to [0, 1]. With no draws, the statistics are the posterior
mean's and the intervals hold the sampling error only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from handler.analyses.sensitivity import Z_95, IndexEstimate

BOOTSTRAP_RESAMPLES = 200


@dataclass(frozen=True)
class Propagation:
    mean: IndexEstimate
    std: IndexEstimate
    quantiles: list[tuple[float, IndexEstimate]]
    exceedance: list[tuple[float, IndexEstimate]]
    edges: np.ndarray
    counts: np.ndarray  # mean over draws (or the posterior mean's counts)
    counts_low: np.ndarray | None
    counts_high: np.ndarray | None

    def as_dict(self) -> dict[str, Any]:
        histogram: dict[str, Any] = {"edges": self.edges, "counts": self.counts}
        if self.counts_low is not None:
            histogram |= {"counts_low": self.counts_low, "counts_high": self.counts_high}
        return {
            "mean": self.mean.as_dict(),
            "std": self.std.as_dict(),
            "quantiles": [{"probability": p, **e.as_dict()} for p, e in self.quantiles],
            "exceedance": [{"threshold": t, **e.as_dict()} for t, e in self.exceedance],
            "histogram": histogram,
        }


def _statistics(Y: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per column of Y (n, k): [mean, std, quantiles..., exceedances...], (2 + q + t, k)."""
    rows = [Y.mean(axis=0), Y.std(axis=0, ddof=1)]
    if len(probabilities):
        rows += list(np.quantile(Y, probabilities, axis=0))
    rows += [np.mean(t < Y, axis=0) for t in thresholds]
    return np.array(rows)


def propagate(
    mean: np.ndarray,
    draws: np.ndarray | None,
    probabilities: list[float],
    thresholds: list[float],
    bins: int,
    rng: np.random.Generator,
) -> Propagation:
    """Statistics of outputs at n input samples: the posterior mean's (n,) and, if any, draws' (n, k)."""
    p, t = np.asarray(probabilities, dtype=float), np.asarray(thresholds, dtype=float)
    resamples = rng.integers(len(mean), size=(BOOTSTRAP_RESAMPLES, len(mean)))
    sampling = np.var(
        np.array([_statistics(mean[r][:, None], p, t)[:, 0] for r in resamples]), axis=0, ddof=1
    )  # (statistics,)
    values = _statistics(mean[:, None] if draws is None else draws, p, t)  # (statistics, k)
    across = np.var(values, axis=1, ddof=1) if values.shape[1] > 1 else np.zeros(len(values))
    estimate = values.mean(axis=1)
    sd = np.sqrt(across + sampling)
    estimates = [
        IndexEstimate(float(e), float(e - Z_95 * s), float(e + Z_95 * s)) for e, s in zip(estimate, sd, strict=True)
    ]
    # a standard deviation is not negative (its normal interval reaches below 0 where the output barely varies)
    estimates[1] = IndexEstimate(estimates[1].estimate, max(0.0, estimates[1].ci_low), estimates[1].ci_high)
    q, probs = len(p), estimates[2 + len(p) :]
    probs = [IndexEstimate(e.estimate, max(0.0, e.ci_low), min(1.0, e.ci_high)) for e in probs]
    every = mean if draws is None else draws.ravel()
    edges = np.histogram_bin_edges(every, bins=bins)
    if draws is None:
        counts, low, high = np.histogram(mean, bins=edges)[0], None, None
    else:
        per_draw = np.array([np.histogram(column, bins=edges)[0] for column in draws.T])  # (k, bins)
        counts = per_draw.mean(axis=0)
        low, high = np.percentile(per_draw, [2.5, 97.5], axis=0)
    return Propagation(
        mean=estimates[0],
        std=estimates[1],
        quantiles=list(zip(probabilities, estimates[2 : 2 + q], strict=True)),
        exceedance=list(zip(thresholds, probs, strict=True)),
        edges=edges,
        counts=counts,
        counts_low=low,
        counts_high=high,
    )


def _interval(value: float, sd: float) -> IndexEstimate:
    return IndexEstimate(value, value - Z_95 * sd, value + Z_95 * sd)
