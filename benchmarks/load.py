"""Load on the local server: many concurrent clients, for a bounded time, on 127.0.0.1 only.

Starts `scripts/local_lambda.py serve` (the handler under AWS's Runtime Interface Emulator, behind
SAM's local API Gateway) with a pool of warm execution environments, warms each one, then drives
it with concurrent asyncio/httpx clients sending a mix of single points and batches. Reports
throughput, latency percentiles and every non-200 answer; exits 1 if there was any.

    python benchmarks/load.py                          # 32 clients, 20 s, 2 environments
    python benchmarks/load.py --clients 64 --seconds 60 --workers 2
    python benchmarks/load.py --quick                  # a few seconds (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Domain:
    """The served model's features and training bounds, read from GET /model: points are drawn inside them."""

    features: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...]

    @classmethod
    def of(cls, base_url: str) -> Domain:
        manifest = httpx.get(f"{base_url}/model", timeout=60).json()
        return cls(tuple(manifest["features"]), tuple(tuple(manifest["bounds"][f]) for f in manifest["features"]))

    def value(self, rng: random.Random, index: int) -> float:
        low, high = self.bounds[index]
        return low + (high - low) * rng.random()


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def request_mix(rng: random.Random, domain: Domain) -> tuple[str, object]:
    """70% single points, 20% batches of 100 rows, 10% batches of 1,000 columns."""
    roll = rng.random()
    named = list(enumerate(domain.features))
    if roll < 0.7:
        return "1 point", {name: domain.value(rng, i) for i, name in named}
    if roll < 0.9:
        return "100 rows", [{name: domain.value(rng, i) for i, name in named} for _ in range(100)]
    return "1,000 columns", {name: [domain.value(rng, i) for _ in range(1000)] for i, name in named}


async def client(
    base_url: str,
    http: httpx.AsyncClient,
    deadline: float,
    budget: list[int],
    seed: int,
    results: Results,
    domain: Domain,
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        kind, body = request_mix(rng, domain)
        started = time.perf_counter()
        try:
            response = await http.post(f"{base_url}/predict", json=body)
        except httpx.HTTPError as exc:
            results.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            results.statuses["transport error"] += 1
            continue
        elapsed = time.perf_counter() - started
        results.statuses[str(response.status_code)] += 1
        if response.status_code != 200:
            results.failures.append(f"{kind}: {response.status_code} {response.text[:200]}")
            continue
        results.latencies.setdefault(kind, []).append(elapsed)


async def drive(base_url: str, clients: int, seconds: float, max_requests: int) -> tuple[Results, float]:
    results = Results()
    domain = Domain.of(base_url)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.monotonic()
        budget = [max_requests]
        await asyncio.gather(
            *(client(base_url, http, started + seconds, budget, i, results, domain) for i in range(clients))
        )
        return results, time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_server(port: int, workers: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "scripts/local_lambda.py", "serve", "--port", str(port), "--workers", str(workers)]
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0"}
    with log.open("w") as handle:
        return subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)


def wait_until_warm(base_url: str, workers: int, process: subprocess.Popen[bytes], log: Path) -> float:
    """Wait for the server, then send one request per environment at once so each pays its cold start."""
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the local server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    started = time.monotonic()
    domain = Domain.of(base_url)
    point = {name: (low + high) / 2 for name, (low, high) in zip(domain.features, domain.bounds, strict=True)}
    with httpx.Client(timeout=120) as http:
        for _ in range(2):  # environments are handed out in turn; two rounds reach every one
            for _ in range(workers):
                assert http.post(f"{base_url}/predict", json=point).status_code == 200
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20, help="how long to send for")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--workers", type=int, default=2, help="warm execution environments in the server")
    parser.add_argument("--quick", action="store_true", help="8 clients for 3 seconds")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds = 8, 3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"load-server-{port}.log"
    process = start_server(port, args.workers, log)
    try:
        warm_up_s = wait_until_warm(base_url, args.workers, process, log)
        results, elapsed = asyncio.run(drive(base_url, args.clients, args.seconds, args.max_requests))
    finally:
        process.terminate()
        process.wait(timeout=10)

    total = sum(results.statuses.values())
    print(f"### Load: {args.clients} clients for {elapsed:.1f} s against {args.workers} warm environments\n")
    print(f"Warm-up (one cold start per environment, not counted below): {warm_up_s:.1f} s\n")
    print("| requests | kind | share | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|")
    for kind, values in sorted(results.latencies.items()):
        row = [percentile(values, 50), percentile(values, 90), percentile(values, 99), max(values)]
        cells = " | ".join(f"{v * 1e3:.1f} ms" for v in row)
        print(f"| {len(values)} | {kind} | {len(values) / total:.0%} | {cells} |")
    statuses = dict(results.statuses)
    print(f"\nThroughput: {total / elapsed:.1f} requests/s; statuses: {statuses}; errors: {len(results.failures)}")
    for failure in results.failures[:10]:
        print(f"  {failure}")
    return 1 if results.failures or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
