"""Fit quality: our training (handler/training/fit.py, default options) against GPy's and scikit-learn's defaults.

On Branin, Hartmann-6, Borehole, Park and Ishigami, each in its physical units: a Latin-hypercube training set, a
2,000-point hold-out set (another Latin hypercube), hold-out R^2 and the fit's CPU time (on one thread, steadier
than wall time on a shared machine), medians over seeds, every method on the same data in one run, BLAS on one
thread (as on a 1769 MB Lambda).

- ours: `fit(X, Y, bounds)` with its defaults (kernel "auto": every kernel screened by a short optimisation and
  leave-one-out, the winner finished and restarted, DEFAULT_RESTARTS).
- GPy defaults: GPRegression, Matern52 ARD, normalizer=True, optimize_restarts(3), raw units.
- scikit-learn defaults: GaussianProcessRegressor() (its kernel 1.0 * RBF(1.0), hyperparameters fixed).
- scikit-learn tuned: ConstantKernel * Matern(nu=2.5, ARD lengthscales started at the features' ranges) +
  WhiteKernel, normalize_y=True, n_restarts_optimizer=5, raw units.

    python benchmarks/fit_quality.py                        # 3 seeds, ~5-10 minutes on a quiet machine
    python benchmarks/fit_quality.py --quick                # 1 seed, Branin and Park only
    python benchmarks/fit_quality.py --output benchmarks/results.md   # also (re)write its section there
"""

from __future__ import annotations

import os

# Before numpy is imported anywhere: one BLAS thread.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import date  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish, table  # noqa: E402
from benchmarks.simulators import SIMULATORS, Simulator  # noqa: E402

SECTION = "Fit quality: our training against GPy's and scikit-learn's defaults (benchmarks/fit_quality.py)"
TRAINING_SIZES = {"Branin": 40, "Hartmann-6": 300, "Borehole": 300, "Park": 200, "Ishigami": 200}
HOLDOUT = 2000
SEEDS = (0, 1, 2)

Predictor = Callable[[np.ndarray], np.ndarray]


def ours(X: np.ndarray, y: np.ndarray, simulator: Simulator, seed: int) -> tuple[Predictor, str]:
    from handler.training.fit import fit

    result = fit(X, y[:, None], simulator.bounds_array, seed=seed)
    return (lambda Z: result.model.predict(Z).mean[:, 0]), result.kernel


def gpy_defaults(X: np.ndarray, y: np.ndarray, simulator: Simulator, seed: int) -> tuple[Predictor, str]:
    import GPy

    gp = GPy.models.GPRegression(X, y[:, None], GPy.kern.Matern52(X.shape[1], ARD=True), normalizer=True)
    np.random.seed(seed)  # GPy draws restart points from numpy's global generator
    gp.optimize_restarts(num_restarts=3, verbose=False, robust=True)
    return (lambda Z: gp.predict(Z)[0][:, 0]), "Matern52"


def sklearn_defaults(X: np.ndarray, y: np.ndarray, simulator: Simulator, seed: int) -> tuple[Predictor, str]:
    from sklearn.gaussian_process import GaussianProcessRegressor

    gp = GaussianProcessRegressor(random_state=seed).fit(X, y)
    return gp.predict, "RBF"


def sklearn_tuned(X: np.ndarray, y: np.ndarray, simulator: Simulator, seed: int) -> tuple[Predictor, str]:
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    # Each lengthscale started at its feature's range, as a careful user does (sklearn's 1.0 in raw units stays stuck
    # where GPy's does on Borehole); sklearn's default bounds, (1e-5, 1e5), and restarts drawn in them.
    ranges = np.ptp(X, axis=0)
    kernel = ConstantKernel() * Matern(length_scale=ranges, nu=2.5) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=5, random_state=seed).fit(X, y)
    return gp.predict, "Matern52"


METHODS = {
    "ours (defaults)": ours,
    "GPy defaults": gpy_defaults,
    "scikit-learn defaults": sklearn_defaults,
    "scikit-learn tuned": sklearn_tuned,
}


def r2(y: np.ndarray, prediction: np.ndarray) -> float:
    return float(1 - np.sum((y - prediction) ** 2) / np.sum((y - y.mean()) ** 2))


