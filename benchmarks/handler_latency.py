"""Cold start, warm latency and peak memory of the handler, side by side with GPy's own predict.

Every figure is a median of repeats taken in this one run; compare ratios, not absolute times.

    python benchmarks/handler_latency.py            # full run
    python benchmarks/handler_latency.py --quick    # a smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLD_START = """
import json, resource, sys, time
t0 = time.perf_counter()
from handler.app import lambda_handler
t1 = time.perf_counter()
from tests.events import api_event, lambda_context
event = api_event(body=[{"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}] * int(sys.argv[1]))
t2 = time.perf_counter()
response = lambda_handler(event, lambda_context())
t3 = time.perf_counter()
assert response["statusCode"] == 200, response
peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"import": t1 - t0, "first_request": t3 - t2, "peak_rss_mb": peak_rss_mb}))
"""

GPY_BASELINE = """
import json, pickle, time
t0 = time.perf_counter()
import GPy
t1 = time.perf_counter()
with open("model_artifacts/pretrained-model.pkl", "rb") as handle:
    pickle.load(handle)
t2 = time.perf_counter()
print(json.dumps({"gpy_import": t1 - t0, "unpickle": t2 - t1}))
"""


def fresh_process(code: str, *args: str) -> dict[str, float]:
    output = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def median_time(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats, for CI")
    args = parser.parse_args()
    cold_repeats, single_repeats, batch_repeats = (1, 5, 2) if args.quick else (5, 300, 30)

    import numpy as np

    from handler.app import lambda_handler, model
    from tests.events import api_event, lambda_context

    rows: list[tuple[str, str]] = []
    cold = [fresh_process(COLD_START, "1") for _ in range(cold_repeats)]
    baseline = [fresh_process(GPY_BASELINE) for _ in range(cold_repeats)]
    cold_import = statistics.median(c["import"] for c in cold)
    cold_first = statistics.median(c["first_request"] for c in cold)
    gpy_import = statistics.median(b["gpy_import"] for b in baseline)
    unpickle = statistics.median(b["unpickle"] for b in baseline)
    rows += [
        ("cold: import handler.app", f"{cold_import * 1e3:.0f} ms"),
        ("cold: first request (loads GPy + model)", f"{cold_first * 1e3:.0f} ms"),
        ("cold: total", f"{(cold_import + cold_first) * 1e3:.0f} ms"),
        ("reference: GPy import + unpickle alone", f"{(gpy_import + unpickle) * 1e3:.0f} ms"),
        ("cold total / (GPy import + unpickle)", f"{(cold_import + cold_first) / (gpy_import + unpickle):.2f}x"),
    ]

    gp = model.get().model.gp  # type: ignore[attr-defined]
    context = lambda_context()
    rng = np.random.default_rng(0)
    for n, repeats in ((1, single_repeats), (1000, batch_repeats)):
        X = rng.uniform(size=(n, 4))
        body = [dict(zip(("x1", "x2", "x3", "x4"), map(float, row), strict=True)) for row in X]
        event = api_event(body=body[0] if n == 1 else body)
        handler_s = median_time(lambda event=event: lambda_handler(event, context), repeats)
        gpy_s = median_time(lambda X=X: gp.predict(X), repeats)
        label = "1 point" if n == 1 else f"{n}-point batch"
        rows += [
            (f"warm handler, {label}", f"{handler_s * 1e3:.2f} ms"),
            (f"GPy predict, {label}", f"{gpy_s * 1e3:.2f} ms"),
            (f"handler / GPy predict, {label}", f"{handler_s / gpy_s:.2f}x"),
        ]

    largest = "100" if args.quick else "10000"
    peak = fresh_process(COLD_START, largest)
    rows.append((f"peak RSS, fresh process, {largest}-point batch", f"{peak['peak_rss_mb']:.0f} MB"))

    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
