"""Seconds per analysis request (/sensitivity, /propagate, /suggest), on one thread: on the shipped model, on models
of m = 1,000-8,000 points and several outputs, and the budget's constants.

Each request goes through handler.app.lambda_handler as an API Gateway event (tests/events.py), warm (the model
loaded and each route answered once), as benchmarks/performance.py measures /predict. BLAS runs on one thread
(OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, set before numpy is imported): Lambda at 1769 MB has about one vCPU.
Times are medians of repeats, wall and CPU (process time): on a loaded machine the CPU time is the steadier.

Requests: typical sizes (sensitivity n = 8192, posterior_samples = 50; propagate n = 8192, 50 draws; suggest
q = 10 for each acquisition) and each route's largest accepted requests on the model (the largest n without draws,
the largest n at 100 draws, second-order indices, q = SUGGEST_MAX_Q with SUGGEST_MAX_PENDING pending points),
found from the model's budget (handler.analyses.budget) as the route finds it.

--sizes builds synthetic exact posteriors (tests/large_models.py: no GPy fit) of each m and number of outputs and
times each route's largest accepted request on each: the measured CPU must stay under the timeout with the margin
(under (timeout - 1 s) / 2.5, what a vCPU 2.5x slower than this one would still answer in time).
--calibrate times each term of the budget's flop model against its estimate.

    python benchmarks/analyses.py                         # the shipped model, ~10 minutes on a quiet machine
    python benchmarks/analyses.py --quick                 # small sizes, one repeat (to show it still runs)
    python benchmarks/analyses.py --sizes 1000,2000,4000,8000 --outputs 1,5,10 --repeats 1
    python benchmarks/analyses.py --calibrate
    python benchmarks/analyses.py --output benchmarks/results.md   # also (re)write its section there
    python benchmarks/analyses.py --only suggest          # requests whose label contains "suggest"
"""

from __future__ import annotations

import os

# Before numpy is imported anywhere: one BLAS thread, as on a 1769 MB Lambda (ANALYSES_BENCH_THREADS overrides).
THREADS = os.environ.get("ANALYSES_BENCH_THREADS", "1")
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MODEL_PATH", str(ROOT / "model_artifacts" / "pretrained-model.npz"))

from benchmarks.report import publish, table  # noqa: E402
from handler.analyses.budget import RESERVED_S  # noqa: E402
from handler.api.limits import (  # noqa: E402
    ANALYSIS_MAX_DRAW_VALUES,
    ANALYSIS_MAX_N,
    ANALYSIS_MAX_VALUES,
    MAX_BINS,
    MAX_POSTERIOR_SAMPLES,
    MAX_QUANTILES,
    MAX_THRESHOLDS,
    PROPAGATE_MAX_N,
    SUGGEST_MAX_PENDING,
    SUGGEST_MAX_Q,
)
from handler.config import load_settings  # noqa: E402
from handler.gp.model import PosteriorModel  # noqa: E402
from tests.events import api_event, lambda_context  # noqa: E402

TIMEOUT_S = load_settings().function_timeout_seconds  # the function's timeout (template.yaml)
ARM_FACTOR = 2.5  # how much slower the function's arm64 vCPU may be at matrix products (handler.analyses.budget)
FLAG_S = (TIMEOUT_S - RESERVED_S) / ARM_FACTOR  # a maximum over this might not answer in time on the function
SECTION = "Analyses: seconds per request (benchmarks/analyses.py)"
SIZES_SECTION = "Analyses: the largest accepted request per model size (benchmarks/analyses.py --sizes)"
MODELS_DIR = Path(os.environ.get("ANALYSES_BENCH_MODELS", "/tmp/analyses-bench-models"))


