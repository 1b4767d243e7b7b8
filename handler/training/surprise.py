"""How surprised a version was by new simulations: its predictions of rows it has not seen, scored per output.

The surrogate's own health signal: a version whose standardised errors run far past 2, whose 95% interval misses,
or whose log loss exceeds the mean's, no longer describes the simulator where it is being run. Observations
(POST /models/{name}/observations) score the alias's version (and its canary) this way before conditioning on them.
Noise included: a simulation is an observation y, not the latent f. numpy only (it runs in the admin function).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from handler.gp.posterior import GPPosterior, Prediction
from handler.training.validation import output_metrics


def surprise(
    posterior: GPPosterior, X: np.ndarray, Y: np.ndarray, outputs: list[str], reference: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Per output: rmse, mean_abs_z, max_abs_z (|y - mean| / predictive sd), coverage_95, msll, n.

    `reference`: the outputs the version was fitted on; the MSLL's trivial model has their mean and variance
    (handler.training.validation), so 0 is "no better than the mean of the data", lower is better.
    """
    return scores(posterior.predict(np.asarray(X, dtype=float)), Y, outputs, reference)


def scores(
    prediction: Prediction, Y: np.ndarray, outputs: list[str], reference: np.ndarray
) -> dict[str, dict[str, Any]]:
    """`surprise` of predictions made already (ModelBrokenError is raised by the prediction, before anything)."""
    Y = np.asarray(Y, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero variance: an infinite z, answered as null
        z = np.abs(Y - prediction.mean) / np.sqrt(prediction.variance)
    metrics = output_metrics(Y, prediction.mean, prediction.variance, outputs, reference)
    per_output = {}
    for j, name in enumerate(outputs):
        m = metrics[name]
        per_output[name] = {
            "rmse": _finite(m.rmse),
            "mean_abs_z": _finite(float(z[:, j].mean())),
            "max_abs_z": _finite(float(z[:, j].max())),
            "coverage_95": _finite(m.coverage_95),
            "msll": _finite(m.msll),  # NaN where the training outputs are constant: there is no trivial model
            "n": m.n_points,
        }
    return per_output


def _finite(value: float) -> float | None:
    """Every number answered is finite: what is not (a zero predictive variance, constant outputs) is null."""
    return value if math.isfinite(value) else None


def mean_msll(scores: dict[str, dict[str, Any]]) -> float | None:
    """The mean MSLL over outputs that have one."""
    values = [s["msll"] for s in scores.values() if s["msll"] is not None]
    return float(np.mean(values)) if values else None
