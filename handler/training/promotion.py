"""The promotion rule of a trained (or conditioned) version: "never", "always", or "if_better".

"if_better": the new version and what the alias serves now (its main target) are both scored by leave-one-out on
the NEW version's dataset, each with its own hyperparameters (kernel, lengthscales, variances, noise, output mean
and scale as its posterior file holds them): the same data for both, none of it seen by either prediction. The new
version is promoted when its mean MSLL over the outputs is lower and no output's R^2 is lower than the current
one's by more than R2_TOLERANCE. An alias that serves nothing yet: promoted.

Numpy only (the admin function, which has no GPy, applies it to conditioned versions too): leave-one-out of an
exact GP in closed form (Rasmussen & Williams 2006, eq. 5.12), one Cholesky factorisation of the n x n covariance
per version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from handler.gp.artifact import PackagedArtifact, read_manifest
from handler.gp.model import PosteriorModel, load_model
from handler.gp.posterior import GPPosterior
from handler.registry.store import RegistryStore, Target, Version
from handler.training.validation import OutputMetrics, output_metrics

PromotionRule = Literal["never", "if_better", "always"]
PROMOTION_RULES: tuple[PromotionRule, ...] = ("never", "if_better", "always")
DEFAULT_PROMOTION: PromotionRule = "if_better"
R2_TOLERANCE = 1e-3  # an output may lose this much R^2 for a better mean MSLL; more is a regression
# GPy adds this jitter to the noise when it factorises K + noise I; scored as the version would be fitted
FACTOR_JITTER = 1e-8
# Scored on at most this many rows of the dataset (a fixed random subset beyond it): the n x n covariance of 2,000
# rows is 32 MB and factorises in a second; of 10,000 it would be 800 MB.
MAX_SCORED_ROWS = 2_000


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    scores: dict[str, Any]


def leave_one_out_scores(
    posterior: GPPosterior, X: np.ndarray, Y: np.ndarray, outputs: list[str]
) -> dict[str, OutputMetrics]:
    """Each output's leave-one-out accuracy on (X, Y) for a GP with this posterior's hyperparameters.

    In the outputs' units: the covariance is the posterior's (standardised) kernel and noise times each output's
    variance, the prior mean its y_mean. K^-1 = L^-T L^-1 once; the left-out mean is y_i - [K^-1 r]_i / [K^-1]_ii
    and its predictive variance 1 / [K^-1]_ii (noise included: it predicts the observation).
    """
    X, Y = np.asarray(X, dtype=float), np.asarray(Y, dtype=float)
    if len(X) > MAX_SCORED_ROWS:
        kept = np.sort(np.random.default_rng(0).choice(len(X), size=MAX_SCORED_ROWS, replace=False))
        X, Y = X[kept], Y[kept]
    scaled = X * posterior.inverse_lengthscale
    squared = np.vecdot(scaled, scaled)
    r = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * (scaled @ scaled.T), 0.0))
    K, _ = posterior._kernel_of_distance(r)
    K[np.diag_indices_from(K)] += posterior.noise_variance + FACTOR_JITTER
    L = np.linalg.cholesky(K)
    inverse_of_L = np.linalg.solve(L, np.eye(len(L)))
    K_inverse = inverse_of_L.T @ inverse_of_L
    diagonal = np.diag(K_inverse)
    residual = (Y - posterior.y_mean) / posterior.y_std  # standardised as the version standardises
    alpha = K_inverse @ residual
    mean = Y - (alpha / diagonal[:, None]) * posterior.y_std
    variance = (1.0 / diagonal)[:, None] * posterior.y_std**2
    return output_metrics(Y, mean, np.broadcast_to(variance, Y.shape).copy(), outputs)


def judge(
    new: dict[str, OutputMetrics], current: dict[str, OutputMetrics] | None, current_version: int | None = None
) -> Verdict:
    """The if_better verdict from both versions' leave-one-out scores on the new version's dataset."""
    if current is None:
        return Verdict(True, "the alias served nothing", {"new": _document(new), "current": None})
    if set(current) != set(new):
        return Verdict(False, "the current version predicts other outputs: promote it explicitly", {})
    new_msll = float(np.mean([m.msll for m in new.values()]))
    current_msll = float(np.mean([m.msll for m in current.values()]))
    worse = [
        name
        for name, metrics in new.items()
        if not metrics.r2 >= current[name].r2 - R2_TOLERANCE  # NaN counts as worse
    ]
    scores = {"new": _document(new), "current": _document(current), "current_version": current_version}
    if not np.isfinite(new_msll):
        return Verdict(False, "the new version's leave-one-out MSLL is not finite", scores)
    if worse:
        drops = ", ".join(f"{name} {current[name].r2:.6f} -> {new[name].r2:.6f}" for name in worse)
        return Verdict(False, f"R^2 drops by more than {R2_TOLERANCE:g} ({drops})", scores)
    if np.isfinite(current_msll) and not new_msll < current_msll:
        return Verdict(False, f"mean MSLL {new_msll:.4f} is not lower than {current_msll:.4f}", scores)
    return Verdict(True, f"mean MSLL {new_msll:.4f} < {current_msll:.4f}, no R^2 drop over {R2_TOLERANCE:g}", scores)


def _document(scores: dict[str, OutputMetrics]) -> dict[str, dict[str, float | None]]:
    return {
        name: {key: (float(value) if np.isfinite(value) else None) for key, value in vars(m).items()}
        for name, m in scores.items()
    }


def version_posterior(store: RegistryStore, record: Version, cache_dir: Path) -> GPPosterior | None:
    """A version's posterior, read as the loader reads it (checksum, shapes); None when it is no posterior file."""
    folder = Path(tempfile.mkdtemp(prefix="promote-", dir=_existing(cache_dir)))
    try:
        path = folder / "model.npz"
        store.download_artifact(record.name, record.version, path)
        manifest = read_manifest(json.dumps(record.manifest).encode(), "stored")
        loaded = load_model(PackagedArtifact(path), manifest)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return loaded.model.posterior if isinstance(loaded.model, PosteriorModel) else None


