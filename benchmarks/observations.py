"""New simulations (POST /models/{name}/observations): what a conditioning costs, and a post end to end.

  (a) conditioning alone (handler/training/conditioning.py, numpy): exact at n = 500, 1,000, 2,000 (8 features,
      Matern-5/2) and sparse at n = 10,000 with 500 inducing inputs; medians of --repeats.
  (b) end to end, in-process, the registry on moto: the Park example (model_artifacts/: 200 points, RBF, exact,
      publishing its training data) live on version 1, then 20 new simulations posted --posts times: each post reads
      the alias and the parent, scores it on the new rows, appends them, conditions on all the rows, publishes the
      new version (the loader's full check included) and moves `live`. Wall seconds per post (median, max).

BLAS threads: ANALYSES_BENCH_THREADS (default 2: the admin function's 3,008 MB has ~1.7 vCPU).

    python benchmarks/observations.py [--repeats 5] [--posts 5]
"""

from __future__ import annotations

import os

THREADS = os.environ.get("ANALYSES_BENCH_THREADS", "2")
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = THREADS
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARK = ROOT / "model_artifacts" / "pretrained-model.npz"


def synthetic(n: int, d: int, m: int | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Hyperparameters of a unit-cube model (the parent's arrays hold only what conditioning reads) and n rows."""
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(n, d))
    Y = np.sin(X @ np.linspace(1, 3, d))[:, None]
    arrays = {
        "lengthscale": np.full(d, 0.5),
        "kernel_variance": np.asarray(1.0),
        "noise_variance": np.asarray(1e-4),
        "y_mean": np.zeros(1),
        "y_std": np.ones(1),
    }
    if m is not None:
        arrays["inputs"] = X[rng.choice(n, m, replace=False)]
    return arrays, X, Y


def time_conditioning(repeats: int) -> list[tuple[str, float]]:
    from handler.training.conditioning import condition

    cases = [("exact", 500, None), ("exact", 1000, None), ("exact", 2000, None), ("sparse", 10_000, 500)]
    results = []
    for inference, n, m in cases:
        arrays, X, Y = synthetic(n, 8, m)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            condition("Matern52", inference, arrays, X, Y)
            seconds.append(time.perf_counter() - started)
        label = f"{inference} n = {n:,}" + (f", m = {m}" if m else "")
        results.append((label, statistics.median(seconds)))
    return results


def time_posts(posts: int) -> list[float]:
    import dataclasses

    from moto import mock_aws

    from handler import app, registry_admin_app
    from handler.gp.artifact import manifest_path_for
    from handler.registry.publishing import publish_artifact
    from handler.registry.store import Target, store_from_settings
    from scripts.train_model import park1991
    from tests.events import api_event, lambda_context
    from tests.registry_harness import create_registry

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    seconds = []
    with mock_aws(), tempfile.TemporaryDirectory() as folder:
        bucket, table = create_registry("bench")
        settings = dataclasses.replace(
            app.settings, registry_bucket=bucket, registry_table=table, registry_writes=True,
            registry_admin_key_id="", model_cache_dir=Path(folder),
        )  # fmt: skip
        store = store_from_settings(settings)
        registry_admin_app.settings, registry_admin_app._store = settings, store
        manifest = json.loads(manifest_path_for(PARK).read_text())
        first = publish_artifact(store, "park", PARK.read_bytes(), manifest, "bench", Path(folder))
        store.move_alias("park", "live", Target(first.version), "bench", None)
        rng = np.random.default_rng(1)
        features = manifest["features"]
        for _ in range(posts):
            X = rng.uniform(0.05, 1, size=(20, 4))
            rows = [
                {**dict(zip(features, map(float, x), strict=True)), "y": float(y)}
                for x, y in zip(X, park1991(X), strict=True)
            ]
            event = api_event("POST", "/models/park/observations", {"data": {"rows": rows}})
            started = time.perf_counter()
            response = registry_admin_app.lambda_handler(event, lambda_context())
            seconds.append(time.perf_counter() - started)
            assert response["statusCode"] == 201, response["body"][:500]
            answer = json.loads(response["body"])
            print(
                f"  post: {answer['rows_before']} + {answer['rows_added']} rows -> version "
                f"{answer['version']['version']} {answer['version']['state']}, conditioning "
                f"{answer['version']['origin']['seconds']:.3f} s, request {seconds[-1]:.3f} s"
            )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--posts", type=int, default=5)
    args = parser.parse_args()
    print(f"BLAS threads: {THREADS}")
    print("(a) conditioning alone, median seconds:")
    for label, seconds in time_conditioning(args.repeats):
        print(f"  {label}: {seconds:.3f} s")
    print("(b) 20 new simulations posted to the Park example (200 points), in-process on moto:")
    seconds = time_posts(args.posts)
    print(f"  per post: median {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s")


if __name__ == "__main__":
    main()
