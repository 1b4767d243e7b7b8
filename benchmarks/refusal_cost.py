"""What refusing a request costs, against answering the largest valid request of the same route.

Every route that takes a body: /predict, /sample, /jobs (inline points, a design, an upload to come), the V2 infer
route and the analyses (/sensitivity, /propagate, /suggest). Each body goes through lambda_handler (an API Gateway
event, base64 as API Gateway sends it) in a fresh process that has already loaded the shipped model and answered a
small valid and a small refused request of that route (imports and caches, as in any warm environment), so the
numbers are the request's own: CPU seconds (process time; median of repeats, after the first, in the same process)
and the rise in peak RSS (of the first). /jobs runs against moto's AWS in the same process. Every hostile body is
as large as the route's body limit allows (parsing.BodyLimits: what the route's largest valid request needs).

The README's rule: refusing costs at most 2x the CPU and at most +100 MB of peak RSS over answering the
route's largest valid request.

The analyses' largest valid requests are the largest the served model's budget accepts (handler.analyses.budget:
the work on this model, m points and p outputs), found as the routes find them. `--sizes` runs the analysis routes
against synthetic models of m points and several outputs (tests/large_models.py), one BLAS thread as on the function.

    python benchmarks/refusal_cost.py [--repeats 3] [--quick] [--route /sample]
    python benchmarks/refusal_cost.py --sizes 1000,8000 --outputs 1,10 --quick   # the analyses on large models
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_RATIO_TARGET = 2.0
MEMORY_TARGET_MB = 100.0

MEASURE = r"""
import base64, json, os, sys, time
sys.path.insert(0, sys.argv[1])
route, repeats = sys.argv[2], int(sys.argv[3])
for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
    os.environ[name] = "testing"  # moto's, for /jobs
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_ENDPOINT_URL", None)
from tests.events import api_event, lambda_context
from handler import app
from handler.api import predictions
from handler.api.limits import SAMPLE_MAX_POINTS, SAMPLE_MAX_VALUES

