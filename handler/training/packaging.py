"""Packaging a fitted GP for the service: the posterior file (or, failing that, the pickle) and its manifest, checked
against GPy across the bounds and read back as the function reads it. One code path for the command
(scripts/package_model.py: a user's pickle) and the training worker (handler/training/worker.py: a fitted model).

The quality gate: the model must predict better than its outputs' mean, on the hold-out set when one is given and
on its own training points left out one at a time (closed form, `leave_one_out`): R2 >= MIN_R2 for every output,
and 95% intervals covering at least MIN_COVERAGE_95 of the points. A model that fails is refused (QualityGateError,
nothing written, a message naming the usual cause) unless `force`.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from handler.api.schemas import HoldoutMetrics, ModelManifest, PosteriorDescription
from handler.gp import posterior_file
from handler.gp.artifact import (
    PackagedArtifact,
    atomic_write,
    check_limits,
    check_name,
    check_units,
    manifest_path_for,
    sha256_of,
)
from handler.gp.from_gpy import posterior_arrays
from handler.gp.gpy_model import GPRegressionModel
from handler.gp.model import PosteriorModel, SurrogateModel, load_model
from handler.training.data import TrainingDataError, check_offsets
from handler.training.validation import (
    MIN_COVERAGE_95,
    MIN_COVERAGE_POINTS,
    MIN_R2,
    LeaveOneOut,
    leave_one_out,
    output_metrics,
    quality_problems,
)

SUFFIXES = {"npz": ".npz", "pickle": ".pkl"}
CHECK_POINTS = 2048  # a power of 2, as Sobol points want


class PackagingError(Exception):
    """What is wrong, in one line for the user."""


def complete_bounds(
    model: GPRegressionModel, features: list[str], given: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """The given bounds, and each other feature's range in the training inputs."""
    X = model.training_inputs()
    bounds = {}
    for name, lo, hi in zip(features, X.min(axis=0).tolist(), X.max(axis=0).tolist(), strict=True):
        if name in given:
            bounds[name] = given[name]
        elif lo < hi:
            bounds[name] = (lo, hi)
        else:
            raise PackagingError(f"{name} is constant ({lo:g}) in the training inputs: give its range with --bounds")
    return bounds


def holdout_metrics(
    model: GPRegressionModel, X: np.ndarray, Y: np.ndarray, outputs: list[str]
) -> dict[str, HoldoutMetrics]:
    """RMSE, R^2 and the share of points inside the 95% predictive interval, per output."""
    mean, variance = model.predict(X)
    return accuracy(Y, mean, variance, outputs)


def accuracy(Y: np.ndarray, mean: np.ndarray, variance: np.ndarray, outputs: list[str]) -> dict[str, HoldoutMetrics]:
    """RMSE, R^2 and 95% coverage of predictions (mean and predictive variance, (n, outputs)) of the values Y."""
    return {
        name: HoldoutMetrics(n_points=m.n_points, rmse=m.rmse, r2=m.r2, coverage_95=m.coverage_95)
        for name, m in output_metrics(Y, mean, variance, outputs).items()
    }


# The quality gate's rule (MIN_R2, MIN_COVERAGE_95, MIN_COVERAGE_POINTS, quality_problems) and leave-one-out in
# closed form live in handler/training/validation.py: training applies the same rule to the versions it fits.
GPY_INITIAL_LENGTHSCALE = 1.0
FAR_BELOW_RANGE = 0.01  # a lengthscale under 1% of its feature's training range


class QualityGateError(PackagingError):
    """The model is not better than its mean (or its intervals are plainly wrong): refused unless --force."""


