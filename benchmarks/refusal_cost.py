"""What refusing a request costs, against answering the largest valid one (issue: bounded refusal cost).

Each body goes through the handler (an API Gateway event, base64 as API Gateway sends it) in a fresh process that
has already loaded the model and answered one small request, so the numbers are the request's own:
CPU seconds (process time, median of repeats) and the rise in peak RSS. Every pathological body is as large as
the body limit (what the largest batch needs, parsing.body_limit) allows. Target: CPU at most 2x, memory at
most +100 MB, against a valid 10,000-row batch.

    python benchmarks/refusal_cost.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ("x1", "x2", "x3", "x4")

MEASURE = r"""
import base64, json, sys, time
sys.path.insert(0, sys.argv[1])
from tests.events import api_event, lambda_context
from handler.app import lambda_handler, model, request_parser

def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

warm = api_event(body={"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5})
assert lambda_handler(warm, lambda_context())["statusCode"] == 200
body = sys.stdin.buffer.read()
event = api_event(raw_body=base64.b64encode(body).decode(), base64_body=False)
event["isBase64Encoded"] = True
before = peak_kb()
started = time.process_time()
response = lambda_handler(event, lambda_context())
cpu = time.process_time() - started
print(json.dumps({"status": response["statusCode"], "cpu_s": cpu, "peak_rise_mb": (peak_kb() - before) / 1024,
                  "body_bytes": len(body), "limit": request_parser(model.manifest().features).max_body_bytes}))
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


def point(value: str = "0.5") -> str:
    return "{" + ",".join(f'"{name}":{value}' for name in FEATURES) + "}"


def bodies(limit: int) -> dict[str, bytes]:
    rows_valid = "[" + ",".join([point("0.123456789")] * 10_000) + "]"
    return {
        "valid: 10,000 rows (the largest batch)": rows_valid.encode(),
        "columns of unequal length, strings": fill(
            lambda n: '{"x1":[' + ",".join(['"a"'] * n) + '],"x2":[0.5],"x3":[0.5],"x4":[0.5]}', limit
        ),
        "columns of equal length, over the batch limit": fill(
            lambda n: "{" + ",".join(f'"{f}":[' + ",".join(["0.5"] * n) + "]" for f in FEATURES) + "}", limit
        ),
        "columns of booleans and nested lists": fill(
            lambda n: "{" + ",".join(f'"{f}":[' + ",".join(["true", "[0.5]"] * n) + "]" for f in FEATURES) + "}",
            limit,
        ),
        "a point with extra keys": fill(
            lambda n: "{" + ",".join([*(f'"{f}":0.5' for f in FEATURES), *(f'"k{i}":1' for i in range(n))]) + "}",
            limit,
        ),
        "rows with extra keys": fill(
            lambda n: (
                "["
                + ",".join(
                    ["{" + ",".join([*(f'"{f}":0.5' for f in FEATURES), *(f'"k{i}":1' for i in range(n))]) + "}"]
                    * 10_000
                )
                + "]"
            ),
            limit,
        ),
        "rows of strings": fill(lambda n: "[" + ",".join([point('"' + "a" * n + '"')] * 10_000) + "]", limit),
        "rows over the batch limit": fill(lambda n: "[" + ",".join(["{}"] * n) + "]", limit),
        "an array of numbers": fill(lambda n: "[" + ",".join(["1"] * n) + "]", limit),
        "deeply nested arrays": fill(lambda n: "[" * n + "]" * n, limit),
        "a 4,301-digit integer": point("1" * 4301).encode(),
        "one long string": fill(lambda n: '{"x1":"' + "a" * n + '"}', limit),
    }


def measure(body: bytes) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(ROOT)], input=body, capture_output=True, timeout=600, cwd=ROOT
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.decode()[-2000:])
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat of each, for CI")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    limit = measure(b"{}")["limit"]
    rows, worst_cpu, worst_memory, all_4xx = [], 0.0, 0.0, True
    reference: dict[str, float] = {}
    for name, body in bodies(int(limit)).items():
        runs = [measure(body) for _ in range(repeats)]
        cpu = statistics.median(r["cpu_s"] for r in runs)
        memory = statistics.median(r["peak_rise_mb"] for r in runs)
        status = int(runs[0]["status"])
        if name.startswith("valid"):
            assert status == 200, status
            reference = {"cpu": cpu, "memory": memory}
        else:
            worst_cpu, worst_memory = max(worst_cpu, cpu), max(worst_memory, memory)
            all_4xx = all_4xx and 400 <= status < 500
        rows.append((name, len(body), status, cpu, memory))
    print("| body | bytes | status | CPU ms | CPU vs valid | peak RSS rise MB |\n|---|---|---|---|---|---|")
    for name, size, status, cpu, memory in rows:
        print(f"| {name} | {size:,} | {status} | {cpu * 1000:.1f} | {cpu / reference['cpu']:.2f}x | {memory:.1f} |")
    cpu_ratio = worst_cpu / reference["cpu"]
    memory_over = worst_memory - reference["memory"]
    print(f"\nworst refusal: {cpu_ratio:.2f}x the CPU of the valid maximum batch (target <= 2), "
          f"{memory_over:+.1f} MB peak RSS against it (target <= +100)")  # fmt: skip
    print("every refusal a 4xx" if all_4xx else "SOME REFUSALS ARE NOT 4xx")
    return 0 if cpu_ratio <= 2 and memory_over <= 100 and all_4xx else 1


if __name__ == "__main__":
    sys.exit(main())
