"""Speed, memory and cold start of the service, side by side with GPy and with the seed's Flask service.

One run measures everything below and prints ratios of medians over repeats (the machine is
noisy: compare ratios taken in the same run, not absolute times), then writes the tables to
benchmarks/results.md. Models at n = 200, 1000 and 3000 are trained by scripts/train_model.py
(one optimisation of 50 iterations: speed does not depend on how well they fit) and cached in
~/.cache/gpr-surrogate-benchmarks/.

    python benchmarks/performance.py            # full run, ~10 minutes
    python benchmarks/performance.py --quick    # small sizes, few repeats (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# This benchmarks the Park example (its points are Park's), whatever model_artifacts/ holds: its posterior file is
# kept beside its pickle under tests/data/park/. Fresh processes started here inherit the setting.
os.environ.setdefault("MODEL_PATH", str(ROOT / "tests" / "data" / "park" / "park-posterior.npz"))

from handler.gp import posterior as posterior_module  # noqa: E402
from handler.gp.gpy_model import GPRegressionModel  # noqa: E402
from scripts.train_model import FEATURES, train  # noqa: E402
from tests.events import api_event, lambda_context  # noqa: E402

# The Park example as GPy pickled it (the GPy baselines need the pickle; the service serves its posterior file)
SHIPPED_MODEL = ROOT / "tests" / "data" / "park" / "pretrained-model.pkl"
POINT = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}

COLD_HANDLER = """
import json, sys, time
t0 = time.perf_counter()
from handler.app import lambda_handler
t1 = time.perf_counter()
from tests.events import api_event, lambda_context
points = int(sys.argv[1])
point = {"x1": 0.51, "x2": 0.76, "x3": 0.94, "x4": 0.72}
event = api_event(body=point if points == 1 else [point] * points)
t2 = time.perf_counter()
response = lambda_handler(event, lambda_context())
t3 = time.perf_counter()
assert response["statusCode"] == 200, response["body"][:300]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
with open("/proc/self/status") as status:
    peak_rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
print(json.dumps({"import": t1 - t0, "first_request": t3 - t2, "peak_rss": peak_rss}))
"""

COLD_GPY = """
import json, pickle, sys, time
t0 = time.perf_counter()
import GPy
t1 = time.perf_counter()
with open(sys.argv[1], "rb") as handle:
    pickle.load(handle)
