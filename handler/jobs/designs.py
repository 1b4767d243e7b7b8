"""Designs of experiments generated from a short spec: scipy's quasi-Monte Carlo engines, and full grids.

scipy is imported when a design is generated (by the worker), not when one is checked (by the API).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def grid_levels(n: int, dimensions: int) -> int:
    """Levels per feature of the largest full grid of at most n points: the integer `dimensions`-th root of n.

    Integer Newton steps, exact for any n (a float root is off by far more than one for n beyond 2**53, and
    raises OverflowError beyond 1e308); a few dozen steps for any n a job may have.
    """
    if n < 1:
        return 0
    root = 1 << -(-n.bit_length() // dimensions)  # 2**ceil(bits / d) > the root: Newton descends from above
    while True:
        step = ((dimensions - 1) * root + n // root ** (dimensions - 1)) // dimensions
        if step >= root:
            return root
        root = step


def design_points(method: str, n: int, dimensions: int) -> int:
    """How many points a design of this spec has: n, except a grid (levels ** dimensions <= n)."""
    return grid_levels(n, dimensions) ** dimensions if method == "grid" else n


def generate(method: str, n: int, seed: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(points, features) float64 inside [lower, upper]; the same spec always gives the same points."""
    dimensions = len(lower)
    if method == "grid":
        levels = grid_levels(n, dimensions)
        axes = [np.linspace(lo, hi, levels) for lo, hi in zip(lower, upper, strict=True)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, dimensions)
    from scipy.stats import qmc

    rng = np.random.default_rng(seed)
    engine: Any = {
        "sobol": lambda: qmc.Sobol(dimensions, scramble=True, rng=rng),
        "halton": lambda: qmc.Halton(dimensions, scramble=True, rng=rng),
        "lhs": lambda: qmc.LatinHypercube(dimensions, rng=rng),
    }[method]()
    with warnings.catch_warnings():
        # Sobol' points keep their balance properties for powers of two; other counts are still valid designs.
        warnings.filterwarnings("ignore", message=".*balance properties.*", category=UserWarning)
        unit = engine.random(n)
    return np.asarray(qmc.scale(unit, lower, upper), dtype=float)


def generate_rows(
    method: str, n: int, seed: int, lower: np.ndarray, upper: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """Rows start:stop of the design (temporary: generated whole)."""
    return generate(method, n, seed, lower, upper)[start:stop]
