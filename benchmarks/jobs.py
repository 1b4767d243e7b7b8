"""Asynchronous jobs: worker throughput per chunk size, projected time and cost of large designs, and the client.

Three measurements, in one run, medians of --repeats:
  1. A worker's chunk, end to end, against moto's server on loopback (real HTTP S3, DynamoDB and SQS APIs):
     read the rows from the input .npy by byte range, predict with the packaged model, write the chunk,
     count it in DynamoDB. Points per second per worker for each chunk size, and the share of it that is
     prediction. The chunk size is where the fitted fixed cost per chunk is 10% of the chunk's time.
  2. From those: wall time and cost of 10^6 and 10^7 points at a stated concurrency, arm64 prices.
  3. The client against `local_lambda.py serve` for 10^5 points: predict() (synchronous, 10 requests of 10,000)
     against submit() + wait() (a job: upload, worker, finisher) and run_design() (a server-side Sobol' design).

    python benchmarks/jobs.py [--repeats 3] [--concurrency 20,100] [--skip-client]

And, on its own, what an upload job costs a worker: the peak of Python and numpy allocations (tracemalloc) while
`start` checks the file, the plan reads it and the first chunk is predicted, at the deployed JOB_CHUNK_POINTS,
for ordinary files and for the hostile ones of issue 14 (trailing bytes, one enormous row):

    python benchmarks/jobs.py --upload-memory
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK_SIZES = (1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000)
# AWS list prices, us-east-1, arm64 (2026): Lambda per GB-second and per request; SQS standard per request
# (send, receive and delete each count); DynamoDB on-demand per write and read request unit; S3 Standard.
LAMBDA_GB_SECOND = 0.0000133334
LAMBDA_REQUEST = 0.20 / 1e6
SQS_REQUEST = 0.40 / 1e6
DYNAMODB_WRITE = 0.625 / 1e6
DYNAMODB_READ = 0.125 / 1e6
S3_PUT = 0.005 / 1000
S3_GET = 0.0004 / 1000
MEMORY_GB = 1769 / 1024  # the template's MemorySize
# Not measurable here, so assumed and stated: a worker's cold start (imports and unpickling, as
# benchmarks/results.md measures: ~2 s; workers have no SnapStart) and S3 throughput from one Lambda
# environment (~100 MB/s), which moves the input, the chunks and the results file.
COLD_START_S = 2.0
S3_BYTES_PER_S = 100e6
CSV_BYTES_PER_ROW = 120  # measured: Park's 4 features and 2 statistics as pyarrow writes them


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def moto_server() -> Any:
    """moto's server on a free loopback port, in its own process (tests/jobs_harness.py's)."""
    from tests.jobs_harness import moto_server as served

    return served()


def measure_chunks(repeats: int) -> list[dict[str, float]]:
    """Seconds per chunk (end to end, and predicting only) for each chunk size, medians of `repeats`."""
    from handler.config import load_settings
    from handler.gp.artifact import PackagedArtifact
    from handler.gp.model import load_model
    from handler.jobs.backend import JobBackend, OutputOptions, WorkMessage, new_job
    from handler.jobs.worker import predict_chunk
    from scripts.local_jobs import create_resources

    loaded = load_model(PackagedArtifact(load_settings().resolved_model_path))
    model, manifest = loaded.model, loaded.manifest
    rows = []
    with moto_server() as endpoint:
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        resources = create_resources(prefix="bench")
        backend = JobBackend(
            resources.bucket, resources.table, resources.work_queue_url, resources.results_queue_url, chunk_points=10
        )
        largest = max(CHUNK_SIZES)
        rng = np.random.default_rng(0)
        low, high = manifest.bounds[:, 0], manifest.bounds[:, 1]
        points = low + (high - low) * rng.uniform(size=(largest * (repeats + 1), len(manifest.features)))
        for size in CHUNK_SIZES:
            job = new_job(backend, "bench", manifest, "inline", OutputOptions())
            offset = backend.storage.put_input(job.id, points)
            backend.store.create(job)
            job = backend.store.planned(job.id, len(points), size, offset)
            assert job is not None
            model.predict(points[:size])  # warm: BLAS threads, caches
            end_to_end, predicting = [], []
            for repeat in range(repeats):
                start = repeat * size
                message = WorkMessage("chunk", job.id, repeat, start, start + size)
                began = time.perf_counter()
                predict_chunk(backend, message, model)
                end_to_end.append(time.perf_counter() - began)
                began = time.perf_counter()
                model.predict(points[start : start + size])
                predicting.append(time.perf_counter() - began)
            seconds, compute = statistics.median(end_to_end), statistics.median(predicting)
            rows.append({"size": size, "seconds": seconds, "predict_seconds": compute, "points_per_s": size / seconds})
            print(f"  chunk {size:>7,}: {seconds * 1000:8.1f} ms ({compute / seconds:4.0%} predicting), "
                  f"{size / seconds:10,.0f} points/s per worker", flush=True)  # fmt: skip
    return rows


def choose_chunk(rows: list[dict[str, float]]) -> dict[str, float]:
    """Fit seconds = overhead + per_point * size; choose the size at which the overhead is 10% of a chunk.

    Larger chunks than that gain under 10% per worker but cut the fan-out of smaller jobs; the fit is steadier
    than picking from noisy timings.
    """
    sizes = np.array([row["size"] for row in rows], dtype=float)
    seconds = np.array([row["seconds"] for row in rows])
    per_point, overhead = np.polyfit(sizes, seconds, 1)
    size = int(math.ceil(9 * overhead / per_point / 5_000) * 5_000)
    chunk_seconds = overhead + per_point * size
    return {"size": size, "seconds": chunk_seconds, "overhead_s": overhead, "per_point_s": per_point,
            "points_per_s": size / chunk_seconds}  # fmt: skip


def measure_plan_and_assembly(n: int, repeats: int) -> dict[str, float]:
    """Seconds to generate and store an n-point Sobol' design, and to assemble n result rows per format."""
    from handler.jobs.backend import npy_header
    from handler.jobs.designs import generate
    from handler.jobs.results import write_results

    times: dict[str, list[float]] = {"plan": [], "csv": [], "npy": [], "parquet": []}
    columns = ["x1", "x2", "x3", "x4", "y_mean", "y_variance"]
    for _ in range(repeats):
        began = time.perf_counter()
        points = generate("sobol", n, 1, np.zeros(4), np.ones(4))
        _NullSink().write(npy_header(points.shape, points.dtype) + points.tobytes())  # put_input's bytes; not S3
        times["plan"].append(time.perf_counter() - began)
        rows = np.hstack([points, points[:, :2]])
        for fmt in ("csv", "npy", "parquet"):
            began = time.perf_counter()
            write_results(fmt, _NullSink(), n, columns, (rows[i : i + 50_000] for i in range(0, n, 50_000)))
            times[fmt].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