def measure(names: list[str], seeds: tuple[int, ...]) -> dict[tuple[str, str], list[tuple[float, float, str]]]:
    """{(function, method): [(R^2, seconds, kernel) per seed]}."""
    found: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for name in names:
        simulator = SIMULATORS[name]
        for seed in seeds:
            X = simulator.design(TRAINING_SIZES[name], seed=seed)
            X_holdout = simulator.design(HOLDOUT, seed=1000 + seed)
            y, y_holdout = simulator.function(X), simulator.function(X_holdout)
            for method, run in METHODS.items():
                started = time.process_time()  # one thread: CPU time, steadier than wall time on a shared machine
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    predict, kernel = run(X, y, simulator, seed)
                seconds = time.process_time() - started
                score = r2(y_holdout, predict(X_holdout))
                found.setdefault((name, method), []).append((score, seconds, kernel))
                print(f"{name} seed {seed} {method}: R2 {score:.6f} in {seconds:.2f} s ({kernel})", file=sys.stderr)
    return found


def report(
    found: dict[tuple[str, str], list[tuple[float, float, str]]], names: list[str], seeds: tuple[int, ...]
) -> str:
    header = (
        ["function (d, n)"]
        + [f"{method}: R2 / CPU s" for method in METHODS]
        + ["ours' CPU time / tuned's", "ours: kernel chosen"]
    )
    rows = []
    for name in names:
        d = len(SIMULATORS[name].bounds)
        row = [f"{name} ({d}, {TRAINING_SIZES[name]})"]
        for method in METHODS:
            runs = found[(name, method)]
            score = statistics.median(r for r, _, _ in runs)
            seconds = statistics.median(s for _, s, _ in runs)
            row.append(f"{_r2_text(score)} / {seconds:.2f}")
        # per seed, both fits of the same data in the same minute of a shared machine: the ratio is the steady number
        pairs = zip(found[(name, "ours (defaults)")], found[(name, "scikit-learn tuned")], strict=True)
        ratios = [o[1] / max(t[1], 1e-3) for o, t in pairs]
        row.append(f"{statistics.median(ratios):.2f}")
        kernels = Counter(k for _, _, k in found[(name, "ours (defaults)")])
        row.append(", ".join(f"{k} x{c}" if c > 1 else k for k, c in kernels.most_common()))
        rows.append(row)
    versions = ", ".join(f"{p} {version(p)}" for p in ("numpy", "scipy", "GPy", "scikit-learn"))
    return (
        f"`python benchmarks/fit_quality.py` on {date.today().isoformat()}, on a {os.cpu_count()}-core "
        f"{platform.machine()} machine, one BLAS thread (Python {platform.python_version()}; {versions}). Each "
        f"function in its physical units: a Latin hypercube of n training points, {HOLDOUT:,} hold-out points (another "
        f"Latin hypercube); hold-out R^2 and the fit's CPU time in seconds, medians over seeds {list(seeds)}. Ours: "
        "`handler.training.fit.fit` with its defaults (inputs scaled by the bounds, kernel auto: each kernel screened "
        "briefly and scored by leave-one-out, the winner finished, restarts). GPy "
        "defaults: Matern52 ARD, normalizer, optimize_restarts(3). scikit-learn tuned: ConstantKernel x Matern(2.5, "
        "ARD, lengthscales started at the ranges) + WhiteKernel, normalize_y, n_restarts_optimizer=5. Compare times "
        "within a row; the ratio column is the median over seeds of ours' CPU time over scikit-learn tuned's on the "
        "same data.\n\n" + table(header, rows)
    )


def _r2_text(score: float) -> str:
    """Six decimals near 1, where the methods differ in the fourth; three elsewhere."""
    return f"{score:.6f}" if score >= 0.999 else f"{score:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, Branin and Park only")
    parser.add_argument("--only", help="comma-separated function names (default: all)")
    parser.add_argument("--output", type=Path, help="also write the section into this markdown file")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else (["Branin", "Park"] if args.quick else list(SIMULATORS))
    seeds = SEEDS[:1] if args.quick else SEEDS
    found = measure(names, seeds)
    publish(report(found, names, seeds), args.output, SECTION)


if __name__ == "__main__":
    main()
