"""Test functions of the simulation literature, in their physical units, for fitting benchmarks and tests.

Each: the function of an (n, d) array, and its input bounds (the SFU Virtual Library of Simulation Experiments,
Surjanovic & Bingham). numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scripts.train_model import park1991


@dataclass(frozen=True)
class Simulator:
    name: str
    function: Callable[[np.ndarray], np.ndarray]
    bounds: dict[str, tuple[float, float]]

    def design(self, n: int, seed: int) -> np.ndarray:
        """A Latin hypercube of n points in the bounds."""
        from scipy.stats import qmc

        low, high = np.array(list(self.bounds.values())).T
        return qmc.scale(qmc.LatinHypercube(d=len(self.bounds), seed=seed).random(n), low, high)

    @property
    def bounds_array(self) -> np.ndarray:
        return np.array(list(self.bounds.values()), dtype=float)


def branin(X: np.ndarray) -> np.ndarray:
    """Branin-Hoo on [-5, 10] x [0, 15]."""
    x1, x2 = X.T
    b, c, t = 5.1 / (4 * np.pi**2), 5 / np.pi, 1 / (8 * np.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * np.cos(x1) + 10


HARTMANN_A = np.array(
    [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
)
HARTMANN_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(X: np.ndarray) -> np.ndarray:
    """Hartmann-6 on [0, 1]^6."""
    inner = np.sum(HARTMANN_A[None] * (X[:, None, :] - HARTMANN_P[None]) ** 2, axis=2)
    return -np.exp(-inner) @ HARTMANN_ALPHA


def borehole(X: np.ndarray) -> np.ndarray:
    """Water flow through a borehole, m3/yr (Harper & Gupta 1983)."""
    rw, r, Tu, Hu, Tl, Hl, L, Kw = X.T
    log_ratio = np.log(r / rw)
    return 2 * np.pi * Tu * (Hu - Hl) / (log_ratio * (1 + 2 * L * Tu / (log_ratio * rw**2 * Kw) + Tu / Tl))


def ishigami(X: np.ndarray, a: float = 7.0, b: float = 0.1) -> np.ndarray:
    """Ishigami on [-pi, pi]^3."""
    return np.sin(X[:, 0]) + a * np.sin(X[:, 1]) ** 2 + b * X[:, 2] ** 4 * np.sin(X[:, 0])


BOREHOLE = Simulator(
    "Borehole",
    borehole,
    {"rw": (0.05, 0.15), "r": (100.0, 50_000.0), "Tu": (63_070.0, 115_600.0), "Hu": (990.0, 1_110.0),
     "Tl": (63.1, 116.0), "Hl": (700.0, 820.0), "L": (1_120.0, 1_680.0), "Kw": (9_855.0, 12_045.0)},
)  # fmt: skip
SIMULATORS = {
    "Branin": Simulator("Branin", branin, {"x1": (-5.0, 10.0), "x2": (0.0, 15.0)}),
    "Hartmann-6": Simulator("Hartmann-6", hartmann6, {f"x{j + 1}": (0.0, 1.0) for j in range(6)}),
    "Borehole": BOREHOLE,
    "Park": Simulator("Park", park1991, {f"x{j + 1}": (0.0, 1.0) for j in range(4)}),
    "Ishigami": Simulator("Ishigami", ishigami, {f"x{j + 1}": (-np.pi, np.pi) for j in range(3)}),
}
