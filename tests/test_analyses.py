"""The analyses' math against reference implementations: scipy (Sobol' points, distributions), SALib (indices),
Emukit (acquisition values), exact posteriors (function draws) and analytic answers (Ishigami)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats as st
from scipy.stats import qmc

from handler.analyses import distributions as dist
from handler.analyses.acquisition import SuggestionProblem, suggest
from handler.analyses.function_draws import PosteriorFunctionDraws
from handler.analyses.propagation import propagate
from handler.analyses.sensitivity import (
    Z_95,
    analyse,
    bootstrap_resamples,
    sensitivity_design,
    sobol_indices,
)
from handler.analyses.sobol_directions import DIRECTIONS
from handler.analyses.sobol_sequence import BITS, direction_numbers, sobol_integers, sobol_points
from handler.gp.from_gpy import posterior_arrays
from handler.gp.posterior import GPPosterior

ISHIGAMI_BOUNDS = (-math.pi, math.pi)
A, B = 7.0, 0.1
# Analytic Sobol' indices of the Ishigami function (Ishigami and Homma 1990), uniform inputs on [-pi, pi]^3
_V1 = 0.5 * (1 + B * math.pi**4 / 5) ** 2
_V2 = A**2 / 8
_V13 = B**2 * math.pi**8 * (1 / 18 - 1 / 50)
ISHIGAMI_VARIANCE = _V1 + _V2 + _V13
ISHIGAMI_FIRST = np.array([_V1, _V2, 0.0]) / ISHIGAMI_VARIANCE
ISHIGAMI_TOTAL = np.array([_V1 + _V13, _V2, _V13]) / ISHIGAMI_VARIANCE


def ishigami(X: np.ndarray) -> np.ndarray:
    return np.sin(X[:, 0]) + A * np.sin(X[:, 1]) ** 2 + B * X[:, 2] ** 4 * np.sin(X[:, 0])


def fitted_posterior(n: int, seed: int, kernel: str = "RBF", restarts: int = 0) -> tuple[GPPosterior, object]:
    """A GPy model of the Ishigami function on n Latin-hypercube points, and its posterior as the service holds it."""
    import GPy

    X = qmc.scale(qmc.LatinHypercube(d=3, seed=seed).random(n), [-math.pi] * 3, [math.pi] * 3)
    gp = GPy.models.GPRegression(X, ishigami(X)[:, None], getattr(GPy.kern, kernel)(3, ARD=True), normalizer=True)
    gp.likelihood.variance = 1e-3  # started small: from GPy's 1, the optimiser can settle on noise for x3
    gp.likelihood.variance.constrain_bounded(1e-8, 1.0, warning=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(seed)
        if restarts:
            gp.optimize_restarts(restarts, verbose=False, robust=True)
        else:
            gp.optimize(max_iters=1000)
    kernel_name, _, arrays = posterior_arrays(gp)
    return GPPosterior.from_arrays(kernel_name, arrays), gp


@pytest.fixture(scope="module")
def good_fit() -> tuple[GPPosterior, object]:
    """A few hundred points: the fit the Ishigami accuracy checks are about."""
    return fitted_posterior(250, seed=1)


@pytest.fixture(scope="module")
def poor_fit() -> tuple[GPPosterior, object]:
    return fitted_posterior(30, seed=2)


@pytest.fixture(scope="module")
def branin_fit() -> tuple[GPPosterior, object, np.ndarray]:
    import GPy

    def branin(X: np.ndarray) -> np.ndarray:
        x1, x2 = X[:, 0], X[:, 1]
        return (
            (x2 - 5.1 / (4 * np.pi**2) * x1**2 + 5 / np.pi * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * np.pi)) * np.cos(x1) + 10
        )

    X = qmc.scale(qmc.LatinHypercube(d=2, seed=3).random(20), [-5, 0], [10, 15])
    gp = GPy.models.GPRegression(X, branin(X)[:, None], GPy.kern.Matern52(2, ARD=True), normalizer=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp.optimize()
    kernel_name, _, arrays = posterior_arrays(gp)
    return GPPosterior.from_arrays(kernel_name, arrays), gp, X


# --- Sobol' points -----------------------------------------------------------------------------------------


def test_the_direction_numbers_are_scipys():
    import scipy.stats

    table = np.load(Path(scipy.stats.__file__).parent / "_sobol_direction_numbers.npz")
    for d, (polynomial, *initial) in enumerate(DIRECTIONS):
        assert polynomial == table["poly"][d]
        assert initial == [int(v) for v in table["vinit"][d][: len(initial)]]
        assert not table["vinit"][d][len(initial) :].any() or d == 0


@pytest.mark.parametrize("dimensions", [1, 2, 7, 40, 128])
def test_unscrambled_points_are_scipys_sequence_bit_for_bit(dimensions):
    ours = sobol_integers(4096, direction_numbers(dimensions))
    theirs = qmc.Sobol(dimensions, scramble=False, bits=BITS).random(4096) * 2.0**BITS  # exact in float64
    assert np.array_equal(ours.astype(float), theirs)


def test_scrambled_points_keep_the_sequences_stratification_and_are_reproducible():
    points = sobol_points(1024, 6, np.random.default_rng(5))
    assert ((points > 0) & (points < 1)).all()
    for j in range(6):  # each coordinate: one point in each of the 1024 cells of width 1/1024
        assert len(np.unique(np.floor(points[:, j] * 1024))) == 1024
    # the first two coordinates are a (0, 10, 2)-net: one point in each 1/32 x 1/32 box
    assert len(np.unique(np.floor(points[:, 0] * 32) * 32 + np.floor(points[:, 1] * 32))) == 1024
    assert np.array_equal(points, sobol_points(1024, 6, np.random.default_rng(5)))
    assert not np.array_equal(points, sobol_points(1024, 6, np.random.default_rng(6)))


# --- input distributions -------------------------------------------------------------------------------------

U = np.concatenate([np.linspace(1e-9, 1 - 1e-9, 20_001), [1e-300, 1e-20, 1e-12, 1 - 1e-16]])


@pytest.mark.parametrize(
    ("ours", "reference"),
    [
        (dist.Uniform(-2.0, 3.0), st.uniform(-2.0, 5.0)),
        (dist.Normal(1.5, 0.3), st.norm(1.5, 0.3)),
        (dist.TruncatedNormal(1.0, 2.0, 0.5, 4.0), st.truncnorm(-0.25, 1.5, loc=1.0, scale=2.0)),
        (dist.TruncatedNormal(0.0, 1.0, 6.0, 8.0), st.truncnorm(6.0, 8.0)),  # far in the upper tail
        (dist.LogNormal(0.3, 0.5), st.lognorm(0.5, scale=math.exp(0.3))),
        (dist.Triangular(1.0, 2.0, 5.0), st.triang(0.25, loc=1.0, scale=4.0)),
    ],
    ids=["uniform", "normal", "truncnormal", "truncnormal-tail", "lognormal", "triangular"],
)
def test_quantiles_are_scipys(ours, reference):
    expected = reference.ppf(U)
    finite = np.isfinite(expected)
    # relative to the value's size: AS241 is good to ~1e-16; the tail truncnormal loses digits subtracting probabilities
    np.testing.assert_allclose(ours.ppf(U)[finite], expected[finite], rtol=1e-10, atol=1e-12)


def test_mass_outside_an_interval_is_scipys():
    assert dist.Normal(0, 1).mass_outside(-3, 3) == pytest.approx(2 * st.norm.sf(3), rel=1e-12)
    assert dist.LogNormal(0, 1).mass_outside(0.5, 4) == pytest.approx(
        st.lognorm(1).cdf(0.5) + st.lognorm(1).sf(4), rel=1e-12
    )
    assert dist.Uniform(0, 2).mass_outside(0, 1) == pytest.approx(0.5, abs=1e-3)
    assert dist.Triangular(0, 1, 2).mass_outside(-1, 3) == 0.0


# --- Sobol' indices: SALib's estimators ------------------------------------------------------------------------


@pytest.mark.parametrize("second_order", [False, True])
def test_indices_and_their_bootstrap_equal_salibs_on_the_same_sample(second_order):
    from SALib.analyze import sobol as salib_sobol

    problem = {"num_vars": 3, "names": ["a", "b", "c"], "bounds": [list(ISHIGAMI_BOUNDS)] * 3}
    # given our sample of the Ishigami function
    X = sensitivity_design([dist.Uniform(*ISHIGAMI_BOUNDS)] * 3, 512, second_order, np.random.default_rng(3))
    Y = ishigami(X)
    # when SALib and we analyse the same outputs with the same bootstrap seed
    theirs = salib_sobol.analyze(problem, Y, calc_second_order=second_order, seed=11)
    ours = sobol_indices(Y, 3, second_order, bootstrap_resamples(512, 11))
    # then estimates and confidence half-widths agree to rounding (sums of 512 terms of order 1)
    tolerance = 1e-12
    np.testing.assert_allclose(ours.first, theirs["S1"], atol=tolerance)
    np.testing.assert_allclose(ours.total, theirs["ST"], atol=tolerance)
    np.testing.assert_allclose(Z_95 * ours.first_sd, theirs["S1_conf"], atol=tolerance)
    np.testing.assert_allclose(Z_95 * ours.total_sd, theirs["ST_conf"], atol=tolerance)
    if second_order:
        upper = np.triu(np.ones((3, 3), dtype=bool), 1)
        np.testing.assert_allclose(ours.second[upper], theirs["S2"][upper], atol=tolerance)
        np.testing.assert_allclose(Z_95 * ours.second_sd[upper], theirs["S2_conf"][upper], atol=tolerance)


def test_the_sample_is_salibs_scheme():
    """SALib's cross-sampling of a base sequence: A, AB_j (column j from B), [BA_j,] B, per base row."""
    from SALib.sample import sobol as salib_sample

    problem = {"num_vars": 2, "names": ["a", "b"], "bounds": [[0, 1], [0, 1]]}
    base = qmc.Sobol(4, scramble=True, seed=4).random(8)
    from handler.analyses.sensitivity import saltelli_sample

    reference = salib_sample.sample(problem, 8, calc_second_order=True, seed=4)  # scipy's scrambled Sobol', seed 4
    np.testing.assert_array_equal(saltelli_sample(base, second_order=True), reference)


