"""The analyses routes: what people do with a surrogate, answered next to the model with its own uncertainty.

    POST /sensitivity   Sobol' first-order, total (and second-order) indices with 95% intervals
    POST /propagate     the output distribution under input distributions: moments, quantiles, P(y > t), histogram
    POST /suggest       the next q points to simulate, chosen jointly by an acquisition function

The math is in handler.analyses; this module reads requests, checks them against the model and the limits
(handler.api.limits) before any work, and shapes answers as /predict does: flat for one output, by name for several.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler.api_gateway import Router

from handler.api.errors import RequestError, brief
from handler.api.limits import ANALYSIS_MAX_VALUES
from handler.api.parsing import BodyLimits, body_limits, decode_body, load_body
from handler.api.services import Services
from handler.gp.artifact import Manifest
from handler.gp.broken import require_finite_answer
from handler.gp.model import PosteriorModel

if TYPE_CHECKING:
    from handler.analyses.distributions import InputDistribution
    from handler.gp.posterior import GPPosterior

router = Router()
logger = Logger(child=True)
_services: Services | None = None
CONFIDENCE = 0.95
# A normal or lognormal input may put this much of its mass outside the model's domain (where the GP extrapolates);
# a bounded one must lie inside it.
MAX_MASS_OUTSIDE_DOMAIN = 0.01
FAR_RANGES = 10
# Bodies: a few fields and one object per feature; /suggest also carries pending points.
_SMALL_BODY = BodyLimits(max_bytes=65_536, max_containers=1_000, max_members=2_000)


def configure(services: Services) -> None:
    global _services
    _services = services


def _context() -> Services:
    assert _services is not None, "handler.api.analyses.configure() was not called"
    return _services


def _read(limits: BodyLimits | None = None) -> tuple[Any, Manifest]:
    event = router.current_event
    manifest = _context().manifest()
    body = decode_body(event.body, bool(event.is_base64_encoded))
    return load_body(body, limits or _SMALL_BODY), manifest


def _dimensions_supported(dimensions: int, manifest: Manifest) -> None:
    """Sobol' points have at most MAX_DIMENSIONS dimensions here (/sensitivity uses two per feature)."""
    from handler.analyses.sobol_sequence import MAX_DIMENSIONS

    if dimensions > MAX_DIMENSIONS:
        features = len(manifest.features)
        message = f"this model's {features} features need {dimensions} Sobol' dimensions; at most {MAX_DIMENSIONS}"
        raise RequestError(501, "analysis not available for this model", [("model", message)])


def _posterior() -> GPPosterior:
    model = _context().loaded_model().model
    if not isinstance(model, PosteriorModel):
        message = "analyses need a model served from its posterior file; this one is served through GPy"
        raise RequestError(501, "analysis not available for this model", [("model", message)])
    return model.posterior


def _seed(seed: int | None) -> int:
    return int(np.random.default_rng().integers(2**63)) if seed is None else seed


def _per_output(manifest: Manifest, answers: list[dict[str, Any]]) -> Any:
    return answers[0] if len(answers) == 1 else dict(zip(manifest.outputs, answers, strict=True))


