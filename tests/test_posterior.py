"""The numpy/BLAS posterior against GPy, kernel by kernel: exact and sparse, ARD or not, normalised or not,
one output or several."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from handler.gp import posterior as posterior_module
from handler.gp.gpy_model import GPRegressionModel, SparseGPRegressionModel, wrap_gpy_model
from handler.gp.posterior import KERNELS
from tests.conftest import plant, plant_design
from tests.test_model import assert_matches_gpy

D = 3


def make_gp(kernel: str, *, ard: bool, normalize: bool, outputs: int, sparse: bool, n: int = 80, seed: int = 0):
    """A GPy model with fixed, realistic hyperparameters: short lengthscales and little noise, as simulators give."""
    import GPy

    rng = np.random.default_rng(seed)
    X = rng.uniform(-2.0, 3.0, size=(n, D))
    f = np.column_stack([np.sin(X @ rng.normal(size=D)) * 40 + 100 * j for j in range(outputs)])
    Y = f + rng.normal(scale=0.01, size=f.shape)
    lengthscale = [0.9, 1.7, 3.1] if ard else 1.3
    kern = getattr(GPy.kern, kernel)(D, variance=1.7, lengthscale=lengthscale, ARD=ard)
    if sparse:
        gp = GPy.models.SparseGPRegression(X, Y, kern, Z=X[:: n // 20].copy(), normalizer=normalize or None)
    else:
        gp = GPy.models.GPRegression(X, Y, kern, normalizer=normalize or None)
    gp.likelihood.variance = 1e-4
    return gp


CASES = list(itertools.product(KERNELS, [True, False], [True, False], [1, 2], [False, True]))


@pytest.mark.parametrize(
    ("kernel", "ard", "normalize", "outputs", "sparse"),
    CASES,
    ids=[
        f"{k}-{'ard' if a else 'iso'}-{'norm' if n else 'raw'}-{o}out-{'sparse' if s else 'exact'}"
        for k, a, n, o, s in CASES
    ],
)
def test_the_fast_path_equals_gpy_predict_and_predict_noiseless(kernel, ard, normalize, outputs, sparse):
    # given a model of that kind, and points inside and a little outside its data
    gp = make_gp(kernel, ard=ard, normalize=normalize, outputs=outputs, sparse=sparse)
    model = wrap_gpy_model(gp)
    assert type(model) is (SparseGPRegressionModel if sparse else GPRegressionModel)
    assert model.posterior is not None, "covered models take the fast path"
    X = np.random.default_rng(1).uniform(-2.5, 3.5, size=(700, D))  # more than TRMM_MIN_ROWS: both products run
    for latent in (False, True):
        # when
        mean, variance = model.predict(X, latent=latent)
        # then
        assert mean.shape == variance.shape == (700, outputs)
        assert_matches_gpy(gp, X, mean, variance, latent=latent)


@pytest.mark.parametrize("kernel", KERNELS)
def test_chunks_and_few_rows_give_the_same_answers(kernel: str, monkeypatch: pytest.MonkeyPatch):
    # given a sparse two-output model, predicted in one go
    model = wrap_gpy_model(make_gp(kernel, ard=True, normalize=True, outputs=2, sparse=True))
    X = np.random.default_rng(2).uniform(-2, 3, size=(101, D))
    whole = model.predict(X)
    # when chunks hold 9 rows
    assert model.posterior is not None
    monkeypatch.setattr(posterior_module, "CHUNK_BYTES", 9 * 8 * 3 * model.posterior.n_inputs)
    assert model.posterior.chunk_rows < len(X) // 5, "several chunks, a ragged last one"
    chunked = model.predict(X)
    # then
    np.testing.assert_allclose(chunked.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(chunked.variance, whole.variance, rtol=1e-9)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda GPy: GPy.kern.RBF(D) + GPy.kern.Linear(D), "kernel Add is not one of"),
        (lambda GPy: GPy.kern.RBF(D) * GPy.kern.Matern32(D), "kernel Prod is not one of"),
        (lambda GPy: GPy.kern.RatQuad(D), "kernel RatQuad is not one of"),
        (lambda GPy: GPy.kern.RBF(2, active_dims=[0, 2]), "does not act on every input"),
    ],
    ids=["sum", "product", "rational-quadratic", "active-dims"],
)
def test_other_models_predict_through_gpy_with_the_reason_logged(build, reason: str, caplog):
    import GPy

    # given
    X = np.random.default_rng(3).uniform(size=(30, D))
    gp = GPy.models.GPRegression(X, np.sin(X.sum(axis=1, keepdims=True)), build(GPy))
    # when
    with caplog.at_level("WARNING"):
        model = wrap_gpy_model(gp)
    # then
    assert model.posterior is None
    assert reason in caplog.text
    X_new = np.random.default_rng(4).uniform(size=(20, D))
    assert_matches_gpy(gp, X_new, *model.predict(X_new))


def test_a_gp_with_another_likelihood_loads_and_predicts_through_gpy(caplog):
    import GPy

    # given a GP with a Student-t likelihood (Laplace inference), as robust-regression users fit
    X = np.random.default_rng(5).uniform(size=(25, D))
    likelihood = GPy.likelihoods.StudentT(deg_free=4.0, sigma2=0.01)
    laplace = GPy.inference.latent_function_inference.Laplace()
    gp = GPy.core.GP(X, np.sin(3 * X[:, :1]), GPy.kern.RBF(D), likelihood, inference_method=laplace)
    # when
    with caplog.at_level("WARNING"):
        model = wrap_gpy_model(gp)
    # then
    assert model.model_type == "GPy.core.GP"
    assert model.posterior is None
    assert "likelihood StudentT is not Gaussian" in caplog.text
    X_new = np.random.default_rng(6).uniform(size=(12, D))
    for latent in (False, True):
        mean, variance = model.predict(X_new, latent=latent)
        ref_mean, ref_variance = (gp.predict_noiseless if latent else gp.predict)(X_new)
        np.testing.assert_array_equal(mean, ref_mean)
        np.testing.assert_array_equal(variance, np.broadcast_to(ref_variance, ref_mean.shape))


def test_something_that_is_not_a_gpy_gp_is_not_a_supported_type():
    with pytest.raises(TypeError, match=r"builtins.list is not a supported model \(GPy.models.GPRegression"):
        wrap_gpy_model([1, 2, 3])


def test_an_ill_conditioned_sparse_model_agrees_with_gpy_to_gpys_own_rounding():
    # given a sparse model whose optimised inducing points make their covariance nearly singular
    import GPy

    from scripts.package_model import mean_tolerance, variance_tolerance

    X = plant_design(400, seed=5)
    np.random.seed(8)  # GPy picks the initial inducing points at random; this draw ends with cond(Kmm) ~ 5e10
    gp = GPy.models.SparseGPRegression(X, plant(X)[:, 1:], GPy.kern.RBF(D, ARD=True), num_inducing=30)
    gp.optimize(max_iters=50)
    model = wrap_gpy_model(gp)
    X_new = plant_design(1000, seed=9)
    assert np.linalg.cond(gp.kern.K(gp.Z)) > 1e6
    # when
    fast_mean, fast = model.predict(X_new, latent=True)
    reference_mean, reference = gp.predict_noiseless(X_new)
    # then the fast path is within the rounding bounds of k w and of the quadratic form k A k^T
    assert np.all(np.abs(fast_mean - reference_mean) <= mean_tolerance(model, X_new))
    tolerance = variance_tolerance(model, X_new)
    assert np.all(np.abs(fast - reference) <= tolerance)
    # and that bound is no wider than needed: GPy's own formula, summed in another order, moves as much
    Kx = gp.kern.K(gp.Z, X_new)
    reordered = gp.kern.Kdiag(X_new) - np.einsum("jn,jk,kn->n", Kx, gp.posterior.woodbury_inv, Kx)
    reordered = gp.normalizer.inverse_variance(reordered[:, None]) if gp.normalizer is not None else reordered[:, None]
    assert np.max(np.abs(reordered - reference) / tolerance) > 1e-3


@pytest.mark.parametrize("lengthscale", [1.0, 0.3])
def test_a_tiny_variance_is_the_cholesky_solves_to_the_bound_its_conditioning_gives(lengthscale: float):
    # given a smooth 1-D model whose K + s2 I is conditioned ~1e10 (100 points; GPy's own 1e-8 on the diagonal,
    # larger than the noise, is what bounds it), so that latent variances are ~1e-9 of the prior's
    import GPy
    from scipy.linalg import solve_triangular

    from handler.gp.from_gpy import posterior_from_gpy

    X = np.linspace(0, 1, 100)[:, None]
    gp = GPy.models.GPRegression(X, np.sin(3 * X), GPy.kern.RBF(1, lengthscale=lengthscale))
    gp.likelihood.variance = 1e-10
    posterior = posterior_from_gpy(gp)
    X_new = np.random.default_rng(7).uniform(size=(300, 1))
    # when the latent variance is computed
    variance = posterior.predict(X_new, latent=True).variance[:, 0]
    # then it is GPy's, which solves L t = k (LAPACK dtrtrs), to what the two solves' backward errors allow: each
    # is the exact k(x, x) - |L^-1 k|^2 of an L + E with |E| <= m eps |L| / 2, which moves |t|^2 by at most
    # m eps |a| |L| |t| (a = L^-T t); the sums add 2 m eps |t|^2, two evaluations of k differ by dk
    # (`cross_covariance_rounding`), which moves |t|^2 by 2 |a| |dk|, and s2 - |t|^2 rounds by 2 eps s2.
    reference = gp.predict_noiseless(X_new)[1][:, 0]
    eps, m = float(np.finfo(float).eps), posterior.n_inputs
    L = np.asarray(gp.posterior.woodbury_chol)
    t = solve_triangular(L, posterior.cross_covariance(X_new).T, lower=True)
    a = np.abs(solve_triangular(L, t, lower=True, trans="T"))
    t = np.abs(t)
    dk = posterior.cross_covariance_rounding(X_new).T
    bound = m * eps * (np.vecdot(np.abs(L).T @ a, t, axis=0) + 2 * np.vecdot(t, t, axis=0))
    bound += 2 * np.vecdot(a, dk, axis=0) + 2 * eps * posterior.kernel_variance
    assert np.all(np.abs(variance - reference) <= 2 * bound)
    # on variances that small, where a multiplication by an explicit L^-1 is up to ~10x further off than this
    assert np.median(reference) < 1e-8 * posterior.kernel_variance