def test_a_constant_output_has_zero_indices():
    result = analyse(np.full(6 * 64, 2.5), None, 4, False, seed=1)
    assert all(e.estimate == 0.0 for e in (*result.first_order, *result.total))


def test_a_variance_and_a_standard_deviation_are_never_below_zero_at_either_end():
    # given outputs that barely vary: constant but for one point (the bootstrap's spread rivals the variance)
    d, n = 4, 256
    outputs = np.full(n * (d + 2), 0.25)
    outputs[7] += 1e-15
    # when their variance and standard deviation are estimated
    variance = analyse(outputs, None, d, False, seed=1).variance
    spread = propagate(outputs[:n], None, [0.5], [], 10, np.random.default_rng(1)).std
    # then each interval is held at zero from below
    assert 0.0 <= variance.ci_low <= variance.estimate <= variance.ci_high
    assert 0.0 <= spread.ci_low <= spread.estimate <= spread.ci_high


def test_a_truncated_normal_without_representable_probability_has_no_mass():
    # given intervals 37.0, 37.4 (representable) and 37.6, 38.4 standard deviations from the mean
    def interval(sd: float) -> dist.TruncatedNormal:
        return dist.TruncatedNormal(0.5, 0.01, 0.5 + sd * 0.01, 0.5 + (sd + 1) * 0.01)

    # then the first two have mass and finite samples; the others have none, in both tails
    for sd in (37.0, 37.4):
        assert interval(sd).mass > 0
        assert np.isfinite(interval(sd).ppf((np.arange(1024) + 0.5) / 1024)).all()
    for sd in (37.6, 38.4):
        assert interval(sd).mass == 0.0
        assert dist.TruncatedNormal(0.5, 0.01, 0.5 - (sd + 1) * 0.01, 0.5 - sd * 0.01).mass == 0.0