def _distributions(inputs: dict[str, Any] | None, manifest: Manifest) -> list[InputDistribution]:
    """One distribution per feature, in the model's order; 422 for one that leaves the domain."""
    from handler.analyses import distributions as dist

    low, high = manifest.domain(_context().settings.domain_margin)
    result: list[InputDistribution] = []
    problems = []
    for j, feature in enumerate(manifest.features):
        spec = (inputs or {}).get(feature)
        if spec is None:
            result.append(dist.Uniform(float(manifest.bounds[j, 0]), float(manifest.bounds[j, 1])))
            continue
        distribution = _distribution(spec)
        lo, hi = float(low[j]), float(high[j])
        support_low, support_high = distribution.support()
        if isinstance(distribution, dist.TruncatedNormal) and not distribution.mass > 0:
            message = "the normal puts no representable probability in [low, high] (38 or more std from the mean)"
            problems.append((f"inputs.{feature}", message))
        elif math.isfinite(support_low) and math.isfinite(support_high):
            if support_low < lo or support_high > hi:
                domain = manifest.describe_domain(j, _context().settings.domain_margin)
                message = f"[{support_low:g}, {support_high:g}] leaves the model's domain {domain}"
                problems.append((f"inputs.{feature}", message))
        elif (outside := distribution.mass_outside(lo, hi)) > MAX_MASS_OUTSIDE_DOMAIN:
            message = (
                f"{outside:.3g} of its probability is outside the model's domain "
                f"{manifest.describe_domain(j, _context().settings.domain_margin)}; at most "
                f"{MAX_MASS_OUTSIDE_DOMAIN:g} may be (a truncnormal keeps it inside)"
            )
            problems.append((f"inputs.{feature}", message))
        result.append(distribution)
    if problems:
        raise RequestError(422, "input distribution outside the model's domain", problems)
    return result


