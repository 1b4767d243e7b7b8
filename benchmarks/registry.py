"""The model registry's memory and cold loads: what serving a registry model costs against a packaged one.

One run, side by side; every measure in a fresh child process with one BLAS thread (a 1,769 MB function has about
one vCPU), the registry's table and bucket on moto's server on loopback (started here), models published through
the registry's own code (new version, upload, the loader's check, `live` alias):

  (a) cold: a fresh process to its first answer from a model, the Park example (model_artifacts/) and a
      2,000-point model (tests/large_models.py): through the registry (`/models/{name}/predict`: DynamoDB reads,
      S3 get, sha256, the loader's checks, load, predict) against the same file packaged (`/predict`: sha256,
      checks, load, predict). Medians of alternating repeats. Moto's S3 is local: in AWS add the artifact's
      bytes (given) at S3's throughput, and a network round trip per DynamoDB or S3 call.
  (b) many: 20 registry models served from one environment whose cache budget (REGISTRY_CACHE_MB) holds 5 of
      them, from `resident_bytes` of their manifests: round-robin (LRU's worst case) and Zipf-like (what traffic
      looks like); hit rate, p50/p99 latency per request, and the process's resident memory (VmRSS after every
      request, VmHWM) against the budget plus the baseline (the process after import, one packaged answer and
      the registry's clients made).
  (c) resident: `resident_bytes` (handler/registry/cache.py) against the RSS a loaded version takes
      (m = 500, 2,000, 8,000; p = 1, 3).

    python benchmarks/registry.py [--repeats 7] [--output benchmarks/results.md]
    python benchmarks/registry.py --quick        # small models, few requests (to show it still runs)
"""

from __future__ import annotations

import os

# Before numpy is imported anywhere: one BLAS thread, as on a 1769 MB Lambda (ANALYSES_BENCH_THREADS overrides).
THREADS = os.environ.get("ANALYSES_BENCH_THREADS", "1")
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = THREADS
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")  # no line per published model

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish, table  # noqa: E402

SECTION = "Model registry: cold loads and memory (benchmarks/registry.py)"
PARK = ROOT / "model_artifacts" / "pretrained-model.npz"
MODELS_DIR = Path(os.environ.get("REGISTRY_BENCH_MODELS", "/tmp/registry-bench-models"))
FLEET = 20  # models served from one environment
HELD = 5  # how many of them the cache budget holds
ZIPF_S = 1.1  # P(rank k) ~ 1 / k^s: web-like popularity
MiB = 2**20

# --- the child processes ---------------------------------------------------------------------------------------

_STATUS = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))
def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM to the current RSS (Linux 4.0+)
        handle.write("5")
"""

# A fresh process's first answer: import the function, then one request (argv: root, path, body).
COLD = (
    _STATUS
    + r"""
started = time.perf_counter()
import handler.app as app
from tests.events import api_event, lambda_context
imported = time.perf_counter()
clients_s, request_started = None, imported
if len(sys.argv) > 4:  # the registry's clients made first (boto3's import, the S3 and DynamoDB clients), timed apart
    app.resolver.store
    request_started = time.perf_counter()
    clients_s = request_started - imported
cpu_started = time.process_time()
response = app.lambda_handler(api_event(path=sys.argv[2], body=json.loads(sys.argv[3])), lambda_context())
answered, cpu = time.perf_counter(), time.process_time() - cpu_started
assert response["statusCode"] == 200, response["body"][:500]
headers = (response.get("multiValueHeaders") or {}) | {k: [v] for k, v in (response.get("headers") or {}).items()}
get_s = None
if app.settings.registry_enabled:  # the same object again, from the same (warm) client: the loopback transfer alone
    store = app.resolver.store
    name, version = headers["X-Model-Version"][0].split("/")
    from handler.registry.store import artifact_key
    got = time.perf_counter()
    store.s3.get_object(Bucket=store.bucket, Key=artifact_key(name, int(version)))["Body"].read()
    get_s = time.perf_counter() - got
print(json.dumps({"import": imported - started, "first_request": answered - request_started, "cpu": cpu,
                  "s3_get": get_s, "clients": clients_s, "served": headers["X-Model-Version"][0]}))
"""
)

# Many models from one environment (argv: root, JSON list of request paths, body).
MANY = (
    _STATUS
    + r"""
import gc
import handler.app as app
from tests.events import api_event, lambda_context
body = json.loads(sys.argv[3])
def ask(path, point):
    started = time.perf_counter()
    response = app.lambda_handler(api_event(path=path, body=point), lambda_context())
    assert response["statusCode"] == 200, response["body"][:500]
    return time.perf_counter() - started