# --- Sobol' indices of a fitted GP: the Ishigami function ---------------------------------------------------------


def _indices_of_fit(posterior: GPPosterior, n: int, draws: int, seed: int):
    rng = np.random.default_rng(seed)
    X = sensitivity_design([dist.Uniform(*ISHIGAMI_BOUNDS)] * 3, n, False, rng)
    mean = posterior.predict(X, latent=True).mean[:, 0]
    sampled = PosteriorFunctionDraws(posterior, draws, rng).evaluate(X)[:, :, 0] if draws else None
    return analyse(mean, sampled, 3, False, seed)


def test_a_few_hundred_points_give_the_analytic_indices_within_0_02(good_fit):
    posterior, _ = good_fit
    result = _indices_of_fit(posterior, 8192, 0, seed=1)
    np.testing.assert_allclose([e.estimate for e in result.first_order], ISHIGAMI_FIRST, atol=0.02)
    np.testing.assert_allclose([e.estimate for e in result.total], ISHIGAMI_TOTAL, atol=0.02)
    assert result.variance.estimate == pytest.approx(ISHIGAMI_VARIANCE, rel=0.05)


def test_intervals_shrink_as_the_sample_grows(good_fit):
    posterior, _ = good_fit

    def mean_width(n: int) -> float:
        result = _indices_of_fit(posterior, n, 0, seed=2)
        return float(np.mean([e.ci_high - e.ci_low for e in (*result.first_order, *result.total)]))

    widths = [mean_width(n) for n in (256, 1024, 4096)]
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]  # ~1/sqrt(n): 2x per 4x points, with slack


