"""Surrogate models behind one small interface, and loading them safely for the service.

This module knows nothing of API Gateway or HTTP: it loads an artifact, checks it against its
manifest and predicts for arrays of points.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

import numpy as np

if TYPE_CHECKING:  # GPy costs ~1-2 s to import, so only the first load pays for it
    import GPy

logger = logging.getLogger(__name__)

# Working memory of one prediction chunk. Measured (benchmarks/results.md, "chunk budget"): 64 MiB is
# ~25% faster than 16 MiB at n = 1000-3000; 128-512 MiB gain another ~20% for 2-4x the memory. 64 MiB
# keeps any request's working memory near 135 MB.
CHUNK_BYTES = 64 * 2**20
# OpenBLAS multiplies by a triangular matrix (TRMM) twice as fast as a full product (GEMM) for many rows,
# but several times slower for a few: measured on n = 200 to 3000, the crossover is a few hundred rows.
TRMM_MIN_ROWS = 512


class Prediction(NamedTuple):
    """Predictive mean and variance, one entry per input row."""

    mean: np.ndarray
    variance: np.ndarray


class SurrogateModel(ABC):
    """What the service needs of a model. Another model type is another subclass."""

    model_type: ClassVar[str]

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> Self:
        """Read a model saved by `save`."""

    @abstractmethod
    def predict(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        """Predict for an (n, input_dim) array: the variance of an observation, or of the latent function."""

    @property
    @abstractmethod
    def input_dim(self) -> int: ...

    def save(self, path: Path) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def describe(self) -> dict[str, Any]:
        """Kernel and hyperparameters (or their equivalent), for the manifest."""
        return {}


@dataclass(frozen=True)
class RBFPosterior:
    """The exact GP posterior of an RBF kernel with Gaussian noise, as plain arrays.

    mean = k(x, X) alpha;  latent variance = k(x, x) - |L^-1 k(X, x)|^2;  an observation's variance
    adds the noise. Computed on the model's standardised scale, then mapped back as GPy's normalizer
    does. L^-1 is formed once at load, so each prediction multiplies by it (TRMM in place, or GEMM for a
    few rows), which BLAS runs several times faster than the triangular solve GPy does for the same result.
    """

    X_augmented: np.ndarray  # [X / lengthscale, 1, log s2 - |X / lengthscale|^2 / 2], (n, d + 2)
    inverse_lengthscale: np.ndarray  # (d,)
    kernel_variance: float
    noise_variance: float
    alpha: np.ndarray  # (K + noise I)^-1 y, (n,)
    cholesky_inverse: np.ndarray  # L^-1 with L L^T = K + noise I: lower triangular, Fortran order, (n, n)
    y_mean: float
    y_std: float

    @classmethod
    def from_gpy(cls, gp: GPy.models.GPRegression) -> RBFPosterior:
        """Derive the posterior from a fitted model; ValueError says why a model is not covered."""
        import GPy
        from GPy.inference.latent_function_inference import ExactGaussianInference
        from GPy.util.normalizer import Standardize
        from scipy.linalg.lapack import dtrtri

        kern = gp.kern
        if type(kern) is not GPy.kern.RBF:
            raise ValueError(f"kernel {type(kern).__name__} is not a plain RBF")
        if list(kern.active_dims) != list(range(gp.input_dim)):
            raise ValueError("the kernel does not act on every input")
        if type(gp.likelihood) is not GPy.likelihoods.Gaussian:
            raise ValueError(f"likelihood {type(gp.likelihood).__name__} is not Gaussian")
        if not isinstance(gp.inference_method, ExactGaussianInference):
            raise ValueError(f"inference {type(gp.inference_method).__name__} is not exact")
        if gp.mean_function is not None:
            raise ValueError("the model has a mean function")
        if gp.Y.shape[1] != 1:
            raise ValueError(f"{gp.Y.shape[1]} outputs; the fast path covers one")
        normalizer = gp.normalizer
        if normalizer is not None and type(normalizer) is not Standardize:
            raise ValueError(f"normalizer {type(normalizer).__name__} is not Standardize")

        inverse_cholesky, info = dtrtri(np.asarray(gp.posterior.woodbury_chol, dtype=float), lower=1)
        if info != 0:
            raise ValueError(f"the Cholesky factor is singular (LAPACK dtrtri info={info})")
        inverse_lengthscale = 1.0 / np.broadcast_to(np.asarray(kern.lengthscale.values, dtype=float), (gp.input_dim,))
        X_scaled = np.asarray(gp.X, dtype=float) * inverse_lengthscale
        kernel_variance = float(kern.variance.values[0])
        log_terms = np.log(kernel_variance) - 0.5 * np.vecdot(X_scaled, X_scaled)
        return cls(
            X_augmented=np.column_stack([X_scaled, np.ones(len(X_scaled)), log_terms]),
            inverse_lengthscale=inverse_lengthscale,
            kernel_variance=kernel_variance,
            noise_variance=float(gp.likelihood.variance.values[0]),
            alpha=np.asarray(gp.posterior.woodbury_vector, dtype=float)[:, 0].copy(),
            cholesky_inverse=np.asfortranarray(inverse_cholesky),
            y_mean=float(normalizer.mean[0]) if normalizer is not None else 0.0,
            y_std=float(normalizer.std[0]) if normalizer is not None else 1.0,
        )

    @property
    def chunk_rows(self) -> int:
        # A chunk holds one (rows x n) float array: the covariances, then L^-1 applied to them in place.
        return max(1, CHUNK_BYTES // (8 * len(self.alpha)))

    def predict(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        from scipy.linalg.blas import dtrmm

        mean = np.empty(len(X))
        variance = np.empty(len(X))
        log_kernel_variance = np.log(self.kernel_variance)
        d = X.shape[1]
        for start in range(0, len(X), self.chunk_rows):
            stop = min(start + self.chunk_rows, len(X))
            # k(z, x) = s2 exp(-|z - x|^2 / 2) = exp(z.x - |z|^2/2 - |x|^2/2 + log s2): the exponent is one
            # matrix product of augmented rows, capped at log s2 where rounding would make |z - x|^2 < 0.
            Z = np.empty((stop - start, d + 2))
            np.multiply(X[start:stop], self.inverse_lengthscale, out=Z[:, :d])
            Z[:, d] = np.vecdot(Z[:, :d], Z[:, :d])
            Z[:, d] *= -0.5
            Z[:, d + 1] = 1.0
            K = Z @ self.X_augmented.T
            np.minimum(K, log_kernel_variance, out=K)
            np.exp(K, out=K)
            mean[start:stop] = K @ self.alpha
            if stop - start < TRMM_MIN_ROWS:
                W = K @ self.cholesky_inverse.T
            else:  # L^-1 K^T in place of K: K^T of a C-ordered K is the Fortran-ordered array BLAS wants
                W = dtrmm(1.0, self.cholesky_inverse, K.T, lower=1, overwrite_b=1).T
            variance[start:stop] = np.vecdot(W, W)
        np.subtract(self.kernel_variance, variance, out=variance)
        if not latent:
            variance += self.noise_variance
        mean *= self.y_std
        mean += self.y_mean
        variance *= self.y_std**2
        return Prediction(mean, variance)


class GPRegressionModel(SurrogateModel):
    """A GPy `GPRegression`. Predictions equal GPy's `predict` (or `predict_noiseless` for latent=True).

    Covered models (RBF kernel, Gaussian likelihood, exact inference) predict through `RBFPosterior`,
    numpy and BLAS only; others through GPy itself, with the reason logged. Both in bounded chunks.
    """

    model_type = "GPy.models.GPRegression"

    def __init__(self, gp: GPy.models.GPRegression) -> None:
        self.gp = gp
        self.posterior: RBFPosterior | None
        try:
            self.posterior = RBFPosterior.from_gpy(gp)
        except ValueError as exc:
            logger.warning("fast path not available, predicting through GPy: %s", exc)
            self.posterior = None

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        *,
        restarts: int = 5,
        seed: int = 0,
        normalize: bool = True,
        max_iters: int = 1000,
    ) -> GPRegressionModel:
        """Fit an RBF-ARD GP by maximum marginal likelihood with random restarts (deterministic for a seed)."""
        import GPy

        kernel = GPy.kern.RBF(input_dim=X.shape[1], ARD=True)
        gp = GPy.models.GPRegression(X, Y, kernel, normalizer=normalize)
        # A deterministic simulator has (almost) no noise; the floor keeps the Cholesky factor well conditioned.
        gp.Gaussian_noise.variance.constrain_bounded(1e-8, 1.0, warning=False)
        np.random.seed(seed)  # GPy draws restart points from numpy's global generator
        gp.optimize_restarts(num_restarts=restarts, robust=True, verbose=False, messages=False, max_iters=max_iters)
        return cls(gp)

    @classmethod
    def load(cls, path: Path) -> Self:
        import GPy

        with path.open("rb") as handle:
            gp = pickle.load(handle)
        if not isinstance(gp, GPy.models.GPRegression):
            raise TypeError(f"expected a GPy GPRegression, found {type(gp).__module__}.{type(gp).__qualname__}")
        return cls(gp)

    def save(self, path: Path) -> None:
        atomic_write(path, pickle.dumps(self.gp, protocol=pickle.HIGHEST_PROTOCOL))

    @property
    def input_dim(self) -> int:
        return int(self.gp.input_dim)

    def predict(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        if self.posterior is not None:
            return self.posterior.predict(X, latent=latent)
        return self.predict_with_gpy(X, latent=latent)

    def predict_with_gpy(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        """GPy's own predict, in chunks: GPy allocates several (rows x n) arrays per call."""
        gpy_predict = self.gp.predict_noiseless if latent else self.gp.predict
        rows = max(1, CHUNK_BYTES // (4 * 8 * self.gp.num_data))
        mean = np.empty(len(X))
        variance = np.empty(len(X))
        for start in range(0, len(X), rows):
            chunk_mean, chunk_variance = gpy_predict(X[start : start + rows])
            mean[start : start + rows] = chunk_mean[:, 0]
            variance[start : start + rows] = chunk_variance[:, 0]
        return Prediction(mean, variance)

    def describe(self) -> dict[str, Any]:
        kern = self.gp.kern
        return {
            "name": "RBF",
            "ARD": bool(kern.ARD),
            "variance": float(kern.variance.values[0]),
            "lengthscale": [float(v) for v in kern.lengthscale.values],
            "noise_variance": float(self.gp.Gaussian_noise.variance.values[0]),
            "normalizer": type(self.gp.normalizer).__name__ if self.gp.normalizer is not None else None,
            "log_likelihood": float(self.gp.log_likelihood()),
        }


MODEL_TYPES: dict[str, type[SurrogateModel]] = {cls.model_type: cls for cls in (GPRegressionModel,)}


@dataclass(frozen=True)
class Manifest:
    """What the service reads of the manifest; the full schema is `handler.schemas.ModelManifest`.

    Read without pydantic, which would add ~150 ms to every cold start.
    """

    model_type: str
    sha256: str
    features: tuple[str, ...]
    bounds: np.ndarray  # (n_features, 2): lower, upper
    document: dict[str, Any]  # the whole file, for GET /model

    @classmethod
    def parse(cls, text: bytes) -> Manifest:
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("schema_version") != 1:
            raise ValueError("expected a JSON object with schema_version 1")
        model_type, sha256, features, bounds = (document.get(k) for k in ("model_type", "sha256", "features", "bounds"))
        if not isinstance(model_type, str):
            raise ValueError("model_type must be a string")
        if not (isinstance(sha256, str) and len(sha256) == 64 and set(sha256) <= set("0123456789abcdef")):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        if not (isinstance(features, list) and features and all(isinstance(f, str) for f in features)):
            raise ValueError("features must be a non-empty list of names")
        if not (isinstance(bounds, dict) and list(bounds) == features):
            raise ValueError("bounds must list exactly the features, in order")
        try:
            bounds_array = np.array([bounds[f] for f in features], dtype=float).reshape(len(features), 2)
        except (TypeError, ValueError):
            raise ValueError("each bound must be a [lower, upper] pair of numbers") from None
        if not np.all(bounds_array[:, 0] < bounds_array[:, 1]):
            raise ValueError("each bound must have lower < upper")
        return cls(model_type, sha256, tuple(features), bounds_array, document)

    def domain(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper limits of the inputs: the training bounds widened by `margin` x each range."""
        width = self.bounds[:, 1] - self.bounds[:, 0]
        return self.bounds[:, 0] - margin * width, self.bounds[:, 1] + margin * width


def manifest_path_for(model_path: Path) -> Path:
    """`pretrained-model.pkl` -> `pretrained-model.manifest.json`."""
    return model_path.with_name(f"{model_path.stem}.manifest.json")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ModelUnavailableError(RuntimeError):
    """The artifact could not be loaded; the message is safe to show to callers."""


@dataclass(frozen=True)
class DomainViolation:
    row: int
    feature: str
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class LoadedModel:
    model: SurrogateModel
    manifest: Manifest

    def domain_violations(self, X: np.ndarray, margin: float, limit: int = 20) -> list[DomainViolation]:
        """Points outside the training bounds widened by `margin` x range (at most `limit` of them)."""
        low, high = self.manifest.domain(margin)
        outside = (low > X) | (high < X)
        if not outside.any():
            return []
        rows, cols = np.nonzero(outside)
        return [
            DomainViolation(int(r), self.manifest.features[c], float(X[r, c]), float(low[c]), float(high[c]))
            for r, c in zip(rows[:limit], cols[:limit], strict=True)
        ]


def load_model(model_path: Path, expected_features: tuple[str, ...] | None = None) -> LoadedModel:
    """Load a model and its manifest, refusing an artifact whose checksum or features do not match."""
    name = model_path.name
    manifest_path = manifest_path_for(model_path)
    if not model_path.is_file():
        raise ModelUnavailableError(f"model artifact {name} is missing")
    if not manifest_path.is_file():
        raise ModelUnavailableError(f"model manifest {manifest_path.name} is missing")
    try:
        manifest = Manifest.parse(manifest_path.read_bytes())
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        raise ModelUnavailableError(f"model manifest {manifest_path.name} is invalid: {exc}") from exc
    if expected_features is not None and manifest.features != expected_features:
        raise ModelUnavailableError(
            f"model features {list(manifest.features)} do not match the API's {list(expected_features)}"
        )
    if sha256_of(model_path) != manifest.sha256:
        raise ModelUnavailableError(f"model artifact {name} does not match its manifest checksum (corrupt or replaced)")
    model_class = MODEL_TYPES.get(manifest.model_type)
    if model_class is None:
        raise ModelUnavailableError(f"model type {manifest.model_type!r} is not supported")
    try:
        model = model_class.load(model_path)
    except Exception as exc:  # unpickling can raise almost anything
        raise ModelUnavailableError(f"model artifact {name} could not be read: {type(exc).__name__}") from exc
    if model.input_dim != len(manifest.features):
        raise ModelUnavailableError(
            f"model takes {model.input_dim} inputs but its manifest lists {len(manifest.features)} features"
        )
    return LoadedModel(model, manifest)


class LazyModel:
    """Loads the model on first use, once per process even when threads race; a failed load is retried."""

    def __init__(self, model_path: Path, expected_features: tuple[str, ...] | None = None) -> None:
        self.model_path = model_path
        self.expected_features = expected_features
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    def get(self) -> LoadedModel:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._lock:
            if self._loaded is None:
                self._loaded = load_model(self.model_path, self.expected_features)
            return self._loaded


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file so a crash never leaves a half-written artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)  # Lambda runs as a non-root user: the packaged file must stay readable
    os.replace(tmp.name, path)
