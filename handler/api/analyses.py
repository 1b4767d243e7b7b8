"""The analyses routes: what people do with a surrogate, answered next to the model with its own uncertainty.

    POST /sensitivity   Sobol' first-order, total (and second-order) indices with 95% intervals
    POST /propagate     the output distribution under input distributions: moments, quantiles, P(y > t), histogram
    POST /suggest       the next q points to simulate, chosen jointly by an acquisition function

The math is in handler.analyses; this module reads requests, checks them against the model and the limits
(handler.api.limits) before any work, and shapes answers as /predict does: flat for one output, by name for several.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler.api_gateway import Router

from handler.analyses.budget import CostModel, Deadline, DeadlineExceeded, analysis_budget_seconds
from handler.api.errors import RequestError, brief
from handler.api.limits import ANALYSIS_MAX_DRAW_VALUES, ANALYSIS_MAX_VALUES
from handler.api.model_routes import model_route
from handler.api.parsing import BodyLimits, body_limits, decode_body, load_body
from handler.api.services import Services
from handler.gp.artifact import Manifest
from handler.gp.broken import require_finite_answer
from handler.gp.model import LoadedModel, PosteriorModel

if TYPE_CHECKING:
    from handler.analyses.acquisition import SearchSizes
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
MIN_ANALYSIS_N = 16  # the schemas' least n (analysis_schemas.py)
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
        elif manifest.limits is not None and (
            support_low < manifest.limits[j, 0] or support_high > manifest.limits[j, 1]
        ):
            # the 1% below may extrapolate the model, but never past a physical limit: no sample may be impossible
            limit_low, limit_high = (float(v) for v in manifest.limits[j])
            message = (
                f"the {type(distribution).__name__.lower()} puts probability beyond {feature}'s physical limits "
                f"[{limit_low:g}, {limit_high:g}]; use a truncnormal (or a bounded distribution) inside them"
            )
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


def _within_memory(points: int, draws: int, what: str, features: int, outputs: int) -> None:
    """The design (points x features) and the draws' values (points x draws x outputs) are held in memory."""
    if points * features > ANALYSIS_MAX_VALUES:
        message = (
            f"{what} = {points} points of {features} features; at most {ANALYSIS_MAX_VALUES // features} points for "
            "this model: lower n"
        )
        raise RequestError(422, "analysis too large", [("n", message)])
    if points * draws * outputs > ANALYSIS_MAX_DRAW_VALUES:
        message = (
            f"{what} x posterior_samples x outputs = {points} x {draws} x {outputs} = {points * draws * outputs:,} "
            f"values; at most {ANALYSIS_MAX_DRAW_VALUES:,} (8 bytes each) per request: lower n or posterior_samples"
        )
        raise RequestError(422, "analysis too large", [("posterior_samples", message)])


