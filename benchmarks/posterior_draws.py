"""How close the pathwise posterior draws (handler.analyses.function_draws) come to the exact posterior.

At 30 test points (uniform in the domain), 2000 draws of PosteriorFunctionDraws against the exact latent
posterior (its mean as GPPosterior.predict gives it; its covariance recomputed from the kernel by a Cholesky
factor and a solve, see reference_covariance; the column "predict's variance / exact" shows that predict's
variance, a triangular solve with the file's own factor, is that to rounding): the empirical mean's distance
from the exact mean in posterior standard deviations, the ratio of empirical to exact variance (median, min, max
over the points), and the largest error of a correlation between two points. Fits on 30, 100 and 400 Ishigami points (as
benchmarks/sensitivity_coverage.py fits them) and the shipped Park model, with 256 (the default) and 1024 Fourier
features per draw. The row "exact joint draws" draws as many from the exact N(mean, cov) by Cholesky: the Monte
Carlo noise these statistics have with 2000 draws even when nothing is wrong.

Random Fourier features approximate the prior; the update removes their error only where the data pin the
function down, and the remaining error is relative to the prior: where the posterior sd is a tiny fraction
of the prior sd (many training points), the variance of the draws can be far from the exact one. The column
"posterior sd / prior sd" says how far into that regime each model is.

    python benchmarks/posterior_draws.py            # ~2-5 minutes
    python benchmarks/posterior_draws.py --quick    # 500 draws, Park and 30 points only
"""

from __future__ import annotations

import os

THREADS = os.environ.get("ANALYSES_BENCH_THREADS", "1")
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = THREADS

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish, table  # noqa: E402
from benchmarks.sensitivity_coverage import D, fitted_posterior  # noqa: E402
from handler.analyses.function_draws import PosteriorFunctionDraws  # noqa: E402
from handler.gp.posterior import GPPosterior  # noqa: E402

SECTION = "Pathwise posterior draws against the exact posterior (benchmarks/posterior_draws.py)"
SHIPPED = ROOT / "model_artifacts" / "pretrained-model.npz"


def shipped_posterior() -> tuple[GPPosterior, np.ndarray]:
    from handler.gp.artifact import Manifest
    from handler.gp.model import PosteriorModel

    manifest = Manifest.parse(SHIPPED.with_name("pretrained-model.manifest.json").read_bytes())
    return PosteriorModel.load(SHIPPED, manifest).posterior, np.asarray(manifest.bounds, dtype=float)


def reference_covariance(posterior: GPPosterior, X: np.ndarray) -> np.ndarray:
    """The exact latent posterior covariance at X (standardised scale), recomputed from the kernel by a Cholesky
    factor and a solve, independently of the posterior file's factor. Exact inference only.

    The posterior is GPy's: it factors K + (s2 + 1e-8) I (ExactGaussianInference adds 1e-8 to the diagonal, and
    jitchol more if it must), so that diagonal is the one used here (`GPPosterior.factored_noise_variance`, read
    off the file's factor). Leaving the 1e-8 out describes another model: for the shipped Park model, whose noise
    s2 is 1.0e-8, its latent variances are 1.4-2x smaller where they are ~1e-9 of the prior's (what this script
    once reported as predict's error).
    """
    S, U = X * posterior.inverse_lengthscale, posterior._scaled_inputs
    prior_U = posterior._kernel_of_distance(posterior._distances(U, U))[0]
    K = 0.5 * (prior_U + prior_U.T) + posterior.factored_noise_variance * np.eye(len(U))
    distances = posterior._distances(S, S)
    np.fill_diagonal(distances, 0.0)
    prior_X = posterior._kernel_of_distance(distances)[0]
    W = np.linalg.solve(np.linalg.cholesky(K), posterior.cross_covariance(X).T)
    cov = prior_X - W.T @ W
    return 0.5 * (cov + cov.T)