@dataclass
class Case:
    route: str
    label: str
    body: dict[str, Any]
    evaluations: str
    maximum: bool  # one of the route's documented maxima


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def cases(d: int, features: list[str], bounds: np.ndarray, quick: bool) -> list[Case]:
    """The requests to time: typical sizes, then each route's maxima (limits.py)."""

    def sensitivity(n: int, k: int, second: bool, maximum: bool, label: str) -> Case:
        step = 2 * d + 2 if second else d + 2
        points = n * step
        body: dict[str, Any] = {"n": n, "posterior_samples": k, "second_order": second, "seed": 1}
        evaluations = f"{points:,} points" + (f" x {k} draws = {points * k:,}" if k else "")
        return Case("/sensitivity", label, body, evaluations, maximum)

    def propagate(n: int, k: int, maximum: bool, label: str, full: bool = False) -> Case:
        body: dict[str, Any] = {"n": n, "posterior_samples": k, "seed": 1}
        if full:  # the most quantiles, thresholds and bins
            body |= {
                "quantiles": [(i + 1) / (MAX_QUANTILES + 1) for i in range(MAX_QUANTILES)],
                "thresholds": list(np.linspace(0.0, 30.0, MAX_THRESHOLDS)),
                "bins": MAX_BINS,
            }
        evaluations = f"{n:,} points" + (f" x {k} draws = {n * k:,}" if k else "")
        return Case("/propagate", label, body, evaluations, maximum)

    rng = np.random.default_rng(7)
    pending_points = bounds[:, 0] + rng.random((SUGGEST_MAX_PENDING, d)) * (bounds[:, 1] - bounds[:, 0])
    pending = [dict(zip(features, map(float, row), strict=True)) for row in pending_points]

    def suggest(acquisition: str, q: int, with_pending: bool, maximum: bool, label: str) -> Case:
        body: dict[str, Any] = {"q": q, "acquisition": acquisition, "seed": 1}
        if acquisition in ("expected_improvement", "upper_confidence_bound"):
            body["goal"] = "maximize"
        if with_pending:
            body["pending"] = pending
        evaluations = f"q = {q}" + (f", {len(pending)} pending" if with_pending else "")
        return Case("/suggest", label, body, evaluations, maximum)

    acquisitions = ["variance", "integrated_variance", "expected_improvement", "upper_confidence_bound"]
    if quick:
        return [
            sensitivity(256, 4, False, False, "sensitivity n=256 k=4"),
            sensitivity(256, 0, True, False, "sensitivity n=256 second_order"),
            propagate(1024, 4, False, "propagate n=1024 k=4"),
            *[suggest(a, 2, False, False, f"suggest {a} q=2") for a in acquisitions],
        ]
    return [
        sensitivity(1024, 0, False, False, "sensitivity default n=1024 k=0"),
        sensitivity(8192, 50, False, False, "sensitivity typical n=8192 k=50"),
        propagate(8192, 50, False, "propagate typical n=8192 k=50"),
        *[suggest(a, 10, False, False, f"suggest {a} q=10") for a in acquisitions],
        *largest_cases(d, features, bounds, p=None),
    ]


