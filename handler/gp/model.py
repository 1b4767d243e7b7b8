"""Surrogate models behind one small interface, the posterior-file model, loading by format, and lazy loading.

This module knows nothing of API Gateway or HTTP: it loads an artifact (handler.gp.artifact), checks it
against its manifest and predicts for arrays of points (handler.gp.posterior has the math). The GPy route
(handler.gp.gpy_model) is imported only for a model packaged as a pickle.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from handler.gp import posterior_file
from handler.gp.artifact import ArtifactSource, Manifest, ModelUnavailableError
from handler.gp.broken import ModelBrokenError
from handler.gp.posterior import GPPosterior, Prediction
from handler.gp.surrogate import SurrogateModel, TrainingData

logger = logging.getLogger(__name__)

# Columns of L L^T compared with the kernel at load (`GPPosterior.factor_mismatch`): m^2 x 8 flops, ~0.15 s at the
# largest m. A factor that is not the kernel's differs in nearly every column, so a few suffice.
FACTOR_CHECK_COLUMNS = 8


class PosteriorModel(SurrogateModel):
    """A model served from its posterior file (.npz): numpy only, no GPy, scipy or unpickling.

    Predictions, gradients and covariances are `GPPosterior`'s, equal to GPy's to rounding (checked when packaged).
    """

    model_type = "posterior file"

    def __init__(self, posterior: GPPosterior, training: TrainingData | None = None) -> None:
        self.posterior = posterior
        self.training = training

    @classmethod
    def load(cls, path: Path, manifest: Manifest | None = None) -> Self:
        if manifest is None:
            raise ValueError("a posterior file is read with its manifest")
        document = manifest.document
        arrays = posterior_file.read(path, document.get("posterior"), len(manifest.features), len(manifest.outputs))
        kernel = (document.get("kernel") or {}).get("name")
        training = None
        if "training_inputs" in arrays:
            training = TrainingData(arrays["training_inputs"], arrays.get("training_outputs"))
        posterior = GPPosterior.from_arrays(str(kernel), arrays)
        model = cls(posterior, training)
        if posterior.cholesky_inverse is not None:
            logger.warning(
                "posterior file written before its Cholesky factor was stored: served as before; repackaging it "
                "(scripts/package_model.py) computes tiny variances more exactly and lets the factor be checked at load"
            )
        outputs = arrays.get("training_outputs")
        standardised = None if outputs is None else (outputs - posterior.y_mean) / posterior.y_std
        with np.errstate(all="ignore"):  # a wrong file may overflow; the check says so
            mismatch = posterior.factor_mismatch(FACTOR_CHECK_COLUMNS, np.random.default_rng(), standardised)
        if mismatch is not None:
            raise posterior_file.PosteriorFileError(f"its factor does not belong to its kernel: {mismatch}")
        # Finite numbers can still overflow (a lengthscale of 1e-300): answer for the bounds' corners and centre
        # now, so such a file is a 503 at load, not one on every request.
        corners = manifest.bounds.T
        probe = np.vstack([corners, corners.mean(axis=0, keepdims=True)])
        try:
            with np.errstate(all="ignore"):  # overflow is what is being looked for
                model.predict(probe), model.gradients(probe)
        except ModelBrokenError as exc:
            raise posterior_file.PosteriorFileError(
                f"its predictions across the bounds are not finite: {exc}"
            ) from None
        return model

    @property
    def input_dim(self) -> int:
        return int(self.posterior.inputs.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.posterior.woodbury_vector.shape[1])

    def training_inputs(self) -> np.ndarray | None:
        return self.posterior.inputs if self.posterior.inference == "exact" else None

    def training_data(self) -> TrainingData | None:
        return self.training

    def predict(self, X: np.ndarray, *, latent: bool = False) -> Prediction:
        return self.posterior.predict(X, latent=latent)

    def gradients(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.posterior.gradients(X)

    def covariance(self, X: np.ndarray, *, latent: bool = False) -> np.ndarray:
        return self.posterior.covariance(X, latent=latent)


@dataclass(frozen=True)
class LoadedModel:
    model: SurrogateModel
    manifest: Manifest
    training_data: TrainingData | None = None  # what the manifest publishes of it


def load_model(source: ArtifactSource, manifest: Manifest | None = None) -> LoadedModel:
    """Load a model and its manifest, refusing an artifact whose checksum, type or shape does not match.

    A posterior file (format npz) is read with numpy alone; only a pickle (format pickle) imports the GPy route.
    """
    manifest = manifest or source.fetch_manifest()
    if manifest.format == posterior_file.FORMAT:
        model: SurrogateModel = _read(source, manifest, PosteriorModel)
    else:
        try:
            from handler.gp.gpy_model import MODEL_TYPES
        except ImportError as exc:  # a package built for a posterior file, then given a pickle
            raise ModelUnavailableError(f"the model is a pickle, and this package lacks the GPy route: {exc}") from exc
        model_class = MODEL_TYPES.get(manifest.model_type)
        if model_class is None:
            raise ModelUnavailableError(
                f"model type {manifest.model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})"
            )
        model = _read(source, manifest, model_class)
        if differing := version_differences(manifest):
            # GPy pickles are tied to the library versions that wrote them: say so before predictions look odd.
            logger.warning("library versions differ from the manifest's", extra={"versions": differing})
    if model.input_dim != len(manifest.features):
        raise ModelUnavailableError(
            f"model takes {model.input_dim} inputs but its manifest lists {len(manifest.features)} features"
        )
    if model.output_dim != len(manifest.outputs):
        raise ModelUnavailableError(
            f"model has {model.output_dim} outputs but its manifest lists {len(manifest.outputs)}"
        )
    return LoadedModel(model, manifest, _published(model, manifest))


def _published(model: SurrogateModel, manifest: Manifest) -> TrainingData | None:
    """The training points the manifest publishes, checked against it; ModelUnavailableError if they are not there."""
    if manifest.published_training_data is None:
        return None
    try:
        held = model.training_data()
    except Exception as exc:  # a pickle's X and Y are whatever it built: a 503 and the log, never a 500
        raise ModelUnavailableError(
            f"the training points could not be read: {type(exc).__name__}: {exc}"[:300]
        ) from exc
    with_outputs = manifest.published_training_data == "inputs_and_outputs"
    if held is None or (with_outputs and held.outputs is None):
        raise ModelUnavailableError(
            f"the manifest publishes training {manifest.published_training_data}, which the artifact does not hold"
        )
    n, d, p = len(held.inputs), len(manifest.features), len(manifest.outputs)
    outputs = held.outputs if with_outputs else None
    if held.inputs.shape != (n, d) or (outputs is not None and outputs.shape != (n, p)):
        raise ModelUnavailableError("the published training points do not have the manifest's features and outputs")
    if n * (d + (p if with_outputs else 0)) > posterior_file.MAX_PUBLISHED_VALUES:
        raise ModelUnavailableError(f"more than {posterior_file.MAX_PUBLISHED_VALUES} training values to publish")
    if not (np.isfinite(held.inputs).all() and (outputs is None or np.isfinite(outputs).all())):
        raise ModelUnavailableError("the published training points hold values that are not finite")
    return TrainingData(held.inputs, outputs)


def _read(source: ArtifactSource, manifest: Manifest, model_class: type[SurrogateModel]) -> SurrogateModel:
    path = source.fetch_model(manifest)
    try:
        return model_class.load(path, manifest)
    except Exception as exc:  # unpickling can raise almost anything; so can a corrupt zip
        from handler.gp.unpickling import UnsafePickleError

        if isinstance(exc, UnsafePickleError):
            # `refused_global` names what was refused: a global, or what the pickle overreached on (opcodes, nesting).
            logger.error("model artifact refused", extra={"refused_global": exc.name, "reason": str(exc)})
            raise ModelUnavailableError(f"model artifact refused: {exc}") from exc
        raise ModelUnavailableError(f"model artifact could not be read: {type(exc).__name__}: {exc}"[:300]) from exc


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
        # When the last attempt failed, and its message: not the exception, whose traceback holds the frames of the
        # load (and so a failed file's arrays: 512 MB at the largest m) for as long as the failure is remembered.
        self._failure: tuple[float, str] | None = None
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
        failure = self._failure
        if failure is not None and self.clock() - failure[0] < self.retry_interval_s:
            raise ModelUnavailableError(failure[1])
        try:
            result = action()
        except ModelUnavailableError as exc:
            self._failure = (self.clock(), str(exc))
            raise
        self._failure = None
        return result