def statistics_of(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """samples (points, draws) against the exact mean (points,) and covariance (points, points)."""
    sd = np.sqrt(np.diag(cov))
    z = np.abs(samples.mean(axis=1) - mean) / sd
    ratio = samples.var(axis=1, ddof=1) / np.diag(cov)
    corr_exact = cov / np.outer(sd, sd)
    corr_draws = np.corrcoef(samples)
    off = ~np.eye(len(mean), dtype=bool)
    return {
        "z_median": float(np.median(z)),
        "z_max": float(z.max()),
        "ratio_median": float(np.median(ratio)),
        "ratio_min": float(ratio.min()),
        "ratio_max": float(ratio.max()),
        "corr_error": float(np.abs(corr_draws - corr_exact)[off].max()),
    }


def measure(
    name: str, posterior: GPPosterior, bounds: np.ndarray, draws: int, features_list: list[int], seed: int
) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    X = bounds[:, 0] + rng.random((30, len(bounds))) * (bounds[:, 1] - bounds[:, 0])
    # latent, on the standardised scale (the draws are mapped by y_std and y_mean alike)
    scale = float(posterior.y_std[0])
    mean = (posterior.predict(X, latent=True).mean[:, 0] - posterior.y_mean[0]) / scale
    cov = reference_covariance(posterior, X)
    predicted = posterior.predict(X, latent=True).variance[:, 0] / scale**2
    predict_ratio = predicted / np.diag(cov)
    predict_context = f"{np.median(predict_ratio):.3f} ({predict_ratio.min():.3f}-{predict_ratio.max():.3f})"
    sd_ratio = np.sqrt(np.diag(cov) / posterior.kernel_variance)
    context = f"{np.median(sd_ratio):.1e} ({sd_ratio.min():.0e}-{sd_ratio.max():.0e})"
    rows = []

    def row(label: str, stats: dict[str, float], seconds: float) -> list[str]:
        return [
            name,
            label,
            context,
            predict_context,
            f"{stats['z_median']:.3f} / {stats['z_max']:.3f}",
            f"{stats['ratio_median']:.3f} ({stats['ratio_min']:.3f}-{stats['ratio_max']:.3f})",
            f"{stats['corr_error']:.3f}",
            f"{seconds:.1f}",
        ]

    # Monte Carlo noise floor: exact joint draws (eigen-root: the covariance may be numerically singular)
    values, vectors = np.linalg.eigh(cov)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    exact = mean[:, None] + root @ rng.standard_normal((len(mean), draws))
    rows.append(row("exact joint draws", statistics_of(exact, mean, cov), 0.0))
    for features in features_list:
        started = time.perf_counter()
        sampler = PosteriorFunctionDraws(posterior, draws, np.random.default_rng(seed + features), features=features)
        samples = (sampler.evaluate(X)[:, :, 0] - posterior.y_mean[0]) / scale
        seconds = time.perf_counter() - started
        rows.append(row(f"pathwise, {features} features", statistics_of(samples, mean, cov), seconds))
    for r in rows:
        print(" | ".join(r), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--features", default="256,1024", help="Fourier features per draw")
    parser.add_argument("--sizes", default="30,100,400", help="Ishigami training sizes")
    parser.add_argument("--seed", type=int, default=0, help="the training design and the draws")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, help="markdown file to (re)write its section in: benchmarks/results.md")
    args = parser.parse_args(argv)
    draws = 500 if args.quick else args.draws
    sizes = [30] if args.quick else [int(s) for s in args.sizes.split(",")]
    features = [int(f) for f in args.features.split(",")]
    started, load_before = time.perf_counter(), os.getloadavg()

    rows = []
    posterior, bounds = shipped_posterior()
    rows += measure(f"Park, shipped ({posterior.n_inputs} points)", posterior, bounds, draws, features, args.seed)
    box = np.array([[-np.pi, np.pi]] * D)
    for n_train in sizes:
        rows += measure(
            f"Ishigami, {n_train} points", fitted_posterior(n_train, args.seed), box, draws, features, args.seed
        )
    header = [
        "model",
        "draws",
        "posterior sd / prior sd: median (range)",
        "predict's variance / exact: median (min-max)",
        "abs(mean error) / sd: median / max",
        "variance ratio draws/exact: median (min-max)",
        "max correlation error",
        "seconds",
    ]
    note = (
        f"`python benchmarks/posterior_draws.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {(time.perf_counter() - started) / 60:.1f} minutes; {draws} "
        f"draws at 30 uniform test points; BLAS threads {THREADS}; load average before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in os.getloadavg())}. "
        f"With {draws} draws, the Monte Carlo noise alone is ~{1 / np.sqrt(draws):.3f} sd on a mean and "
        f"~{np.sqrt(2 / draws):.0%} on a variance (the 'exact joint draws' rows).\n"
    )
    text = note + "\n" + table(header, rows)
    publish(text, args.output, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
