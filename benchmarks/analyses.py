"""Seconds per analysis request (/sensitivity, /propagate, /suggest) on the shipped model, on one thread.

Each request goes through handler.app.lambda_handler as an API Gateway event (tests/events.py), warm (the model
loaded and each route answered once), as benchmarks/performance.py measures /predict. BLAS runs on one thread
(OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, set before numpy is imported): Lambda at 1769 MB has about one vCPU.
Times are medians of repeats, wall and CPU (process time): on a loaded machine the CPU time is the steadier.

Requests: typical sizes (sensitivity n = 8192, posterior_samples = 50; propagate n = 8192, 50 draws; suggest
q = 10 for each acquisition) and each route's maxima in handler/api/limits.py (the largest n without draws, the
most draws ANALYSIS_DRAW_BUDGET allows, second-order indices, q = SUGGEST_MAX_Q with SUGGEST_MAX_PENDING
pending points, integrated variance at q = SUGGEST_MAX_Q). Requests over ~10 s are flagged against the
function's 15 s timeout.

    python benchmarks/analyses.py                         # ~10-20 minutes on a quiet machine
    python benchmarks/analyses.py --quick                 # small sizes, one repeat (to show it still runs)
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

from benchmarks.report import publish  # noqa: E402
from handler.api.limits import (  # noqa: E402
    ANALYSIS_MAX_N,
    MAX_BINS,
    MAX_POSTERIOR_SAMPLES,
    MAX_QUANTILES,
    MAX_THRESHOLDS,
    PROPAGATE_MAX_N,
    SUGGEST_MAX_PENDING,
    SUGGEST_MAX_Q,
)
from handler.config import load_settings  # noqa: E402
from tests.events import api_event, lambda_context  # noqa: E402

TIMEOUT_S = 15.0  # the function's timeout (template.yaml)
FLAG_S = 10.0  # a maximum over this leaves too little room under the timeout on a slower or busier vCPU
SECTION = "Analyses: seconds per request (benchmarks/analyses.py)"


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
    budget = load_settings().analysis_draw_budget
    k_max = MAX_POSTERIOR_SAMPLES
    n_k_max = budget // ((d + 2) * k_max)  # the largest n at the most draws
    n2_k_max = budget // ((2 * d + 2) * k_max)
    k_n_max = budget // ((d + 2) * ANALYSIS_MAX_N)  # the most draws at the largest n
    p_n_k_max = budget // k_max
    p_k_n_max = budget // PROPAGATE_MAX_N
    return [
        sensitivity(1024, 0, False, False, "sensitivity default n=1024 k=0"),
        sensitivity(8192, 50, False, False, "sensitivity typical n=8192 k=50"),
        sensitivity(ANALYSIS_MAX_N, 0, False, True, f"sensitivity max n={ANALYSIS_MAX_N} k=0"),
        sensitivity(ANALYSIS_MAX_N, 0, True, True, f"sensitivity max n={ANALYSIS_MAX_N} k=0 second_order"),
        sensitivity(n_k_max, k_max, False, True, f"sensitivity max k={k_max} n={n_k_max}"),
        sensitivity(ANALYSIS_MAX_N, k_n_max, False, True, f"sensitivity max n={ANALYSIS_MAX_N} k={k_n_max}"),
        sensitivity(n2_k_max, k_max, True, True, f"sensitivity max k={k_max} n={n2_k_max} second_order"),
        propagate(8192, 50, False, "propagate typical n=8192 k=50"),
        propagate(PROPAGATE_MAX_N, 0, True, f"propagate max n={PROPAGATE_MAX_N} k=0"),
        propagate(
            PROPAGATE_MAX_N, 0, True, f"propagate max n={PROPAGATE_MAX_N} k=0, most quantiles/thresholds/bins", True
        ),
        propagate(p_n_k_max, k_max, True, f"propagate max k={k_max} n={p_n_k_max}"),
        propagate(PROPAGATE_MAX_N, p_k_n_max, True, f"propagate max n={PROPAGATE_MAX_N} k={p_k_n_max}"),
        propagate(
            PROPAGATE_MAX_N,
            p_k_n_max,
            True,
            f"propagate max n={PROPAGATE_MAX_N} k={p_k_n_max}, most quantiles/thresholds/bins",
            True,
        ),
        *[suggest(a, 10, False, False, f"suggest {a} q=10") for a in acquisitions],
        suggest("integrated_variance", SUGGEST_MAX_Q, False, True, f"suggest integrated_variance q={SUGGEST_MAX_Q}"),
        *[
            suggest(a, SUGGEST_MAX_Q, True, True, f"suggest {a} q={SUGGEST_MAX_Q} pending={SUGGEST_MAX_PENDING}")
            for a in acquisitions
        ],
    ]


def time_case(handler: Any, case: Case, repeats: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds over `repeats` answers (after one warm-up answer), and how many were timed."""
    event = api_event(path=case.route, body=case.body)
    context = lambda_context()

    def call() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        response = handler(event, context)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert response["statusCode"] == 200, f"{case.label}: {response['statusCode']} {response['body'][:500]}"
        return wall, cpu

    first_wall, _ = call()  # warm-up (and the check that the request is valid)
    repeats = max(1, min(repeats, int(120.0 / max(first_wall, 1e-9))))  # at most ~2 minutes a request
    walls, cpus = zip(*(call() for _ in range(repeats)), strict=True)
    return statistics.median(walls), statistics.median(cpus), repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed answers per request, after one warm-up")
    parser.add_argument("--quick", action="store_true", help="small requests, one repeat")
    parser.add_argument("--only", help="time only the requests whose label contains this")
    parser.add_argument("--output", type=Path, help="markdown file to (re)write its section in: benchmarks/results.md")
    args = parser.parse_args(argv)

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
    for route, body in (
        ("/sensitivity", {"n": 64, "posterior_samples": 2, "second_order": True}),
        ("/propagate", {"n": 64, "posterior_samples": 2}),
        ("/suggest", {"q": 2, "acquisition": "integrated_variance"}),
        ("/suggest", {"q": 2, "acquisition": "expected_improvement", "goal": "maximize"}),
    ):
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
        mark = " **over 10 s**" if case.maximum and cpu > FLAG_S else ""
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
        f"{TIMEOUT_S:g} s; a documented maximum over {FLAG_S:g} s of CPU is flagged (on one thread, CPU time is "
        "what an idle vCPU's wall time would be; wall time includes whatever else the machine runs)."
    )
    text = note + "\n\n" + "\n".join(lines) + "\n"
    if flagged:
        text += "\nOver 10 s single-threaded: " + "; ".join(flagged) + ".\n"
    publish(text, args.output, SECTION)
    print(json.dumps({"flagged": flagged}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