class _NullSink:
    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    def tell(self) -> int:
        return self.bytes


def project(points: int, chunk: dict[str, float], concurrency: int, plan_s: float, assemble_s: float) -> dict:
    """Wall time and cost of a job of `points` (Park: 4 features), from the measured chunk at this concurrency.

    wall = plan + input upload + one cold start + waves of chunks + assembly (reading inputs and chunks, writing
    the CSV); compute is the same with every chunk and every worker's cold start counted.
    """
    chunks = math.ceil(points / chunk["size"])
    workers = min(chunks, concurrency)
    waves = math.ceil(chunks / concurrency)
    input_bytes, chunk_bytes, csv_bytes = points * 4 * 8, points * 2 * 8, points * CSV_BYTES_PER_ROW
    plan = plan_s + input_bytes / S3_BYTES_PER_S
    assemble = assemble_s + (input_bytes + chunk_bytes + csv_bytes) / S3_BYTES_PER_S
    wall = plan + COLD_START_S + waves * chunk["seconds"] + assemble
    compute_s = plan + workers * COLD_START_S + chunks * chunk["seconds"] + assemble
    lambda_cost = compute_s * MEMORY_GB * LAMBDA_GB_SECOND + (chunks / 4 + 2) * LAMBDA_REQUEST
    sqs_cost = (chunks + 2) * 3 * SQS_REQUEST
    dynamodb_cost = (chunks * 2 + 6) * DYNAMODB_WRITE + (chunks * 2 + 6) * DYNAMODB_READ
    s3_cost = (chunks + 2 + math.ceil(csv_bytes / 16e6)) * S3_PUT + (chunks * 3) * S3_GET
    return {
        "points": points,
        "chunks": chunks,
        "concurrency": concurrency,
        "wall_s": wall,
        "cost": lambda_cost + sqs_cost + dynamodb_cost + s3_cost,
        "lambda_cost": lambda_cost,
    }


