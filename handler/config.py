"""Service settings, read once from the environment when the function starts.

An invalid value fails the import (a Lambda init error) naming the variable, not the tenth
request. Plain dataclasses rather than pydantic: this module is on every cold start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from handler.gp.artifact import ArtifactSource, PackagedArtifact, S3Artifact, parse_s3_uri

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # /var/task inside Lambda

# Lambda caps a synchronous invocation's payload, the whole event, at 6 MB. API Gateway sends bodies
# base64-encoded (BinaryMediaTypes */*), 4 bytes for every 3, beside headers (10 KB at most, twice with
# multiValueHeaders) and the request context: 4,600,000 bytes of body fit with ~150 KB to spare. Larger
# bodies never reach the function (API Gateway answers 413 or 502 itself).
LAMBDA_PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024
LARGEST_BODY_BYTES = 4_600_000
assert LARGEST_BODY_BYTES * 4 // 3 + 150_000 < LAMBDA_PAYLOAD_LIMIT_BYTES


class SettingsError(RuntimeError):
    """An environment variable holds a value the service cannot run with."""


def _number(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(f"expected {noun}, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value:g}")
        return value

    return parse


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def _s3_uri(text: str) -> str:
    parse_s3_uri(text)  # ValueError says what is expected
    return text


@dataclass(frozen=True)
class Settings:
    model_path: Path = Path("model_artifacts/pretrained-model.npz")
    """The model's artifact (manifest beside it); a relative path is from the project root (LAMBDA_TASK_ROOT)."""
    max_batch_size: int = 10_000
    max_body_bytes: int = LARGEST_BODY_BYTES
    """Upper bound of a body; the parser allows less when the largest batch needs less (parsing.body_limit)."""
    domain_margin: float = 0.1
    """How far outside the training bounds a point may lie, as a fraction of each feature's range; never beyond the
    manifest's physical limits (`Manifest.domain`)."""
    model_s3_uri: str = ""
    """s3://BUCKET/KEY.npz or KEY.pkl (manifest beside it): load the model from S3 rather than the package."""
    model_cache_dir: Path = Path("/tmp/model")
    """Where a model from S3 is downloaded, once per execution environment."""
    cors_allow_origin: str = ""
    """The one origin browsers may call from (CORS headers on every answer); empty for none."""
    tracing: bool = False
    """X-Ray subsegments around the model load and the prediction (Powertools Tracer)."""
    model_retry_seconds: float = 5.0
    """After a failed model load, requests get the same 503 for this long before the load is tried again."""
    jobs_bucket: str = ""
    """S3 bucket of asynchronous jobs' inputs, uploads and results; empty: POST /jobs answers 503."""
    jobs_table: str = ""
    """DynamoDB table of job records (and of Powertools idempotency records for Idempotency-Key)."""
    job_queue_url: str = ""
    """SQS queue of job work: plans (materialise the points) and chunks (predict them)."""
    results_queue_url: str = ""
    """SQS queue of finished jobs whose results are to be assembled."""
    job_dead_letter_queue_arn: str = ""
    """ARN of the work queue's dead-letter queue: the finisher fails the jobs of the messages that land there."""
    training_queue_url: str = ""
    """SQS queue of training jobs (POST /models/{name}/train): the training function fits what it delivers."""
    job_chunk_points: int = 200_000
    """Most points a worker predicts per SQS message (benchmarks/jobs.py measured the choice); fewer on a model whose
    points cost more than the worker's timeout allows (handler.jobs.sizing)."""
    job_max_points: int = 10_000_000
    """Most points one job may have (a design's n, an upload's rows)."""
    function_timeout_seconds: float = 15.0
    """The function's timeout (template.yaml's Timeout): an analysis may cost a third of it less a second, as
    estimated on the model served (handler.analyses.budget)."""
    job_worker_timeout_seconds: float = 300.0
    """The job worker's timeout (template.yaml's JobWorkerFunction Timeout): a job's chunks are sized to fit it, on
    the API function (inline points, GET /model) and on the worker (designs and uploads) alike."""
    job_retention_days: int = 7
    """Job records and objects expire this long after submission (DynamoDB TTL, S3 lifecycle)."""
    registry_bucket: str = ""
    """S3 bucket of the model registry's artifacts; empty: no registry (the packaged model only)."""
    registry_table: str = ""
    """DynamoDB table of the registry's versions, aliases and alias history (handler.registry.store)."""
    registry_cache_mb: int = 0
    """Memory the registry's loaded versions may take in one environment; 0: 40% of the function's memory
    (AWS_LAMBDA_FUNCTION_MEMORY_SIZE), the rest being the runtime, the packaged model and a request's work."""
    registry_admin_key_id: str = ""
    """AuthMode API_KEY: the id of the admin API key, the only one the registry's write routes accept."""
    registry_writes: bool = False
    """Whether the registry's write routes are on (AuthMode API_KEY or IAM, or RegistryWritesWithoutAuth)."""
    function_memory_mb: int = 1769
    """The function's memory (Lambda sets AWS_LAMBDA_FUNCTION_MEMORY_SIZE)."""

    @property
    def jobs_enabled(self) -> bool:
        return bool(self.jobs_bucket and self.jobs_table and self.job_queue_url and self.results_queue_url)

    @property
    def registry_enabled(self) -> bool:
        return bool(self.registry_bucket and self.registry_table)

    @property
    def registry_cache_bytes(self) -> int:
        megabytes = self.registry_cache_mb or int(0.4 * self.function_memory_mb)
        return megabytes * 2**20

    @property
    def resolved_model_path(self) -> Path:
        return self.model_path if self.model_path.is_absolute() else PROJECT_ROOT / self.model_path

    def artifact_source(self) -> ArtifactSource:
        """Where the model comes from: S3 when MODEL_S3_URI is set, else the package."""
        if self.model_s3_uri:
            return S3Artifact(self.model_s3_uri, self.model_cache_dir)
        return PackagedArtifact(self.resolved_model_path)


