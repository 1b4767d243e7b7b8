"""Do /sensitivity's intervals cover the true Sobol' indices? A coverage study on the Ishigami function.

Ishigami (a = 7, b = 0.1, inputs uniform on [-pi, pi]^3) has analytic indices (computed below from the
formulas). For each training size (30, 100, 400 random points) and each seed, a GPy GPRegression (RBF-ARD,
normalizer, noise floor 1e-8, a few restarts: handler.gp.gpy_model.GPRegressionModel.fit, as scripts/train_model.py
fits the shipped model) is fitted on a new design, and the analysis runs in-process through the library as
handler/api/analyses.py runs it (posterior_arrays -> GPPosterior -> sensitivity_design -> posterior mean and
PosteriorFunctionDraws -> analyse), with posterior_samples 0 and 50, with a new analysis seed.

Reported per training size x draws: coverage of the 6 analytic indices (S1 and ST of each input: the fraction of
95% intervals that contain the truth), mean interval width, mean absolute error of the estimate. For reference,
the same analysis of the Ishigami function itself (no GP: the intervals are the bootstrap's alone). Then:
the accuracy claim (at a few hundred training points, every S1 and ST within 0.02 of the analytic value: checked
at a large base sample, n = 8192, where the Monte Carlo error is small), and the widths as n grows (256, 1024,
4096) at 400 training points.

    python benchmarks/sensitivity_coverage.py                  # 20 seeds, ~5-10 minutes
    python benchmarks/sensitivity_coverage.py --quick          # 4 seeds, ~1-2 minutes
    python benchmarks/sensitivity_coverage.py --output benchmarks/results.md
"""

from __future__ import annotations

import os

THREADS = os.environ.get("ANALYSES_BENCH_THREADS", "1")
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = THREADS

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish, table  # noqa: E402
from handler.analyses.distributions import InputDistribution, Uniform  # noqa: E402
from handler.analyses.function_draws import PosteriorFunctionDraws  # noqa: E402
from handler.analyses.sensitivity import SensitivityResult, analyse, sensitivity_design  # noqa: E402
from handler.gp.posterior import GPPosterior  # noqa: E402

A, B = 7.0, 0.1
D = 3
SECTION = "Sensitivity intervals against the truth: Ishigami (benchmarks/sensitivity_coverage.py)"


def ishigami(X: np.ndarray) -> np.ndarray:
    return np.sin(X[:, 0]) + A * np.sin(X[:, 1]) ** 2 + B * X[:, 2] ** 4 * np.sin(X[:, 0])


def ishigami_indices(a: float = A, b: float = B) -> tuple[np.ndarray, np.ndarray]:
    """Analytic first-order and total indices of the Ishigami function on [-pi, pi]^3 (Sobol' and Levitan 1999).

    V1 = (1 + b pi^4 / 5)^2 / 2, V2 = a^2 / 8, V3 = 0, V13 = b^2 pi^8 (1/18 - 1/50), V = V1 + V2 + V13.
    """
    pi4 = math.pi**4
    v1 = 0.5 * (1.0 + b * pi4 / 5.0) ** 2
    v2 = a**2 / 8.0
    v13 = b**2 * pi4**2 * (1.0 / 18.0 - 1.0 / 50.0)
    v = v1 + v2 + v13
    assert math.isclose(v, a**2 / 8 + b * pi4 / 5 + b**2 * pi4**2 / 18 + 0.5)
    return np.array([v1, v2, 0.0]) / v, np.array([v1 + v13, v2, v13]) / v


S1_TRUE, ST_TRUE = ishigami_indices()
TRUTH = np.concatenate([S1_TRUE, ST_TRUE])  # S1_1, S1_2, S1_3, ST_1, ST_2, ST_3
NAMES = ["S1 x1", "S1 x2", "S1 x3", "ST x1", "ST x2", "ST x3"]
DISTRIBUTIONS: list[InputDistribution] = [Uniform(-math.pi, math.pi)] * D


def training_design(n_train: int, rng: np.random.Generator) -> np.ndarray:
    """A Latin hypercube on [-pi, pi]^3 (one point per stratum of each input, strata randomly paired)."""
    strata = np.column_stack([rng.permutation(n_train) for _ in range(D)])
    return -math.pi + 2.0 * math.pi * (strata + rng.random((n_train, D))) / n_train