def test_posterior_draws_widen_a_poor_fits_intervals_and_cover_what_it_does_not_know(poor_fit):
    posterior, _ = poor_fit
    without = _indices_of_fit(posterior, 1024, 0, seed=3)
    with_draws = _indices_of_fit(posterior, 1024, 30, seed=3)
    width = lambda r: np.array([e.ci_high - e.ci_low for e in (*r.first_order, *r.total)])  # noqa: E731
    assert (width(with_draws) > width(without)).all()
    assert width(with_draws).mean() > 2 * width(without).mean()  # 30 points: the GP's doubt dominates the sampling's


# --- posterior function draws -----------------------------------------------------------------------------


@pytest.mark.parametrize("fit", ["poor_fit", "good_fit"])
def test_draws_have_the_exact_posterior_mean_and_about_its_covariance(fit, request):
    posterior, _ = request.getfixturevalue(fit)
    X = np.random.default_rng(4).uniform(-math.pi, math.pi, (12, 3))
    draws = PosteriorFunctionDraws(posterior, 1500, np.random.default_rng(5)).evaluate(X)[:, :, 0]
    mean = posterior.predict(X, latent=True).mean[:, 0]
    covariance = posterior.covariance(X, latent=True)[0]
    sd = np.sqrt(np.diag(covariance))
    # the mean: within 4 standard errors of the draws' average
    assert (np.abs(draws.mean(axis=1) - mean) < 4 * sd / math.sqrt(1500)).all()
    ratio = draws.var(axis=1, ddof=1) / np.diag(covariance)
    if fit == "poor_fit":  # a posterior far from sure of itself: variances within 15% (sampling error alone: ~7%)
        assert np.median(ratio) == pytest.approx(1.0, abs=0.1)
        assert ((ratio > 0.8) & (ratio < 1.25)).all()
        correlation_error = np.abs(np.corrcoef(draws) - covariance / np.outer(sd, sd))
        assert correlation_error.max() < 0.15
    else:  # far surer than the prior: the features' error shows; the draws stay on the right order
        assert 0.1 < np.median(ratio) < 3


