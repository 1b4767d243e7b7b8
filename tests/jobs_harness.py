"""Jobs end to end in one process: moto's AWS, the app's routes, and the worker and finisher on their queues."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import numpy as np

from handler import app
from handler.gp.model import LazyModel
from handler.jobs import finisher, worker
from handler.jobs import routes as job_routes
from handler.jobs.backend import JobBackend, backend_from_settings
from scripts.local_jobs import JobResources, SqsEventSource, create_resources, drain
from tests.events import api_event, lambda_context, response_json


@dataclass
class JobsHarness:
    resources: JobResources
    backend: JobBackend
    sources: list[SqsEventSource]

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        api_key_id: str = "key-a",
        raw_body: str | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        event = api_event(method, path, body, raw_body=raw_body, headers=headers)
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()} or None
        event["requestContext"]["identity"]["apiKeyId"] = api_key_id
        response = app.lambda_handler(event, lambda_context())
        headers_out = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
        headers_out |= response.get("headers") or {}
        return response["statusCode"], headers_out, response_json(response)

    def run(self, timeout_s: float = 120) -> None:
        """Deliver every queued message to its function, as Lambda's event sources would, until none is left."""
        drain(self.sources, timeout_s)

    def download(self, url: str) -> bytes:
        # moto intercepts boto3, not plain HTTP: read the object the presigned URL names.
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(url).path).lstrip("/")
        bucket, _, key = path.partition("/")
        return self.backend.storage.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def results(self, status: dict[str, Any]) -> np.ndarray:
        """A SUCCEEDED job's results as a structured array, whatever their format (a Parquet job's parts, listed
        page by page, read as one dataset)."""
        fmt = status["results"]["format"]
        import pyarrow as pa
        import pyarrow.csv
        import pyarrow.parquet

        if fmt == "parquet":
            parts, listing = [], status["results"]
            while True:
                parts += listing["parts"]
                if "parts_next" not in listing:
                    break
                path, _, query = listing["parts_next"].partition("?")
                code, _, page = self.call("GET", path.removeprefix("/prod"), query=dict([query.split("=")]))
                assert code == 200, page
                listing = page["results"]
            assert [part["index"] for part in parts] == list(range(listing["parts_total"]))
            table = pa.concat_tables(pyarrow.parquet.read_table(io.BytesIO(self.download(p["url"]))) for p in parts)
        else:
            data = self.download(status["results"]["url"])
            if fmt == "npy":
                return np.load(io.BytesIO(data), allow_pickle=False)
            table = pyarrow.csv.read_csv(io.BytesIO(data))
        columns = table.column_names
        array = np.empty(table.num_rows, dtype=[(name, "<f8") for name in columns])
        for name in columns:
            array[name] = table.column(name).to_numpy()
        return array


def start_harness(
    monkeypatch: Any, model: LazyModel, chunk_points: int = 1_000, max_points: int | None = None, prefix: str = "test"
) -> JobsHarness:
    """Inside mock_aws (or with AWS_ENDPOINT_URL at moto's server): the resources, the app configured for them,
    and event sources for worker and finisher."""
    resources = create_resources(prefix=prefix, region_name="us-east-1")
    settings = dataclasses.replace(
        app.settings,
        jobs_bucket=resources.bucket,
        jobs_table=resources.table,
        job_queue_url=resources.work_queue_url,
        results_queue_url=resources.results_queue_url,
        job_dead_letter_queue_arn=resources.dead_letter_queue_arn,
        job_chunk_points=chunk_points,
        job_max_points=max_points or app.settings.job_max_points,
    )
    backend = backend_from_settings(settings)
    monkeypatch.setattr(app, "model", model)
    for router in app.ROUTERS:  # GET /model's limits are the app's settings too: the harness's, with its resources
        monkeypatch.setattr(router, "_services", dataclasses.replace(app.services, settings=settings))
    monkeypatch.setattr(job_routes, "_backend", lambda _: backend)
    for module in (worker, finisher):
        monkeypatch.setattr(module, "settings", settings)
        monkeypatch.setattr(module, "backend", backend)
    monkeypatch.setattr(worker, "model", model)
    for module in (worker, finisher):
        monkeypatch.setattr(module, "RETRY_DELAYS_S", (0, 0, 0))  # retry at once, not after seconds
    # Chunks of `chunk_points`, not raised to 5 MiB parts: a job of a few thousand points still has several
    # (whose small parts the finisher then reads and uploads itself: handler.jobs.stitching)
    monkeypatch.setattr(worker, "MIN_PART_BYTES", 0)
    sqs = boto3.client("sqs", region_name="us-east-1")

    def invoke(handler: Any) -> Any:
        return lambda event: handler.lambda_handler(event, lambda_context(handler.__name__))

    sources = [
        SqsEventSource(sqs, resources.work_queue_url, resources.work_queue_arn, invoke(worker), batch_size=4),
        SqsEventSource(sqs, resources.results_queue_url, resources.results_queue_arn, invoke(finisher), batch_size=1),
        SqsEventSource(sqs, resources.dead_letter_queue_url, resources.dead_letter_queue_arn, invoke(finisher)),
    ]
    return JobsHarness(resources, backend, sources)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, in its own process: what it holds is not this process's memory."""
    from scripts.local_lambda import start_on_free_port

    port, process = start_on_free_port(
        lambda port: subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        timeout_s=60,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