def largest_cases(d: int, features: list[str], bounds: np.ndarray, p: int | None) -> list[Case]:
    """Each route's largest requests the served model's budget accepts (found as the routes find them)."""
    from handler import app
    from handler.api.analyses import AnalysisBudget

    served = app.model.get().model
    assert isinstance(served, PosteriorModel), "analyses need a posterior file"
    posterior = served.posterior
    p = posterior.woodbury_vector.shape[1] if p is None else p
    budget = AnalysisBudget(posterior, TIMEOUT_S)
    draws_available = budget.draws_unavailable() is None
    found: list[Case] = []

    def most(seconds_of: Any, limit: int) -> int:
        return budget.largest(seconds_of, limit)

    def memory_n(points_per_n: int, k: int) -> int:
        limit = ANALYSIS_MAX_VALUES // (d * points_per_n)
        return min(limit, ANALYSIS_MAX_DRAW_VALUES // (points_per_n * k * p)) if k else limit

    k_max = MAX_POSTERIOR_SAMPLES
    for second in (False, True):
        step = 2 * d + 2 if second else d + 2
        for k in (0, k_max) if not second else (0,):
            if k and not draws_available:
                continue
            n = most(lambda n, k=k, step=step: budget.sensitivity(n, step, k), min(ANALYSIS_MAX_N, memory_n(step, k)))
            if n >= 16:
                label = f"sensitivity largest n={n} k={k}" + (" second_order" if second else "")
                body: dict[str, Any] = {"n": n, "posterior_samples": k, "second_order": second, "seed": 1}
                found.append(Case("/sensitivity", label, body, f"{n * step:,} points x {max(k, 1)} x {p}", True))
    full = {
        "quantiles": [(i + 1) / (MAX_QUANTILES + 1) for i in range(MAX_QUANTILES)],
        "thresholds": [float(t) for t in np.linspace(-2.0, 2.0, MAX_THRESHOLDS)],
        "bins": MAX_BINS,
    }
    for k in (0, k_max):
        if k and not draws_available:
            continue
        n = most(
            lambda n, k=k: budget.propagate(n, k, MAX_QUANTILES, MAX_THRESHOLDS), min(PROPAGATE_MAX_N, memory_n(1, k))
        )
        if n >= 16:
            body = {"n": n, "posterior_samples": k, "seed": 1, **full}
            label = f"propagate largest n={n} k={k}, most quantiles/thresholds/bins"
            found.append(Case("/propagate", label, body, f"{n:,} points x {max(k, 1)} x {p}", True))
    found.append(Case("/propagate", "propagate defaults {}", {"seed": 1}, "the default n and draws", True))
    rng = np.random.default_rng(7)
    for acquisition in ("integrated_variance", "expected_improvement"):
        integrated = acquisition == "integrated_variance"
        pending = most(lambda c, i=integrated: budget.suggest(SUGGEST_MAX_Q, c, i, not i), SUGGEST_MAX_PENDING)
        q = SUGGEST_MAX_Q
        if budget.suggest(q, pending, integrated, not integrated) > budget.seconds:
            pending, q = 0, most(lambda q, i=integrated: budget.suggest(q, 0, i, not i), SUGGEST_MAX_Q)
        if q < 1:
            continue
        points = bounds[:, 0] + rng.random((pending, d)) * (bounds[:, 1] - bounds[:, 0])
        body = {"q": q, "acquisition": acquisition, "seed": 1}
        body["pending"] = [dict(zip(features, map(float, row), strict=True)) for row in points]
        if not integrated:
            body |= {"goal": "maximize", "output": app.model.manifest().outputs[0]}
        found.append(Case("/suggest", f"suggest {acquisition} q={q} pending={pending}", body, f"q = {q}", True))
    return found


def time_case(handler: Any, case: Case, repeats: int, warm_up: bool = True) -> tuple[float, float, int]:
    """Median wall and CPU seconds over `repeats` answers (after one warm-up answer), and how many were timed."""
    event = api_event(path=case.route, body=case.body)
    context = lambda_context()
    # what is measured is CPU, not the deadline: a busy machine's slow chunk must not look like a near deadline
    context.get_remaining_time_in_millis = lambda: 900_000

    def call() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        response = handler(event, context)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert response["statusCode"] == 200, f"{case.label}: {response['statusCode']} {response['body'][:500]}"
        return wall, cpu

    if not warm_up:
        wall, cpu = call()
        return wall, cpu, 1
    first_wall, _ = call()  # warm-up (and the check that the request is valid)
    repeats = max(1, min(repeats, int(120.0 / max(first_wall, 1e-9))))  # at most ~2 minutes a request
    walls, cpus = zip(*(call() for _ in range(repeats)), strict=True)
    return statistics.median(walls), statistics.median(cpus), repeats


WARM_UP = (
    ("/sensitivity", {"n": 64, "posterior_samples": 2, "second_order": True}),
    ("/propagate", {"n": 64, "posterior_samples": 2}),
    ("/suggest", {"q": 2, "acquisition": "integrated_variance"}),
)


def model_sizes(sizes: list[int], outputs: list[int], sparse: list[int], only: str | None, output: Path | None) -> int:
    """Each route's largest accepted request on synthetic models of each size and number of outputs: CPU seconds."""
    from handler import app
    from handler.api.analyses import AnalysisBudget
    from handler.gp.artifact import PackagedArtifact
    from handler.gp.model import LazyModel
    from tests.large_models import write_synthetic_model

    started, load_before = time.perf_counter(), load_average()
    rows, flagged = [], []
    models = [(m, p, False) for m in sizes for p in outputs] + [(m, 1, True) for m in sparse]
    for m, p, is_sparse in models:
        built = time.perf_counter()
        path = write_synthetic_model(MODELS_DIR, m, 4, p, sparse=is_sparse)
        app.model = LazyModel(PackagedArtifact(path))
        loaded = app.model.get()
        print(
            f"m = {m}, p = {p}{' sparse' if is_sparse else ''}: ready in {time.perf_counter() - built:.0f} s",
            flush=True,
        )
        manifest = loaded.manifest
        for route, body in WARM_UP:
            app.lambda_handler(api_event(path=route, body=body), lambda_context())
        assert isinstance(loaded.model, PosteriorModel)
        budget = AnalysisBudget(loaded.model.posterior, TIMEOUT_S)
        todo = largest_cases(len(manifest.features), list(manifest.features), manifest.bounds, p)
        for case in todo:
            if only and only not in case.label:
                continue
            estimate = _estimate(budget, case)
            wall, cpu, _ = time_case(app.lambda_handler, case, 1, warm_up=False)
            mark = " **over**" if cpu > FLAG_S else ""
            if mark:
                flagged.append(f"m={m} p={p}: {case.label}")
            kind = "sparse" if is_sparse else "exact"
            row = [
                f"{m:,} {kind}",
                str(p),
                case.route,
                case.label,
                f"{estimate:.2f}",
                f"{cpu:.2f}{mark}",
                f"{wall:.2f}",
            ]
            print(" | ".join(row), flush=True)
            rows.append(row)
    header = ["m", "outputs", "route", "largest accepted request", "estimated s", "CPU s", "wall s"]
    note = (
        f"`python benchmarks/analyses.py --sizes {','.join(map(str, sizes))} --outputs "
        f"{','.join(map(str, outputs))}` on {time.strftime('%Y-%m-%d %H:%M')} UTC, "
        f"{(time.perf_counter() - started) / 60:.0f} minutes, {os.cpu_count()}-core {platform.machine()}, BLAS threads "
        f"{THREADS}; synthetic exact RBF posteriors of 4 features (tests/large_models.py), one run each through "
        f"lambda_handler, warm. Budget {AnalysisBudget.__name__}: {budget.seconds:.1f} s estimated for the "
        f"{TIMEOUT_S:g} s timeout; a request is flagged when its CPU exceeds {FLAG_S:.1f} s (what a vCPU "
        f"{ARM_FACTOR:g}x slower would still answer within the timeout less {RESERVED_S:g} s). Load average before: "
        f"{load_before}; after: {load_average()} (CPU time is the steadier figure on a loaded machine)."
    )
    text = note + "\n\n" + table(header, rows)
    if flagged:
        text += "\nOver: " + "; ".join(flagged) + ".\n"
    publish(text, output, SIZES_SECTION)
    return 1 if flagged else 0


def _estimate(budget: Any, case: Case) -> float:
    body = case.body
    if case.route == "/sensitivity":
        d = budget.cost.d
        return float(
            budget.sensitivity(body["n"], 2 * d + 2 if body["second_order"] else d + 2, body["posterior_samples"])
        )
    if case.route == "/propagate":
        n = body.get("n", 4096)
        k = body.get("posterior_samples", 50)
        if "posterior_samples" not in body:  # the default: as many draws as fit, up to 50
            k = budget.largest(lambda draws: budget.propagate(n, draws, 3, 0), 50)
        return float(budget.propagate(n, k, len(body.get("quantiles", [0, 0, 0])), len(body.get("thresholds", []))))
    integrated = body["acquisition"] == "integrated_variance"
    return float(budget.suggest(body["q"], len(body.get("pending", [])), integrated, not integrated))


def calibrate() -> int:
    """Each term of the budget's flop model, timed against its estimate on synthetic models (one thread)."""
    from handler.analyses.budget import CostModel
    from handler.analyses.function_draws import PosteriorFunctionDraws, posterior_mean
    from handler.analyses.propagation import BOOTSTRAP_RESAMPLES as PROPAGATE_RESAMPLES
    from handler.analyses.propagation import propagate
    from handler.analyses.sensitivity import BOOTSTRAP_RESAMPLES, analyse
    from handler.gp.posterior import GPPosterior
    from tests.large_models import synthetic_arrays

    def cpu(action: Any, *args: Any) -> float:
        started = time.process_time()
        action(*args)
        return time.process_time() - started

    rows = []
    rng = np.random.default_rng(0)
    X = rng.random((20_000, 4))
    rbf: Any = None
    for m in (1000, 4000):
        arrays = synthetic_arrays(m, 4, 1)
        for kernel in ("RBF", "Matern52"):
            posterior = GPPosterior.from_arrays(kernel, arrays)
            cost = CostModel.of(posterior, 256)
            mean_s = cpu(posterior_mean, posterior, X)
            rows.append([f"{m}", kernel, "mean, 20,000 points", f"{cost.mean(len(X)):.2f}", f"{mean_s:.2f}"])
            if kernel == "RBF":  # the synthetic factor is the RBF's (another kernel's variance is refused as broken)
                variance = f"{cost.variance(len(X)):.2f}"
                both_s = cpu(posterior.predict, X)
                rows.append([f"{m}", kernel, "variance, 20,000 points", variance, f"{both_s - mean_s:.2f}"])
                rbf = posterior
        cost = CostModel.of(rbf, 256)
        started = time.process_time()
        draws = PosteriorFunctionDraws(rbf, 50, rng)
        setup_s = time.process_time() - started
        evaluate_s = cpu(draws.evaluate_with_mean, X[:4000])
        rows.append([f"{m}", "RBF", "draw setup, 50 draws", f"{cost.draw_setup(50, True):.2f}", f"{setup_s:.2f}"])
        rows.append([f"{m}", "RBF", "50 draws at 4,000 points", f"{cost.draws(4000, 50):.2f}", f"{evaluate_s:.2f}"])
    cost = CostModel(1000, 4, 1, False, 256)
    points = 4096 * 6
    outputs, sampled = rng.standard_normal(points), rng.standard_normal((points, 50))
    for k, values in ((0, None), (50, sampled)):
        estimate = cost.sensitivity_statistics(points, k, BOOTSTRAP_RESAMPLES)
        measured = cpu(analyse, outputs, values, 4, False, 1)
        rows.append(["-", "-", f"Sobol' indices of {points:,} values, k = {k}", f"{estimate:.2f}", f"{measured:.2f}"])
    outputs = rng.standard_normal(65_536)
    quantiles, thresholds = list(np.linspace(0.01, 0.99, 99)), list(np.linspace(-2, 2, 100))
    estimate = cost.propagate_statistics(len(outputs), 0, PROPAGATE_RESAMPLES, 99, 100)
    measured = cpu(propagate, outputs, None, quantiles, thresholds, 200, rng)
    rows.append(
        ["-", "-", "propagation statistics, 99 quantiles, 100 thresholds", f"{estimate:.2f}", f"{measured:.2f}"]
    )
    print(table(["m", "kernel", "term", "estimated s", "CPU s"], rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed answers per request, after one warm-up")
    parser.add_argument("--quick", action="store_true", help="small requests, one repeat")
    parser.add_argument("--only", help="time only the requests whose label contains this")
    parser.add_argument("--output", type=Path, help="markdown file to (re)write its section in: benchmarks/results.md")
    parser.add_argument("--sizes", help="synthetic models of these m (comma-separated): each route's largest request")
    parser.add_argument("--outputs", default="1", help="with --sizes: numbers of outputs (comma-separated)")
    parser.add_argument("--sparse", default="", help="with --sizes: sparse models of these m as well")
    parser.add_argument("--calibrate", action="store_true", help="time the budget's terms against their estimates")
    args = parser.parse_args(argv)
    if args.calibrate:
        return calibrate()
    if args.sizes:
        sizes, outputs = [int(v) for v in args.sizes.split(",")], [int(v) for v in args.outputs.split(",")]
        sparse = [int(v) for v in args.sparse.split(",") if v]
        return model_sizes(sizes, outputs, sparse, args.only, args.output)

    from handler import app

    manifest = app.model.manifest()
    app.model.get()
    features = list(manifest.features)
    d = len(features)
    todo = cases(d, features, np.asarray(manifest.bounds, dtype=float), args.quick)
    if args.only:
        todo = [case for case in todo if args.only in case.label]
    repeats = 1 if args.quick else args.repeats
    # Each route once, small, so imports and first-use costs are out of the numbers
    for route, body in (*WARM_UP, ("/suggest", {"q": 2, "acquisition": "expected_improvement", "goal": "maximize"})):
        response = app.lambda_handler(api_event(path=route, body=body), lambda_context())
        assert response["statusCode"] == 200, response["body"][:500]

    load_before = load_average()
    started = time.perf_counter()
    rows, flagged = [], []
    print(f"BLAS threads: {THREADS}; load average before: {load_before}", flush=True)
    for case in todo:
        wall, cpu, timed = time_case(app.lambda_handler, case, repeats)
        load = load_average()
        # CPU time: on one thread it is what an idle vCPU's wall time would be; wall time here includes the load
        mark = f" **over {FLAG_S:.1f} s**" if case.maximum and cpu > FLAG_S else ""
        if mark:
            flagged.append(case.label)
        row = [case.route, case.label, f"{wall:.2f}", f"{cpu:.2f}{mark}", str(timed), case.evaluations, load]
        print(" | ".join(row), flush=True)
        rows.append(row)
    load_after = load_average()

    header = ["route", "request", "wall s (median)", "CPU s (median)", "repeats", "evaluations", "load (1, 5, 15 min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    cpus = os.cpu_count()
    libraries = ", ".join(f"{name} {version(name)}" for name in ("numpy", "aws-lambda-powertools", "pydantic"))
    note = (
        f"`python benchmarks/analyses.py{' --quick' if args.quick else ''}` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"UTC, {(time.perf_counter() - started) / 60:.0f} minutes, {cpus}-core {platform.machine()} machine, "
        f"BLAS threads {THREADS} (Python {platform.python_version()}; {libraries}); model "
        f"`{Path(os.environ['MODEL_PATH']).name}` ({manifest.name}, d = {d}, "
        f"n_train = {manifest.document.get('n_train')}). "
        f"Through lambda_handler, warm; medians of repeats after one warm-up. Load average (1, 5, 15 min) "
        f"before: {load_before}; after: {load_after}; each row's is taken after it. The function's timeout is "
        f"{TIMEOUT_S:g} s; a largest accepted request over {FLAG_S:.1f} s of CPU is flagged (on one thread, CPU "
        "time is what an idle vCPU's wall time would be; wall time includes whatever else the machine runs)."
    )
    text = note + "\n\n" + "\n".join(lines) + "\n"
    if flagged:
        text += f"\nOver {FLAG_S:.1f} s single-threaded: " + "; ".join(flagged) + ".\n"
    publish(text, args.output, SECTION)
    print(json.dumps({"flagged": flagged}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
