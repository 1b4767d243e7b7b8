"""Surrogate models behind one small interface, the registry of model types, and lazy loading.

This module knows nothing of API Gateway or HTTP: it loads an artifact (handler.gp.artifact), checks it
against its manifest and predicts for arrays of points (handler.gp.posterior has the math).
"""

from __future__ import annotations

import importlib.metadata
import logging
import operator
import pickle
import platform
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from handler.gp import posterior as posterior_module
from handler.gp.artifact import ArtifactSource, Manifest, ModelUnavailableError, atomic_write
from handler.gp.posterior import GPPosterior, Prediction, describe_kernel
from handler.gp.unpickling import UnsafePickleError, load_pickle

logger = logging.getLogger(__name__)


class SurrogateModel(ABC):
    """What the service needs of a model. Another model type is another subclass in MODEL_TYPES."""

    model_type: ClassVar[str]

    @classmethod
    @abstractmethod
    def load(cls, path: Path, manifest: Manifest | None = None) -> Self:
        """Read a model saved by `save`, as its manifest (if given) says."""

    @abstractmethod
    def predict(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        """Predict for an (n, input_dim) array: the variance of an observation, or of the latent function."""

    @property
    @abstractmethod
    def input_dim(self) -> int: ...

    @property
    @abstractmethod
    def output_dim(self) -> int: ...

    def save(self, path: Path) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def describe(self) -> dict[str, Any]:
        """Kernel and hyperparameters (or their equivalent), for the manifest."""
        return {}

    def training_inputs(self) -> np.ndarray | None:
        """The inputs the model was fitted on, if it keeps them (for default bounds)."""
        return None

    def gradients(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """d mean / dx and d variance / dx, (n, input_dim, output_dim) each; models that can say, say."""
        raise NotImplementedError(f"{type(self).__name__} gives no gradients")

    def covariance(self, X: np.ndarray, *, latent: bool = False) -> np.ndarray:
        """The joint predictive covariance of the points, (output_dim, n, n)."""
        raise NotImplementedError(f"{type(self).__name__} gives no joint covariance")


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
        try:
            self.posterior = GPPosterior.from_gpy(gp)
        except ValueError as exc:
            logger.warning("fast path not available, predicting through GPy: %s", exc)

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        import GPy

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
        import GPy

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

    def predict(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        if self.posterior is not None:
            return self.posterior.predict(X, latent=latent)
        return self.predict_with_gpy(X, latent=latent)

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
        return describe_kernel(self.gp)


class SparseGPRegressionModel(GPRegressionModel):
    """A GPy `SparseGPRegression` (inducing points, variational DTC): how GPy fits 10^4-10^6 points."""

    model_type = "GPy.models.SparseGPRegression"

    def _inputs_held(self) -> int:
        return len(self.gp.Z)


class GPyModel(GPRegressionModel):
    """Any other GPy GP (`GPy.core.GP`: another likelihood, inference or mean function), predicted by GPy itself.

    `GPPosterior.from_gpy` says why the fast path does not apply; the reason is logged at load.
    """

    model_type = "GPy.core.GP"


MODEL_TYPES: dict[str, type[SurrogateModel]] = {
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


@dataclass(frozen=True)
class LoadedModel:
    model: SurrogateModel
    manifest: Manifest


def load_model(source: ArtifactSource, manifest: Manifest | None = None) -> LoadedModel:
    """Load a model and its manifest, refusing an artifact whose checksum, type or shape does not match."""
    manifest = manifest or source.fetch_manifest()
    model_class = MODEL_TYPES.get(manifest.model_type)
    if model_class is None:
        raise ModelUnavailableError(
            f"model type {manifest.model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})"
        )
    path = source.fetch_model(manifest)
    try:
        model = model_class.load(path, manifest)
    except UnsafePickleError as exc:
        # `refused_global` names what was refused: a global, or what the pickle overreached on (opcodes, nesting).
        logger.error("model artifact refused", extra={"refused_global": exc.name, "reason": str(exc)})
        raise ModelUnavailableError(f"model artifact refused: {exc}") from exc
    except Exception as exc:  # unpickling can raise almost anything
        raise ModelUnavailableError(f"model artifact could not be read: {type(exc).__name__}: {exc}"[:300]) from exc
    if model.input_dim != len(manifest.features):
        raise ModelUnavailableError(
            f"model takes {model.input_dim} inputs but its manifest lists {len(manifest.features)} features"
        )
    if model.output_dim != len(manifest.outputs):
        raise ModelUnavailableError(
            f"model has {model.output_dim} outputs but its manifest lists {len(manifest.outputs)}"
        )
    if differing := version_differences(manifest):
        # GPy pickles are tied to the library versions that wrote them: say so before predictions look odd.
        logger.warning("library versions differ from the manifest's", extra={"versions": differing})
    return LoadedModel(model, manifest)


def version_differences(manifest: Manifest) -> dict[str, dict[str, str]]:
    """Libraries whose installed version is not the one the manifest records: {name: {manifest, runtime}}."""
    recorded = manifest.document.get("versions") or {}
    differing = {}
    for name, wanted in recorded.items():
        if name == "python":
            found = platform.python_version()
        else:
            try:
                found = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found = "not installed"
        if found != wanted:
            differing[name] = {"manifest": str(wanted), "runtime": found}
    return differing


class LazyModel:
    """Reads the manifest, then loads the model, on first use: once per process even when threads race.

    A failed read or load raises ModelUnavailableError; it is tried again at most once per
    `retry_interval_s` (callers are told Retry-After), so a broken artifact is not re-downloaded and
    re-hashed on every request.
    """

    def __init__(
        self, source: ArtifactSource, retry_interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.source = source
        self.retry_interval_s = retry_interval_s
        self.clock = clock
        self._manifest: Manifest | None = None
        self._loaded: LoadedModel | None = None
        self._failure: tuple[float, ModelUnavailableError] | None = None
        self._lock = threading.Lock()

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    def manifest(self) -> Manifest:
        manifest = self._manifest
        if manifest is not None:
            return manifest
        with self._lock:
            if self._manifest is None:
                self._manifest = self._attempt(self.source.fetch_manifest)
            return self._manifest

    def get(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        manifest = self.manifest()
        with self._lock:
            if self._loaded is None:
                self._loaded = self._attempt(lambda: load_model(self.source, manifest))
            return self._loaded

    def clear_failure(self) -> None:
        """Let the next call try again at once."""
        self._failure = None

    def _attempt[T](self, action: Callable[[], T]) -> T:
        """Run `action`, unless one failed less than retry_interval_s ago: then raise that failure again."""
        if self._failure is not None and self.clock() - self._failure[0] < self.retry_interval_s:
            raise self._failure[1]
        try:
            result = action()
        except ModelUnavailableError as exc:
            self._failure = (self.clock(), exc)
            raise
        self._failure = None
        return result
