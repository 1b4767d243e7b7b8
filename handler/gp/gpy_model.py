"""The GPy route: models a posterior file cannot describe, unpickled (restricted) and predicted through GPy.

Exact and sparse GP regressions with the kernels the numpy posterior covers are packaged as posterior files and
never come here; this route serves the rest (sums and products of kernels, other likelihoods, mean functions)
and is what the packaging command reads a user's pickle with. GPy and scipy are imported only here.
"""

from __future__ import annotations

import logging
import operator
import pickle
from pathlib import Path
from typing import Any, Self

import GPy
import numpy as np

from handler.gp import posterior as posterior_module
from handler.gp.artifact import Manifest, atomic_write
from handler.gp.broken import require_finite
from handler.gp.posterior import GPPosterior, Prediction
from handler.gp.surrogate import SurrogateModel, TrainingData
from handler.gp.unpickling import load_pickle

logger = logging.getLogger(__name__)


class GPRegressionModel(SurrogateModel):
    """A GPy `GPRegression`. Predictions equal GPy's `predict` (or `predict_noiseless` for latent=True).

    Models `GPPosterior` covers predict through it, numpy and BLAS only; others through GPy itself, with
    the reason logged. Both in bounded chunks.
    """

    model_type = "GPy.models.GPRegression"

    def __init__(self, gp: Any, *, predict_through_gpy: str | None = None) -> None:
        """`predict_through_gpy`: the manifest's reason to skip the fast path (packaging found it does not match)."""
        self.gp = gp
        self.posterior: GPPosterior | None = None
        if predict_through_gpy is not None:
            logger.warning("predicting through GPy, as the manifest says: %s", predict_through_gpy)
            return
        from handler.gp.from_gpy import posterior_from_gpy

        try:
            self.posterior = posterior_from_gpy(gp)
        except ValueError as exc:
            logger.warning("fast path not available, predicting through GPy: %s", exc)

    @classmethod
    def accepts(cls, obj: Any) -> bool:

        gpy_class = operator.attrgetter(cls.model_type.removeprefix("GPy."))(GPy)
        return isinstance(obj, gpy_class)

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        *,
        kernel: str = "RBF",
        restarts: int = 5,
        seed: int = 0,
        normalize: bool = True,
        max_iters: int = 1000,
    ) -> Self:
        """Fit a GP with an ARD kernel by maximum marginal likelihood with random restarts (deterministic)."""

        gp = GPy.models.GPRegression(
            X, Y, getattr(GPy.kern, kernel)(input_dim=X.shape[1], ARD=True), normalizer=normalize
        )
        # A deterministic simulator has (almost) no noise; the floor keeps the Cholesky factor well conditioned.
        gp.Gaussian_noise.variance.constrain_bounded(1e-8, 1.0, warning=False)
        np.random.seed(seed)  # GPy draws restart points from numpy's global generator
        gp.optimize_restarts(num_restarts=restarts, robust=True, verbose=False, messages=False, max_iters=max_iters)
        return cls(gp)

    @classmethod
    def load(cls, path: Path, manifest: Manifest | None = None) -> Self:
        gp = load_pickle(path)
        if not cls.accepts(gp):
            found = f"{type(gp).__module__}.{type(gp).__qualname__}"
            raise TypeError(f"expected a {cls.model_type}, found {found}")
        reason = manifest.document.get("predict_through_gpy") if manifest is not None else None
        return cls(gp, predict_through_gpy=None if reason is None else str(reason))

    def save(self, path: Path) -> None:
        atomic_write(path, pickle.dumps(self.gp, protocol=pickle.HIGHEST_PROTOCOL))

    @property
    def input_dim(self) -> int:
        return int(self.gp.input_dim)

    @property
    def output_dim(self) -> int:
        return int(self.gp.Y.shape[1])

    def training_inputs(self) -> np.ndarray:
        return np.asarray(self.gp.X, dtype=float)

    def training_data(self) -> TrainingData:
        return TrainingData(self.training_inputs(), np.asarray(self.gp.Y, dtype=float))  # Y: GPy's, not normalised

    def predict(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        if self.posterior is not None:
            return self.posterior.predict(X, latent=latent)
        prediction = self.predict_with_gpy(X, latent=latent)
        require_finite("GPy's predictions", *prediction)  # a 503 "model broken", as the numpy path's
        np.maximum(prediction.variance, 0.0, out=prediction.variance)  # rounding below zero far inside the data
        return prediction

    def predict_with_gpy(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        """GPy's own predict, in chunks: GPy allocates several (rows x n) arrays per call."""
        gpy_predict = self.gp.predict_noiseless if latent else self.gp.predict
        rows = max(1, posterior_module.CHUNK_BYTES // (4 * 8 * self._inputs_held()))
        mean = np.empty((len(X), self.output_dim))
        variance = np.empty((len(X), self.output_dim))
        for start in range(0, len(X), rows):
            chunk_mean, chunk_variance = gpy_predict(X[start : start + rows])
            mean[start : start + rows] = chunk_mean
            variance[start : start + rows] = chunk_variance  # (rows, 1) without a normalizer: one for all outputs
        if not latent and isinstance(self.gp.likelihood, GPy.likelihoods.Bernoulli):
            # GPy answers NaN for a Bernoulli observation's variance; it is p (1 - p) for p = P(y = 1), the mean
            variance = mean * (1.0 - mean)
        return Prediction(mean, variance)

    def gradients(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Analytic through `GPPosterior` where it applies, else GPy's `predictive_gradients`."""
        if self.posterior is not None:
            return self.posterior.gradients(X)
        mean_gradient, variance_gradient = self.gp.predictive_gradients(X)
        if variance_gradient.ndim == 2:  # one variance for all outputs
            variance_gradient = np.repeat(variance_gradient[:, :, None], self.output_dim, axis=2)
        return np.asarray(mean_gradient, dtype=float), np.asarray(variance_gradient, dtype=float)

    def covariance(self, X: np.ndarray, *, latent: bool = False) -> np.ndarray:
        """As GPy's `predict(..., full_cov=True)` (`predict_noiseless` for latent=True), per output."""
        if self.posterior is not None:
            return self.posterior.covariance(X, latent=latent)
        _, covariance = (self.gp.predict_noiseless if latent else self.gp.predict)(X, full_cov=True)
        covariance = np.asarray(covariance, dtype=float)
        if covariance.ndim == 2:  # one covariance for all outputs
            return np.repeat(covariance[None], self.output_dim, axis=0)
        return np.moveaxis(covariance, -1, 0)

    def _inputs_held(self) -> int:
        return int(self.gp.num_data)

    def describe(self) -> dict[str, Any]:
        from handler.gp.from_gpy import describe_kernel

        return describe_kernel(self.gp)


class SparseGPRegressionModel(GPRegressionModel):
    """A GPy `SparseGPRegression` (inducing points, variational DTC): how GPy fits 10^4-10^6 points."""

    model_type = "GPy.models.SparseGPRegression"

    def _inputs_held(self) -> int:
        return len(self.gp.Z)


class GPyModel(GPRegressionModel):
    """Any other GPy GP (`GPy.core.GP`: another likelihood, inference or mean function), predicted by GPy itself.

    `handler.gp.from_gpy.posterior_arrays` says why the fast path does not apply; the reason is logged at load.
    """

    model_type = "GPy.core.GP"


MODEL_TYPES: dict[str, type[GPRegressionModel]] = {
    cls.model_type: cls for cls in (GPRegressionModel, SparseGPRegressionModel, GPyModel)
}


def wrap_gpy_model(obj: Any) -> GPRegressionModel:
    """The service's wrapper for an unpickled GPy object; TypeError names what is supported."""
    # Most specific first: the check is isinstance, and GPRegression and SparseGP are GPy.core.GPs too.
    for cls in (SparseGPRegressionModel, GPRegressionModel, GPyModel):
        if cls.accepts(obj):
            return cls(obj)
    supported = ", ".join(MODEL_TYPES)
    raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} is not a supported model ({supported})")
