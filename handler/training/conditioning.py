"""A version conditioned on more data: the parent's hyperparameters and normaliser, the posterior of all the rows.

Fitting hyperparameters costs 60-280x a conditioning, so new simulations are absorbed by conditioning in the
request (POST /models/{name}/observations) and a full refit is left to a training job. The result is the posterior
GPy would hold for a model with the same kernel, noise and normaliser after `set_XY` on all the data: exact
inference a new Cholesky factor of K + (noise + GPy's 1e-8) I; sparse inference (GPy's VarDTC, as
SparseGPRegression fits) the DTC posterior on the same inducing inputs. numpy only: this runs in the admin function,
whose package has no GPy or scipy. The kernel is the server's own (handler.gp.posterior), not a second copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from handler.gp import posterior_file
from handler.gp.blas import lower_solve, lower_transpose_solve
from handler.gp.posterior import GPPosterior

# What GPy adds to the diagonal: ExactGaussianInference factors K + (noise + 1e-8) I; VarDTC adds its const_jitter
# (1e-8) to Kuu and floors the noise at it. (handler.training.validation.GPY_EXACT_JITTER is the same number, in a
# module that reads GPy models.)
GPY_EXACT_JITTER = 1e-8
GPY_VARDTC_JITTER = 1e-8
# GPy's jitchol: when a factorisation fails, add diag mean x 1e-6, then x10, up to 5 times.
JITTER_TRIES = 5
HYPERPARAMETERS = ("lengthscale", "kernel_variance", "noise_variance", "y_mean", "y_std")


class ConditioningError(ValueError):
    """The data cannot be conditioned on with these hyperparameters (the covariance is not positive definite)."""


def kernel_on(kernel: str, arrays: Mapping[str, np.ndarray], inputs: np.ndarray) -> GPPosterior:
    """The server's kernel with these hyperparameters and `inputs` as U: its `cross_covariance(X)` is k(X, inputs).
    Only the kernel is used: the weights and factor are empty placeholders."""
    placeholders = {"woodbury_vector": np.empty((len(inputs), 0)), "woodbury_inverse": np.empty((0, 0))}
    hyper = {name: arrays[name] for name in HYPERPARAMETERS}
    return GPPosterior.from_arrays(kernel, {**hyper, "inputs": np.asarray(inputs, dtype=float), **placeholders})


def cholesky(A: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor of A (overwritten), with GPy's jitchol's jitter where A is not numerically PD."""
    try:
        return np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        pass
    jitter = float(np.mean(np.diagonal(A))) * 1e-6
    for _ in range(JITTER_TRIES):
        try:
            return np.linalg.cholesky(A + jitter * np.eye(len(A)))
        except np.linalg.LinAlgError:
            jitter *= 10
    raise ConditioningError("the covariance of the data is not positive definite, even with jitter")


def standardised(arrays: Mapping[str, np.ndarray], Y: np.ndarray) -> np.ndarray:
    """The outputs on the model's scale: the parent's normaliser, kept (not refitted to the new data)."""
    return (np.asarray(Y, dtype=float) - np.asarray(arrays["y_mean"])) / np.asarray(arrays["y_std"])