class AnalysisBudget:
    """This model's cost of a request against the time one request may take (handler.analyses.budget)."""

    def __init__(self, posterior: GPPosterior, timeout_seconds: float) -> None:
        from handler.analyses.function_draws import FOURIER_FEATURES

        self.posterior = posterior
        self.cost = CostModel.of(posterior, FOURIER_FEATURES)
        self.seconds = analysis_budget_seconds(timeout_seconds)

    @classmethod
    def of(cls, posterior: GPPosterior) -> AnalysisBudget:
        return cls(posterior, _context().settings.function_timeout_seconds)

    def sensitivity(self, n: int, step: int, draws: int) -> float:
        """Estimated seconds of /sensitivity: n base points of `step` evaluations each."""
        from handler.analyses.sensitivity import BOOTSTRAP_RESAMPLES

        evaluations = n * step
        work = self.cost.draws(evaluations, draws) + self.draw_setup(draws) if draws else self.cost.mean(evaluations)
        return work + self.cost.sensitivity_statistics(evaluations, draws, BOOTSTRAP_RESAMPLES)

    def propagate(self, n: int, draws: int, quantiles: int, thresholds: int) -> float:
        """Estimated seconds of /propagate."""
        from handler.analyses.propagation import BOOTSTRAP_RESAMPLES

        work = self.cost.draws(n, draws) + self.draw_setup(draws) if draws else self.cost.mean(n)
        return work + self.cost.propagate_statistics(n, draws, BOOTSTRAP_RESAMPLES, quantiles, thresholds)

    def suggest(self, q: int, pending: int, integrated: bool, incumbent: bool = False) -> float:
        """Estimated seconds of /suggest (`incumbent`: EI's default incumbent is computed)."""
        return self.search_sizes().seconds(self.cost, q, pending, integrated, incumbent)

    def search_sizes(self) -> SearchSizes:
        from handler.analyses.acquisition import SearchSizes

        return SearchSizes.of(self.cost.m, self.cost, self.seconds)

    def describe(self) -> str:
        kind = "inducing" if self.cost.sparse else "training"
        return (
            f"this model's budget of {self.seconds:.1f} s of one vCPU (m = {self.cost.m} {kind} points, "
            f"{self.cost.p} output{'s' if self.cost.p > 1 else ''})"
        )

    def draws_unavailable(self) -> str | None:
        """Why this model cannot draw at all within the budget (a sparse model too large to factorise), or None."""
        from handler.analyses.function_draws import sparse_draws_cacheable, sparse_factors

        if not self.cost.sparse or sparse_factors(self.posterior, compute=False) is not None:
            return None
        if not sparse_draws_cacheable(self.posterior) or self.cost.sparse_factorisation() > self.seconds:
            return (
                f"posterior draws of this sparse model need an m x m factorisation of its {self.cost.m} inducing "
                f"points (~{self.cost.sparse_factorisation():.0f} s, {16 * self.cost.m**2 / 1e6:.0f} MB) that "
                "does not fit the budget: use posterior_samples 0 (the posterior mean)"
            )
        return None

    def draw_setup(self, draws: int) -> float:
        from handler.analyses.function_draws import sparse_factors

        factorised = not self.cost.sparse or sparse_factors(self.posterior, compute=False) is not None
        return self.cost.draw_setup(draws, factorised) if draws else 0.0

    def largest(self, seconds_of: Any, high: int) -> int:
        """The largest count c in [0, high] with seconds_of(c) within the budget (seconds_of grows with c)."""
        low = 0
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if seconds_of(middle) <= self.seconds else (low, middle - 1)
        return low


def prepare(loaded: LoadedModel) -> None:
    """Cache what the analyses need of a model once (a sparse model's draw factors) where it fits the budget: at
    load, before a SnapStart snapshot, so that no request pays it. Elsewhere the first request with draws does."""
    from handler.analyses.function_draws import sparse_draws_cacheable, sparse_factors

    model = loaded.model
    if not isinstance(model, PosteriorModel) or model.posterior.inference != "sparse":
        return
    budget = AnalysisBudget(model.posterior, _context().settings.function_timeout_seconds)
    if sparse_draws_cacheable(model.posterior) and budget.cost.sparse_factorisation() <= budget.seconds:
        sparse_factors(model.posterior)


def _refuse_over_budget(budget: AnalysisBudget, work: str, seconds: float, field: str, hint: str) -> None:
    message = f"{work}: estimated {seconds:.1f} s exceeds {budget.describe()}; {hint}"
    raise RequestError(422, "analysis too large", [(field, message)])


def _what_fits(budget: AnalysisBudget, seconds: Callable[[int, int], float], n: int, k: int) -> tuple[str, str]:
    """The field to lower and how far, suggesting only values the route accepts (n >= 16, posterior_samples 0 or
    at least 2)."""
    most_n = budget.largest(lambda points: seconds(points, k), n)
    most_k = budget.largest(lambda draws: seconds(n, draws), k) if k else 0
    hints = []
    if most_n >= MIN_ANALYSIS_N:
        hints.append(f"lower n (at most {most_n} at posterior_samples {k})")
    if most_k >= 2:
        hints.append(f"posterior_samples (at most {most_k} at n = {n})")
    if k and not hints:
        hints.append("ask for posterior_samples 0 (the posterior mean alone)")
    if not hints:
        hints.append(f"this model cannot answer even n = {MIN_ANALYSIS_N} within its budget")
    return ("posterior_samples" if most_k >= 2 or (k and most_n < MIN_ANALYSIS_N) else "n"), " or ".join(hints)


def _interval(estimate: Any) -> dict[str, float]:
    return estimate.as_dict()


def _mean_and_draws(
    posterior: GPPosterior, k: int, rng: np.random.Generator, X: np.ndarray, deadline: Deadline
) -> tuple[np.ndarray, np.ndarray | None]:
    """The posterior mean at X and, with k >= 2, k whole functions drawn there; with k = 0 the mean alone (m a
    point, not predict's m^2)."""
    from handler.analyses.function_draws import PosteriorFunctionDraws, posterior_mean

    if k:
        return PosteriorFunctionDraws(posterior, k, rng).evaluate_with_mean(X, deadline)
    return posterior_mean(posterior, X, deadline), None