manifest = app.model.manifest()
ask("/predict", {f: float(sum(b) / 2) for f, b in zip(manifest.features, manifest.bounds.tolist())})
store = app.resolver.store  # boto3's import, its clients and their service models: the baseline, not the models
store.model("park")
store.s3.list_objects_v2(Bucket=store.bucket, MaxKeys=1)
gc.collect()
baseline = status("VmRSS")
reset_peak()
latencies, cpu, rss, held, missed = [], [], [], [], []
for path in json.loads(sys.argv[2]):
    misses, cpu_started = app.resolver.versions.misses, time.process_time()
    latencies.append(ask(path, body))
    cpu.append(time.process_time() - cpu_started)
    rss.append(status("VmRSS"))
    held.append(app.resolver.versions.stats()["versions"])
    missed.append(app.resolver.versions.misses > misses)
print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "rss": rss, "held": held, "latencies": latencies,
                  "cpu": cpu, "missed": missed,
                  "stats": app.resolver.versions.stats()}))
"""
)

# Versions loaded as the registry loads them, against resident_bytes (argv: root, model path, warm-up model path,
# copies): the first copy's RSS growth, and each further copy's (what one more held version costs).
RESIDENT = (
    _STATUS
    + r"""
import dataclasses, gc
from pathlib import Path
import numpy as np
from handler.gp.artifact import PackagedArtifact
from handler.gp.model import load_model
from handler.registry.cache import resident_bytes
def load_and_predict(path):
    source = PackagedArtifact(Path(path))
    manifest = source.fetch_manifest()
    loaded = load_model(source, manifest)
    loaded.model.predict(manifest.bounds.mean(axis=1)[None, :])
    return loaded, manifest
warm, _ = load_and_predict(sys.argv[3])  # first-use imports and allocator pools out of the measure
del warm
gc.collect()
before = status("VmRSS")
reset_peak()
held, after, peaks = [], [], []
for _ in range(int(sys.argv[4])):
    held.append(load_and_predict(sys.argv[2]))
    gc.collect()
    after.append(status("VmRSS"))
    peaks.append(status("VmHWM"))
peak = peaks[0]  # the first load's: what loading a version takes at once
posterior = held[0][0].model.posterior
arrays = [getattr(posterior, f.name) for f in dataclasses.fields(posterior)]
nbytes = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
further = (after[-1] - after[0]) / (len(after) - 1) if len(after) > 1 else None
print(json.dumps({"estimate": resident_bytes(held[0][1]), "growth": after[0] - before, "further": further,
                  "peak_growth": peak - before, "arrays": nbytes, "file": Path(sys.argv[2]).stat().st_size,
                  "copies": len(after)}))
"""
)

CHILD_ENV = {
    "PATH": "/usr/bin:/bin",
    "POWERTOOLS_METRICS_DISABLED": "true",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "OMP_NUM_THREADS": THREADS,
    "OPENBLAS_NUM_THREADS": THREADS,
    "MKL_NUM_THREADS": THREADS,
}


def child(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    """Run `code` in a fresh interpreter; its wall time from the parent and the JSON of its last line."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env=CHILD_ENV | (env or {}),
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-3000:] + result.stderr[-3000:])
    return wall, json.loads(result.stdout.strip().splitlines()[-1])


# --- the registry on moto's server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRegistry:
    """The registry's table and bucket on a moto server, and publishing through the registry's own code."""

    def __init__(self, work: Path) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.aws_env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        os.environ.update(self.aws_env)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.work = work
        from handler.config import load_settings
        from handler.registry.store import store_from_settings
        from tests.registry_harness import create_registry

        self.bucket, self.table = create_registry("bench")
        self.settings_env = {"REGISTRY_BUCKET": self.bucket, "REGISTRY_TABLE": self.table}
        self.store = store_from_settings(load_settings(self.settings_env))

    def publish(self, name: str, model_path: Path) -> int:
        """A new READY version of `name` from a posterior file and its manifest, `live` pointing at it."""
        from handler.gp.artifact import manifest_path_for
        from handler.registry.publishing import check_version
        from handler.registry.store import Target, upload_key

        manifest = json.loads(manifest_path_for(model_path).read_text())
        data = model_path.read_bytes()
        record = self.store.new_version(name, manifest, len(data), "benchmark")
        self.store.s3.put_object(Bucket=self.bucket, Key=upload_key(name, record.version), Body=data)
        checked = check_version(self.store, record, self.work / "check")
        assert checked.state == "READY", checked
        self.store.move_alias(name, "live", Target(record.version), "benchmark", "benchmark")
        return record.version

    def env(self, cache_dir: Path, cache_mb: int | None = None) -> dict[str, str]:
        """A child's environment: pointed at this registry, an empty /tmp of its own."""
        shutil.rmtree(cache_dir, ignore_errors=True)
        cache_dir.mkdir(parents=True)
        extra = {"REGISTRY_CACHE_MB": str(cache_mb)} if cache_mb else {}
        return self.aws_env | self.settings_env | {"MODEL_CACHE_DIR": str(cache_dir)} | extra

    def stop(self) -> None:
        self.server.stop()