def condition(kernel: str, inference: str, arrays: Mapping[str, np.ndarray], X: np.ndarray, Y: np.ndarray) -> dict:
    """The posterior file's arrays after conditioning on all of (X, Y) with the parent's hyperparameters.

    `arrays`: the parent's (posterior_file.read). Training members are carried over as the parent published them,
    now holding all the rows (dropped if there would be more than a file may publish).
    """
    X, Y = np.asarray(X, dtype=float), np.asarray(Y, dtype=float)
    Ys = standardised(arrays, Y)
    hyper = {name: np.asarray(arrays[name], dtype=float) for name in HYPERPARAMETERS}
    noise = float(hyper["noise_variance"])
    if inference == "exact":
        K = kernel_on(kernel, arrays, X).cross_covariance(X)
        K[np.diag_indices_from(K)] += noise + GPY_EXACT_JITTER
        L = np.ascontiguousarray(cholesky(K))
        del K
        weights = lower_transpose_solve(L, lower_solve(L, np.array(Ys, order="F")))
        factor = {"cholesky": L}  # numpy's factor: its upper triangle is zero
        inputs = X
    elif inference == "sparse":
        inputs = np.asarray(arrays["inputs"], dtype=float)
        factor_kernel = kernel_on(kernel, arrays, inputs)
        Kuu = factor_kernel.cross_covariance(inputs)
        Kuu[np.diag_indices_from(Kuu)] += GPY_VARDTC_JITTER
        Lm = cholesky(Kuu)
        beta = 1.0 / max(noise, GPY_VARDTC_JITTER)
        # V = Lm^-1 Kuf, A = I + beta V V^T (m x m); in slices of X so V never holds all n columns at once
        m = len(inputs)
        A, VY = np.eye(m), np.zeros((m, Ys.shape[1]))
        rows = max(1, 2**24 // (8 * m))
        for start in range(0, len(X), rows):
            V = lower_solve(Lm, np.asfortranarray(factor_kernel.cross_covariance(X[start : start + rows]).T))
            A += beta * (V @ V.T)
            VY += V @ Ys[start : start + rows]
        LB = cholesky(A)
        # woodbury_vector = beta Lm^-T A^-1 V Y; woodbury_inv = Lm^-T (I - A^-1) Lm^-1 (GPy's VarDTC)
        inner = lower_transpose_solve(LB, lower_solve(LB, np.asfortranarray(beta * VY)))
        weights = lower_transpose_solve(Lm, np.asfortranarray(inner))
        LB_inverse = lower_solve(LB, np.asfortranarray(np.eye(m)))
        middle = np.eye(m) - LB_inverse.T @ LB_inverse
        Lm_inverse = lower_solve(Lm, np.asfortranarray(np.eye(m)))
        woodbury_inverse = Lm_inverse.T @ middle @ Lm_inverse
        factor = {"woodbury_inverse": 0.5 * (woodbury_inverse + woodbury_inverse.T)}
    else:
        raise ValueError(f"inference must be exact or sparse, got {inference!r}")
    conditioned = {
        **hyper,
        "inputs": inputs,
        "woodbury_vector": np.ascontiguousarray(weights),
        **factor,
    }
    published = _published_training(arrays, X, Y)
    return {**conditioned, **published}


def _published_training(arrays: Mapping[str, np.ndarray], X: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    if "training_inputs" not in arrays:
        return {}
    with_outputs = "training_outputs" in arrays
    if len(X) * (X.shape[1] + Y.shape[1] * with_outputs) > posterior_file.MAX_PUBLISHED_VALUES:
        return {}
    return {"training_inputs": X, **({"training_outputs": Y} if with_outputs else {})}


def conditioned_manifest(
    parent: Mapping[str, Any], description: dict[str, Any], artifact: bytes, n_train: int, parent_version: int
) -> dict[str, Any]:
    """The parent's manifest for the conditioned file: features, outputs, bounds, limits, units and kernel kept;
    its file's sha256, row count and posterior description new. Its hold-out metrics were the parent's (on points
    the new version may now have seen), so they are left out; the version's record holds the surprise instead."""
    manifest = {
        **parent,
        "sha256": hashlib.sha256(artifact).hexdigest(),
        "n_train": n_train,
        "posterior": description,
        "holdout": None,
        "training": {**(parent.get("training") or {}), "conditioned": {"parent_version": parent_version}},
        # its own words, not its parent's ("trained by job ..." would name a job that did not make it)
        "description": f"conditioned on {n_train} rows from version {parent_version} (its hyperparameters)",
    }
    manifest.pop("leave_one_out", None)
    for key in ("name", "packaged_as"):  # the registry adds them again when it stores the manifest
        manifest.pop(key, None)
    manifest["name"] = parent.get("packaged_as", {}).get("name", parent.get("name"))
    if "training_inputs" not in description["arrays"]:
        manifest.pop("published_training_data", None)
    return manifest


def conditioned_file(
    kernel: str,
    inference: str,
    arrays: Mapping[str, np.ndarray],
    X: np.ndarray,
    Y: np.ndarray,
    parent_manifest: Mapping[str, Any],
    parent_version: int,
) -> tuple[bytes, dict[str, Any]]:
    """The conditioned posterior file's bytes and its manifest, ready for publish_artifact."""
    conditioned = condition(kernel, inference, arrays, X, Y)
    artifact, description = posterior_file.encode(conditioned, inference)
    return artifact, conditioned_manifest(parent_manifest, description, artifact, len(X), parent_version)
