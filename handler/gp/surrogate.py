"""What the service needs of a model, whichever route loads it: the posterior file's (handler.gp.model) or GPy's
(handler.gp.gpy_model). Apart from both, so that neither imports the other to share it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from handler.gp.artifact import Manifest
from handler.gp.posterior import Prediction


@dataclass(frozen=True)
class TrainingData:
    """Points the model was fitted on, in original units: (n, d) inputs and, when published, (n, p) outputs."""

    inputs: np.ndarray
    outputs: np.ndarray | None


class SurrogateModel(ABC):
    """What the service needs of a model: `PosteriorModel` (numpy) or, for the GPy route, handler.gp.gpy_model's."""

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

    def training_data(self) -> TrainingData | None:
        """The training points its artifact holds for publishing, if any (GET /model/training-data)."""
        return None

    def gradients(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """d mean / dx and d variance / dx, (n, input_dim, output_dim) each; models that can say, say."""
        raise NotImplementedError(f"{type(self).__name__} gives no gradients")

    def covariance(self, X: np.ndarray, *, latent: bool = False) -> np.ndarray:
        """The joint predictive covariance of the points, (output_dim, n, n)."""
        raise NotImplementedError(f"{type(self).__name__} gives no joint covariance")
