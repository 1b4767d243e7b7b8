"""What the service answers, as Python values: the model's description, predictions, job results, suggestions.

Apart from the client so that the pictures (plots.py) read these without importing the client, which imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def optional_module(module: str, extra: str, why: str) -> ModuleType:
    """`module`, from one of the client's extras; a ModuleNotFoundError naming the extra to install if it is not.
    `why` says who needs it ("to_frame() needs pandas")."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as missing:
        top = module.partition(".")[0]
        raise ModuleNotFoundError(
            f"{why}, which the client's `{extra}` extra installs: pip install './client[{extra}]' from the "
            f"repository's root (or pip install {top})",
            name=missing.name,
        ) from missing


def _pandas() -> ModuleType:
    return optional_module("pandas", "pandas", "to_frame() needs pandas")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    bounds: dict[str, tuple[float, float]]
    max_batch_size: int
    max_job_points: int | None
    max_batch_size_with_gradient: int | None = None  # lower than max_batch_size on a large model, else None
    published_training_data: str | None = None  # "inputs", "inputs_and_outputs", or None: nothing published
    units: Mapping[str, str] = field(default_factory=dict)  # {feature or output: unit}, where the manifest says

    def label(self, name: str) -> str:
        """A feature's or output's name with its unit, as the pictures' axes read: "r (m)", or "r" without one."""
        unit = self.units.get(name)
        return f"{name} ({unit})" if unit else name


@dataclass
class TrainingData:
    """The training points a model publishes (GET /model/training-data), in the model's feature and output order."""

    published: str  # "inputs" or "inputs_and_outputs"
    inputs: np.ndarray  # (n, n_features)
    outputs: np.ndarray | None  # (n, n_outputs), where published


@dataclass
class Predictions:
    """Answers in input order: `mean` and `variance` are (N, n_outputs); `extras` holds std/lower_95/upper_95.

    With include=["gradient"], `mean_gradient` and `variance_gradient` are (N, n_features, n_outputs).
    `model_versions`: which versions answered (X-Model-Version; two while an alias splits traffic for a canary).
    """

    outputs: tuple[str, ...]
    mean: np.ndarray
    variance: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    mean_gradient: np.ndarray | None = None
    variance_gradient: np.ndarray | None = None
    model_versions: tuple[str, ...] = ()  # the versions that answered ("name/3"), in the order first seen

    def to_frame(self) -> pd.DataFrame:
        pd = _pandas()
        columns: dict[str, np.ndarray] = {}
        for j, output in enumerate(self.outputs):
            columns[f"{output}_mean"] = self.mean[:, j]
            columns[f"{output}_variance"] = self.variance[:, j]
            for name, values in self.extras.items():
                columns[f"{output}_{name}"] = values[:, j]
        return pd.DataFrame(columns)


@dataclass
class JobResults:
    """A finished job's rows, in input order: the features, then each output's statistics."""

    table: np.ndarray  # structured: one named float64 field per column
    features: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def inputs(self) -> np.ndarray:
        return np.column_stack([self.table[name] for name in self.features])

    def statistic(self, name: str) -> np.ndarray:
        """(N, n_outputs) of one statistic: mean, variance, std, lower_95 or upper_95."""
        fields = self.table.dtype.names or ()
        columns = []
        for output in self.outputs:
            column = next((f for f in fields if f in (f"{output}_{name}", f"predicted_{output}_{name}")), None)
            if column is None:
                raise KeyError(f"the results have no {name} (ask for it with include=)")
            columns.append(self.table[column])
        return np.column_stack(columns)

    @property
    def mean(self) -> np.ndarray:
        return self.statistic("mean")

    @property
    def variance(self) -> np.ndarray:
        return self.statistic("variance")

    def to_frame(self) -> pd.DataFrame:
        pd = _pandas()
        return pd.DataFrame(self.table)


# --- analyses' results (/suggest) ------------------------------------------------------------------------


@dataclass
class Suggestions:
    """POST /suggest's answer: the q points to simulate next, in the order they were picked.

    `points` is (q, n_features) in the model's feature order (what `predict` takes back); `acquisition` is (q,):
    the criterion when each point was picked (after the earlier picks); `mean` and `variance` are (q, n_outputs),
    the service's prediction at each point. `answer` is the JSON as the service sent it.
    """

    features: tuple[str, ...]
    outputs: tuple[str, ...]
    points: np.ndarray
    acquisition: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    answer: dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.answer["seed"])

    def __len__(self) -> int:
        return len(self.points)

    def pending(self) -> list[dict[str, float]]:
        """The points as rows ({feature: value}), as `suggest(pending=...)` and /predict take them."""
        return [dict(zip(self.features, map(float, row), strict=True)) for row in self.points]

    def to_frame(self) -> pd.DataFrame:
        pd = _pandas()
        columns: dict[str, np.ndarray] = {f: self.points[:, j] for j, f in enumerate(self.features)}
        columns["acquisition"] = self.acquisition
        for j, output in enumerate(self.outputs):
            columns[f"{output}_mean"] = self.mean[:, j]
            columns[f"{output}_variance"] = self.variance[:, j]
        return pd.DataFrame(columns)
