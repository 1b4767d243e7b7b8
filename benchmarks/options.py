"""What each optimiser option costs against a plain prediction, and the plain path's speed against another commit.

1. In one warm process, interleaved, medians of --repeats: POST /predict plain, with include=std,interval,
   include=gradient, include=covariance, POST /sample (100 draws), and the V2 infer route, for 1, 100 and
   1,000 points of the packaged model, through the handler (parsing, prediction, JSON), as ratios to plain.
2. With --ab REF: the plain single point and 10,000-point batch in fresh processes, alternating between
   this tree and REF checked out in a temporary worktree: what the options cost the path that does not use them.

    python benchmarks/options.py [--repeats 30] [--ab HEAD~1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIMING = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from handler import app
from tests.events import api_event, lambda_context

repeats = int(sys.argv[2])
cases = json.loads(sys.argv[3])
manifest = app.model.manifest()
rng = np.random.default_rng(0)
low, high = manifest.bounds[:, 0], manifest.bounds[:, 1]


def event(case, n):
    points = low + (high - low) * rng.uniform(size=(n, len(manifest.features)))
    columns = {f: points[:, i].tolist() for i, f in enumerate(manifest.features)}
    point = {f: float(points[0, i]) for i, f in enumerate(manifest.features)}
    body = point if n == 1 else columns
    query = None
    path = "/predict"
    if case == "std,interval" or case == "gradient" or case == "covariance":
        query = {"include": case}
    elif case == "sample":
        path, body = "/sample", {"points": columns, "samples": 100, "seed": 1}
    elif case == "v2":
        path = f"/v2/models/{manifest.name}/infer"
        body = {"inputs": [{"name": "input", "shape": [n, len(manifest.features)], "datatype": "FP64",
                            "data": points.ravel().tolist()}]}
    e = api_event("POST", path, body)
    e["queryStringParameters"] = query
    return e


timings = {}
for n in (1, 100, 1000, 10000):
    events = {case: event(case, n) for case in cases if not (n == 10000 and case != "plain")}
    for case, e in events.items():  # warm: model, BLAS, caches
        app.lambda_handler(e, lambda_context())
    samples = {case: [] for case in events}
    for _ in range(repeats):
        for case, e in events.items():
            started = time.perf_counter()
            response = app.lambda_handler(e, lambda_context())
            samples[case].append(time.perf_counter() - started)
            samples[case + ":status"] = response["statusCode"]
    for case in events:
        timings[f"{case}@{n}"] = (statistics.median(samples[case]), samples[case + ":status"])
print("RESULT" + json.dumps(timings))
"""

CASES = ["plain", "std,interval", "gradient", "covariance", "sample", "v2"]


def run(tree: Path, repeats: int, cases: list[str]) -> dict[str, list]:
    result = subprocess.run(
        [sys.executable, "-c", TIMING, str(tree), str(repeats), json.dumps(cases)],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "ERROR"},
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--ab", help="a git ref to compare the plain path against (fresh processes, alternating)")
    parser.add_argument("--ab-runs", type=int, default=5)
    parser.add_argument(
        "--ab-own-model",
        action="store_true",
        help="REF serves the model_artifacts/ it has (the same model in a format REF reads), not this tree's",
    )
    args = parser.parse_args(argv)

    print(f"1. Options against a plain prediction (one warm process, interleaved, medians of {args.repeats})")
    timings = run(ROOT, args.repeats, CASES)
    print(f"   {'points':>6}  " + "  ".join(f"{case:>22}" for case in CASES))
    for n in (1, 100, 1000):
        plain = timings[f"plain@{n}"][0]
        cells = []
        for case in CASES:
            seconds, status = timings[f"{case}@{n}"]
            cells.append(
                f"{seconds * 1000:8.2f} ms {seconds / plain:5.1f}x" if status == 200 else f"{'refused':>14} ({status})"
            )
        print(f"   {n:>6}  " + "  ".join(f"{cell:>22}" for cell in cells))

    if args.ab:
        print(
            f"2. The plain path, this tree against {args.ab} (fresh processes, alternating, medians of {args.ab_runs})"
        )
        with tempfile.TemporaryDirectory() as folder:
            other = Path(folder) / "other"
            subprocess.run(["git", "worktree", "add", "--detach", str(other), args.ab], cwd=ROOT, check=True,
                           capture_output=True)  # fmt: skip
            (other / "model_artifacts").mkdir(exist_ok=True)
            for path in [] if args.ab_own_model else (ROOT / "model_artifacts").iterdir():  # the same model
                (other / "model_artifacts" / path.name).write_bytes(path.read_bytes())
            try:
                runs: dict[str, list[float]] = {}
                for _ in range(args.ab_runs):
                    for name, tree in (("this", ROOT), ("other", other)):
                        result = run(tree, 20, ["plain"])
                        for n in (1, 10000):
                            runs.setdefault(f"{name}@{n}", []).append(result[f"plain@{n}"][0])
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=True)
        for n in (1, 10000):
            this, other_s = statistics.median(runs[f"this@{n}"]), statistics.median(runs[f"other@{n}"])
            print(f"   {n:>6} points: {args.ab} {other_s * 1000:.3f} ms, this tree {this * 1000:.3f} ms "
                  f"({this / other_s:.2f}x)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