def lengthscale_causes(
    model: GPRegressionModel, features: list[str], bounds: dict[str, tuple[float, float]]
) -> list[str]:
    """Features whose lengthscale looks unfitted: still GPy's initial 1.0, or under 1% of the feature's range."""
    by_feature = _lengthscales(model.gp.kern, len(features))
    unmoved, far_below = [], []
    for j, name in enumerate(features):
        low, high = bounds[name]
        for lengthscale in by_feature[j]:
            if abs(lengthscale - GPY_INITIAL_LENGTHSCALE) <= 1e-6 * GPY_INITIAL_LENGTHSCALE:
                unmoved.append(f"{name} (range {high - low:.3g})")
                break
            if lengthscale < FAR_BELOW_RANGE * (high - low):
                far_below.append(f"{name} ({lengthscale:.3g}, range {high - low:.3g})")
                break
    causes = []
    if unmoved:
        causes.append(
            f"the lengthscales of {', '.join(unmoved)} are still {GPY_INITIAL_LENGTHSCALE:g}, GPy's initial value: "
            "the optimiser never moved them"
        )
    if far_below:
        causes.append(f"the lengthscales of {', '.join(far_below)} are under {FAR_BELOW_RANGE:.0%} of their ranges")
    return causes


def _lengthscales(kern: Any, n_features: int) -> list[list[float]]:
    """Each feature's lengthscales in the kernel (a sum or product may hold several; none for some kernels)."""
    found: list[list[float]] = [[] for _ in range(n_features)]
    parts = [kern]
    while parts:
        part = parts.pop()
        parts.extend(getattr(part, "parts", []))
        if hasattr(part, "lengthscale") and not getattr(part, "parts", None):
            dims = [int(d) for d in part.active_dims]
            values = np.broadcast_to(np.asarray(part.lengthscale.values, dtype=float), (len(dims),))
            for dim, value in zip(dims, values.tolist(), strict=True):
                if dim < n_features:
                    found[dim].append(value)
    return found


def refusal(problems: list[str], causes: list[str], bounds: dict[str, tuple[float, float]]) -> str:
    """The gate's message: what failed, the rule, the usual cause, and the way round."""
    widths = [high - low for low, high in bounds.values()]
    lines = ["this model predicts little better than its mean, so it is not packaged:"]
    lines += [f"  {problem}" for problem in problems]
    lines.append(
        f"  The rule: R2 >= {MIN_R2} for every output on the hold-out set (--holdout) and on the training points "
        f"left out one at a time, and 95% intervals covering at least {MIN_COVERAGE_95:.0%} (of {MIN_COVERAGE_POINTS} "
        "points or more)."
    )
    lines.append("  What usually causes it: inputs not scaled, so the optimiser starts (and stays) far from a fit.")
    lines += [f"  Here {cause}." for cause in causes]
    if max(widths) / min(widths) > 100:
        lines.append(f"  The features' ranges span {min(widths):.3g} to {max(widths):.3g}.")
    lines.append(
        "  Start each lengthscale near its feature's range and fit again, keeping your units (callers, --limits and "
        "--units stay in them): GPy.kern.Matern32(d, ARD=True, lengthscale=X.max(0) - X.min(0))."
    )
    lines.append(
        "  (Fitting on inputs scaled to [0, 1] works too, but then callers must send scaled inputs and --bounds, "
        "--limits and --units are in those units.)"
    )
    lines.append("  Nothing was written. --force packages it anyway (make package-model ... FORCE=1).")
    return "\n".join(lines)