def measure_client(repeats: int, n: int = 100_000) -> dict[str, float]:
    """The client against the local server (2 API environments, 2 job workers): sync predict vs a job."""
    from gpr_client import SurrogateClient

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "local_lambda.py"), "serve", "--port", str(port), "-w", "2"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/health", timeout=30).status_code == 200:
                    break
            time.sleep(0.2)
        with SurrogateClient(base_url, concurrency=2) as client:
            features = client.model().features
            X = np.random.default_rng(1).uniform(size=(n, len(features)))
            bounds = np.array([client.model().bounds[f] for f in features])
            X = bounds[:, 0] + X * (bounds[:, 1] - bounds[:, 0])
            client.predict(X[:1_000])  # warm both API environments
            client.run_design("sobol", 1_000, progress=False, poll_interval_s=0.1)  # and the job functions
            timings: dict[str, list[float]] = {"predict": [], "submit_wait": [], "run_design": []}
            for _ in range(repeats):
                began = time.perf_counter()
                client.predict(X)
                timings["predict"].append(time.perf_counter() - began)
                began = time.perf_counter()
                client.submit(X).wait(progress=False, poll_interval_s=0.1)
                timings["submit_wait"].append(time.perf_counter() - began)
                began = time.perf_counter()
                client.run_design("sobol", n, seed=1, progress=False, poll_interval_s=0.1)
                timings["run_design"].append(time.perf_counter() - began)
        return {name: statistics.median(values) for name, values in timings.items()}
    finally:
        process.terminate()
        process.wait(timeout=20)


UPLOAD_CASES = ("npy", "csv", "npy-10-chunks", "csv-10-chunks", "npy-trailing-150MB", "csv-40MB-row")


def upload_bytes(case: str, rows: int, bounds: np.ndarray, features: tuple[str, ...]) -> bytes:
    """The file of an upload case: `rows` points inside the bounds, or a hostile file of issue 14."""
    import io

    rng = np.random.default_rng(0)
    if case == "npy-trailing-150MB":  # 10 rows, then 150 MB the header does not declare
        buffer = io.BytesIO()
        np.save(buffer, bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * rng.uniform(size=(10, len(features))))
        return buffer.getvalue() + bytes(150 * 10**6)
    if case == "csv-40MB-row":  # one row of 40 MB of empty fields
        return (",".join(features) + "\n" + "," * (40 * 10**6) + "\n").encode()
    points = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * rng.uniform(size=(rows, len(features)))
    if case.startswith("npy"):
        buffer = io.BytesIO()
        np.save(buffer, points)
        return buffer.getvalue()
    lines = (",".join(map(repr, row)) for row in points.tolist())
    return (",".join(features) + "\n" + "\n".join(lines) + "\n").encode()


def describe_upload_case(row: dict[str, Any]) -> str:
    def peak(name: str) -> str:
        return f"{row[name] / 1e6:7.1f} MB" if name in row else "      -   "

    seconds = f"{row['plan_seconds']:6.2f} s" if "plan_seconds" in row else "     -  "
    return (
        f"  {row['case']:<20} {row['bytes'] / 1e6:7.1f} MB file | start {peak('start_peak')} | "
        f"plan {peak('plan_peak')} {seconds} | chunk {peak('chunk_peak')} | {row['outcome']}"
    )


