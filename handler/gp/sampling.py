"""Joint draws from a Gaussian predictive distribution: what Thompson sampling and q-EI need.

A Cholesky factor of the covariance, with jitter on the diagonal only when the factorisation fails
(the covariance of nearby points is singular to rounding); the jitter used is returned, so callers
know. Past the largest jitter, the eigendecomposition with negative eigenvalues clipped to zero.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from handler.gp.broken import require_finite

# Jitter tried, relative to the mean of the diagonal: from nothing to 1e-6, ten times larger each step.
RELATIVE_JITTERS = (0.0, *(10.0**e for e in range(-12, -5)))


class JointDraws(NamedTuple):
    samples: np.ndarray  # (n_samples, n_points)
    jitter: float  # added to the diagonal (absolute); 0.0 when none was needed
    method: str  # "cholesky" or "eigh"


def factor(covariance: np.ndarray) -> tuple[np.ndarray, float, str]:
    """A square root F of the covariance (F F^T = covariance + jitter I), the jitter, and how it was found."""
    scale = float(np.mean(np.diag(covariance))) if len(covariance) else 0.0
    scale = scale if scale > 0 else 1.0
    for relative in RELATIVE_JITTERS:
        jitter = relative * scale
        try:
            return np.linalg.cholesky(covariance + jitter * np.eye(len(covariance))), jitter, "cholesky"
        except np.linalg.LinAlgError:
            continue
    values, vectors = np.linalg.eigh(covariance)
    return vectors * np.sqrt(np.clip(values, 0.0, None)), 0.0, "eigh"


def joint_draws(mean: np.ndarray, covariance: np.ndarray, n_samples: int, rng: np.random.Generator) -> JointDraws:
    """n_samples joint draws of N(mean, covariance)."""
    require_finite("the mean and covariance to draw from", mean, covariance)
    root, jitter, method = factor(covariance)
    standard = rng.standard_normal((n_samples, len(mean)))
    samples = mean + standard @ root.T
    require_finite("the joint draws", samples)  # finite inputs can still overflow
    return JointDraws(samples, jitter, method)