def test_sparse_posteriors_are_drawn_too():
    import GPy

    X = qmc.scale(qmc.LatinHypercube(d=3, seed=6).random(80), [-math.pi] * 3, [math.pi] * 3)
    kernel = GPy.kern.RBF(3, variance=10.0, lengthscale=[1.0, 1.0, 2.0], ARD=True)
    Z = qmc.scale(qmc.LatinHypercube(d=3, seed=7).random(15), [-math.pi] * 3, [math.pi] * 3)
    gp = GPy.models.SparseGPRegression(X, ishigami(X)[:, None], kernel, Z=Z)  # hyperparameters as given: no fit
    gp.likelihood.variance = 0.05
    kernel_name, _inference, arrays = posterior_arrays(gp)
    posterior = GPPosterior.from_arrays(kernel_name, arrays)
    assert posterior.inference == "sparse"
    Xt = np.random.default_rng(7).uniform(-math.pi, math.pi, (10, 3))
    draws = PosteriorFunctionDraws(posterior, 1500, np.random.default_rng(8)).evaluate(Xt)[:, :, 0]
    mean, variance = posterior.predict(Xt, latent=True)
    sd = np.sqrt(variance[:, 0])
    assert (np.abs(draws.mean(axis=1) - mean[:, 0]) < 4 * sd / math.sqrt(1500)).all()
    assert np.median(draws.var(axis=1, ddof=1) / variance[:, 0]) == pytest.approx(1.0, abs=0.15)


# --- propagation ------------------------------------------------------------------------------------------------


def test_propagation_agrees_with_monte_carlo_on_the_true_function(good_fit):
    posterior, _ = good_fit
    rng = np.random.default_rng(9)
    X = dist.Uniform(*ISHIGAMI_BOUNDS).ppf(sobol_points(4096, 3, rng))
    mean = posterior.predict(X, latent=True).mean[:, 0]
    draws = PosteriorFunctionDraws(posterior, 30, rng).evaluate(X)[:, :, 0]
    result = propagate(mean, draws, [0.1, 0.5, 0.9], [5.0, 10.0], 20, rng)
    # plain Monte Carlo of the true function, with many more points
    truth = ishigami(np.random.default_rng(10).uniform(-math.pi, math.pi, (400_000, 3)))
    for estimate, expected in (
        (result.mean, truth.mean()),
        (result.std, truth.std(ddof=1)),
        *((e, np.quantile(truth, p)) for p, e in result.quantiles),
        *((e, np.mean(truth > t)) for t, e in result.exceedance),
    ):
        # within the interval, widened by the true function's own Monte Carlo error and the fit's small bias
        slack = 0.5 * (estimate.ci_high - estimate.ci_low)
        assert estimate.ci_low - slack <= expected <= estimate.ci_high + slack, (estimate, expected)
    for _, estimate in result.exceedance:
        assert 0.0 <= estimate.ci_low <= estimate.estimate <= estimate.ci_high <= 1.0
    assert result.counts.sum() == pytest.approx(4096)
    assert len(result.edges) == 21


def test_exceedance_from_draws_matches_the_predictive_probability(poor_fit):
    """E over draws of P(f > t) is the mean over x of P(f(x) > t) under the marginal posterior."""
    posterior, _ = poor_fit
    rng = np.random.default_rng(11)
    X = dist.Uniform(*ISHIGAMI_BOUNDS).ppf(sobol_points(2048, 3, rng))
    mean, variance = posterior.predict(X, latent=True)
    draws = PosteriorFunctionDraws(posterior, 200, rng).evaluate(X)[:, :, 0]
    result = propagate(mean[:, 0], draws, [], [4.0], 10, rng)
    predictive = float(np.mean(st.norm.sf(4.0, mean[:, 0], np.sqrt(variance[:, 0]))))
    assert result.exceedance[0][1].estimate == pytest.approx(predictive, abs=0.02)


# --- suggestions -----------------------------------------------------------------------------------------------

BRANIN_LOW, BRANIN_HIGH = np.array([-5.0, 0.0]), np.array([10.0, 15.0])


def _problem(acquisition: str, best: float | None = None, goal: str = "minimize") -> SuggestionProblem:
    return SuggestionProblem(acquisition, 0, goal, BRANIN_LOW, BRANIN_HIGH, best, 2.0)


def _random_points(n: int = 10_000) -> np.ndarray:
    return BRANIN_LOW + np.random.default_rng(12).random((n, 2)) * (BRANIN_HIGH - BRANIN_LOW)