t2 = time.perf_counter()
print(json.dumps({"gpy_import": t1 - t0, "unpickle": t2 - t1}))
"""


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, bool]] = field(default_factory=list)

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        lines = [f"### {title}", ""] + ([note, ""] if note else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        text = "\n".join(lines) + "\n"
        print(text, flush=True)
        self.sections.append(text)

    def target(self, name: str, measured: str, met: bool) -> None:
        self.targets.append((name, measured, met))


def median_seconds(function: Callable[[], Any], repeats: int, budget_s: float = 20.0) -> float:
    """Median wall time of `repeats` calls after one warm-up; fewer repeats where they would exceed the budget."""
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    repeats = max(1, min(repeats, int(budget_s / max(first, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(function: Callable[[], Any]) -> int:
    """The most memory allocated at once while `function` runs (numpy reports its buffers to tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def fresh_process(code: str, *args: str) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.01 else f"{seconds * 1e3:,.1f} ms"


def mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size < 1e9 else f"{size / 1e9:.2f} GB"


def trained_model(n_train: int, models_dir: Path) -> Path:
    path = models_dir / f"park-n{n_train}.pkl"
    if not path.exists():
        print(f"training a model on {n_train} points (cached in {models_dir}) ...", flush=True)
        train(path, n_train=n_train, n_holdout=200, restarts=0, seed=n_train, max_iters=50, gpy_route=True)
    return path


def seed_flask_app(model_path: Path) -> Any:
    """The seed service as its README showed it: Flask, and a route that calls GPy's predict."""
    import pickle

    from flask import Flask, jsonify, request

    with model_path.open("rb") as handle:
        gp = pickle.load(handle)
    flask_app = Flask("seed")

    @flask_app.route("/predict", methods=["POST"])
    def predict() -> Any:
        data = request.get_json()
        x = np.array([[data["x1"], data["x2"], data["x3"], data["x4"]]])
        mean, variance = gp.predict(x)
        return jsonify({"mean": float(mean[0, 0]), "variance": float(variance[0, 0])})

    return flask_app


def single_request(report: Report, repeats: int) -> None:
    """(a) the seed's Flask service vs (b) our handler, one point per request, warm; and where (b)'s time goes."""
    from handler import app as handler_app
    from handler.api.parsing import RequestParser

    client = seed_flask_app(SHIPPED_MODEL).test_client()
    flask_s = median_seconds(lambda: client.post("/predict", json=POINT), repeats)
    event, context = api_event(body=POINT), lambda_context()
    loaded = handler_app.model.get()
    handler_s = median_seconds(lambda: handler_app.lambda_handler(event, context), repeats)

    body = json.dumps(POINT)
    X = np.array([[POINT[k] for k in FEATURES]])
    parser = RequestParser(tuple(FEATURES), max_batch_size=10_000, max_body_bytes=2**20)
    parse_s = median_seconds(lambda: parser.parse(body), repeats)
    predict_s = median_seconds(lambda: loaded.model.predict(X), repeats)
    serialise_s = median_seconds(lambda: handler_app._to_json({"mean": 16.62, "variance": 4.9e-7}), repeats)
    rest_s = handler_s - parse_s - predict_s - serialise_s
    report.table(
        "Single-point request, warm (shipped model, n = 200)",
        ["what", "median", "ratio"],
        [
            ["(a) seed service: Flask test_client + GPy predict", ms(flask_s), "1"],
            ["(b) our handler: API Gateway event in, proxy response out", ms(handler_s), f"{handler_s / flask_s:.2f}"],
            ["(b) parse and validate the body", ms(parse_s), f"{parse_s / handler_s:.0%} of (b)"],
            ["(b) predict (fast path)", ms(predict_s), f"{predict_s / handler_s:.0%} of (b)"],
            ["(b) serialise the answer", ms(serialise_s), f"{serialise_s / handler_s:.0%} of (b)"],
            [
                "(b) the rest: Powertools routing, logging context, response",
                ms(rest_s),
                f"{rest_s / handler_s:.0%} of (b)",
            ],
        ],
    )
    report.target(
        "warm single-point request: at most 1/3 of the seed's Flask + GPy",
        f"{handler_s / flask_s:.2f}",
        handler_s <= flask_s / 3,
    )


def fast_path_vs_gpy(report: Report, sizes: list[int], counts: list[int], models_dir: Path, repeats: int) -> None:
    """(c) GPy predict vs our fast path, and (e) the peak memory of each."""
    rows = []
    for n_train in sizes:
        model = GPRegressionModel.load(trained_model(n_train, models_dir))
        gp = model.gp
        for count in counts:
            X = np.random.default_rng(count).uniform(size=(count, len(FEATURES)))
            gpy_call, fast_call = partial(gp.predict, X), partial(model.predict, X)
            gpy_s = median_seconds(gpy_call, repeats, budget_s=60)
            fast_s = median_seconds(fast_call, repeats)
            gpy_peak, fast_peak = peak_bytes(gpy_call), peak_bytes(fast_call)
            ratio = gpy_s / fast_s
            rows.append(
                [str(n_train), f"{count:,}", ms(gpy_s), ms(fast_s), f"{ratio:.1f}x", mb(gpy_peak), mb(fast_peak)]
            )
            if count == 10_000:
                report.target(f"fast path >= 2x GPy predict, 10,000 points, n = {n_train}", f"{ratio:.1f}x", ratio >= 2)
            if count == 1 and n_train == 200:
                report.target("fast path >= 5x GPy predict, 1 point, n = 200", f"{ratio:.1f}x", ratio >= 5)
            if count == 100_000 and n_train == 3000:
                report.target("peak memory, 100,000 points at n = 3000: under 0.5 GB", mb(fast_peak), fast_peak < 0.5e9)
    report.table(
        "GPy `predict` vs the fast path",
        ["n train", "points", "GPy predict", "fast path", "speed-up", "GPy peak memory", "fast path peak memory"],
        rows,
        note="Peak memory: the most allocated at once during the call (tracemalloc, to which numpy reports).",
    )


def end_to_end(report: Report, count: int, repeats: int) -> None:
    """(d) our handler for a large batch, as rows and as columns, vs the fast path alone; (e) peak memory."""
    from handler import app as handler_app

    X = np.random.default_rng(1).uniform(size=(count, len(FEATURES)))
    bodies = {
        "rows": [dict(zip(FEATURES, map(float, row), strict=True)) for row in X],
        "columns": {name: X[:, i].tolist() for i, name in enumerate(FEATURES)},
    }
    loaded = handler_app.model.get()
    context = lambda_context()
    gp = GPRegressionModel.load(SHIPPED_MODEL).gp  # the same Park model, as GPy pickled it
    fast_s = median_seconds(lambda: loaded.model.predict(X), repeats)
    gpy_s = median_seconds(partial(gp.predict, X), repeats)
    rows = [
        ["fast path alone", ms(fast_s), "1", mb(peak_bytes(lambda: loaded.model.predict(X)))],
        [
            "GPy predict alone, for reference",
            ms(gpy_s),
            f"{gpy_s / fast_s:.2f}",
            mb(peak_bytes(partial(gp.predict, X))),
        ],
    ]
    for shape, body in bodies.items():
        event = api_event(body=body)
        response = handler_app.lambda_handler(event, context)
        assert response["statusCode"] == 200, response["body"][:300]
        handler_s = median_seconds(lambda event=event: handler_app.lambda_handler(event, context), repeats)
        peak = peak_bytes(lambda event=event: handler_app.lambda_handler(event, context))
        size = f"{len(event['body']) / 1e6:.2f} MB in, {len(response['body']) / 1e6:.2f} MB out"
        rows.append([f"handler, {shape} ({size})", ms(handler_s), f"{handler_s / fast_s:.2f}", mb(peak)])
        report.target(
            f"{count:,}-point request end to end, {shape}: at most 1.5x the fast path alone",
            f"{handler_s / fast_s:.2f}x",
            handler_s <= 1.5 * fast_s,
        )
    report.table(
        f"A {count:,}-point request end to end (shipped model, n = 200)",
        ["what", "median", "ratio to fast path", "peak memory"],
        rows,
    )


def cold_start(report: Report, repeats: int, largest_batch: int) -> None:
    """(f) a fresh process: import + first request, vs GPy's own import + unpickle; and its peak RSS."""
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved, so drift in the machine's speed hits both alike
        ours.append(fresh_process(COLD_HANDLER, "1"))
        theirs.append(fresh_process(COLD_GPY, str(SHIPPED_MODEL)))
    total = statistics.median(o["import"] + o["first_request"] for o in ours)
    baseline = statistics.median(t["gpy_import"] + t["unpickle"] for t in theirs)
    report.table(
        f"Cold start in fresh processes (shipped model, median of {repeats})",
        ["what", "median", "ratio"],
        [
            ["GPy import", ms(statistics.median(t["gpy_import"] for t in theirs)), ""],
            ["unpickle the model", ms(statistics.median(t["unpickle"] for t in theirs)), ""],
            ["GPy import + unpickle (baseline)", ms(baseline), "1"],
            ["our handler: import `handler.app`", ms(statistics.median(o["import"] for o in ours)), ""],
            [
                "our handler: first request (imports GPy, loads, predicts)",
                ms(statistics.median(o["first_request"] for o in ours)),
                "",
            ],
            ["our handler: import + first request", ms(total), f"{total / baseline:.2f}"],
        ],
    )
    single_rss = statistics.median(o["peak_rss"] for o in ours)
    largest_rss = fresh_process(COLD_HANDLER, str(largest_batch))["peak_rss"]
    report.table(
        "Peak resident memory of a fresh process (what the function's MemorySize must hold)",
        ["first request", "peak RSS"],
        [
            ["1 point", mb(int(single_rss))],
            [f"{largest_batch:,} points (the largest batch allowed), as rows", mb(int(largest_rss))],
        ],
    )
    report.target(
        "cold start: at most 1.1x (GPy import + unpickle)", f"{total / baseline:.2f}x", total <= 1.1 * baseline
    )


def chunk_budgets(report: Report, models_dir: Path, repeats: int) -> None:
    """Speed and memory of the fast path against its chunk budget: how CHUNK_BYTES was chosen."""
    rows = []
    default = posterior_module.CHUNK_BYTES
    for n_train in (1000, 3000):
        model = GPRegressionModel.load(trained_model(n_train, models_dir))
        X = np.random.default_rng(0).uniform(size=(20_000, len(FEATURES)))
        for budget_mib in (4, 16, 32, 64, 128, 512):
            posterior_module.CHUNK_BYTES = budget_mib * 2**20
            call = partial(model.predict, X)
            try:
                rows.append(
                    [str(n_train), f"{budget_mib} MiB", ms(median_seconds(call, repeats)), mb(peak_bytes(call))]
                )
            finally:
                posterior_module.CHUNK_BYTES = default
    report.table(
        "The fast path against its chunk budget (20,000 points)",
        ["n train", "CHUNK_BYTES", "median", "peak memory"],
        rows,
        note=f"The service uses {default // 2**20} MiB.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats, to show the script still runs"
    )
    parser.add_argument("--output", type=Path, help="markdown file (default: benchmarks/results.md; none with --quick)")
    # Outside the repository: sam build packages the whole project folder, and these pickles reach 200 MB.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpr-surrogate-benchmarks"
    parser.add_argument("--models-dir", type=Path, default=cache)
    args = parser.parse_args()
    output = args.output or (None if args.quick else ROOT / "benchmarks" / "results.md")
    if args.quick:
        sizes, counts, batch, repeats, cold_repeats = [50], [1, 100], 1_000, 3, 1
    else:
        sizes, counts, batch, repeats, cold_repeats = [200, 1000, 3000], [1, 100, 10_000, 100_000], 10_000, 30, 7
    args.models_dir.mkdir(parents=True, exist_ok=True)

    report = Report()
    started = time.perf_counter()
    single_request(report, repeats=repeats * 20)
    fast_path_vs_gpy(report, sizes, counts, args.models_dir, repeats)
    end_to_end(report, batch, repeats)
    cold_start(report, cold_repeats, largest_batch=1_000 if args.quick else 10_000)
    if not args.quick:
        chunk_budgets(report, args.models_dir, repeats=5)
    report.table(
        "Targets",
        ["target", "measured", ""],
        [[name, measured, "met" if met else "**missed**"] for name, measured, met in report.targets],
    )

    if output:
        libraries = ", ".join(
            f"{name} {version(name)}" for name in ("numpy", "scipy", "GPy", "aws-lambda-powertools", "orjson")
        )
        header = (
            "# Benchmark results\n\n"
            f"`python benchmarks/performance.py` on {time.strftime('%Y-%m-%d')}, "
            f"{(time.perf_counter() - started) / 60:.0f} minutes, on a 2-core {platform.machine()} machine "
            f"(Python {platform.python_version()}; {libraries}). Times are medians of repeats; "
            "compare the ratios, which come from this one run.\n\n"
        )
        # Sections other scripts wrote (`## ` headings: benchmarks/analyses.py and others' --output) are kept
        kept = output.read_text().split("\n## ", 1) if output.exists() else []
        others = "\n## " + kept[1] if len(kept) > 1 else ""
        output.write_text(header + "\n".join(report.sections) + others)
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
