"""Asynchronous jobs measured end to end on the local server, and projected for Lambda from those measurements.

The default run (`make bench-jobs`; `--quick`: 10^5 and 10^6 points only, fewer repeats):
  1. `scripts/local_lambda.py serve --job-workers N` (moto's S3, DynamoDB and SQS on loopback; N job-worker
     environments, each fed by its own SQS poller, so N chunks run at once): Sobol' design jobs of 10^5, 10^6 and
     10^7 points in csv, npy and parquet, the wall time from submit to SUCCEEDED (polled every 0.2 s; the download
     not included), medians of repeats. Each chunk logs its steps' seconds ("chunk done": inputs, predict, encode,
     write, count) and the finisher its stitch ("results stitched"); the server's log is parsed for them: the
     prediction's share of the wall time is sum(predict) / (wall x N).
  2. From those per-point and per-byte chunk costs and the measured hops: the wall time of a 10^7-point job on
     Lambda at 20 and 100 workers, term by term, with the assumptions (cold starts, S3 rates, SQS scaling) stated.
     The compute steps are also timed as CPU seconds of a chunk run in this process on one thread (the logged ones
     are wall seconds on a machine shared with other work; a Lambda environment has its vCPU to itself).
  3. The client's run_design over the largest job (npy) with its progress bar, then Job.download(path); the peak
     resident memory (VmHWM) of every process: each worker environment, the finisher's, the API's, moto's, the
     client's.

    python benchmarks/jobs.py [--quick] [--job-workers 2] [--scaling] [--output benchmarks/results.md]

`--scaling` also runs jobs of up to 10^6 points on a server of 1 worker environment and one of N, alternating job
by job, so that both meet the same load.

Two other measurements, on their own:
    python benchmarks/jobs.py --chunk-sizes [--repeats 3]   # a worker's chunk per size against moto (the choice
                                                            # of JOB_CHUNK_POINTS), and the client's paths at 10^5
    python benchmarks/jobs.py --upload-memory               # an upload job's traced peaks: start, plan, a chunk
"""

from __future__ import annotations

import os

# Before numpy is imported: one BLAS thread, as a 1769 MB Lambda has one vCPU (the CPU calibration of a chunk's steps
# runs in this process; the local server sets its environments' own).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import heapq  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish, table  # noqa: E402
from handler.jobs.stitching import COPY_THREADS  # noqa: E402

SECTION = "Jobs end to end: measured on the local server, projected for Lambda (benchmarks/jobs.py)"
SIZES = (100_000, 1_000_000, 10_000_000)
FORMATS = ("csv", "npy", "parquet")
REPEATS = {100_000: 5, 1_000_000: 3, 10_000_000: 1}  # 10^7: one run per format, each a minute or more here
QUICK_REPEATS = {100_000: 2, 1_000_000: 1}
POLL_S = 0.2
STEPS = ("inputs", "predict", "encode", "write", "count")  # a chunk's "chunk done" line, handler/jobs/worker.py
LOGGED = ("job planned", "chunk done", "results stitched", "job succeeded")
JOBS_BUCKET = "gpr-local-jobs"  # scripts/local_jobs.py create_resources' default prefix, as `serve` makes it
HANDLERS = {  # the runtime processes' handlers (template.yaml), by what the tables call them
    "handler.jobs.worker.lambda_handler": "job worker",
    "handler.jobs.finisher.lambda_handler": "finisher",
    "handler.app.lambda_handler": "API (PredictFunction)",
}
CHUNK_SIZES = (1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000)
# AWS list prices, us-east-1, arm64 (2026): Lambda per GB-second and per request; SQS standard per request
# (send, receive and delete each count); DynamoDB on-demand per write and read request unit; S3 Standard PUT.
LAMBDA_GB_SECOND = 0.0000133334
LAMBDA_REQUEST = 0.20 / 1e6
SQS_REQUEST = 0.40 / 1e6
DYNAMODB_WRITE = 0.625 / 1e6
DYNAMODB_READ = 0.125 / 1e6
S3_PUT = 0.005 / 1000
MEMORY_GB = 1769 / 1024  # the template's MemorySize (Globals), the worker's and the finisher's


# --- what the functions log ---------------------------------------------------------------------------------------