def rounding_tolerances(model: GPRegressionModel, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far two correct float64 evaluations of the predictive mean and variance may differ, (n, outputs) each.

    The fast path and GPy start from the same fitted arrays: the Woodbury vector w, GPy's Cholesky factor L of
    K + noise I (jitter included) and, for sparse models, A = woodbury_inv. Their own rounding, cond(K) eps
    relative, is what moves the manifest's log-likelihood between CPUs; it is common to both evaluations here
    and cancels, so it is not part of the bound (it would hide real errors). What differs is how each computes
    from them. With eps per rounding (twice the unit roundoff), m = len(w) and k = k(x, U), whose entries two
    evaluations put up to dk apart (`GPPosterior.cross_covariance_rounding`), on the standardised scale and to
    first order in eps:

    - mean k w: |dk| |w| + 2 m eps |k| |w|. Each dot product is within m eps |k| |w| / 2 of the exact one
      whatever the order of its sums (BLAS kernels differ by CPU; the bound does not), twice their sum is taken.
    - exact variance s2 - |t|^2, t = L^-1 k, a = L^-T t = A k. GPy solves L t = k, backward stable
      ((L + E) t = k, |E| <= m eps |L| / 2), which moves |t|^2 by 2 a^T E t: at most m eps |a| |L| |t|; the fast
      path solves the same system (BLAS TRSM), as far off again. A posterior file written before L was stored
      multiplies k by its Li = L^-1 (LAPACK dtrtri) instead: the product adds m eps |t| |Li| |k|; Li itself has
      a left or right residual (L Li - I or Li L - I) of at most m eps |L| |Li| / 2 or m eps |Li| |L| / 2, which
      moves |t|^2 by at most m eps |a| |L| |Li| |k| or m eps |t| |Li| |L| |t| (the larger is taken). dk moves
      |t|^2 by 2 |a| |dk|; the sums of squares and s2 - |t|^2 add 2 m eps |t|^2 + 2 eps s2.
    - sparse variance s2 - k A k: 2 |a| |dk| + m eps |k| |A| |k| + 2 eps s2, with a = A k.

    Mapping back to the outputs' scale (mean std + offset, variance std^2, the noise added) adds a few eps of
    the result. A difference larger than this sum is not rounding: the fast path computes something else.
    """
    eps = float(np.finfo(float).eps)
    posterior = model.posterior
    assert posterior is not None
    w = np.abs(posterior.woodbury_vector)
    m = posterior.n_inputs
    if posterior.inference == "exact":
        cholesky_abs = np.abs(np.asarray(model.gp.posterior.woodbury_chol, dtype=float))
        if posterior.cholesky_inverse is not None:
            inverse = posterior.cholesky_inverse
            inverse_abs = np.abs(inverse)
    else:
        assert posterior.woodbury_inverse is not None
        woodbury_abs = np.abs(posterior.woodbury_inverse)
    mean_bound = np.empty((len(X), model.output_dim))
    variance_bound = np.empty(len(X))
    rows = max(1, posterior.chunk_rows // 4)  # a few (rows x m) arrays at a time
    for start in range(0, len(X), rows):
        chunk = slice(start, start + rows)
        k = posterior.cross_covariance(X[chunk])
        dk = posterior.cross_covariance_rounding(X[chunk])
        k_abs = np.abs(k)
        mean_bound[chunk] = dk @ w + 2 * m * eps * (k_abs @ w)
        if posterior.cholesky is not None:
            t_abs, a_abs = np.abs(posterior.whitened(k.copy())), np.abs(posterior.solve(k.T).T)
            # GPy and the fast path both solve L t = k: each moves |t|^2 by at most m eps |a| |L| |t|
            variance_bound[chunk] = 2 * np.vecdot(a_abs, dk) + m * eps * (
                2 * np.vecdot(a_abs @ cholesky_abs, t_abs) + 2 * np.vecdot(t_abs, t_abs)
            )
        elif posterior.cholesky_inverse is not None:
            t = k @ inverse.T
            t_abs, a_abs = np.abs(t), np.abs(t @ inverse)
            x_k = k_abs @ inverse_abs.T  # |Li| |k|
            a_l = a_abs @ cholesky_abs  # |a| |L|
            # Li's left or right residual, whichever moves |t|^2 more
            residual = np.maximum(np.vecdot(a_l, x_k), np.vecdot(t_abs @ inverse_abs, t_abs @ cholesky_abs.T))
            variance_bound[chunk] = 2 * np.vecdot(a_abs, dk) + m * eps * (
                np.vecdot(a_l, t_abs) + np.vecdot(t_abs, x_k) + residual + 2 * np.vecdot(t_abs, t_abs)
            )
        else:
            a_abs = np.abs(k @ posterior.woodbury_inverse)
            variance_bound[chunk] = 2 * np.vecdot(a_abs, dk) + m * eps * np.vecdot(k_abs @ woodbury_abs, k_abs)
    variance_bound += 2 * eps * posterior.kernel_variance
    prediction = model.predict(X)
    mean_bound *= posterior.y_std
    mean_bound += 4 * eps * (np.abs(prediction.mean) + np.abs(posterior.y_mean))
    variance_bound = np.multiply.outer(variance_bound, posterior.y_std**2) + 4 * eps * prediction.variance
    return mean_bound, variance_bound


def mean_tolerance(model: GPRegressionModel, X: np.ndarray) -> np.ndarray:
    """How far two correct evaluations of the predictive mean may differ, (n_points, n_outputs): see
    `rounding_tolerances`."""
    return rounding_tolerances(model, X)[0]


def variance_tolerance(model: GPRegressionModel, X: np.ndarray) -> np.ndarray:
    """How far two correct evaluations of the predictive variance may differ, (n_points, n_outputs): see
    `rounding_tolerances`."""
    return rounding_tolerances(model, X)[1]


def fast_path_error(
    model: GPRegressionModel, X: np.ndarray, served: SurrogateModel | None = None
) -> tuple[float, float]:
    """Largest difference between the fast path (or `served`) and GPy's own predict and predict_noiseless.

    In tolerance units: both numbers are at most 1 when the two agree to rounding (`rounding_tolerances`).
    """
    mean_bound, variance_bound = rounding_tolerances(model, X)
    worst_mean = worst_variance = 0.0
    for latent in (False, True):
        fast = (served or model).predict(X, latent=latent)
        reference = model.predict_with_gpy(X, latent=latent)
        worst_mean = max(worst_mean, _worst_ratio(np.abs(fast.mean - reference.mean), mean_bound))
        worst_variance = max(worst_variance, _worst_ratio(np.abs(fast.variance - reference.variance), variance_bound))
    return worst_mean, worst_variance


def _worst_ratio(difference: np.ndarray, bound: np.ndarray) -> float:
    """max(difference / bound), where equal values (a zero difference) count 0 even when the bound is 0.

    Anything not a number (NaN from an overflow) counts as infinitely far: the check must fail, not pass.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.divide(difference, bound, out=np.zeros_like(difference), where=difference != 0)
    if not np.isfinite(difference).all() or np.isnan(ratio).any():
        return float("inf")
    return float(np.max(ratio, initial=0.0))


def points_across(bounds: dict[str, tuple[float, float]], count: int, seed: int = 0) -> np.ndarray:
    from scipy.stats import qmc

    low, high = np.array(list(bounds.values())).T
    return qmc.scale(qmc.Sobol(len(bounds), seed=seed).random(count), low, high)


def check_counts(model: GPRegressionModel, features: list[str], outputs: list[str] | None) -> list[str]:
    """The output names (default y, or y1, y2, ...), once the counts match the model's."""
    if len(features) != model.input_dim:
        raise PackagingError(
            f"the model takes {counted(model.input_dim, 'input')} but {counted(len(features), 'feature')} "
            f"{'was' if len(features) == 1 else 'were'} named"
        )
    outputs = outputs or (["y"] if model.output_dim == 1 else [f"y{j + 1}" for j in range(model.output_dim)])
    if len(outputs) != model.output_dim:
        raise PackagingError(
            f"the model has {counted(model.output_dim, 'output')} but {counted(len(outputs), 'output name')} "
            f"{'was' if len(outputs) == 1 else 'were'} given"
        )
    return outputs


def counted(number: int, noun: str) -> str:
    """`1 input`, `3 inputs`."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def package(
    model: GPRegressionModel,
    pickle_bytes: bytes,
    output: Path,
    *,
    features: list[str],
    outputs: list[str] | None = None,
    bounds: dict[str, tuple[float, float]] | None = None,
    name: str,
    version_label: str = "1",
    description: str = "",
    holdout: tuple[np.ndarray, np.ndarray] | None = None,
    previous_holdout: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    gpy_route: bool = False,
    source: Path | None = None,
    publish_training_data: Literal["inputs", "inputs_and_outputs"] | None = None,
    limits: dict[str, tuple[float | None, float | None]] | None = None,
    units: dict[str, str] | None = None,
    force: bool = False,
) -> tuple[ModelManifest, Path]:
    """Write the artifact beside `output` (its suffix follows the format) and its manifest; nothing half-written.

    `gpy_route`: write the pickle, served through GPy, even where a posterior file would do. `source`: the user's
    pickle, never removed. `publish_training_data`: what GET /model/training-data may serve of the training
    points (a posterior file then holds them; a pickle has them). `limits`: physical limits of features (None at
    an open end), `units`: of features and outputs. A model that fails the quality gate (`quality_problems`, on
    the hold-out set and leave-one-out) raises QualityGateError before anything is written, unless `force`.
    Returns the manifest and the artifact's path.
    """
    if output.suffix not in ("", *SUFFIXES.values()):
        raise PackagingError(f"--output: expected a .npz or .pkl name (or none), got {output.name!r}")
    source = source.resolve() if source is not None else None
    outputs = check_counts(model, features, outputs)
    try:
        check_name(name)
    except ValueError as exc:
        raise PackagingError(f"--name: {exc}") from None
    if publish_training_data is not None:
        published_values = model.gp.num_data * (len(features) + len(outputs) * (publish_training_data != "inputs"))
        if published_values > posterior_file.MAX_PUBLISHED_VALUES:
            raise PackagingError(
                f"--publish-training-data: {model.gp.num_data} points make {published_values} values, more than "
                f"the {posterior_file.MAX_PUBLISHED_VALUES} one answer of GET /model/training-data can carry"
            )
    all_bounds = complete_bounds(model, features, bounds or {})
    bounds_array = np.array(list(all_bounds.values()), dtype=float)
    try:  # the training route's rule: such a model's refits on the service would be refused
        check_offsets(bounds_array, features)
    except TrainingDataError as exc:
        if not force:
            raise PackagingError(
                f"--bounds: {exc.message}. Its predictions lose digits too, and the service refuses to refit it. "
                "--force packages it anyway (make package-model ... FORCE=1)"
            ) from None
    try:
        check_limits({k: list(v) for k, v in limits.items()} if limits else None, tuple(features), bounds_array)
    except ValueError as exc:
        raise PackagingError(f"--limits: {exc}") from None
    try:
        check_units(units or None, (*features, *outputs))
    except ValueError as exc:
        raise PackagingError(f"--units: {exc}") from None
    holdout_accuracy = holdout_metrics(model, *holdout, outputs) if holdout is not None else None
    if holdout_accuracy is None and previous_holdout is not None:  # a converted manifest's: the same model's
        holdout_accuracy = {k: HoldoutMetrics.model_validate(v) for k, v in previous_holdout.items()}
    loo = leave_one_out(model)
    loo_accuracy = accuracy(loo.Y, loo.mean, loo.variance, outputs) if isinstance(loo, LeaveOneOut) else None
    problems = quality_problems({"hold-out": holdout_accuracy, "leave-one-out": loo_accuracy})
    if problems and not force:
        raise QualityGateError(refusal(problems, lengthscale_causes(model, features, all_bounds), all_bounds))
    check_points = points_across(all_bounds, CHECK_POINTS)
    reason = None
    if model.posterior is not None:
        mean_error, variance_error = fast_path_error(model, check_points)
        if mean_error > 1 or variance_error > 1:
            # Not refused: GPy's own predict is the reference, only slower. The manifest says so, and why.
            reason = (
                f"the fast path differs from GPy by {mean_error:.2g}x what rounding explains in the mean and "
                f"{variance_error:.2g}x in the variance"
            )
    posterior: PosteriorDescription | None = None
    artifact_format: Literal["npz", "pickle"] = "pickle"
    if model.posterior is not None and reason is None and not gpy_route:
        _, inference, arrays = posterior_arrays(model.gp)
        if publish_training_data is not None:
            arrays["training_inputs"] = np.asarray(model.gp.X, dtype=float)
            if publish_training_data == "inputs_and_outputs":
                arrays["training_outputs"] = np.asarray(model.gp.Y, dtype=float)  # GPy's Y: not normalised
        data, description_of_arrays = posterior_file.encode(arrays, inference)
        artifact_format, posterior = "npz", PosteriorDescription.model_validate(description_of_arrays)
    else:
        data = pickle_bytes
    artifact = output.with_suffix(SUFFIXES[artifact_format])
    for destination in (artifact, manifest_path_for(artifact)):
        if destination.is_dir():
            raise PackagingError(f"--output: {destination} is a folder")
    manifest = ModelManifest(
        format=artifact_format,
        name=name,
        version=version_label,
        description=description,
        model_type=model.model_type,
        artifact=artifact.name,
        sha256=_sha256(data),
        features=features,
        outputs=outputs,
        bounds=all_bounds,
        n_train=int(model.gp.num_data),
        holdout=holdout_accuracy,
        leave_one_out=loo_accuracy,
        limits=limits or None,
        units=units or None,
        kernel=model.describe(),
        training=training or {},
        versions={
            "python": platform.python_version(),
            **{package: version(package) for package in ("numpy", "scipy", "GPy", "paramz")},
        },
        posterior=posterior,
        published_training_data=publish_training_data,
        predict_through_gpy=reason,
    )
    # Written and checked in a scratch folder beside the output, then moved into place.
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".package-") as scratch:
        staged = Path(scratch) / artifact.name
        atomic_write(staged, data)
        atomic_write(manifest_path_for(staged), (manifest.model_dump_json(indent=2) + "\n").encode())
        loaded = load_model(PackagedArtifact(staged))  # as the function will: checksum, format, shapes
        if artifact_format == "npz":
            # The file, read back as the function reads it, against GPy itself
            assert isinstance(loaded.model, PosteriorModel)
            mean_error, variance_error = fast_path_error(model, check_points, served=loaded.model)
            if mean_error > 1 or variance_error > 1:
                raise PackagingError(
                    f"the posterior file differs from GPy ({mean_error:.2g}x, {variance_error:.2g}x what rounding "
                    "explains): please report this model"
                )
        elif reason is not None:
            assert isinstance(loaded.model, GPRegressionModel)
            if loaded.model.posterior is not None:
                raise PackagingError("the loader does not honour the manifest's predict_through_gpy")
        # The other format's artifact of this name is replaced, but only if the manifest being replaced names it:
        # never the user's own pickle (the input, or any file no manifest of ours describes).
        replaced = previous_artifact(artifact)
        os.replace(manifest_path_for(staged), manifest_path_for(artifact))
        os.replace(staged, artifact)
        if replaced is not None and replaced != artifact and replaced.resolve() != source:
            replaced.unlink(missing_ok=True)
    assert sha256_of(artifact) == manifest.sha256
    return manifest, artifact


def previous_artifact(artifact: Path) -> Path | None:
    """The artifact the manifest at this name describes now (being replaced), if it is a file beside it."""
    try:
        named = json.loads(manifest_path_for(artifact).read_text()).get("artifact")
    except (OSError, ValueError, AttributeError):
        return None
    if not (isinstance(named, str) and Path(named).name == named and Path(named).suffix in SUFFIXES.values()):
        return None
    return artifact.with_name(named)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
