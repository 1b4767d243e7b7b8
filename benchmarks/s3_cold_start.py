"""What a model from S3 adds to a cold start: the function's own download code against moto's S3 server on loopback.

Side by side, medians of repeats, for an artifact of --size-mb (default 1024):
  (a) checking a packaged artifact of that size (sha256 of the local file: what a packaged model pays);
  (b) fetching it from S3 the way the function does (manifest, streamed download to /tmp, sha256 on the way).
(b) - (a) is what choosing S3 adds. Loopback is not S3: in Lambda, S3 throughput bounds (b) instead.

    python benchmarks/s3_cold_start.py [--size-mb 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handler.gp.artifact import S3Artifact, sha256_of  # noqa: E402

BUCKET = "models"
KEY = "big/model.pkl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_artifact(folder: Path, size_mb: int) -> tuple[Path, str]:
    """A file of that size (random bytes in 64 MiB blocks) and its sha256."""
    path, digest = folder / "model.pkl", hashlib.sha256()
    with path.open("wb") as handle:
        remaining = size_mb * 2**20
        while remaining:
            block = os.urandom(min(remaining, 64 * 2**20))
            digest.update(block)
            handle.write(block)
            remaining -= len(block)
    return path, digest.hexdigest()


def manifest_for(sha256: str) -> bytes:
    return json.dumps(
        {
            "schema_version": 2, "name": "big", "version": "1", "model_type": "GPy.models.GPRegression",
            "artifact": "model.pkl", "sha256": sha256, "features": ["a"], "outputs": ["y"], "bounds": {"a": [0, 1]},
        }
    ).encode()  # fmt: skip


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    os.environ.update(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="s3-cold-start-"))
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        path, sha256 = make_artifact(work, args.size_mb)
        client.upload_file(str(path), BUCKET, KEY)
        client.put_object(Bucket=BUCKET, Key="big/model.manifest.json", Body=manifest_for(sha256))
        cache = work / "tmp-model"

        def local_check() -> None:
            assert sha256_of(path) == sha256

        def from_s3() -> None:
            shutil.rmtree(cache, ignore_errors=True)  # a new execution environment: empty /tmp
            source = S3Artifact(f"s3://{BUCKET}/{KEY}", cache, client=client)
            source.fetch_model(source.fetch_manifest())

        local_s = median_seconds(local_check, args.repeats)
        s3_s = median_seconds(from_s3, args.repeats)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    size = args.size_mb * 2**20
    print(f"artifact: {args.size_mb} MiB, medians of {args.repeats}")
    print(f"(a) packaged: sha256 of the local file    {local_s:8.2f} s  ({size / local_s / 2**20:,.0f} MiB/s)")
    print(f"(b) from S3: download to /tmp + sha256    {s3_s:8.2f} s  ({size / s3_s / 2**20:,.0f} MiB/s)")
    print(f"S3 adds {s3_s - local_s:.2f} s to a cold start ({s3_s / local_s:.1f}x the packaged check)")
    return {"local_s": local_s, "s3_s": s3_s}


if __name__ == "__main__":
    main()