# --- measures ---------------------------------------------------------------------------------------------------


def centre_of(model_path: Path) -> dict[str, float]:
    from handler.gp.artifact import manifest_path_for

    manifest = json.loads(manifest_path_for(model_path).read_text())
    return {f: float(sum(manifest["bounds"][f]) / 2) for f in manifest["features"]}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:,.1f} ms"


def mb(size: float) -> str:
    return f"{size / MiB:,.1f} MiB"


def cold_loads(registry: LocalRegistry, models: dict[str, Path], repeats: int, work: Path) -> list[list[str]]:
    """(a): per model, alternating fresh processes: packaged /predict against the registry's first answer."""
    rows = []
    for name, path in models.items():
        body = json.dumps(centre_of(path))
        packaged_env = {"MODEL_PATH": str(path), "MODEL_CACHE_DIR": str(work / "packaged-tmp")}
        child(COLD, "/predict", body, env=packaged_env)  # the file cache warm for both sides
        route = f"/models/{name}/predict"
        packaged, served, clients_first = [], [], []
        for _ in range(repeats):
            packaged.append(child(COLD, "/predict", body, env=packaged_env))
            served.append(child(COLD, route, body, env=registry.env(work / "registry-tmp")))
            clients_first.append(child(COLD, route, body, "clients", env=registry.env(work / "registry-tmp")))
        cases = (
            ("packaged, `/predict`", packaged),
            (f"registry, `{route}`", served),
            ("registry, its clients made before the request", clients_first),
        )
        for label, runs in cases:
            clients = [r[1]["clients"] for r in runs if r[1]["clients"] is not None]
            gets = [r[1]["s3_get"] for r in runs if r[1]["s3_get"] is not None]
            rows.append(
                [
                    f"{name} ({path.stat().st_size:,} bytes)",
                    label,
                    ms(statistics.median(r[1]["import"] for r in runs)),
                    ms(statistics.median(clients)) if clients else "",
                    f"{ms(statistics.median(r[1]['first_request'] for r in runs))} "
                    f"({ms(statistics.median(r[1]['cpu'] for r in runs))})",
                    ms(statistics.median(gets)) if gets else "",
                    ms(statistics.median(r[0] - (r[1]["s3_get"] or 0.0) for r in runs)),
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    return rows


def zipf_share(count: int, top: int, s: float) -> float:
    weights = [1 / (k + 1) ** s for k in range(count)]
    return sum(weights[:top]) / sum(weights)


def zipf_sequence(count: int, requests: int, s: float, seed: int = 1) -> list[int]:
    weights = [1 / (k + 1) ** s for k in range(count)]  # rank k + 1 of `count`
    return random.Random(seed).choices(range(count), weights=weights, k=requests)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def wall_and_cpu(result: dict[str, Any], hit: bool) -> str:
    """The median wall and CPU time of the hits' (or the misses') requests."""
    chosen = [i for i, missed in enumerate(result["missed"]) if missed != hit]
    if not chosen:
        return "none"
    wall = statistics.median(result["latencies"][i] for i in chosen)
    return f"{ms(wall)} ({ms(statistics.median(result['cpu'][i] for i in chosen))})"


def many_models(
    registry: LocalRegistry, names: list[str], paths: list[Path], requests: int, work: Path
) -> tuple[list[list[str]], int, int]:
    """(b): round-robin and Zipf-like over `names` from one environment whose budget holds HELD of them."""
    from handler.gp.artifact import PackagedArtifact
    from handler.registry.cache import resident_bytes

    sizes = [resident_bytes(PackagedArtifact(p).fetch_manifest()) for p in paths]
    # the budget in whole MiB (REGISTRY_CACHE_MB): room for HELD of the largest, not for HELD + 1 of the smallest
    cache_mb = math.ceil(HELD * max(sizes) / MiB)
    assert cache_mb * MiB < (HELD + 1) * min(sizes), "the models' sizes differ too much for a budget of exactly 5"
    body = json.dumps(centre_of(paths[0]))
    patterns = {
        f"round-robin over {len(names)}": [i % len(names) for i in range(requests)],
        f"Zipf-like (s = {ZIPF_S}) over {len(names)}": zipf_sequence(len(names), requests, ZIPF_S),
    }
    rows = []
    for label, order in patterns.items():
        plan = json.dumps([f"/models/{names[i]}/predict" for i in order])
        _, result = child(MANY, plan, body, env=registry.env(work / "many-tmp", cache_mb))
        stats, latencies, rss = result["stats"], result["latencies"], result["rss"]
        misses = stats["misses"]
        full = next(i for i, held in enumerate(result["held"]) if held == HELD)  # the request that filled the cache
        budget = cache_mb * MiB
        rows.append(
            [
                label,
                str(len(order)),
                f"{stats['hits'] / (stats['hits'] + misses):.0%} ({stats['hits']} hits, {misses} misses)",
                ms(statistics.median(latencies)),
                ms(percentile(latencies, 0.99)),
                wall_and_cpu(result, hit=True),
                wall_and_cpu(result, hit=False),
                mb(result["baseline"]),
                mb(rss[full]),
                mb(max(rss[full:])),
                f"{mb(result['peak'])} = baseline + {(result['peak'] - result['baseline']) / budget:.2f} x budget",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows, cache_mb, sizes[0]


RESIDENT_HEADER = [
    "m",
    "p",
    "file",
    "arrays' nbytes",
    "resident_bytes",
    "RSS growth, first version",
    "RSS growth, each further version (how many)",
    "estimate / first",
    "estimate / further",
    "estimate / nbytes",
    "peak RSS growth, first load",
]


def resident(sizes: list[tuple[int, int]], warm_up: Path) -> list[list[str]]:
    """(c): the RSS a loaded version takes against resident_bytes."""
    from tests.large_models import write_synthetic_model

    rows = []
    for m, p in sizes:
        path = write_synthetic_model(MODELS_DIR, m, 4, p)
        copies = 2 if m > 4000 else 4
        _, r = child(RESIDENT, str(path), str(warm_up), str(copies))
        rows.append(
            [
                f"{m:,}",
                str(p),
                mb(r["file"]),
                mb(r["arrays"]),
                mb(r["estimate"]),
                mb(r["growth"]),
                f"{mb(r['further'])} ({copies - 1})",
                f"{r['estimate'] / r['growth']:.2f}",
                f"{r['estimate'] / r['further']:.2f}",
                f"{r['estimate'] / r['arrays']:.2f}",
                mb(r["peak_growth"]),
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="fresh processes per cold case (median)")
    parser.add_argument("--requests", type=int, default=200, help="requests per access pattern in (b)")
    parser.add_argument("--quick", action="store_true", help="small models, 1 repeat, few requests")
    parser.add_argument("--output", type=Path, help="markdown file to (re)write its section in: benchmarks/results.md")
    parser.add_argument("--resident-only", action="store_true", help="only (c), printed (no registry, no section)")
    args = parser.parse_args(argv)
    from tests.large_models import write_synthetic_model

    started, load_before = time.perf_counter(), os.getloadavg()
    repeats, requests = (1, 40) if args.quick else (args.repeats, args.requests)
    large_m, fleet_m = (300, 400) if args.quick else (2000, 2000)
    resident_sizes = [(200, 1), (300, 3)] if args.quick else [(m, p) for m in (500, 2000, 8000) for p in (1, 3)]
    warm_up = write_synthetic_model(MODELS_DIR, 50, 4, 1)
    if args.resident_only:
        print(table(RESIDENT_HEADER, resident(resident_sizes, warm_up)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    large = write_synthetic_model(MODELS_DIR, large_m, 4, 1)
    fleet_paths = [write_synthetic_model(MODELS_DIR, fleet_m, 4, 1, seed=s) for s in range(1, FLEET + 1)]
    registry = LocalRegistry(work)
    try:
        print("publishing", FLEET + 2, "models", flush=True)
        registry.publish("park", PARK)
        registry.publish(f"synthetic-{large_m}", large)
        names = [f"fleet-{i:02d}" for i in range(FLEET)]
        for name, path in zip(names, fleet_paths, strict=True):
            registry.publish(name, path)
        print("(a) cold", flush=True)
        cold_rows = cold_loads(registry, {"park": PARK, f"synthetic-{large_m}": large}, repeats, work)
        print("(b) many", flush=True)
        many_rows, cache_mb, fleet_bytes = many_models(registry, names, fleet_paths, requests, work)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("(c) resident", flush=True)
    resident_rows = resident(resident_sizes, warm_up)

    load_after = os.getloadavg()
    command = "python benchmarks/registry.py" + (" --quick" if args.quick else "")
    text = (
        f"`{command}` on {time.strftime('%Y-%m-%d %H:%M')} UTC, {(time.perf_counter() - started) / 60:.0f} minutes, "
        f"{os.cpu_count()}-core {platform.machine()} machine (Python {platform.python_version()}), BLAS threads "
        f"{THREADS}, every measure in a fresh process; load average (1, 5, 15 min) before "
        f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in load_after)}. "
        "The registry's table and bucket are moto's server on loopback, the models published through the "
        "registry's own check (handler/registry/publishing.py).\n\n"
        f"### First request to a model: registry against packaged (medians of {repeats} alternating fresh "
        "processes)\n\n"
        "First request: after `import handler.app`, one `/predict` of the bounds' centre. Registry: DynamoDB reads "
        "(model, alias, version), the S3 get to /tmp, sha256, the loader's checks, load, predict; packaged: "
        "sha256 of the file, the same checks, load, predict. **S3 latency and throughput are not included as in "
        "AWS**: moto's S3 is on loopback; the S3 get column is a second get of the same object on the warm "
        "client, what loopback costs. In Lambda, add the artifact's bytes (first column) at the throughput one "
        "S3 stream gets in the function's region (at 80 MB/s, say, 32 MB adds 0.4 s), a TLS connection to each "
        "service, and a network round trip for each of the three DynamoDB reads and the S3 get. Process total: "
        "from the parent, interpreter start to exit, without the S3 get column's own get. CPU: the child's own "
        "(moto's server is the parent), steadier than wall time on a loaded machine.\n\n"
        + table(
            [
                "model (artifact)",
                "served as",
                "import handler.app",
                "boto3 import + clients",
                "first request (CPU)",
                "S3 get (loopback)",
                "process total",
            ],
            cold_rows,
        )
        + f"\n### {FLEET} models from one environment, a budget that holds {HELD}\n\n"
        f"{FLEET} synthetic exact models of m = {fleet_m:,}, d = 4, p = 1 (`resident_bytes` {mb(fleet_bytes)} "
        f"each); `REGISTRY_CACHE_MB={cache_mb}` (room for {HELD}). Each pattern in its own fresh process, "
        f"{requests} `/models/{{name}}/predict` requests of one point, one after another. A miss is an S3 get "
        "(loopback), sha256, checks and load, then the answer. Baseline: the process after import, one packaged "
        "answer and the registry's clients (boto3). RSS is read after every request; the peak (VmHWM) includes "
        "each load's transient arrays. A hit or miss's CPU time is this process's alone (moto's S3 is the parent); "
        "a hit includes, once per `ALIAS_TTL_S` (5 s) per model, the re-read of its alias and version (an "
        "in-process hit otherwise costs ~0.2 ms over a packaged answer). "
        "Round-robin over more models than the cache holds is LRU's worst case: every request a miss. Under the "
        f"Zipf-like pattern the {HELD} most popular models take {zipf_share(FLEET, HELD, ZIPF_S):.0%} of the "
        "requests: the hit rate a cache that kept exactly them would have.\n\n"
        + table(
            [
                "access",
                "requests",
                "hit rate",
                "p50",
                "p99",
                "a hit: median (CPU)",
                "a miss: median (CPU)",
                "baseline RSS",
                f"RSS when the cache first held {HELD}",
                "largest RSS after that",
                "peak RSS (VmHWM)",
            ],
            many_rows,
        )
        + "\n### `resident_bytes` against the memory a loaded version takes\n\n"
        "A fresh process loads versions of one file as the registry does (sha256, checks, load), each predicting "
        "one point, and holds them: the RSS growth after `gc.collect()` of the first and of each further one, "
        "against `resident_bytes(manifest)` (what the cache charges, known before the download) and the "
        "posterior's arrays' nbytes. Each further version costs its arrays' nbytes; the first costs 4-9 MiB more, "
        "the read's pieces that the allocator keeps once per process. The first load's peak includes its "
        "transient arrays (the read's pieces, the factor check, the probe). Before this change a posterior file's "
        "member was read in one `readinto`, which zipfile serves as one bytes object copied in: a load peaked at "
        "3x its version (91.5 MiB at m = 2,000, 1,465 MiB at m = 8,000, by this script); members are now read "
        "in 4 MiB pieces (handler/gp/posterior_file.py).\n\n" + table(RESIDENT_HEADER, resident_rows)
    )
    publish(text, args.output, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