manifest = app.model.manifest()
parser = predictions.request_parser(manifest.features)
if route == "limits":
    limits = {"/predict": parser.limits, "/sample": predictions.sample_limits(manifest.features), "v2": parser.limits}
    from handler.jobs.routes import DESIGN_BODY_BYTES
    jobs = parser.limits.max_bytes + DESIGN_BODY_BYTES
    from handler.api import analyses
    from handler.api.limits import (ANALYSIS_MAX_DRAW_VALUES, ANALYSIS_MAX_N, ANALYSIS_MAX_VALUES, MAX_BINS,
                                    MAX_QUANTILES, MAX_THRESHOLDS, PROPAGATE_MAX_N, SUGGEST_MAX_PENDING, SUGGEST_MAX_Q)
    limits |= {"/sensitivity": analyses._SMALL_BODY, "/propagate": analyses._SMALL_BODY,
               "/suggest": analyses._suggest_limits(manifest.features)}
    # the largest requests this model's budget accepts, as the routes find them
    budget = analyses.AnalysisBudget(app.model.get().model.posterior, app.settings.function_timeout_seconds)
    d, p = len(manifest.features), len(manifest.outputs)
    k = 0 if budget.draws_unavailable() else 100
    def most(seconds_of, limit):
        return budget.largest(seconds_of, limit)
    def memory_n(step, draws):
        return min(ANALYSIS_MAX_VALUES // (d * step), ANALYSIS_MAX_DRAW_VALUES // (step * max(draws, 1) * p))
    def sensitivity_n(step, draws):
        return most(lambda n: budget.sensitivity(n, step, draws), min(ANALYSIS_MAX_N, memory_n(step, draws)))
    largest = {
        "sensitivity": [[sensitivity_n(d + 2, draws), draws, False] for draws in sorted({0, k})]
        + [[sensitivity_n(2 * d + 2, 0), 0, True]],
        "propagate": [[most(lambda n: budget.propagate(n, draws, MAX_QUANTILES, MAX_THRESHOLDS),
                            min(PROPAGATE_MAX_N, memory_n(1, draws))), draws] for draws in sorted({0, k})],
        "bins": MAX_BINS,
    }
    suggest = []
    for acquisition in ("integrated_variance", "expected_improvement"):
        integrated = acquisition == "integrated_variance"
        pending = most(lambda c: budget.suggest(SUGGEST_MAX_Q, c, integrated, not integrated), SUGGEST_MAX_PENDING)
        q = SUGGEST_MAX_Q
        if budget.suggest(q, pending, integrated, not integrated) > budget.seconds:
            pending, q = 0, most(lambda q: budget.suggest(q, 0, integrated, not integrated), SUGGEST_MAX_Q)
        suggest.append([acquisition, q, pending])
    largest["suggest"] = suggest
    print(json.dumps({"features": manifest.features, "name": manifest.name, "outputs": len(manifest.outputs),
                      "bounds": manifest.bounds.tolist(), "output_names": manifest.outputs,
                      "analyses": largest, "m": budget.cost.m,
                      **{r: [l.max_bytes, l.max_containers] for r, l in limits.items()},
                      "/jobs": [jobs, parser.limits.max_containers],
                      "sample_max": [SAMPLE_MAX_POINTS, SAMPLE_MAX_VALUES]}))
    sys.exit()
if route == "/jobs":
    from moto import mock_aws
    from pytest import MonkeyPatch
    from tests.jobs_harness import start_harness
    mock_aws().start()
    start_harness(MonkeyPatch(), app.model)
path = f"/v2/models/{manifest.name}/infer" if route == "v2" else route

def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

def call(body):
    event = api_event(path=path, raw_body=base64.b64encode(body).decode())
    event["isBase64Encoded"] = True
    return app.lambda_handler(event, lambda_context())

body = sys.stdin.buffer.read()
valid_small, refused_small = json.loads(sys.argv[4]), json.loads(sys.argv[5])
assert call(json.dumps(valid_small).encode())["statusCode"] in (200, 202)
assert 400 <= call(json.dumps(refused_small).encode())["statusCode"] < 500
before = peak_kb()
started = time.process_time()
response = call(body)
cpu = [time.process_time() - started]
rise_mb = (peak_kb() - before) / 1024
for _ in range(repeats - 1):
    started = time.process_time()
    call(body)
    cpu.append(time.process_time() - started)
print(json.dumps({"status": response["statusCode"], "cpu_s": sorted(cpu)[len(cpu) // 2], "peak_rise_mb": rise_mb}))
"""


def fill(template: Callable[[int], str], limit: int) -> bytes:
    """The largest body of this shape within `limit` bytes (by bisection on the repeat count)."""
    low, high = 1, 1
    while len(template(high).encode()) <= limit:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if len(template(middle).encode()) <= limit else (low, middle)
    return template(low).encode()


class Bodies:
    """The bodies of every route: its largest valid requests, and hostile ones filling its body limit."""

    def __init__(self, info: dict) -> None:
        self.features = tuple(info["features"])
        self.info = info
        middle = [round((low + high) / 2, 9) + 0.000000123 for low, high in info["bounds"]]
        self.point = "{" + ",".join(f'"{f}":{v!r}' for f, v in zip(self.features, middle, strict=True)) + "}"
        self.values = middle

    def rows(self, n: int) -> str:
        return "[" + ",".join([self.point] * n) + "]"

    def generous_rows(self, n: int, digits: int, indent: str = "\n        ") -> str:
        """n rows as a person or a library may write them: indented, each number with `digits` more digits."""
        values = [repr(v) + "1" * digits if "e" not in repr(v) else repr(v) for v in self.values]
        fields = ("," + indent).join(f'"{f}": {v}' for f, v in zip(self.features, values, strict=True))
        return "[" + ",".join([indent + "{" + indent + fields + indent + "}"] * n) + "]"

    def generic(self, wrap: Callable[[str], str], limit: int) -> dict[str, bytes]:
        """Hostile payloads in the place a route reads points from, each filling the route's limit."""
        return {
            "nested singleton lists": fill(lambda n: wrap("[" + ",".join(["[" * 100 + "]" * 100] * n) + "]"), limit),
            "nested singleton lists, a lone surrogate (the standard library parses)": fill(
                lambda n: wrap('["\\ud800",' + ",".join(["[" * 100 + "]" * 100] * n) + "]"), limit
            ),
            "empty objects": fill(lambda n: wrap("[" + ",".join(["{}"] * n) + "]"), limit),
            "one object of many keys": fill(lambda n: wrap("{" + ",".join(f'"k{i}":1' for i in range(n)) + "}"), limit),
            "an array of numbers": fill(lambda n: wrap("[" + "1," * n + "1]"), limit),
            "an array of short strings": fill(lambda n: wrap("[" + '"ab",' * n + '"ab"]'), limit),
            "deep nesting": fill(lambda n: wrap("[" * n + "]" * n), limit),
            "one long string": fill(lambda n: wrap('"' + "a" * n + '"'), limit),
            "a 4,301-digit integer": wrap("1" * 4301).encode(),
        }

    def predict(self) -> dict[str, bytes]:
        limit = self.info["/predict"][0]
        f = self.features
        return {
            "valid: 10,000 rows (the largest batch)": self.rows(10_000).encode(),
            "valid: 10,000 rows, written generously up to the limit": fill(
                lambda k: self.generous_rows(10_000, k), limit
            ),
            **self.generic(lambda x: x, limit),
            "columns of unequal length, strings": fill(
                lambda n: (
                    "{" + f'"{f[0]}":[' + ",".join(['"a"'] * n) + "]," + ",".join(f'"{k}":[0.5]' for k in f[1:]) + "}"
                ),
                limit,
            ),
            "columns of equal length, over the batch limit": fill(
                lambda n: "{" + ",".join(f'"{k}":[' + ",".join(["0.5"] * n) + "]" for k in f) + "}", limit
            ),
            "columns of booleans and nested lists": fill(
                lambda n: "{" + ",".join(f'"{k}":[' + ",".join(["true", "[0.5]"] * n) + "]" for k in f) + "}", limit
            ),
            "rows with extra keys": fill(
                lambda n: (
                    "[" + ",".join([self.point[:-1] + "".join(f',"k{i}":1' for i in range(n)) + "}"] * 10_000) + "]"
                ),
                limit,
            ),
            "rows of strings": fill(
                lambda n: "[" + ",".join(["{" + ",".join(f'"{k}":"{"a" * n}"' for k in f) + "}"] * 10_000) + "]", limit
            ),
            "rows over the batch limit": fill(lambda n: "[" + ",".join(["{}"] * n) + "]", limit),
        }

    def sample(self) -> dict[str, bytes]:
        max_points, max_values = self.info["sample_max"]
        limit = self.info["/sample"][0]
        samples = max_values // (max_points * self.info["outputs"])
        return {
            f"valid: {max_points:,} points x {samples} samples": (
                '{"points":' + self.rows(max_points) + f',"samples":{samples},"seed":1}}'
            ).encode(),
            **self.generic(lambda x: '{"points":' + x + ',"samples":2}', limit),
            "points over the sample limit": fill(lambda n: '{"points":' + self.rows(n) + ',"samples":1}', limit),
            "many unknown fields": fill(
                lambda n: '{"points":' + self.rows(1) + "," + ",".join(f'"k{i}":1' for i in range(n)) + "}", limit
            ),
            "samples as a long array": fill(
                lambda n: '{"points":' + self.rows(1) + ',"samples":[' + "1," * n + "1]}", limit
            ),
        }

    def sensitivity(self) -> dict[str, bytes]:
        valid = {}
        for n, draws, second in self.info["analyses"]["sensitivity"]:
            if n >= 16:
                name = f"valid: n {n:,}, {draws} posterior samples" + (", second order" if second else "")
                valid[name] = json.dumps({"n": n, "posterior_samples": draws, "second_order": second, "seed": 1})
        over = b'{"n":16384,"posterior_samples":100,"second_order":true,"seed":1}'
        return {
            **{k: v.encode() for k, v in valid.items()},
            "over the model's budget: n 16,384, 100 posterior samples, second order": over,
            **self._analysis_hostile("/sensitivity"),
        }

    def propagate(self) -> dict[str, bytes]:
        thresholds = [1.5] * 100
        quantiles = [(i + 1) / 100 for i in range(99)]
        valid = {}
        for n, draws in self.info["analyses"]["propagate"]:
            if n >= 16:
                name = f"valid: n {n:,}, {draws} posterior samples, 99 quantiles, 100 thresholds, 200 bins"
                body = {"n": n, "posterior_samples": draws, "quantiles": quantiles, "thresholds": thresholds}
                valid[name] = json.dumps(body | {"bins": self.info["analyses"]["bins"], "seed": 1})
        over = {"n": 65_536, "posterior_samples": 100, "quantiles": quantiles, "thresholds": thresholds, "bins": 200}
        return {
            **{k: v.encode() for k, v in valid.items()},
            "over the model's budget: n 65,536, 100 posterior samples, every statistic": json.dumps(over).encode(),
            **self._analysis_hostile("/propagate"),
        }

    def suggest(self) -> dict[str, bytes]:
        valid = {}
        for acquisition, q, pending in self.info["analyses"]["suggest"]:
            if q >= 1:
                extra = ',"goal":"maximize","output":' + json.dumps(self.info["output_names"][0])
                body = (
                    f'{{"q":{q},"acquisition":"{acquisition}","pending":{self.rows(pending)},"seed":1'
                    + (extra if acquisition == "expected_improvement" else "")
                    + "}"
                )
                valid[f"valid: {acquisition.replace('_', ' ')}, q {q}, {pending} pending"] = body
        return {
            **{k: v.encode() for k, v in valid.items()},
            **self._analysis_hostile("/suggest"),
            "pending over its limit": fill(lambda n: '{"pending":' + self.rows(n) + "}", self.info["/suggest"][0]),
        }

    def _analysis_hostile(self, route: str) -> dict[str, bytes]:
        limit = self.info[route][0]
        field = "pending" if route == "/suggest" else "thresholds"
        return {
            **self.generic(lambda x: f'{{"{field}":' + x + "}", limit),
            "inputs of many unknown features": fill(
                lambda n: '{"inputs":{' + ",".join(f'"k{i}":{{"distribution":"uniform"}}' for i in range(n)) + "}}",
                limit,
            ),
            "many unknown fields": fill(lambda n: "{" + ",".join(f'"k{i}":1' for i in range(n)) + "}", limit),
        }

    def jobs(self) -> dict[str, bytes]:
        limit = self.info["/jobs"][0]
        f = self.features
        return {
            "valid: 10,000 points inline": ('{"points":' + self.rows(10_000) + "}").encode(),
            "valid: 10,000 points inline, written generously up to the limit": fill(
                lambda k: '{"points":' + self.generous_rows(10_000, k) + "}", limit
            ),
            "valid: a design of 10^7 points": b'{"design":{"method":"sobol","n":10000000,"seed":1}}',
            "valid: an upload to come": b'{"upload":{"format":"csv"}}',
            **self.generic(lambda x: '{"points":' + x + "}", limit),
            "design: many bounds, arrays": fill(
                lambda n: (
                    '{"design":{"method":"lhs","n":10,"bounds":{' + ",".join(f'"k{i}":[0,1]' for i in range(n)) + "}}}"
                ),
                limit,
            ),
            "design: many bounds, numbers": fill(
                lambda n: (
                    '{"design":{"method":"lhs","n":10,"bounds":{' + ",".join(f'"k{i}":0' for i in range(n)) + "}}}"
                ),
                limit,
            ),
            "design: many unknown fields": fill(
                lambda n: '{"design":{"method":"lhs","n":10,' + ",".join(f'"k{i}":0' for i in range(n)) + "}}", limit
            ),
            "design: a grid of 7**150 points, a lone-surrogate bound": (
                '{"design":{"method":"grid","n":' + str(7**150) + ',"bounds":{"\\ud800":[0,1]}}}'
            ).encode(),
            "design: a bound of a long array": fill(
                lambda n: '{"design":{"method":"lhs","n":10,"bounds":{"' + f[0] + '":[' + "0," * n + "1]}}}", limit
            ),
            "upload: many unknown fields": fill(
                lambda n: '{"upload":{"format":"csv",' + ",".join(f'"k{i}":0' for i in range(n)) + "}}", limit
            ),
            "many unknown top-level fields": fill(
                lambda n: '{"upload":{"format":"csv"},' + ",".join(f'"k{i}":0' for i in range(n)) + "}", limit
            ),
        }

    def v2(self) -> dict[str, bytes]:
        limit = self.info["v2"][0]
        d = len(self.features)
        row = "[" + ",".join(repr(v) for v in self.values) + "]"

        def tensor(data: str, shape: str = f"[1,{d}]", extra: str = "") -> str:
            return (
                '{"inputs":[{"name":"input","shape":' + shape + ',"datatype":"FP64","data":' + data + "}]" + extra + "}"
            )

        return {
            "valid: 10,000 rows, nested": tensor("[" + ",".join([row] * 10_000) + "]", f"[10000,{d}]").encode(),
            "valid: 10,000 rows, written generously up to the limit": fill(
                lambda k: tensor(
                    "["
                    + ",\n    ".join(["[" + ", ".join(repr(v) + "1" * k for v in self.values) + "]"] * 10_000)
                    + "]",
                    f"[10000,{d}]",
                ),
                limit,
            ),
            **self.generic(tensor, limit),
            "flat data longer than its shape": fill(lambda n: tensor("[" + "0.5," * n + "0.5]", f"[10000,{d}]"), limit),
            "many requested outputs": fill(
                lambda n: tensor(row, extra=',"outputs":[' + ",".join(['{"name":"mean"}'] * n) + "]"), limit
            ),
            "parameters of many keys, and a wrong variance": fill(
                lambda n: tensor(
                    row, extra=',"parameters":{' + "".join(f'"k{i}":1,' for i in range(n)) + '"variance":"both"}'
                ),
                limit,
            ),
            "a datatype of a long array": fill(
                lambda n: (
                    '{"inputs":[{"name":"input","shape":[1,'
                    + str(d)
                    + '],"datatype":['
                    + "1," * n
                    + '1],"data":'
                    + row
                    + "}]}"
                ),
                limit,
            ),
        }


def small_requests(route: str, bodies: Bodies) -> tuple[object, object]:
    """A small valid and a small refused request of the route, answered before measuring (warm-up)."""
    point = json.loads(bodies.point)
    values = list(point.values())
    return {
        "/predict": (point, {"nope": 1}),
        "/sample": ({"points": [point], "samples": 2}, {"points": [{"nope": 1}], "samples": 2}),
        "/jobs": ({"points": [point]}, {"design": {"method": "lhs", "n": 0}}),
        "/sensitivity": ({"n": 16, "posterior_samples": 2}, {"n": 1}),
        "/propagate": ({"n": 16, "posterior_samples": 2}, {"n": 1}),
        "/suggest": ({"q": 1}, {"q": 0}),
        "v2": (
            {"inputs": [{"name": "input", "shape": [1, len(values)], "datatype": "FP64", "data": values}]},
            {"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [0.5]}]},
        ),
    }[route]


def measure(
    route: str, body: bytes, repeats: int, warm: tuple[object, object] = (None, None), model: Path | None = None
) -> dict:
    command = [sys.executable, "-c", MEASURE, str(ROOT), route, str(repeats), json.dumps(warm[0]), json.dumps(warm[1])]
    # one BLAS thread, as on the function (and the analyses' budget assumes)
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if model is not None:
        env["MODEL_PATH"] = str(model)
    result = subprocess.run(command, input=body, capture_output=True, timeout=900, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-3000:])
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


ROUTE_NAMES = {
    "/predict": "POST /predict",
    "/sample": "POST /sample",
    "/jobs": "POST /jobs",
    "v2": "POST /v2 infer",
    "/sensitivity": "POST /sensitivity",
    "/propagate": "POST /propagate",
    "/suggest": "POST /suggest",
}


def run(routes: list[str] | None, repeats: int, model: Path | None = None) -> tuple[list[str], bool]:
    """Measure every body of the routes (all when None) against the model; the refusals over the target, and
    whether every refusal was a 4xx."""
    info = measure("limits", b"", 1, model=model)
    bodies = Bodies(info)
    by_route = {
        "/predict": bodies.predict,
        "/sample": bodies.sample,
        "/jobs": bodies.jobs,
        "v2": bodies.v2,
        "/sensitivity": bodies.sensitivity,
        "/propagate": bodies.propagate,
        "/suggest": bodies.suggest,
    }
    where = f" on {model.name} (m = {info['m']:,}, {info['outputs']} outputs)" if model else f" (m = {info['m']:,})"
    print(f"\n{info['name']}{where}\n")
    print("| route | body | bytes | status | CPU ms | CPU vs largest valid | peak RSS rise MB | MB over valid |")
    print("|---|---|---|---|---|---|---|---|")
    failures, all_4xx = [], True
    every_body = {route: make() for route, make in by_route.items()}  # all made, whichever are measured
    for route, route_bodies in every_body.items():
        if routes and route not in routes:
            continue
        warm = small_requests(route, bodies)
        rows = [(name, body, measure(route, body, repeats, warm, model)) for name, body in route_bodies.items()]
        valid = [result for name, _, result in rows if name.startswith("valid")]
        assert all(result["status"] in (200, 202) for result in valid), valid
        reference_cpu = max(result["cpu_s"] for result in valid)
        reference_memory = max(result["peak_rise_mb"] for result in valid)
        for name, body, result in rows:
            cpu_ratio = result["cpu_s"] / reference_cpu
            memory_over = result["peak_rise_mb"] - reference_memory
            refused = not name.startswith("valid")
            if refused:
                all_4xx = all_4xx and 400 <= result["status"] < 500
                if cpu_ratio > CPU_RATIO_TARGET or memory_over > MEMORY_TARGET_MB:
                    failures.append(f"{ROUTE_NAMES[route]}: {name}")
            print(
                f"| {ROUTE_NAMES[route]} | {name} | {len(body):,} | {result['status']} | {result['cpu_s'] * 1000:.1f} "
                f"| {cpu_ratio:.2f}x | {result['peak_rise_mb']:.1f} | {memory_over:+.1f} |",
                flush=True,
            )
    return failures, all_4xx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run of each, for CI")
    parser.add_argument("--route", choices=sorted(ROUTE_NAMES), action="append", help="measure only these routes")
    parser.add_argument("--sizes", help="synthetic models of these m (comma-separated): the analysis routes on each")
    parser.add_argument("--outputs", default="1", help="with --sizes: numbers of outputs (comma-separated)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    failures: list[str] = []
    all_4xx = True
    if args.sizes:
        sys.path.insert(0, str(ROOT))
        from tests.large_models import write_synthetic_model

        folder = Path(os.environ.get("ANALYSES_BENCH_MODELS", "/tmp/analyses-bench-models"))
        routes = args.route or ["/sensitivity", "/propagate", "/suggest"]
        for m in (int(v) for v in args.sizes.split(",")):
            for p in (int(v) for v in args.outputs.split(",")):
                found, every_4xx = run(routes, repeats, write_synthetic_model(folder, m, 4, p))
                failures, all_4xx = failures + [f"m={m} p={p}: {f}" for f in found], all_4xx and every_4xx
    else:
        failures, all_4xx = run(args.route, repeats)
    print(
        f"\ntarget: each refusal at most {CPU_RATIO_TARGET:g}x the CPU and +{MEMORY_TARGET_MB:g} MB of its route's "
        "largest valid request"
    )
    print("every refusal within the target" if not failures else "OVER THE TARGET: " + "; ".join(failures))
    print("every refusal a 4xx" if all_4xx else "SOME REFUSALS ARE NOT 4xx")
    return 0 if not failures and all_4xx else 1


if __name__ == "__main__":
    sys.exit(main())