def _samples(distributions: list[InputDistribution], uniform: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The input samples, (n, d); 422 when a heavy tail reaches where the model's arithmetic would overflow.

    A normal or lognormal may leave 1% of its mass outside the domain; its samples there are evaluated as they are
    (the GP reverts to its prior), but not beyond FAR_RANGES ranges of the domain: a lognormal of large sigma
    reaches 1e126 within that 1%.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # what overflows is refused below
        X = np.column_stack([dist.ppf(uniform[:, j]) for j, dist in enumerate(distributions)])
    low, high = manifest.domain(_context().settings.domain_margin)
    width = high - low
    far = ~np.isfinite(X) | (low - FAR_RANGES * width > X) | (high + FAR_RANGES * width < X)
    if far.any():
        problems = []
        for j in np.flatnonzero(far.any(axis=0))[:20]:
            worst = X[far[:, j], j]
            message = (
                f"{far[:, j].sum()} of {len(X)} samples (e.g. {worst[0]:g}) lie over {FAR_RANGES} domain widths "
                f"outside the domain [{low[j]:g}, {high[j]:g}]: a tail this heavy says little about the model; "
                "truncate it"
            )
            problems.append((f"inputs.{manifest.features[j]}", message))
        raise RequestError(422, "input distribution outside the model's domain", problems)
    return X


def _distribution(spec: Any) -> InputDistribution:
    from handler.analyses import distributions as dist

    match spec.distribution:
        case "uniform":
            return dist.Uniform(spec.low, spec.high)
        case "normal":
            return dist.Normal(spec.mean, spec.std)
        case "truncnormal":
            return dist.TruncatedNormal(spec.mean, spec.std, spec.low, spec.high)
        case "lognormal":
            return dist.LogNormal(spec.mu, spec.sigma)
        case _:
            return dist.Triangular(spec.low, spec.mode, spec.high)


def _within_budget(points: int, draws: int, field: str, what: str, features: int) -> None:
    if points * features > ANALYSIS_MAX_VALUES:
        message = (
            f"{what} = {points} points of {features} features; at most {ANALYSIS_MAX_VALUES // features} points for "
            "this model: lower n"
        )
        raise RequestError(422, "analysis too large", [("n", message)])
    budget = _context().settings.analysis_draw_budget
    if points * draws > budget:
        message = (
            f"{what} = {points} points x {draws} posterior samples = {points * draws}; at most "
            f"{budget} per request: lower n or posterior_samples"
        )
        raise RequestError(422, "analysis too large", [(field, message)])


def _interval(estimate: Any) -> dict[str, float]:
    return estimate.as_dict()


@router.post("/sensitivity")
def sensitivity() -> Any:
    from handler.analyses.function_draws import PosteriorFunctionDraws
    from handler.analyses.sensitivity import analyse, uniform_design
    from handler.api.analysis_schemas import SensitivityRequest, parse_request

    data, manifest = _read()
    request = parse_request(SensitivityRequest, data, manifest.features)
    d = len(manifest.features)
    _dimensions_supported(2 * d, manifest)
    step = 2 * d + 2 if request.second_order else d + 2
    points = request.n * step
    what = f"n x ({'2d + 2' if request.second_order else 'd + 2'})"
    _within_budget(points, request.posterior_samples, "posterior_samples", what, d)
    distributions = _distributions(request.inputs, manifest)
    posterior = _posterior()
    seed = _seed(request.seed)
    rng = np.random.default_rng(seed)
    X = _samples(distributions, uniform_design(request.n, len(distributions), request.second_order, rng), manifest)
    mean = posterior.predict(X, latent=True).mean
    draws = (
        PosteriorFunctionDraws(posterior, request.posterior_samples, rng).evaluate(X)
        if request.posterior_samples
        else None
    )
    answers = []
    for o in range(len(manifest.outputs)):
        result = analyse(mean[:, o], None if draws is None else draws[:, :, o], d, request.second_order, seed)
        answer: dict[str, Any] = {
            "seed": seed,
            "n": request.n,
            "evaluations": points,
            "posterior_samples": request.posterior_samples,
            "confidence": CONFIDENCE,
            "variance": _interval(result.variance),
            "first_order": {f: _interval(e) for f, e in zip(manifest.features, result.first_order, strict=True)},
            "total": {f: _interval(e) for f, e in zip(manifest.features, result.total, strict=True)},
        }
        if result.second_order is not None:
            answer["second_order"] = {
                manifest.features[j]: {manifest.features[k]: _interval(e) for k, e in enumerate(row) if e is not None}
                for j, row in enumerate(result.second_order[:-1])
            }
        answers.append(answer)
    return require_finite_answer(_per_output(manifest, answers))  # a broken model: a 503, never null


@router.post("/propagate")
def propagate() -> Any:
    from handler.analyses.function_draws import PosteriorFunctionDraws
    from handler.analyses.propagation import propagate as propagate_outputs
    from handler.analyses.sobol_sequence import sobol_points
    from handler.api.analysis_schemas import PropagateRequest, parse_request

    data, manifest = _read()
    request = parse_request(PropagateRequest, data, manifest.features)
    _dimensions_supported(len(manifest.features), manifest)
    _within_budget(request.n, request.posterior_samples, "posterior_samples", "n", len(manifest.features))
    distributions = _distributions(request.inputs, manifest)
    posterior = _posterior()
    seed = _seed(request.seed)
    rng = np.random.default_rng(seed)
    X = _samples(distributions, sobol_points(request.n, len(distributions), rng), manifest)
    low, high = manifest.domain(_context().settings.domain_margin)
    outside = int(np.count_nonzero(((low > X) | (high < X)).any(axis=1)))
    mean = posterior.predict(X, latent=True).mean
    k = request.posterior_samples
    draws = PosteriorFunctionDraws(posterior, k, rng).evaluate(X) if k else None
    answers = []
    for o in range(len(manifest.outputs)):
        result = propagate_outputs(
            mean[:, o],
            None if draws is None else draws[:, :, o],
            request.quantiles,
            request.thresholds,
            request.bins,
            rng,
        )
        answers.append(
            {
                "seed": seed,
                "n": request.n,
                "posterior_samples": k,
                "confidence": CONFIDENCE,
                "points_outside_domain": outside,
                **result.as_dict(),
            }
        )
    return require_finite_answer(_per_output(manifest, answers))  # a broken model: a 503, never null


def _suggest_limits(features: tuple[str, ...]) -> BodyLimits:
    from handler.api.limits import SUGGEST_MAX_PENDING

    pending = body_limits(features, SUGGEST_MAX_PENDING, 1_000_000)
    return BodyLimits(
        pending.max_bytes + _SMALL_BODY.max_bytes,
        pending.max_containers + _SMALL_BODY.max_containers,
        pending.max_members + _SMALL_BODY.max_members,
    )


@router.post("/suggest")
def suggest() -> Any:
    from handler.analyses.acquisition import SuggestionProblem
    from handler.analyses.acquisition import suggest as choose
    from handler.api.analysis_schemas import SuggestRequest, parse_request

    manifest = _context().manifest()
    data, manifest = _read(_suggest_limits(manifest.features))
    request = parse_request(SuggestRequest, data, manifest.features)
    _dimensions_supported(len(manifest.features), manifest)
    output = _output_index(request.output, request.acquisition, manifest)
    domain_low, domain_high = manifest.domain(_context().settings.domain_margin)
    low, high = manifest.bounds[:, 0].astype(float), manifest.bounds[:, 1].astype(float)
    problems = []
    for feature, (lo, hi) in (request.bounds or {}).items():
        j = manifest.features.index(feature)
        if not lo <= hi:  # equal ends hold the feature fixed
            problems.append((f"bounds.{feature}", f"expected low <= high, got [{lo:g}, {hi:g}]"))
        elif lo < domain_low[j] or hi > domain_high[j]:
            domain = manifest.describe_domain(j, _context().settings.domain_margin)
            message = f"[{lo:g}, {hi:g}] leaves the model's domain {domain}"
            problems.append((f"bounds.{feature}", message))
        low[j], high[j] = lo, hi
    pending = _pending(request.pending, manifest, problems)
    if problems:
        raise RequestError(422, "invalid request", problems)
    posterior = _posterior()
    seed = _seed(request.seed)
    problem = SuggestionProblem(
        request.acquisition, output, request.goal or "maximize", low, high, request.best, request.beta
    )
    picks = choose(posterior, problem, request.q, pending, np.random.default_rng(seed))
    P = np.array([pick.point for pick in picks])
    mean, variance = _context().loaded_model().model.predict(P)
    points = []
    for i, pick in enumerate(picks):
        predictions = [
            {"mean": float(mean[i, o]), "variance": float(variance[i, o])} for o in range(len(manifest.outputs))
        ]
        points.append(
            {
                "x": {f: float(v) for f, v in zip(manifest.features, pick.point, strict=True)},
                "acquisition": pick.value,
                "prediction": _per_output(manifest, predictions),
            }
        )
    return require_finite_answer(
        {
            "seed": seed,
            "acquisition": request.acquisition,
            "output": manifest.outputs[output],
            "goal": request.goal,
            "points": points,
        }
    )


def _output_index(name: str | None, acquisition: str, manifest: Manifest) -> int:
    if name is None:
        if len(manifest.outputs) > 1 and acquisition in ("expected_improvement", "upper_confidence_bound"):
            message = f"required for {acquisition} with several outputs: one of {', '.join(manifest.outputs)}"
            raise RequestError(422, "invalid request", [("output", message)])
        return 0
    if name not in manifest.outputs:
        raise RequestError(
            422, "invalid request", [("output", f"{brief(name)} is not one of {', '.join(manifest.outputs)}")]
        )
    return manifest.outputs.index(name)


def _pending(rows: list[dict[str, float]] | None, manifest: Manifest, problems: list[tuple[str, str]]) -> np.ndarray:
    """Pending points as an (n, d) array; problems (missing or unknown features, outside the domain) appended."""
    d = len(manifest.features)
    if not rows:
        return np.empty((0, d))
    margin = _context().settings.domain_margin
    low, high = manifest.domain(margin)
    points = np.empty((len(rows), d))
    for i, row in enumerate(rows):
        if row.keys() != set(manifest.features):
            missing = [f for f in manifest.features if f not in row]
            unknown = [k for k in row if k not in manifest.features][:3]
            message = "; ".join(
                part
                for part in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(brief(k) for k in unknown)}" if unknown else "",
                )
                if part
            )
            problems.append((f"pending[{i}]", message))
            continue
        points[i] = [row[f] for f in manifest.features]
        for j, f in enumerate(manifest.features):
            if not low[j] <= points[i, j] <= high[j]:
                problems.append(
                    (
                        f"pending[{i}].{f}",
                        f"{points[i, j]:g} is outside the domain {manifest.describe_domain(j, margin)}",
                    )
                )
        if len(problems) >= 20:
            break
    return points