def measure_upload_memory(cases: tuple[str, ...] = UPLOAD_CASES) -> list[dict[str, Any]]:
    """Peak traced memory of `start`, the plan and the first chunk of an upload job, per case; and plan seconds.

    moto's server runs in its own process, so only the worker's (and the API's) allocations are traced.
    """
    import gc
    import tracemalloc

    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # the worker's log line per plan
    from handler.api.errors import RequestError
    from handler.config import load_settings
    from handler.gp.artifact import PackagedArtifact
    from handler.gp.model import load_model
    from handler.jobs.backend import (
        JobBackend,
        JobInputError,
        OutputOptions,
        WorkMessage,
        new_job,
        start_upload,
        submit_upload,
    )
    from handler.jobs.worker import plan_job, predict_chunk
    from scripts.local_jobs import create_resources

    settings = load_settings()
    loaded = load_model(PackagedArtifact(settings.resolved_model_path))
    manifest = loaded.manifest
    chunk = settings.job_chunk_points
    results = []
    with moto_server() as endpoint:
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        resources = create_resources(prefix="memory")
        backend = JobBackend(
            resources.bucket, resources.table, resources.work_queue_url, resources.results_queue_url, chunk_points=chunk
        )
        loaded.model.predict(manifest.bounds.T.copy())  # warm: BLAS threads, caches
        for case in cases:
            rows = chunk * (10 if "10-chunks" in case else 1)
            data = upload_bytes(case, rows, manifest.bounds, manifest.features)
            size = len(data)
            row: dict[str, Any] = {"case": case, "bytes": size}
            for traced in (True, False):  # peaks with tracemalloc, then seconds without its overhead
                job = new_job(backend, "bench", manifest, "upload", OutputOptions(), upload_format=case[:3])
                submit_upload(backend, job)
                key = backend.storage.upload_key(job.id, case[:3])
                backend.storage.s3.put_object(Bucket=backend.bucket, Key=key, Body=data)
                gc.collect()
                if traced:
                    tracemalloc.start()
                try:
                    start_upload(backend, backend.store.get(job.id))
                except RequestError as exc:
                    row["outcome"] = f"start {exc.status_code}: {exc.details[0][1]}"
                    break
                if traced:
                    row["start_peak"] = tracemalloc.get_traced_memory()[1]
                    tracemalloc.reset_peak()
                began = time.perf_counter()
                try:
                    plan_job(backend, job.id, manifest, settings.domain_margin, lambda: backend.chunk_points)
                    planned = backend.store.get(job.id)
                    row["outcome"] = f"planned: {planned.n_points:,} points" if planned else "planned"
                except JobInputError as exc:
                    row["outcome"] = f"failed: {exc}"[:160]
                    planned = None
                if not traced:
                    row["plan_seconds"] = time.perf_counter() - began
                    break
                row["plan_peak"] = tracemalloc.get_traced_memory()[1]
                tracemalloc.reset_peak()
                if planned is not None and planned.status == "RUNNING":
                    assert planned.n_points is not None
                    message = WorkMessage("chunk", job.id, 0, 0, min(chunk, planned.n_points))
                    predict_chunk(backend, message, loaded.model)
                    row["chunk_peak"] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            tracemalloc.stop()
            del data
            results.append(row)
            print(describe_upload_case(row), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="20,100", help="worker concurrencies to project at")
    parser.add_argument("--skip-client", action="store_true")
    parser.add_argument("--upload-memory", action="store_true", help="only the upload jobs' peak memory")
    args = parser.parse_args(argv)

    if args.upload_memory:
        from handler.config import load_settings

        chunk = load_settings().job_chunk_points
        print(f"Upload jobs: peak traced memory (tracemalloc) at JOB_CHUNK_POINTS {chunk:,}", flush=True)
        measure_upload_memory()
        return 0

    print(f"1. A worker's chunk, end to end against moto on loopback (medians of {args.repeats})", flush=True)
    rows = measure_chunks(args.repeats)
    fit = choose_chunk(rows)
    print(f"   fit: {fit['overhead_s'] * 1000:.0f} ms per chunk + {fit['per_point_s'] * 1e6:.2f} us per point: the "
          f"overhead is 10% of a chunk at {fit['size']:,} points", flush=True)  # fmt: skip
    from handler.config import load_settings

    size = load_settings().job_chunk_points
    seconds = fit["overhead_s"] + fit["per_point_s"] * size
    chunk = {"size": size, "seconds": seconds}
    print(f"   deployed JOB_CHUNK_POINTS {size:,}: {seconds:.2f} s a chunk (fit), {size / seconds:,.0f} points/s "
          f"per worker, far inside the worker's 300 s", flush=True)  # fmt: skip

    assumed = f"{COLD_START_S:g} s worker cold start and {S3_BYTES_PER_S / 1e6:g} MB/s S3"
    print(f"2. Projection: plan and assembly measured at 10^6 points (scaled linearly to 10^7); assumed {assumed}; "
          "arm64 list prices", flush=True)  # fmt: skip
    measured = measure_plan_and_assembly(1_000_000, args.repeats)
    print("   10^6 points: plan (Sobol' + .npy) {plan:.2f} s; assemble csv {csv:.2f} s, npy {npy:.2f} s, "
          "parquet {parquet:.2f} s".format(**measured), flush=True)  # fmt: skip
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        for points in (1_000_000, 10_000_000):
            scale = points / 1_000_000
            p = project(points, chunk, concurrency, measured["plan"] * scale, measured["csv"] * scale)
            print(f"   {points:>10,} points, {concurrency:>3} workers: {p['chunks']:>4} chunks, ~{p['wall_s']:6.1f} s "
                  f"wall, ~${p['cost']:.4f} (Lambda ${p['lambda_cost']:.4f})", flush=True)  # fmt: skip

    if not args.skip_client:
        print(f"3. The client against the local server, 10^5 points (medians of {args.repeats})", flush=True)
        client = measure_client(args.repeats)
        for name, seconds in client.items():
            print(f"   {name:<12} {seconds:6.2f} s  {100_000 / seconds:10,.0f} points/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