def _output(mean: np.ndarray, draws: np.ndarray | None, o: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Output o's posterior mean (n,) and draws (n, k), as contiguous arrays."""
    return np.ascontiguousarray(mean[:, o]), None if draws is None else np.ascontiguousarray(draws[:, :, o])


@contextmanager
def _deadline(route: str, less: str) -> Iterator[Deadline]:
    """Lambda's remaining time, checked during the work: a 504 saying how far it got and what to ask less of (`less`),
    not a killed function."""
    deadline = Deadline(router.lambda_context.get_remaining_time_in_millis)
    try:
        yield deadline
    except DeadlineExceeded as exc:
        logger.warning("time budget exceeded", extra={"route": route, "done": exc.done})
        message = f"stopped before the function's deadline ({exc.done}): ask for less ({less})"
        raise RequestError(504, "time budget exceeded", [("body", message)]) from None


@model_route(router, "POST", "/sensitivity")
def sensitivity() -> Any:
    from handler.analyses.sensitivity import analyse, uniform_design
    from handler.api.analysis_schemas import SensitivityRequest, parse_request

    data, manifest = _read()
    request = parse_request(SensitivityRequest, data, manifest.features)
    d, p, k = len(manifest.features), len(manifest.outputs), request.posterior_samples
    _dimensions_supported(2 * d, manifest)
    step = 2 * d + 2 if request.second_order else d + 2
    points = request.n * step
    what = f"n x ({'2d + 2' if request.second_order else 'd + 2'})"
    _within_memory(points, k, what, d, p)
    distributions = _distributions(request.inputs, manifest)
    posterior = _posterior()
    budget = AnalysisBudget.of(posterior)
    if k and (why := budget.draws_unavailable()):
        raise RequestError(422, "analysis too large", [("posterior_samples", why)])

    def seconds(n: int, draws: int) -> float:
        return budget.sensitivity(n, step, draws)

    if (estimate := seconds(request.n, k)) > budget.seconds:
        total = points * max(k, 1) * p
        work = f"{what} x posterior_samples x outputs = {request.n} x {step} x {max(k, 1)} x {p} = {total:,}"
        _refuse_over_budget(budget, work, estimate, *_what_fits(budget, seconds, request.n, k))
    seed = _seed(request.seed)
    rng = np.random.default_rng(seed)
    X = _samples(distributions, uniform_design(request.n, len(distributions), request.second_order, rng), manifest)
    answers = []
    with _deadline("/sensitivity", "lower n or posterior_samples") as deadline:
        mean, draws = _mean_and_draws(posterior, k, rng, X, deadline)
        for o in range(p):
            deadline.check(f"indices of {o} of {p} outputs computed")
            # one output's values, contiguous: the statistics' resampling and sorting are ~1.5x slower on strided ones
            of_mean, of_draws = _output(mean, draws, o)
            result = analyse(of_mean, of_draws, d, request.second_order, seed)
            answer: dict[str, Any] = {
                "seed": seed,
                "n": request.n,
                "evaluations": points,
                "posterior_samples": k,
                "confidence": CONFIDENCE,
                "variance": _interval(result.variance),
                "first_order": {f: _interval(e) for f, e in zip(manifest.features, result.first_order, strict=True)},
                "total": {f: _interval(e) for f, e in zip(manifest.features, result.total, strict=True)},
            }
            if result.second_order is not None:
                answer["second_order"] = {
                    manifest.features[j]: {
                        manifest.features[i]: _interval(e) for i, e in enumerate(row) if e is not None
                    }
                    for j, row in enumerate(result.second_order[:-1])
                }
            answers.append(answer)
    return require_finite_answer(_per_output(manifest, answers))  # a broken model: a 503, never null


@model_route(router, "POST", "/propagate")
def propagate() -> Any:
    from handler.analyses.propagation import propagate as propagate_outputs
    from handler.analyses.sobol_sequence import sobol_points
    from handler.api.analysis_schemas import PropagateRequest, parse_request

    data, manifest = _read()
    request = parse_request(PropagateRequest, data, manifest.features)
    d, p, n = len(manifest.features), len(manifest.outputs), request.n
    _dimensions_supported(d, manifest)
    asked = "posterior_samples" in request.model_fields_set
    _within_memory(n, request.posterior_samples if asked else 0, "n", d, p)
    distributions = _distributions(request.inputs, manifest)
    posterior = _posterior()
    budget = AnalysisBudget.of(posterior)
    unavailable = budget.draws_unavailable()
    if asked and request.posterior_samples and unavailable:
        raise RequestError(422, "analysis too large", [("posterior_samples", unavailable)])

    def seconds(points: int, draws: int) -> float:
        return budget.propagate(points, draws, len(request.quantiles), len(request.thresholds))

    k, note = request.posterior_samples, None
    if not asked:  # the default: as many draws as fit this model's budget and memory, up to it; said in the answer
        fits = 0 if unavailable else budget.largest(lambda draws: seconds(n, draws), k)
        fits = min(fits, ANALYSIS_MAX_DRAW_VALUES // (n * p))
        if fits < k:
            k = fits if fits >= 2 else 0
            note = f"posterior_samples lowered from the default {request.posterior_samples} to {k}: {budget.describe()}"
            if unavailable:
                note = f"posterior_samples lowered from the default {request.posterior_samples} to 0: {unavailable}"
    if (estimate := seconds(n, k)) > budget.seconds:
        work = f"n x posterior_samples x outputs = {n} x {max(k, 1)} x {p} = {n * max(k, 1) * p:,}"
        field, hint = _what_fits(budget, seconds, n, k)
        if request.thresholds or len(request.quantiles) > 3:
            hint += ", or ask for fewer quantiles and thresholds"
        _refuse_over_budget(budget, work, estimate, field, hint)
    seed = _seed(request.seed)
    rng = np.random.default_rng(seed)
    X = _samples(distributions, sobol_points(n, len(distributions), rng), manifest)
    low, high = manifest.domain(_context().settings.domain_margin)
    outside = int(np.count_nonzero(((low > X) | (high < X)).any(axis=1)))
    answers = []
    with _deadline("/propagate", "lower n or posterior_samples") as deadline:
        mean, draws = _mean_and_draws(posterior, k, rng, X, deadline)
        for o in range(p):
            deadline.check(f"statistics of {o} of {p} outputs computed")
            of_mean, of_draws = _output(mean, draws, o)
            result = propagate_outputs(
                of_mean,
                of_draws,
                request.quantiles,
                request.thresholds,
                request.bins,
                rng,
            )
            answer = {
                "seed": seed,
                "n": n,
                "posterior_samples": k,
                "confidence": CONFIDENCE,
                "points_outside_domain": outside,
                **result.as_dict(),
            }
            if note is not None:
                answer["note"] = note
            answers.append(answer)
    if note is not None:
        logger.info("default posterior_samples lowered", extra={"note": note})
    return require_finite_answer(_per_output(manifest, answers))  # a broken model: a 503, never null


def _suggest_limits(features: tuple[str, ...]) -> BodyLimits:
    from handler.api.limits import SUGGEST_MAX_PENDING

    pending = body_limits(features, SUGGEST_MAX_PENDING, 1_000_000)
    return BodyLimits(
        pending.max_bytes + _SMALL_BODY.max_bytes,
        pending.max_containers + _SMALL_BODY.max_containers,
        pending.max_members + _SMALL_BODY.max_members,
    )


@model_route(router, "POST", "/suggest")
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
    budget = AnalysisBudget.of(posterior)
    sizes = budget.search_sizes()
    integrated = request.acquisition == "integrated_variance"
    incumbent = request.acquisition == "expected_improvement" and request.best is None

    def seconds(q: int, pending_points: int) -> float:
        return budget.suggest(q, pending_points, integrated, incumbent)

    if (estimate := seconds(request.q, len(pending))) > budget.seconds:
        work = (
            f"q + pending = {request.q} + {len(pending)} conditionings over {sizes.candidates} candidates and "
            f"{sizes.local_points} local-search points"
            + (f", {sizes.reference} reference points" if integrated else "")
        )
        most_q = budget.largest(lambda q: seconds(q, len(pending)), request.q)
        most_pending = budget.largest(lambda count: seconds(request.q, count), len(pending))
        field = "pending" if len(pending) and most_q < 1 else "q"
        hints = [f"lower q (at most {most_q} with {len(pending)} pending points)"] if most_q >= 1 else []
        if len(pending):
            hints.append(f"send fewer pending points (at most {most_pending} at q = {request.q})")
        _refuse_over_budget(budget, work, estimate, field, " or ".join(hints) or "this model cannot answer it")
    seed = _seed(request.seed)
    problem = SuggestionProblem(
        request.acquisition, output, request.goal or "maximize", low, high, request.best, request.beta
    )
    with _deadline("/suggest", "lower q or send fewer pending points") as deadline:
        picks = choose(posterior, problem, request.q, pending, np.random.default_rng(seed), deadline, sizes)
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