def parse_log(text: str) -> list[dict[str, Any]]:
    """The functions' JSON log lines this benchmark reads (Powertools', one a line), each with `at`: its timestamp in
    seconds since the epoch. Other lines (the server's own, requests) are skipped."""
    events = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("message") not in LOGGED:
            continue
        record["at"] = datetime.strptime(record["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z").timestamp()
        events.append(record)
    return events


@dataclass(frozen=True)
class JobRun:
    """One job, from the client's clock and the functions' log lines."""

    n: int
    fmt: str
    workers: int
    wall_s: float  # submit -> SUCCEEDED seen by a poll
    chunks: list[dict[str, Any]]  # its "chunk done" lines
    plan_s: float  # submit -> "job planned" (the API, the SQS hop, the plan, its chunks queued)
    chunks_s: float  # the first chunk's start -> the last chunk's end
    hop_s: float  # the last chunk's end -> the finisher's start (the results queue's hop)
    stitch_s: float | None  # the finisher's "results stitched" seconds (csv, npy)
    parts: int | None
    peaks: dict[str, int] = field(default_factory=dict)  # role -> the largest VmHWM of its processes over the job
    tag: str = ""  # the pass it was measured in ("scaling": servers of 1 and N workers, alternating)

    def step(self, name: str) -> float:
        return sum(float(chunk["seconds"][name]) for chunk in self.chunks)

    @property
    def bytes(self) -> int:
        return sum(int(chunk["bytes"]) for chunk in self.chunks)

    @property
    def chunk_points(self) -> int:
        return max(int(chunk["points"]) for chunk in self.chunks)

    @property
    def prediction_share(self) -> float:
        """Of the wall time the workers had (wall x workers), the part spent predicting."""
        return self.step("predict") / (self.wall_s * self.workers)


def summarise_job(
    job_id: str, n: int, fmt: str, workers: int, submitted_at: float, seen_at: float, events: list[dict[str, Any]]
) -> JobRun:
    """The job's run from its log lines (a chunk delivered twice logs "chunk already done", not "chunk done")."""
    mine = [event for event in events if event.get("job") == job_id]

    def first(message: str) -> dict[str, Any] | None:
        return next((event for event in mine if event["message"] == message), None)

    chunks = sorted((e for e in mine if e["message"] == "chunk done"), key=lambda e: int(e["chunk"]))
    planned, stitched, succeeded = first("job planned"), first("results stitched"), first("job succeeded")
    if planned is None or succeeded is None or not chunks:
        raise ValueError(f"job {job_id}: its log lines are missing (planned, chunks, succeeded)")
    starts = [chunk["at"] - sum(float(s) for s in chunk["seconds"].values()) for chunk in chunks]
    ends = [chunk["at"] for chunk in chunks]
    finisher_start = stitched["at"] - float(stitched["seconds"]) if stitched else succeeded["at"]
    return JobRun(
        n=n,
        fmt=fmt,
        workers=workers,
        wall_s=seen_at - submitted_at,
        chunks=chunks,
        plan_s=planned["at"] - submitted_at,
        chunks_s=max(ends) - min(starts),
        hop_s=finisher_start - max(ends),
        stitch_s=float(stitched["seconds"]) if stitched else None,
        parts=int(stitched["parts"]) if stitched else None,
    )


# --- the projection for Lambda ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkCost:
    """A chunk's cost as measured: seconds per point of generating, predicting and encoding; bytes per point of its
    part; seconds of its count (DynamoDB); and the local write rate (moto on loopback), for reference."""

    per_point: dict[str, float]
    bytes_per_point: float
    count_s: float
    local_write_bytes_per_s: float

    @classmethod
    def of(cls, chunks: Sequence[dict[str, Any]], quantile: float | None = None) -> ChunkCost:
        """Per point over all the chunks' points; or, with `quantile`, that quantile of each step's per-point seconds
        over the chunks (0.1: the least contended chunks, on a machine shared with other work)."""
        points = sum(int(chunk["points"]) for chunk in chunks)
        total = {name: sum(float(chunk["seconds"][name]) for chunk in chunks) for name in STEPS}
        size = sum(int(chunk["bytes"]) for chunk in chunks)
        per_point = {name: total[name] / points for name in ("inputs", "predict", "encode")}
        if quantile is not None:
            per_point = {
                name: float(np.quantile([float(c["seconds"][name]) / int(c["points"]) for c in chunks], quantile))
                for name in per_point
            }
        return cls(
            per_point=per_point,
            bytes_per_point=size / points,
            count_s=statistics.median(float(chunk["seconds"]["count"]) for chunk in chunks),
            local_write_bytes_per_s=size / total["write"] if total["write"] else math.inf,
        )


@dataclass(frozen=True)
class Assumptions:
    """What cannot be measured here, stated with the projection."""

    # docs/sizing.md: a job worker's cold start to its model loaded and a point predicted is 0.53 s in a fresh local
    # process; Lambda adds creating the environment and fetching the package (worker ~166 MB + pyarrow's share):
    # 2 s, as the projection before this one assumed. The finisher loads no model and no numpy-heavy package (53 MB).
    worker_cold_s: float = 2.0
    finisher_cold_s: float = 1.0
    s3_put_bytes_per_s: float = 100e6  # one PUT from one Lambda environment
    s3_request_s: float = 0.05  # a request's latency (CreateMultipartUpload, each UploadPartCopy, the completion's)
    copy_bytes_per_s: float = 50e6  # one UploadPartCopy, server-side (no bytes through the finisher)
    copy_threads: int = COPY_THREADS  # the finisher's copies at once (handler/jobs/stitching.py)
    complete_s: float = 0.5  # CompleteMultipartUpload of ~50 parts
    # Lambda's SQS event source: "five concurrent invocations ... then up to 300 more instances per minute"
    # (docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html)
    sqs_first: int = 5
    sqs_per_s: float = 5.0
    predict_factor: float = 1.0  # arm64 (Graviton2) against this x86_64: ~2.5 (handler/analyses/budget.py, estimated)


def chunk_seconds(cost: ChunkCost, points: int, assumed: Assumptions) -> float:
    """One chunk on Lambda: its measured per-point steps, its part at S3's rate, its count as measured."""
    per_point = cost.per_point["inputs"] + cost.per_point["predict"] * assumed.predict_factor + cost.per_point["encode"]
    write = assumed.s3_request_s + points * cost.bytes_per_point / assumed.s3_put_bytes_per_s
    return points * per_point + write + cost.count_s


def chunk_phase_seconds(
    chunks: int,
    workers: int,
    chunk_s: float,
    cold_s: float,
    *,
    warm: int = 0,
    first: int | None = None,
    per_s: float = 0.0,
) -> float:
    """From the chunks queued to the last one done: each free environment takes the next chunk (BatchSize 1).

    `warm` environments start at once; the others after their cold start. Without `first`, all `workers` join at
    once (waves: cold + ceil(chunks / workers) x chunk_s); with it, `first` join at once and `per_s` more a second,
    as Lambda's SQS event source scales.
    """
    ready = []
    for k in range(min(workers, chunks)):
        joins = 0.0 if first is None or k < first else (k - first + 1) / per_s
        ready.append(joins + (0.0 if k < warm else cold_s))
    heapq.heapify(ready)
    end = 0.0
    for _ in range(chunks):
        done = heapq.heappop(ready) + chunk_s
        end = max(end, done)
        heapq.heappush(ready, done)
    return end


def stitch_seconds(parts: int, part_bytes: float, assumed: Assumptions) -> float:
    """The finisher's multipart upload: created, the parts copied `copy_threads` at a time, completed."""
    rounds = math.ceil(parts / assumed.copy_threads)
    copy = assumed.s3_request_s + part_bytes / assumed.copy_bytes_per_s
    return assumed.s3_request_s + rounds * copy + assumed.complete_s


def project(
    n: int,
    fmt: str,
    cost: ChunkCost,
    chunk_points: int,
    workers: int,
    plan_s: float,
    hop_s: float,
    assumed: Assumptions,
    ramp: bool = False,
) -> dict[str, float]:
    """A job's wall time on Lambda, term by term (seconds), and their `total`.

    The plan runs on a cold environment (then warm: it takes chunks too); the other environments' cold start is in
    the chunk phase; the finisher is cold. `plan_s` and `hop_s` are the local ones (API, SQS hop, plan; results
    queue's hop). Parquet's finisher only lists the parts.
    """
    chunks = math.ceil(n / chunk_points)
    chunk_s = chunk_seconds(cost, chunk_points, assumed)
    first, per_s = (assumed.sqs_first, assumed.sqs_per_s) if ramp else (None, 0.0)
    terms = {
        "submit_plan": plan_s,
        "plan_cold": assumed.worker_cold_s,
        "chunks": chunk_phase_seconds(
            chunks, workers, chunk_s, assumed.worker_cold_s, warm=1, first=first, per_s=per_s
        ),
        "hop": hop_s,
        "finisher_cold": assumed.finisher_cold_s,
        "stitch": 0.0 if fmt == "parquet" else stitch_seconds(chunks, chunk_points * cost.bytes_per_point, assumed),
    }
    terms["total"] = sum(terms.values())
    terms["chunk_s"] = chunk_s
    terms["waves"] = math.ceil(chunks / workers)
    terms["n_chunks"] = chunks
    terms["cost"] = job_cost(chunks, workers, chunk_s, terms["stitch"], fmt, assumed)
    return terms


def job_cost(chunks: int, workers: int, chunk_s: float, stitch_s: float, fmt: str, assumed: Assumptions) -> float:
    """Dollars: Lambda's GB-seconds (every chunk, every environment's cold start, the finisher) and requests, SQS's
    send, receive and delete of each message, DynamoDB's writes and reads per chunk, S3's PUTs (the parts, and the
    multipart upload's requests). The download is the caller's."""
    compute_s = chunks * chunk_s + min(workers, chunks) * assumed.worker_cold_s + assumed.finisher_cold_s + stitch_s
    messages = chunks + 2  # the plan, the chunks, the assembly
    lambda_cost = compute_s * MEMORY_GB * LAMBDA_GB_SECOND + messages * LAMBDA_REQUEST
    dynamodb = (2 * chunks + 6) * (DYNAMODB_WRITE + DYNAMODB_READ)
    puts = chunks + (0 if fmt == "parquet" else chunks + 2)
    return lambda_cost + messages * 3 * SQS_REQUEST + dynamodb + puts * S3_PUT


# --- the local server -------------------------------------------------------------------------------------------


class LocalServer:
    """`scripts/local_lambda.py serve` with `job_workers` environments per job function; its log holds every
    function's output. Stopped (by its PID: it stops its emulators and moto in order) when the block ends."""

    def __init__(self, folder: Path, job_workers: int, name: str = "server") -> None:
        self.folder = folder
        self.job_workers = job_workers
        self.log = folder / f"{name}-{job_workers}-workers.log"

    def __enter__(self) -> LocalServer:
        import httpx

        from scripts.local_lambda import spawn_serve

        self.process, self.url = spawn_serve(self.log, "-w", "1", "--job-workers", str(self.job_workers))
        try:
            deadline = time.monotonic() + 180
            while self.process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{self.url}/health", timeout=60).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"the local server did not start:\n{self.log.read_text()[-3000:]}")
            found = re.search(r"on moto at (http://\S+);", self.log.read_text())
            assert found, "the server did not say where moto listens"
            self.moto = found.group(1)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def events(self) -> list[dict[str, Any]]:
        return parse_log(self.log.read_text(errors="replace"))

    def processes(self) -> dict[str, list[int]]:
        """The server's processes by role: each function's runtime (the emulators' children), moto, the server."""
        from scripts.local_lambda import _descendants

        roles: dict[str, list[int]] = {"local server (API Gateway, pollers)": [self.process.pid]}
        for pid in _descendants(self.process.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            argv = [arg for arg in argv if arg]
            if argv[1:3] == ["-m", "awslambdaric"]:  # a runtime (its emulator's arguments name it too)
                role = HANDLERS.get(argv[-1])
            elif any(arg.endswith("local_jobs.py") for arg in argv):
                role = "moto (S3, DynamoDB, SQS)"
            else:
                role = None
            if role:
                roles.setdefault(role, []).append(pid)
        return roles

    def delete_job_objects(self, job_id: str) -> None:
        """The job's objects out of moto's memory (moto keeps every object; S3 would keep them a week)."""
        import boto3

        s3 = boto3.client(
            "s3", endpoint_url=self.moto, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=JOBS_BUCKET, Prefix=f"jobs/{job_id}/"):
            keys: list[Any] = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=JOBS_BUCKET, Delete={"Objects": keys})


def peak_memory_bytes(pid: int, field: str = "VmHWM") -> int | None:
    """The process's peak resident set (Linux's VmHWM; or another field: VmRSS, now), or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def reset_peak_memory(pid: int) -> None:
    """VmHWM back to the current resident set (Linux's clear_refs 5), so the next peak is the next job's."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def run_job(server: LocalServer, client: Any, n: int, fmt: str, tag: str = "") -> JobRun:
    """A Sobol' design job from submit to SUCCEEDED, polled every POLL_S; its log lines; the peak memory of the
    server's processes over it (their VmHWM reset before); its objects then deleted."""
    processes = server.processes()
    for pids in processes.values():
        for pid in pids:
            reset_peak_memory(pid)
    submitted_at = time.time()
    job = client.submit(design={"method": "sobol", "n": n, "seed": 1}, format=fmt)
    while (status := job.status()["status"]) not in ("SUCCEEDED", "FAILED"):
        time.sleep(POLL_S)
    seen_at = time.time()
    if status == "FAILED":
        raise RuntimeError(f"job {job.id} ({n:,} points, {fmt}) failed: {job.last_status.get('error')}")
    for _ in range(50):  # the finisher's last lines may reach the log just after the poll saw SUCCEEDED
        try:
            run = summarise_job(job.id, n, fmt, server.job_workers, submitted_at, seen_at, server.events())
            break
        except ValueError:
            time.sleep(0.1)
    else:
        raise RuntimeError(f"job {job.id}: no log lines in {server.log}")
    peaks = {role: max((peak_memory_bytes(pid) or 0 for pid in pids), default=0) for role, pids in processes.items()}
    server.delete_job_objects(job.id)
    return replace(run, peaks=peaks, tag=tag)


def measure_jobs(
    servers: Sequence[LocalServer],
    sizes: Sequence[int],
    repeats: dict[int, int],
    formats: Sequence[str] = FORMATS,
    tag: str = "",
) -> list[JobRun]:
    """Every size and format, repeats interleaved across formats and servers (the machine's load changes over
    minutes: alternating makes the servers' runs meet the same load)."""
    from gpr_client import SurrogateClient

    runs = []
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(SurrogateClient(server.url, timeout_s=120)) for server in servers]
        for server, client in zip(servers, clients, strict=True):
            for fmt in formats:  # warm: every environment's imports (pyarrow for csv and parquet), not counted
                run_job(server, client, min(1_000_000, max(sizes)), fmt)
        for n in sizes:
            for _ in range(repeats[n]):
                for fmt in formats:
                    for server, client in zip(servers, clients, strict=True):
                        run = run_job(server, client, n, fmt, tag)
                        runs.append(run)
                        print(f"  {server.job_workers} worker(s) {n:>10,} {fmt:<7} {run.wall_s:7.2f} s wall, "
                              f"{len(run.chunks):>3} chunks, predicting {run.prediction_share:4.0%}, stitch "
                              f"{describe_stitch(run)}, worker peak {mb(run.peaks.get('job worker', 0))}",
                              flush=True)  # fmt: skip
    return runs


def describe_stitch(run: JobRun) -> str:
    return "-" if run.stitch_s is None else f"{run.stitch_s:.2f} s ({run.parts} parts)"


# --- the client and every process's peak memory ----------------------------------------------------------------


def client_child(argv: list[str]) -> int:
    """In a process of its own (its VmHWM is the client's alone): `run_design URL N`, `download URL JOB PATH`, or
    `idle URL`. Prints one JSON line: seconds, peak memory and what it got."""
    from gpr_client import SurrogateClient

    what, url = argv[0], argv[1]
    answer: dict[str, Any] = {}
    with SurrogateClient(url, timeout_s=300) as client:
        client.model()
        began = time.perf_counter()
        if what == "run_design":
            results = client.run_design("sobol", int(argv[2]), seed=1, progress=True, poll_interval_s=POLL_S)
            answer["rows"] = len(results.table)
        elif what == "download":
            path = client.job(argv[2]).download(argv[3])
            answer["bytes"] = path.stat().st_size
        answer["seconds"] = time.perf_counter() - began
    answer["peak_bytes"] = peak_memory_bytes(os.getpid())
    print(json.dumps(answer), flush=True)
    return 0


def run_client_child(folder: Path, *argv: str) -> dict[str, Any]:
    stderr = folder / f"client-{argv[0]}.err"
    with stderr.open("w") as err:
        result = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--client-child", *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=1800,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"client {argv[0]} failed:\n{stderr.read_text()[-3000:]}")
    answer = dict(json.loads(result.stdout.strip().splitlines()[-1]))
    bar = [line.strip() for line in re.split(r"[\r\n]", stderr.read_text()) if "pt/s" in line or "pt [" in line]
    answer["bar"] = bar[-1] if bar else ""
    return answer


def measure_client_memory(server: LocalServer, n: int) -> dict[str, Any]:
    """run_design over an n-point npy job with its progress bar, then Job.download of it; every process's VmHWM over
    the job (reset just before it)."""
    processes = server.processes()
    before = {}
    for pids in processes.values():
        for pid in pids:
            reset_peak_memory(pid)
            before[pid] = peak_memory_bytes(pid, "VmRSS")
    idle = run_client_child(server.folder, "idle", server.url)
    since = time.time()
    design = run_client_child(server.folder, "run_design", server.url, str(n))
    peaks = {  # (resident when the job started, peak over it)
        role: [(before[pid] or 0, peak) for pid in pids if (peak := peak_memory_bytes(pid)) is not None]
        for role, pids in processes.items()
    }
    succeeded = [e for e in server.events() if e["message"] == "job succeeded" and e["at"] >= since]
    job_id = str(succeeded[-1]["job"])
    target = server.folder / "results.npy"
    download = run_client_child(server.folder, "download", server.url, job_id, str(target))
    target.unlink(missing_ok=True)
    server.delete_job_objects(job_id)
    return {"n": n, "idle": idle, "run_design": design, "download": download, "peaks": peaks}


def chunk_cpu_seconds(fmt: str, n: int, chunk_points: int, repeats: int = 3) -> dict[str, float]:
    """CPU seconds per point of a chunk's steps (its rows generated, predicted, encoded), in this process on one BLAS
    thread, the least of `repeats`: what a dedicated vCPU takes. The chunks' logged seconds are wall time on a
    machine shared with other work; a Lambda environment has its vCPU to itself."""
    from handler.config import load_settings
    from handler.gp.artifact import PackagedArtifact
    from handler.gp.model import load_model
    from handler.jobs.backend import OutputOptions, result_columns
    from handler.jobs.designs import generate_rows
    from handler.jobs.results import encode_part, result_rows

    loaded = load_model(PackagedArtifact(load_settings().resolved_model_path))
    manifest, surrogate = loaded.manifest, loaded.model
    lower, upper = manifest.bounds[:, 0], manifest.bounds[:, 1]
    options = OutputOptions(format=fmt)
    columns = result_columns(manifest.features, manifest.outputs, options)
    start = n // 2 // chunk_points * chunk_points  # a chunk from the middle: generating it costs what any does
    best = {"inputs": math.inf, "predict": math.inf, "encode": math.inf}
    for _ in range(repeats):
        began = time.process_time()
        points = generate_rows("sobol", n, 1, lower, upper, start, start + chunk_points)
        generated = time.process_time()
        # in slices, as the worker predicts (handler/jobs/worker.py CHUNK_SLICE_POINTS)
        slices = [surrogate.predict(points[i : i + 10_000]) for i in range(0, chunk_points, 10_000)]
        predictions = np.hstack([np.vstack([m for m, _ in slices]), np.vstack([v for _, v in slices])])
        predicted = time.process_time()
        encode_part(fmt, 1, n, columns, result_rows(points, predictions, len(manifest.outputs), options))
        encoded = time.process_time()
        for name, seconds in (
            ("inputs", generated - began),
            ("predict", predicted - generated),
            ("encode", encoded - predicted),
        ):
            best[name] = min(best[name], seconds / chunk_points)
    return best


# --- the chunk-size sweep, the client's paths, upload jobs' memory (measured before the end-to-end run) ---


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
            planned = backend.store.planned(job.id, len(points), size, offset)
            assert planned is not None
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
                    submitted = backend.store.get(job.id)
                    assert submitted is not None
                    start_upload(backend, submitted)
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


# --- the report ---------------------------------------------------------------------------------------------------


def median_run(runs: Sequence[JobRun]) -> JobRun:
    """The run of median wall time (the lower of the two middle ones for an even count)."""
    ordered = sorted(runs, key=lambda run: run.wall_s)
    return ordered[(len(ordered) - 1) // 2]


def group(runs: Sequence[JobRun]) -> dict[tuple[int, int, str], list[JobRun]]:
    grouped: dict[tuple[int, int, str], list[JobRun]] = {}
    for run in runs:
        grouped.setdefault((run.workers, run.n, run.fmt), []).append(run)
    return grouped


def power(n: int) -> str:
    exponent = round(math.log10(n))
    return f"10^{exponent}" if 10**exponent == n else f"{n:,}"


def mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB" if size < 1e9 else f"{size / 1e9:,.2f} GB"


def measured_table(runs: Sequence[JobRun]) -> str:
    rows = []
    for (_, n, fmt), group_runs in sorted(group(runs).items(), key=lambda item: (-item[0][0], item[0][1])):
        run = median_run(group_runs)
        steps = " / ".join(f"{run.step(name):.2f}" for name in STEPS)
        peaks = " / ".join(mb(run.peaks.get(role, 0)) for role in ("job worker", "finisher"))
        rows.append([
            power(n), fmt, f"{len(run.chunks)} x {run.chunk_points:,}", str(len(group_runs)),
            f"**{run.wall_s:.2f} s**", f"{n / run.wall_s:,.0f}", f"{run.prediction_share:.0%}", steps,
            f"{run.plan_s:.2f} / {run.chunks_s:.2f} / {run.hop_s:.2f}", describe_stitch(run), mb(run.bytes), peaks,
        ])  # fmt: skip
    return table(
        ["points", "format", "chunks", "runs", "wall (median)", "points/s", "predicting",
         "chunk steps summed, s: inputs / predict / encode / write / count",
         "submit->planned / chunks / hop to finisher, s", "finisher's stitch (parts)", "results",
         "peak memory: a worker / the finisher"],
        rows,
    )  # fmt: skip


def max_workers(runs: Sequence[JobRun]) -> int:
    return max(run.workers for run in runs)


def projection_rows(
    runs: Sequence[JobRun], n: int, workers_list: Sequence[int], assumed: Assumptions, cpu: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """The projection at each concurrency for each format, from the runs at the largest size measured: from the
    chunks' logged (wall) seconds, and from their steps' CPU seconds (`cpu`, per format) with the same bytes."""
    largest = max(run.n for run in runs)
    rows = []
    for fmt in FORMATS:
        measured = [run for run in runs if run.n == largest and run.fmt == fmt]
        if not measured:
            continue
        chunks = [chunk for run in measured for chunk in run.chunks]
        logged = ChunkCost.of(chunks)
        dedicated = replace(logged, per_point=cpu[fmt]) if fmt in cpu else logged
        chunk_points = max(run.chunk_points for run in measured)
        plan_s = statistics.median(run.plan_s for run in measured)
        hop_s = statistics.median(run.hop_s for run in measured)

        def at(cost: ChunkCost, workers: int, assumptions: Assumptions, ramp: bool = False) -> dict[str, float]:
            return project(n, fmt, cost, chunk_points, workers, plan_s, hop_s, assumptions, ramp)  # noqa: B023

        for workers in workers_list:
            rows.append({
                "fmt": fmt, "workers": workers, "measured_n": largest, "chunks": len(chunks), "logged": logged,
                "dedicated": dedicated, "terms": at(dedicated, workers, assumed),
                "from_logged": at(logged, workers, assumed)["total"],
                "ramp": at(dedicated, workers, assumed, ramp=True)["total"],
                "arm64": at(dedicated, workers, replace(assumed, predict_factor=2.5), ramp=True)["total"],
                "warm": at(dedicated, workers, replace(assumed, worker_cold_s=0.0, finisher_cold_s=0.0))["total"],
            })  # fmt: skip
    return rows


def chunk_cost_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        if row["workers"] != rows[0]["workers"]:
            continue
        logged, dedicated = row["logged"], row["dedicated"]
        lines.append([
            row["fmt"], str(row["chunks"]),
            " / ".join(f"{logged.per_point[name] * 1e6:.2f}" for name in ("inputs", "predict", "encode")),
            " / ".join(f"{dedicated.per_point[name] * 1e6:.2f}" for name in ("inputs", "predict", "encode")),
            f"{logged.bytes_per_point:.1f}", f"{logged.count_s * 1000:.0f} ms",
            f"{logged.local_write_bytes_per_s / 1e6:.0f} MB/s",
        ])  # fmt: skip
    return table(
        ["format", "chunks", "µs a point, logged (wall): inputs / predict / encode",
         "µs a point, CPU (one thread, in-process)", "part bytes a point", "count (median)",
         "write to moto (local)"],
        lines,
    )  # fmt: skip


def projection_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        t = row["terms"]
        lines.append([
            row["fmt"], str(row["workers"]), f"{t['chunk_s']:.2f} s", f"{t['n_chunks']:.0f} / {t['waves']:.0f}",
            f"{t['submit_plan']:.2f}", f"{t['plan_cold']:.1f}", f"{t['chunks']:.2f}", f"{t['hop']:.2f}",
            f"{t['finisher_cold']:.1f}", f"{t['stitch']:.2f}", f"**{t['total']:.1f} s**", f"{row['ramp']:.1f} s",
            f"{row['arm64']:.1f} s", f"{row['warm']:.1f} s", f"{row['from_logged']:.1f} s", f"${t['cost']:.4f}",
        ])  # fmt: skip
    return table(
        ["format", "workers", "a chunk on Lambda", "chunks / waves", "submit + plan", "plan's cold start",
         "chunk phase (cold starts included)", "hop to finisher", "finisher's cold start", "stitch", "total",
         "with SQS scaling (5, then +5/s)", "arm64 (predict x2.5) with SQS scaling", "warm functions",
         "from the logged wall seconds instead", "cost"],
        lines,
    )  # fmt: skip


def memory_table(measured: dict[str, Any], chunk_points: int) -> str:
    n = measured["n"]
    bounds = {
        "job worker": f"one chunk ({chunk_points:,} points: its rows generated alone, the predictions, the encoded "
        "part) and the model",
        "finisher": "no bytes of the results: S3 copies the parts (parts under 5 MiB are read, < 10 MiB a part)",
        "API (PredictFunction)": "nothing n-sized: a job's status and at most 500 parts listed per answer",
        "moto (S3, DynamoDB, SQS)": "every object it holds: it stands in for S3 (the parts, then the stitched file)",
        "local server (API Gateway, pollers)": "requests and SQS batches (BatchSize 1): nothing n-sized",
    }
    rows = []
    for role, peaks in measured["peaks"].items():
        shown = ", ".join(f"{mb(start)} -> **{mb(peak)}**" for start, peak in peaks) or "-"
        rows.append([role, str(len(peaks)), shown, bounds.get(role, "")])
    for what, label in (
        ("idle", "client: imported, model() asked (its floor)"),
        ("run_design", f"client: run_design('sobol', {n:,}), npy, into memory"),
        ("download", "client: Job.download(path), streamed to a file"),
    ):
        answer = measured[what]
        detail = {
            "idle": "the client's imports (numpy, httpx)",
            "run_design": f"n-sized by nature: the results table ({n:,} rows x 6 float64: {mb(n * 48)}), a view of "
            "the download's buffer, and what the client computes from it",
            "download": "1 MiB blocks to a file",
        }[what]
        extra = f" in {answer['seconds']:.1f} s" if what != "idle" else ""
        rows.append([label, "1", f"**{mb(answer['peak_bytes'])}**{extra}", detail])
    header = ["process", "processes", "resident at the job's start -> peak (VmHWM) over it", "what bounds it"]
    return table(header, rows)


def scaling_table(runs: Sequence[JobRun]) -> str:
    grouped = group([run for run in runs if run.tag == "scaling"])
    counts = sorted({workers for workers, _, _ in grouped})
    if len(counts) < 2:
        return ""
    rows = []
    for n, fmt in sorted({(n, fmt) for _, n, fmt in grouped}):
        walls = [median_run(grouped[(w, n, fmt)]).wall_s for w in counts if (w, n, fmt) in grouped]
        if len(walls) == len(counts):
            rows.append([power(n), fmt, *(f"{wall:.2f} s" for wall in walls), f"{walls[0] / walls[-1]:.2f}x"])
    return table(["points", "format", *(f"{w} worker(s)" for w in counts), "speed-up"], rows)


def report(
    runs: list[JobRun],
    projections: list[dict[str, Any]],
    memory: dict[str, Any] | None,
    command: str,
    minutes: float,
    loads: tuple[tuple[float, ...], tuple[float, ...]],
    generation: str,
) -> str:
    main_runs = [run for run in runs if run.tag == ""]
    workers = max_workers(main_runs)
    chunk_points = max(run.chunk_points for run in main_runs)
    by_n = {
        n: [run for run in main_runs if run.n == n and run.stitch_s is not None]
        for n in sorted({run.n for run in main_runs})
    }
    stitches = "; ".join(
        f"{power(n)}: " + ", ".join(f"{run.fmt} {run.stitch_s:.2f} s ({run.parts} parts)" for run in group_runs[:2])
        for n, group_runs in by_n.items()
        if group_runs
    )
    text = (
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M')} UTC, {minutes:.0f} minutes, {os.cpu_count()}-core "
        f"{platform.machine()} machine (Python {platform.python_version()}) shared with other work: load average "
        f"(1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in loads[0])}, after "
        f"{', '.join(f'{v:.2f}' for v in loads[1])}: every wall time here is inflated by that sharing. The local "
        f"server (`scripts/local_lambda.py serve -w 1 --job-workers {workers}`): moto's S3, DynamoDB and SQS on "
        f"loopback, {workers} job-worker environments (one BLAS thread each, as a 1769 MB Lambda), each fed by its "
        f"own SQS poller (BatchSize 1), so {workers} chunks run at once. Sobol' designs (seed 1) on the Park model; "
        f"chunks of {chunk_points:,} points (`JOB_CHUNK_POINTS`). Design generation: {generation}.\n\n"
        "### Measured: submit to SUCCEEDED on the local server\n\n"
        "Wall: from submit to the poll (every 0.2 s) that sees SUCCEEDED; the download is not included. "
        f"Predicting: the chunks' summed predict seconds over wall x {workers} workers (a job of one chunk keeps "
        f'one worker busy: at most 1/{workers}). The steps are each chunk\'s "chunk done" log line, summed over '
        "the job's chunks (wall seconds: a chunk's steps wait for the CPU too); the hops from the log lines' "
        "timestamps. The finisher stitches csv and npy parts by UploadPartCopy: moto copies the bytes in its own "
        "Python process, S3 copies them server-side; Parquet parts stay a dataset (no stitch). Peak memory: each "
        "process's VmHWM reset before the job (it restarts from the resident set the last job left).\n\n"
        + measured_table(main_runs)
    )
    if scaling := scaling_table(runs):
        text += (
            "\n### Scaling: one worker environment against "
            f"{workers}, alternating job by job between two servers (so both meet the same load)\n\n" + scaling
        )
    text += (
        f"\n**The finisher's stitch**: {stitches}. It makes one request per part, {COPY_THREADS} at a time, plus "
        f"the creation and the completion: on S3 its time grows with ceil(parts / {COPY_THREADS}), not with the "
        "bytes (each part is a server-side copy), and a chunk's part is at least 5 MiB, so a 10^7-point job has 50 "
        "parts (one round of copies) in any format, and 2 x 10^5 points or fewer one part. Locally moto copies "
        "every byte in Python, so here the stitch grows with the bytes (CSV's most).\n"
    )
    if projections:
        assumed = Assumptions()
        goal = [row for row in projections if row["workers"] == 20]
        goal_text = "; ".join(
            f"{row['fmt']} {row['terms']['total']:.1f} s ({row['ramp']:.1f} s with SQS scaling, "
            f"{row['arm64']:.1f} s if arm64 predicts 2.5x slower; {row['from_logged']:.1f} s from the logged wall "
            "seconds)"
            for row in goal
        )
        text += (
            f"\n### Projected for Lambda: {power(SIZES[-1])} points\n\n"
            f"From the chunks measured above at {power(projections[0]['measured_n'])} points: each step's "
            "seconds a point (generating the rows, predicting, encoding the part), the part's bytes a point and the "
            "count's seconds (median). The compute steps are taken as CPU seconds (the least of 3 in-process "
            "runs of a middle chunk, one thread, x86_64: a Lambda environment has its vCPU to itself, where the "
            "logged wall seconds here include waiting for a shared CPU); the total from the logged wall seconds "
            "is the next-to-last column. The part is written at "
            f"{assumed.s3_put_bytes_per_s / 1e6:.0f} MB/s from one environment (+{assumed.s3_request_s * 1000:.0f}"
            f" ms a request), assumed. Chunks of {chunk_points:,} points, BatchSize 1: each free environment "
            "takes the next chunk (waves of the worker count). Assumed cold starts: the plan's environment, then "
            f"each chunk environment's first chunk, {assumed.worker_cold_s:.0f} s (docs/sizing.md: 0.53 s to a "
            "worker's model loaded in a fresh local process; Lambda adds the environment and its package); the "
            f"finisher's {assumed.finisher_cold_s:.0f} s. Submit + plan and the hop to the finisher: medians "
            "measured locally at that size. The stitch: UploadPartCopy at "
            f"{assumed.copy_bytes_per_s / 1e6:.0f} MB/s a part server-side, {assumed.copy_threads} at a time, "
            f"+{assumed.s3_request_s * 1000:.0f} ms a request, {assumed.complete_s:.1f} s to complete, assumed. "
            "Beside the total: Lambda's SQS scaling (five concurrent invocations at first, then up to 300 more a "
            "minute; docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html), arm64's matrix products "
            "(Graviton2 may take ~2.5x x86_64's time, handler/analyses/budget.py's estimate from peak rates), "
            "functions already warm. Not modelled: the client's poll interval. Cost: us-east-1 arm64 list prices, "
            "Lambda at 1769 MB (every chunk, every environment's cold start, the finisher), SQS, DynamoDB on "
            "demand, S3 PUTs; the download is the caller's.\n\n"
            + chunk_cost_table(projections)
            + "\n"
            + projection_table(projections)
            + f"\nThe goal, < 20 s for {power(SIZES[-1])} points at 20 workers: projected {goal_text}.\n"
        )
    if memory is not None:
        text += (
            f"\n### Peak memory of every process: run_design over {power(memory['n'])} points (npy)\n\n"
            f"`run_design('sobol', {memory['n']:,}, progress=True)` in a fresh client process (its bar's last "
            f"line: `{memory['run_design']['bar']}`; {memory['run_design']['seconds']:.1f} s, download and "
            "np.load included), then `Job.download(path)` of the same job in another. Each server process's "
            "VmHWM was reset (clear_refs) just before the job: it restarts from the resident set earlier jobs "
            "left, so a peak equal to its start means the job needed no more.\n\n" + memory_table(memory, chunk_points)
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10^5 and 10^6 points only, fewer repeats")
    parser.add_argument("--job-workers", type=int, default=2, help="job-worker environments (default 2)")
    parser.add_argument("--scaling", action="store_true", help="also 1 worker against N, alternating, up to 10^6")
    parser.add_argument("--workers", default="20,100", help="Lambda concurrencies to project at")
    parser.add_argument(
        "--generation",
        default="each chunk generates its own rows (handler/jobs/designs.py generate_rows, numpy only)",
        help="how the measured code generates designs, said in the report",
    )
    parser.add_argument("--output", type=Path, help="markdown file to (re)write its section in: benchmarks/results.md")
    parser.add_argument("--chunk-sizes", action="store_true", help="a chunk per size against moto; client paths")
    parser.add_argument("--repeats", type=int, default=3, help="--chunk-sizes: medians of")
    parser.add_argument("--upload-memory", action="store_true", help="only the upload jobs' peak memory")
    parser.add_argument("--client-child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.client_child:
        return client_child(args.client_child)
    if args.upload_memory:
        from handler.config import load_settings

        chunk = load_settings().job_chunk_points
        print(f"Upload jobs: peak traced memory (tracemalloc) at JOB_CHUNK_POINTS {chunk:,}", flush=True)
        measure_upload_memory()
        return 0
    if args.chunk_sizes:
        return chunk_sizes(args.repeats)

    # SIGTERM unwinds like Ctrl-C: the local server (and through it the emulators and moto) is stopped, not orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, load_before = time.perf_counter(), os.getloadavg()
    sizes, repeats = (SIZES[:2], QUICK_REPEATS) if args.quick else (SIZES, REPEATS)
    folder = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    print(f"1. Sobol' design jobs on the local server ({folder}), {args.job_workers} worker environment(s)", flush=True)
    with LocalServer(folder, args.job_workers) as server:
        runs = measure_jobs([server], sizes, repeats)
        print(
            f"3. run_design over {power(sizes[-1])} points (npy), then Job.download; every process's peak", flush=True
        )
        memory = measure_client_memory(server, sizes[-1])
    if args.scaling and args.job_workers != 1:
        small = [n for n in sizes if n <= 1_000_000]
        print(f"   1 against {args.job_workers} worker environments, alternating, up to {power(small[-1])}", flush=True)
        with LocalServer(folder, 1, "scaling") as one, LocalServer(folder, args.job_workers, "scaling") as many:
            runs += measure_jobs([one, many], small, repeats, tag="scaling")
    main_runs = [run for run in runs if run.tag == ""]
    chunk_points = max(run.chunk_points for run in main_runs)
    print("2. CPU seconds of a chunk's steps, in-process; the projection", flush=True)
    cpu = {fmt: chunk_cpu_seconds(fmt, SIZES[-1], chunk_points) for fmt in FORMATS}
    workers_list = [int(w) for w in args.workers.split(",")]
    projections = projection_rows(main_runs, SIZES[-1], workers_list, Assumptions(), cpu)
    command = "python benchmarks/jobs.py" + (" --quick" if args.quick else "") + (" --scaling" if args.scaling else "")
    minutes = (time.perf_counter() - started) / 60
    (folder / "runs.json").write_text(json.dumps([run.__dict__ for run in runs], default=str))  # the raw runs
    text = report(runs, projections, memory, command, minutes, (load_before, os.getloadavg()), args.generation)
    publish(text, args.output, SECTION)
    return 0


def chunk_sizes(repeats: int) -> int:
    """The chunk-size sweep (how JOB_CHUNK_POINTS was chosen) and the client's paths at 10^5 points."""
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # the worker's line per chunk: the sweep prints its own
    print(f"A worker's chunk, end to end against moto on loopback (medians of {repeats})", flush=True)
    fit = choose_chunk(measure_chunks(repeats))
    print(f"   fit: {fit['overhead_s'] * 1000:.0f} ms per chunk + {fit['per_point_s'] * 1e6:.2f} us per point: the "
          f"overhead is 10% of a chunk at {fit['size']:,} points", flush=True)  # fmt: skip
    print(f"The client against the local server, 10^5 points (medians of {repeats})", flush=True)
    for name, seconds in measure_client(repeats).items():
        print(f"   {name:<12} {seconds:6.2f} s  {100_000 / seconds:10,.0f} points/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
