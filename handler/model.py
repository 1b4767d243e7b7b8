"""Surrogate models behind one small interface, and loading them safely for the service.

This module knows nothing of API Gateway or HTTP: it loads an artifact, checks it against
its manifest and predicts for arrays of points.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:  # GPy costs ~1 s to import, so only the first load pays for it
    import GPy


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
    def predict(self, X: np.ndarray) -> Prediction:
        """Predict for an (n, input_dim) array."""

    @property
    @abstractmethod
    def input_dim(self) -> int: ...

    def save(self, path: Path) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def describe(self) -> dict[str, Any]:
        """Kernel and hyperparameters (or their equivalent), for the manifest."""
        return {}


class GPRegressionModel(SurrogateModel):
    """A GPy `GPRegression`; predictions equal GPy's own `predict` (noisy predictive variance)."""

    model_type = "GPy.models.GPRegression"
    # GPy's predict allocates several (chunk x n_train) arrays; chunking keeps peak memory flat
    # for big batches at no measurable cost in time.
    predict_chunk_size: ClassVar[int] = 2_000

    def __init__(self, gp: GPy.models.GPRegression) -> None:
        self.gp = gp

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        *,
        restarts: int = 5,
        seed: int = 0,
        normalize: bool = True,
    ) -> GPRegressionModel:
        """Fit an RBF-ARD GP by maximum marginal likelihood with random restarts (deterministic for a seed)."""
        import GPy

        kernel = GPy.kern.RBF(input_dim=X.shape[1], ARD=True)
        gp = GPy.models.GPRegression(X, Y, kernel, normalizer=normalize)
        # A deterministic simulator has (almost) no noise; the floor keeps the Cholesky factor well conditioned.
        gp.Gaussian_noise.variance.constrain_bounded(1e-8, 1.0, warning=False)
        np.random.seed(seed)  # GPy draws restart points from numpy's global generator
        gp.optimize_restarts(num_restarts=restarts, robust=True, verbose=False, messages=False)
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
        _atomic_write(path, pickle.dumps(self.gp, protocol=pickle.HIGHEST_PROTOCOL))

    @property
    def input_dim(self) -> int:
        return int(self.gp.input_dim)

    def predict(self, X: np.ndarray) -> Prediction:
        n = X.shape[0]
        mean = np.empty(n)
        variance = np.empty(n)
        for start in range(0, n, self.predict_chunk_size):
            stop = start + self.predict_chunk_size
            chunk_mean, chunk_variance = self.gp.predict(X[start:stop])
            mean[start:stop] = chunk_mean[:, 0]
            variance[start:stop] = chunk_variance[:, 0]
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


class HoldoutMetrics(BaseModel):
    n_points: int = Field(ge=1)
    rmse: float
    r2: float
    coverage_95: float = Field(ge=0.0, le=1.0, description="Share of hold-out points inside the 95% interval.")


class ModelManifest(BaseModel):
    """The JSON file beside the pickle: what the model expects and how good it is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    model_type: str
    artifact: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    features: list[str] = Field(min_length=1)
    bounds: dict[str, tuple[float, float]]
    target: str
    n_train: int = Field(ge=1)
    holdout: HoldoutMetrics
    kernel: dict[str, Any]
    training: dict[str, Any]
    versions: dict[str, str]

    @model_validator(mode="after")
    def _bounds_cover_features(self) -> Self:
        if list(self.bounds) != self.features:
            raise ValueError("bounds must list exactly the features, in order")
        for name, (low, high) in self.bounds.items():
            if not low < high:
                raise ValueError(f"bounds of {name} must have lower < upper")
        return self


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
    manifest: ModelManifest

    def domain_violations(self, X: np.ndarray, margin: float, limit: int = 20) -> list[DomainViolation]:
        """Points outside the training bounds widened by `margin` x range (at most `limit` of them)."""
        bounds = np.array(list(self.manifest.bounds.values()))
        width = bounds[:, 1] - bounds[:, 0]
        low, high = bounds[:, 0] - margin * width, bounds[:, 1] + margin * width
        rows, cols = np.nonzero((low > X) | (high < X))
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
        manifest = ModelManifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as exc:
        raise ModelUnavailableError(
            f"model manifest {manifest_path.name} is invalid: {exc.error_count()} error(s)"
        ) from exc
    if expected_features is not None and tuple(manifest.features) != expected_features:
        raise ModelUnavailableError(
            f"model features {manifest.features} do not match the API's {list(expected_features)}"
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


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file so a crash never leaves a half-written artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)  # Lambda runs as a non-root user: the packaged file must stay readable
    os.replace(tmp.name, path)


def write_manifest(manifest: ModelManifest, path: Path) -> None:
    _atomic_write(path, (manifest.model_dump_json(indent=2) + "\n").encode())