def fitted_posterior(n_train: int, seed: int, kernel: str = "RBF", restarts: int = 3) -> GPPosterior:
    """A GPy fit on n_train Ishigami points (LHS, seeded), as the numpy posterior the service would serve."""
    from handler.gp.from_gpy import posterior_arrays
    from handler.gp.gpy_model import GPRegressionModel

    rng = np.random.default_rng([n_train, seed])
    X = training_design(n_train, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GPRegressionModel.fit(X, ishigami(X)[:, None], kernel=kernel, restarts=restarts, seed=seed)
    name, _, arrays = posterior_arrays(model.gp)
    return GPPosterior.from_arrays(name, arrays)


def run_analysis(
    posterior: GPPosterior | None, n: int, draws: int, seed: int, features: int | None = None
) -> SensitivityResult:
    """What POST /sensitivity does (handler/api/analyses.py), for one output; posterior None: Ishigami itself."""
    rng = np.random.default_rng(seed)
    X = sensitivity_design(DISTRIBUTIONS, n, False, rng)
    if posterior is None:
        return analyse(ishigami(X), None, D, False, seed)
    mean = posterior.predict(X, latent=True).mean
    sampled = None
    if draws:
        extra = {} if features is None else {"features": features}
        sampled = PosteriorFunctionDraws(posterior, draws, rng, **extra).evaluate(X)[:, :, 0]
    return analyse(mean[:, 0], sampled, D, False, seed)


def as_arrays(result: SensitivityResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimates, lows, highs in TRUTH's order."""
    estimates = [*result.first_order, *result.total]
    return (
        np.array([e.estimate for e in estimates]),
        np.array([e.ci_low for e in estimates]),
        np.array([e.ci_high for e in estimates]),
    )


@dataclass
class Tally:
    estimates: list[np.ndarray] = field(default_factory=list)
    lows: list[np.ndarray] = field(default_factory=list)
    highs: list[np.ndarray] = field(default_factory=list)

    def add(self, result: SensitivityResult) -> None:
        e, lo, hi = as_arrays(result)
        self.estimates.append(e)
        self.lows.append(lo)
        self.highs.append(hi)

    def covered(self) -> np.ndarray:  # (seeds, 6)
        return (np.array(self.lows) <= TRUTH) & (np.array(self.highs) >= TRUTH)

    def widths(self) -> np.ndarray:
        return np.array(self.highs) - np.array(self.lows)

    def errors(self) -> np.ndarray:
        return np.abs(np.array(self.estimates) - TRUTH)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="training designs (and analysis seeds) per size")
    parser.add_argument("--quick", action="store_true", help="4 seeds, 2 restarts")
    parser.add_argument("--sizes", default="30,100,400", help="training sizes")
    parser.add_argument("--n", type=int, default=1024, help="the analysis' base sample (a power of 2)")
    parser.add_argument("--draws", type=int, default=50, help="posterior_samples of the second analysis")
    parser.add_argument("--kernel", default="RBF", choices=["RBF", "Matern52"])
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--output", type=Path, help="markdown file to (re)write its section in: benchmarks/results.md")
    args = parser.parse_args(argv)
    seeds = 4 if args.quick else args.seeds
    restarts = 2 if args.quick else args.restarts
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    load_before = os.getloadavg()

    sections = []
    truth_text = ", ".join(f"{name} {value:.4f}" for name, value in zip(NAMES, TRUTH, strict=True))
    print(f"analytic: {truth_text}", flush=True)

    # 1. Coverage, width, error per training size x draws; the function itself for reference
    tallies: dict[tuple[int, int], Tally] = {}
    claim: dict[int, list[np.ndarray]] = {}  # per size: |error| of the 6 indices at n = 8192, k = 0
    shrink: dict[tuple[int, int], list[np.ndarray]] = {}  # (n, draws) -> widths at the largest training size
    posteriors_at_largest: list[GPPosterior] = []
    reference = Tally()
    for seed in range(seeds):
        reference.add(run_analysis(None, args.n, 0, 10_000 + seed))
    for n_train in sizes:
        for seed in range(seeds):
            t0 = time.perf_counter()
            posterior = fitted_posterior(n_train, seed, args.kernel, restarts)
            fit_s = time.perf_counter() - t0
            analysis_seed = 1_000 * n_train + seed
            for k in (0, args.draws):
                tallies.setdefault((n_train, k), Tally()).add(run_analysis(posterior, args.n, k, analysis_seed))
            estimates, _, _ = as_arrays(run_analysis(posterior, 8192, 0, analysis_seed))
            claim.setdefault(n_train, []).append(np.abs(estimates - TRUTH))
            if n_train == max(sizes):
                posteriors_at_largest.append(posterior)
            print(
                f"n_train {n_train} seed {seed}: fit {fit_s:.1f} s, lengthscales "
                f"{np.array2string(posterior.lengthscale, precision=2)}, noise {posterior.noise_variance:.1e}, "
                f"max abs error at n=8192 {claim[n_train][-1].max():.3f}",
                flush=True,
            )
    for posterior, seed in zip(posteriors_at_largest, range(seeds), strict=True):
        for n in (256, 1024, 4096):
            for k in (0, args.draws):
                result = run_analysis(posterior, n, k, 7_000 + seed)
                _, lo, hi = as_arrays(result)
                shrink.setdefault((n, k), []).append(hi - lo)

    rows = []
    for (n_train, k), tally in tallies.items():
        covered = tally.covered()
        rows.append(
            [
                str(n_train),
                str(k),
                f"{covered.mean():.2f} ({covered.sum()}/{covered.size})",
                f"{covered[:, :3].mean():.2f}",
                f"{covered[:, 3:].mean():.2f}",
                f"{tally.widths().mean():.3f}",
                f"{tally.errors().mean():.3f}",
                f"{tally.errors().max():.3f}",
            ]
        )
    covered = reference.covered()
    rows.append(
        [
            "the function itself",
            "-",
            f"{covered.mean():.2f} ({covered.sum()}/{covered.size})",
            f"{covered[:, :3].mean():.2f}",
            f"{covered[:, 3:].mean():.2f}",
            f"{reference.widths().mean():.3f}",
            f"{reference.errors().mean():.3f}",
            f"{reference.errors().max():.3f}",
        ]
    )
    header = [
        "training points",
        "posterior_samples",
        "coverage (6 indices)",
        "coverage S1",
        "coverage ST",
        "mean width",
        "mean abs error",
        "max abs error",
    ]
    sections.append(
        f"### Coverage of the 95% intervals (n = {args.n}, {seeds} seeds, {args.kernel}-ARD)\n\n"
        f"Analytic: {truth_text}. Each seed: a new Latin-hypercube training design and a new analysis seed. "
        "'The function itself': the same analysis of Ishigami's own values (bootstrap intervals only).\n\n"
        + table(header, rows)
    )

    # per index: where do the misses fall?
    per_index = []
    for (n_train, k), tally in tallies.items():
        cov, err, wid = tally.covered().mean(axis=0), tally.errors().mean(axis=0), tally.widths().mean(axis=0)
        per_index.append(
            [str(n_train), str(k)] + [f"{c:.2f} / {e:.3f} / {w:.3f}" for c, e, w in zip(cov, err, wid, strict=True)]
        )
    cov, err, wid = reference.covered().mean(axis=0), reference.errors().mean(axis=0), reference.widths().mean(axis=0)
    per_index.append(
        ["the function itself", "-"] + [f"{c:.2f} / {e:.3f} / {w:.3f}" for c, e, w in zip(cov, err, wid, strict=True)]
    )
    sections.append(
        "### Per index: coverage / mean abs error / mean width\n\n"
        + table(["training points", "posterior_samples", *NAMES], per_index)
    )

    # 2. The accuracy claim: every S1 and ST within 0.02, at a large base sample
    claim_rows = []
    for n_train, errors in claim.items():
        E = np.array(errors)
        within = (E.max(axis=1) <= 0.02).mean()
        claim_rows.append(
            [
                str(n_train),
                f"{within:.2f} ({int(within * len(E))}/{len(E)})",
                f"{np.median(E.max(axis=1)):.3f}",
                f"{E.max():.3f}",
                f"{E[:, :3].mean():.3f}",
                f"{E[:, 3:].mean():.3f}",
            ]
        )
    sections.append(
        "### Accuracy: every S1 and ST within 0.02 of the analytic value? (posterior mean, n = 8192, k = 0)\n\n"
        + table(
            [
                "training points",
                "seeds with all 6 within 0.02",
                "median of max abs error",
                "worst abs error",
                "mean abs error S1",
                "mean abs error ST",
            ],
            claim_rows,
        )
    )

    # 3. Widths as n grows
    shrink_rows = []
    for (n, k), widths in sorted(shrink.items(), key=lambda item: (item[0][1], item[0][0])):
        W = np.array(widths)
        shrink_rows.append([str(n), str(k), f"{W[:, :3].mean():.3f}", f"{W[:, 3:].mean():.3f}", f"{W.mean():.3f}"])
    sections.append(
        f"### Interval widths as the base sample grows ({max(sizes)} training points, {seeds} seeds)\n\n"
        + table(["n", "posterior_samples", "mean width S1", "mean width ST", "mean width"], shrink_rows)
    )

    load_after = os.getloadavg()
    note = (
        f"`python benchmarks/sensitivity_coverage.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {(time.perf_counter() - started) / 60:.1f} minutes; "
        f"{restarts} restarts per fit; BLAS threads {THREADS}; load average before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in load_after)}.\n"
    )
    text = note + "\n" + "\n".join(sections)
    publish(text, args.output, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
