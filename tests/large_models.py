"""Posterior files of any size without a GPy fit: the exact posterior of a smooth function at m random points.

For the budget's tests and benchmarks (benchmarks/analyses.py, benchmarks/refusal_cost.py): models of m = 1,000 to
8,000 training (or inducing) points, several outputs, as the service loads them (a posterior file and its manifest).
The posterior is genuine (K + s2 I factorised), so its variances are those of a GP fitted to those points.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from handler.gp import posterior_file
from handler.gp.artifact import manifest_path_for, sha256_of
from handler.gp.posterior import GPPosterior

LENGTHSCALE = 0.3
NOISE_VARIANCE = 1e-4


def synthetic_arrays(m: int, d: int, p: int, seed: int = 0, noise_variance: float = NOISE_VARIANCE) -> dict:
    """An exact posterior's arrays: RBF kernel of unit variance, lengthscale 0.3, on [0, 1]^d."""
    from scipy.linalg import cho_factor, cho_solve

    rng = np.random.default_rng(seed)
    U = rng.random((m, d))
    lengthscale = np.full(d, LENGTHSCALE)
    scaled = U / lengthscale
    squared = np.vecdot(scaled, scaled)[:, None] + np.vecdot(scaled, scaled)[None, :] - 2 * scaled @ scaled.T
    K = np.exp(-0.5 * np.maximum(squared, 0.0))
    del squared
    K[np.diag_indices(m)] += max(noise_variance, 1e-8 * m)  # noise (or, at 0, a jitter for the factor only)
    Y = np.column_stack([np.sin(3 * U.sum(axis=1) + j) + 0.1 * j * U[:, 0] for j in range(p)])
    y_mean, y_std = Y.mean(axis=0), Y.std(axis=0)
    factor = cho_factor(K, lower=True, overwrite_a=True)
    woodbury_vector = cho_solve(factor, (Y - y_mean) / y_std)
    L = np.tril(factor[0])
    return {
        "inputs": U,
        "lengthscale": lengthscale,
        "kernel_variance": np.asarray(1.0),
        "noise_variance": np.asarray(noise_variance),
        "woodbury_vector": woodbury_vector,
        "cholesky": L,
        "y_mean": y_mean,
        "y_std": y_std,
    }


def write_synthetic_model(
    folder: Path,
    m: int,
    d: int = 4,
    p: int = 1,
    *,
    sparse: bool = False,
    seed: int = 0,
    noise_variance: float = NOISE_VARIANCE,
) -> Path:
    """A posterior file and its manifest in `folder` (reused if there already); the file's path.

    A sparse model's woodbury_inv is (Kzz + s2 I)^-1, what DTC gives with the data at the inducing points.
    """
    name = f"synthetic-L-m{m}-d{d}-p{p}-{'sparse' if sparse else 'exact'}-s{seed}-n{noise_variance:g}"
    path = folder / f"{name}.npz"
    if path.exists() and manifest_path_for(path).exists():
        return path
    arrays = synthetic_arrays(m, d, p, seed, noise_variance)
    inference = "exact"
    if sparse:
        from scipy.linalg import solve_triangular

        inverse = solve_triangular(arrays.pop("cholesky"), np.eye(m), lower=True, overwrite_b=True)
        arrays["woodbury_inverse"] = inverse.T @ inverse
        inference = "sparse"
    data, description = posterior_file.encode(arrays, inference)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    features = [f"x{i + 1}" for i in range(d)]
    outputs = [f"y{j + 1}" for j in range(p)] if p > 1 else ["y"]
    posterior = GPPosterior.from_arrays("RBF", arrays)
    manifest = {
        "schema_version": 3,
        "format": "npz",
        "name": name.replace(".", "-"),
        "version": "1",
        "description": f"synthetic {inference} posterior of {m} points",
        "model_type": "GPy.models.SparseGPRegression" if sparse else "GPy.models.GPRegression",
        "artifact": path.name,
        "sha256": sha256_of(path),
        "features": features,
        "outputs": outputs,
        "bounds": {f: [0.0, 1.0] for f in features},
        "n_train": m,
        "kernel": {
            "name": "RBF",
            "ARD": True,
            "variance": posterior.kernel_variance,
            "lengthscale": posterior.lengthscale.tolist(),
            "noise_variance": posterior.noise_variance,
            "normalizer": "Standardize",
        },
        "training": {},
        "versions": {},
        "posterior": description,
        "published_training_data": None,
    }
    manifest_path_for(path).write_text(json.dumps(manifest, indent=2))
    return path