def promote(
    store: RegistryStore,
    new: Version,
    rule: str,
    alias: str,
    X: np.ndarray,
    Y: np.ndarray,
    outputs: list[str],
    by: str,
    why: str,
    cache_dir: Path,
) -> tuple[bool, dict[str, Any]]:
    """Apply `rule` to a READY version: (promoted, the promotion's record). `why` opens the alias move's reason
    ("training job {id}"), so the alias history says where the move came from."""
    current = store.alias(new.name, alias)
    before = current.target.version if current is not None else None
    record: dict[str, Any] = {"rule": rule, "alias": alias, "from": before, "to": None, "reason": ""}
    if rule == "never":
        return False, {**record, "reason": 'promote "never": the alias was not moved'}
    if rule == "if_better" and current is not None:
        current_record = store.version(new.name, current.target.version)
        new_posterior = version_posterior(store, new, cache_dir)
        current_posterior = (
            version_posterior(store, current_record, cache_dir)
            if current_record is not None and current_record.state == "READY"
            else None
        )
        if new_posterior is None:
            return False, {**record, "reason": "the new version is no posterior file: promote it explicitly"}
        if current_posterior is None or current_posterior.lengthscale.shape != new_posterior.lengthscale.shape:
            verdict = Verdict(True, "the alias's version is not comparable (no posterior file of these features)", {})
        else:
            verdict = judge(
                leave_one_out_scores(new_posterior, X, Y, outputs),
                leave_one_out_scores(current_posterior, X, Y, outputs),
                current.target.version,
            )
        record = {**record, "scores": verdict.scores}
        if not verdict.promote:
            return False, {**record, "reason": f"if_better: not better: {verdict.reason}"}
        reason = f"if_better: {verdict.reason}"
    elif rule == "if_better":
        reason = "if_better: the alias served nothing"
    else:
        reason = 'promote "always"'
    store.move_alias(new.name, alias, Target(new.version), by, f"{why}: {reason}"[:500])
    return True, {**record, "to": new.version, "reason": reason}


def _existing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