# field -> (environment variable, parser)
_ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "model_path": ("MODEL_PATH", Path),
    "max_batch_size": ("MAX_BATCH_SIZE", _number(int, 1, 50_000)),
    "max_body_bytes": ("MAX_BODY_BYTES", _number(int, 1024, LARGEST_BODY_BYTES)),
    "domain_margin": ("DOMAIN_MARGIN", _number(float, 0.0, 10.0)),
    "model_s3_uri": ("MODEL_S3_URI", _s3_uri),
    "model_cache_dir": ("MODEL_CACHE_DIR", Path),
    "cors_allow_origin": ("CORS_ALLOW_ORIGIN", str),
    "tracing": ("TRACING", _boolean),
    "model_retry_seconds": ("MODEL_RETRY_SECONDS", _number(float, 0.0, 300.0)),
    "jobs_bucket": ("JOBS_BUCKET", str),
    "jobs_table": ("JOBS_TABLE", str),
    "job_queue_url": ("JOB_QUEUE_URL", str),
    "results_queue_url": ("RESULTS_QUEUE_URL", str),
    "job_dead_letter_queue_arn": ("JOB_DEAD_LETTER_QUEUE_ARN", str),
    "training_queue_url": ("TRAINING_QUEUE_URL", str),
    "job_chunk_points": ("JOB_CHUNK_POINTS", _number(int, 100, 1_000_000)),
    "job_max_points": ("JOB_MAX_POINTS", _number(int, 1, 100_000_000)),
    "function_timeout_seconds": ("FUNCTION_TIMEOUT_SECONDS", _number(float, 3.0, 900.0)),
    "job_worker_timeout_seconds": ("JOB_WORKER_TIMEOUT_SECONDS", _number(float, 3.0, 900.0)),
    "job_retention_days": ("JOB_RETENTION_DAYS", _number(int, 1, 365)),
    "registry_bucket": ("REGISTRY_BUCKET", str),
    "registry_table": ("REGISTRY_TABLE", str),
    "registry_cache_mb": ("REGISTRY_CACHE_MB", _number(int, 0, 10_240)),
    "registry_admin_key_id": ("REGISTRY_ADMIN_KEY_ID", str),
    "registry_writes": ("REGISTRY_WRITES", _boolean),
    "function_memory_mb": ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", _number(int, 128, 10_240)),
}
assert set(_ENVIRONMENT) == {f.name for f in fields(Settings)}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from environment variables (unset or empty ones keep their defaults)."""
    environ = os.environ if environ is None else environ
    values, problems = {}, []
    for field, (variable, parse) in _ENVIRONMENT.items():
        text = environ.get(variable, "")
        if text == "":
            continue
        try:
            values[field] = parse(text)
        except ValueError as exc:
            problems.append(f"{variable}: {exc}")
    if problems:
        raise SettingsError("invalid configuration: " + "; ".join(problems))
    return Settings(**values)