def test_acquisition_values_equal_emukits_on_the_same_gpy_model(branin_fit):
    from emukit.bayesian_optimization.acquisitions import ExpectedImprovement
    from emukit.experimental_design.acquisitions import ModelVariance
    from emukit.model_wrappers import GPyModelWrapper

    posterior, gp, _ = branin_fit
    emukit_model = GPyModelWrapper(gp)
    for acquisition, reference in (("variance", ModelVariance), ("expected_improvement", ExpectedImprovement)):
        best = float(gp.Y.min()) if acquisition == "expected_improvement" else None
        picks = suggest(posterior, _problem(acquisition, best), 1, np.empty((0, 2)), np.random.default_rng(13))
        expected = reference(emukit_model).evaluate(picks[0].point[None, :])[0, 0]
        # rounding of the predictive variance (cond(K) eps relative) through a smooth function
        assert picks[0].value == pytest.approx(expected, rel=1e-6)


def test_a_variance_pick_beats_the_99th_percentile_of_random_points(branin_fit):
    posterior, gp, _ = branin_fit
    picks = suggest(posterior, _problem("variance"), 1, np.empty((0, 2)), np.random.default_rng(14))
    random_variance = gp.predict(_random_points())[1][:, 0]
    assert picks[0].value > np.percentile(random_variance, 99)


def test_an_expected_improvement_pick_is_at_least_the_best_of_10_000_random_points(branin_fit):
    from emukit.bayesian_optimization.acquisitions import ExpectedImprovement
    from emukit.model_wrappers import GPyModelWrapper

    posterior, gp, _ = branin_fit
    best = float(gp.Y.min())
    picks = suggest(posterior, _problem("expected_improvement", best), 1, np.empty((0, 2)), np.random.default_rng(15))
    random_ei = ExpectedImprovement(GPyModelWrapper(gp)).evaluate(_random_points())[:, 0]
    assert picks[0].value >= random_ei.max()


@pytest.mark.parametrize(
    "acquisition", ["variance", "integrated_variance", "expected_improvement", "upper_confidence_bound"]
)
def test_batches_are_distinct_inside_the_bounds_and_avoid_pending_points(branin_fit, acquisition):
    posterior, _gp, _ = branin_fit
    low, high = np.array([0.0, 5.0]), np.array([5.0, 10.0])
    problem = SuggestionProblem(acquisition, 0, "minimize", low, high, None, 2.0)
    pending = np.array([[2.5, 7.5]])
    picks = suggest(posterior, problem, 8, pending, np.random.default_rng(16))
    points = np.array([p.point for p in picks])
    assert len(np.unique(points, axis=0)) == 8
    assert ((points >= low) & (points <= high)).all()
    spacing = np.min(np.linalg.norm((points - pending) / (high - low), axis=1))
    assert spacing > 1e-3


def test_conditioning_on_a_variance_batch_lowers_the_maximum_variance_over_a_grid(branin_fit):
    posterior, _, _ = branin_fit
    grid = np.stack(np.meshgrid(np.linspace(-5, 10, 40), np.linspace(0, 15, 40)), axis=-1).reshape(-1, 2)
    before = posterior.predict(grid, latent=True).variance.max()
    picks = suggest(posterior, _problem("variance"), 6, np.empty((0, 2)), np.random.default_rng(17))
    batch = np.array([p.point for p in picks])
    # the posterior after noisy observations at the batch, from the joint covariance (no y needed)
    joint = posterior.covariance(np.vstack([grid, batch]), latent=True)[0]
    g = len(grid)
    observed = joint[g:, g:] + posterior.noise_variance * posterior.y_std[0] ** 2 * np.eye(len(batch))
    after = np.diag(joint[:g, :g]) - np.einsum("ij,ji->i", joint[:g, g:], np.linalg.solve(observed, joint[g:, :g]))
    assert after.max() < 0.5 * before
    # and each pick's value is the variance there given the picks before it
    first = posterior.predict(batch[:1], latent=False).variance[0, 0]
    assert picks[0].value == pytest.approx(first, rel=1e-9)
