"""Cold start: a fresh process to its first /predict answer, against GPy's own import + unpickle + predict.

Both sides are fresh Python processes timed from the parent (interpreter start included), alternated so both see
the same machine; the answer is the median of the ratios of each pair. The service side imports `handler.app`
and answers one API Gateway event for the packaged model (whatever `model_artifacts/` holds); the GPy side
imports GPy, unpickles the same model's source pickle and predicts the same point.

    python benchmarks/cold_start.py [--pickle tests/data/park/pretrained-model.pkl] [--repeats 11]
        [--worker] [--tree PATH]

--worker times the job worker instead (import it, load the model, predict one point: what a scaled-out worker
pays before its first chunk); --tree times another checkout's code and model (e.g. a worktree of an older commit).
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
DEFAULT_PICKLE = ROOT / "tests" / "data" / "park" / "pretrained-model.pkl"

SERVICE = r"""
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import handler.app as app
from tests.events import api_event, lambda_context
imported = time.perf_counter()
manifest = app.model.manifest()
point = {f: float(sum(b) / 2) for f, b in zip(manifest.features, manifest.bounds.tolist())}
response = app.lambda_handler(api_event(body=point), lambda_context())
assert response["statusCode"] == 200, response
answered = time.perf_counter()
print(json.dumps({"import": imported - started, "first_request": answered - imported,
                  "modules": sorted(m for m in ("GPy", "paramz", "scipy") if m in sys.modules)}))
"""

WORKER = r"""
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import numpy as np
try:
    from handler.jobs import worker
except ImportError:  # before handler/ had its parts
    from handler import worker
imported = time.perf_counter()
loaded = worker.model.get()
point = loaded.manifest.bounds.mean(axis=1)[None, :]
loaded.model.predict(point)
answered = time.perf_counter()
print(json.dumps({"import": imported - started, "first_request": answered - imported,
                  "modules": sorted(m for m in ("GPy", "paramz", "scipy") if m in sys.modules)}))
"""

GPY = r"""
import json, pickle, sys, time
import numpy as np
started = time.perf_counter()
import GPy
imported = time.perf_counter()
with open(sys.argv[1], "rb") as handle:
    gp = pickle.load(handle)
loaded = time.perf_counter()
low, high = gp.X.min(axis=0), gp.X.max(axis=0)
gp.predict(((low + high) / 2)[None, :])
answered = time.perf_counter()
print(json.dumps({"import": imported - started, "unpickle": loaded - imported, "predict": answered - loaded}))
"""


def timed(code: str, *args: str) -> tuple[float, dict]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR"},
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return wall, json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pickle", type=Path, default=DEFAULT_PICKLE, help="the packaged model's GPy pickle")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--worker", action="store_true", help="time the job worker's cold start instead")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose code and model to time")
    args = parser.parse_args(argv)
    code, tree = (WORKER if args.worker else SERVICE), str(args.tree.resolve())
    timed(GPY, str(args.pickle))  # warm the file cache for both
    timed(code, tree)
    service, gpy, ratios = [], [], []
    for _ in range(args.repeats):
        s, detail = timed(code, tree)
        g, _ = timed(GPY, str(args.pickle))
        service.append(s)
        gpy.append(g)
        ratios.append(s / g)
    what = "job worker, model loaded and one point predicted" if args.worker else "service, first /predict answer"
    print(f"medians of {args.repeats} alternating fresh processes, wall time from process start ({tree})")
    modules = detail["modules"] or "none"
    print(f"  {what}: {statistics.median(service):.3f} s (imports {modules} of GPy, paramz, scipy)")
    print(f"  GPy import + unpickle + predict: {statistics.median(gpy):.3f} s")
    print(f"  ratio (median of paired ratios): {statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]")


if __name__ == "__main__":
    main()
