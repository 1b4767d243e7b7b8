"""A fitted GPy model's posterior as the arrays of a posterior file; used where GPy is (packaging, the GPy route).

The function serving a posterior file never imports this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from handler.gp.posterior import KERNELS, GPPosterior


def posterior_arrays(gp: Any) -> tuple[str, str, dict[str, np.ndarray]]:
    """(kernel, inference, arrays) of a fitted GPRegression or SparseGPRegression; ValueError says why not."""
    import GPy
    from GPy.inference.latent_function_inference import ExactGaussianInference, VarDTC
    from GPy.util.normalizer import Standardize

    kern = gp.kern
    kernel = type(kern).__name__
    if kernel not in KERNELS or type(kern) is not getattr(GPy.kern, kernel):
        raise ValueError(f"kernel {kernel} is not one of {', '.join(KERNELS)}")
    if list(kern.active_dims) != list(range(gp.input_dim)):
        raise ValueError("the kernel does not act on every input")
    if type(gp.likelihood) is not GPy.likelihoods.Gaussian:
        raise ValueError(f"likelihood {type(gp.likelihood).__name__} is not Gaussian")
    if gp.mean_function is not None:
        raise ValueError("the model has a mean function")
    normalizer = gp.normalizer
    if normalizer is not None and type(normalizer) is not Standardize:
        raise ValueError(f"normalizer {type(normalizer).__name__} is not Standardize")
    posterior = gp.posterior
    if isinstance(gp.inference_method, ExactGaussianInference):
        inference = "exact"
        inputs = np.asarray(gp.X, dtype=float)
        # GPy's own factor of K + (noise + 1e-8) I (the 1e-8, and any jitter its jitchol needed, are GPy's: kept, so
        # the file's posterior is the very one GPy predicts with), its upper triangle zeroed.
        factor = {"cholesky": np.tril(np.asarray(posterior.woodbury_chol, dtype=float))}
    elif isinstance(gp.inference_method, VarDTC) and isinstance(gp, GPy.core.SparseGP):
        if gp.has_uncertain_inputs():
            raise ValueError("the model has uncertain inputs")
        inference = "sparse"
        inputs = np.asarray(gp.Z, dtype=float)
        woodbury_inverse = np.asarray(posterior.woodbury_inv, dtype=float)
        if woodbury_inverse.ndim != 2:
            raise ValueError("the model has missing data (one woodbury_inv per output)")
        factor = {"woodbury_inverse": woodbury_inverse}
    else:
        raise ValueError(f"inference {type(gp.inference_method).__name__} is neither exact nor VarDTC")
    woodbury_vector = np.asarray(posterior.woodbury_vector, dtype=float)
    n_outputs = woodbury_vector.shape[1]
    arrays = {
        "inputs": inputs,
        "lengthscale": np.broadcast_to(np.asarray(kern.lengthscale.values, dtype=float), (gp.input_dim,)).copy(),
        "kernel_variance": np.asarray(float(kern.variance.values[0])),
        "noise_variance": np.asarray(float(gp.likelihood.variance.values[0])),
        "woodbury_vector": woodbury_vector,
        **factor,
        "y_mean": _per_output(normalizer.mean if normalizer is not None else 0.0, n_outputs),
        "y_std": _per_output(normalizer.std if normalizer is not None else 1.0, n_outputs),
    }
    return kernel, inference, arrays


def posterior_from_gpy(gp: Any) -> GPPosterior:
    """The numpy posterior of a GPy model; ValueError says why the model is not covered."""
    kernel, _, arrays = posterior_arrays(gp)
    return GPPosterior.from_arrays(kernel, arrays)


def _per_output(value: Any, n_outputs: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=float).ravel(), (n_outputs,)).copy()


def describe_kernel(gp: Any) -> dict[str, Any]:
    """Kernel, hyperparameters and fit, for the manifest."""
    kern = gp.kern
    description: dict[str, Any] = {"name": type(kern).__name__}
    if hasattr(kern, "lengthscale") and hasattr(kern, "variance"):
        description |= {
            "ARD": bool(getattr(kern, "ARD", False)),
            "variance": float(kern.variance.values[0]),
            "lengthscale": [float(v) for v in kern.lengthscale.values],
        }
    else:
        parameters = zip(kern.parameter_names(), kern.flattened_parameters, strict=True)
        description["parameters"] = {name: np.asarray(p).tolist() for name, p in parameters}
    if hasattr(gp.likelihood, "variance"):
        description["noise_variance"] = float(gp.likelihood.variance.values[0])
    description["normalizer"] = type(gp.normalizer).__name__ if gp.normalizer is not None else None
    if hasattr(gp, "Z"):
        description["inducing_points"] = len(gp.Z)
    description["log_likelihood"] = float(np.asarray(gp.log_likelihood()).sum())  # an array for sparse models
    return description
