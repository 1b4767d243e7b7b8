"""The job worker: an SQS event source of the work queue, one message a plan or a chunk.

A plan turns a job's design or uploaded file into its input .npy and queues its chunks; a chunk is
predicted with the same model code as /predict and its predictions written to S3, then counted once.
Failures are reported per message (partial batch response): SQS retries them after a short backoff,
then moves them to the dead-letter queue, where `handler.finisher` fails the job with the reason.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.artifact import Manifest
from handler.config import load_settings
from handler.designs import generate
from handler.jobs import (
    MAX_UPLOAD_BYTES,
    Job,
    JobBackend,
    JobInputError,
    WorkMessage,
    backend_from_settings,
    csv_columns,
)
from handler.model import LazyModel, SurrogateModel
from handler.parsing import RequestError

# Visibility after the 1st and 2nd failed attempt; after the 3rd (the queue's maxReceiveCount) the next receive
# moves the message to the dead-letter queue, so it should come back at once.
RETRY_DELAYS_S = (5, 30, 1)

settings = load_settings()
logger = Logger()
metrics = Metrics(namespace="GPRSurrogate")
model = LazyModel(settings.artifact_source(), retry_interval_s=settings.model_retry_seconds)
backend: JobBackend = backend_from_settings(settings)
processor = BatchProcessor(event_type=EventType.SQS)


def plan_job(backend: JobBackend, job_id: str, manifest: Manifest, margin: float) -> None:
    """Materialise a job's points into S3 and queue its chunks (again, if a plan message comes twice)."""
    job = backend.store.get(job_id)
    if job is None or job.status not in ("QUEUED", "RUNNING"):
        logger.info("plan skipped", extra={"job": job_id, "status": job and job.status})
        return
    if job.status == "RUNNING":  # planned before, but perhaps stopped before all its chunks were sent
        backend.queue.chunks(job)
        return
    points = design_of(job) if job.source == "design" else read_upload(backend, job)
    check_points(points, manifest, margin, backend.max_points)
    offset = backend.storage.put_input(job.id, points)
    running = backend.store.planned(job.id, len(points), backend.chunk_points, offset)
    if running is not None:
        backend.queue.chunks(running)
        logger.info("job planned", extra={"job": job.id, "points": len(points), "chunks": running.n_chunks})


def design_of(job: Job) -> np.ndarray:
    design = job.design
    assert design is not None
    bounds = np.array([design["bounds"][name] for name in job.features], dtype=float)
    return generate(design["method"], design["n"], design["seed"], bounds[:, 0], bounds[:, 1])


def read_upload(backend: JobBackend, job: Job) -> np.ndarray:
    """The uploaded file's points in the manifest's feature order; JobInputError saying what is wrong with it."""
    storage = backend.storage
    assert job.upload_format is not None
    key = storage.upload_key(job.id, job.upload_format)
    try:
        body = storage.s3.get_object(Bucket=storage.bucket, Key=key, IfMatch=job.upload_etag)["Body"]
    except storage.s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise JobInputError(f"upload.{job.upload_format} was replaced after the job started") from exc
        raise
    name = f"upload.{job.upload_format}"
    try:
        if job.upload_format == "npy":
            data = body.read(MAX_UPLOAD_BYTES + 1)
            points = np.load(io.BytesIO(data), allow_pickle=False)
            if points.ndim != 2 or points.shape[1] != len(job.features):
                raise JobInputError(f"{name}: expected {len(job.features)} columns, got shape {points.shape}")
            return np.asarray(points, dtype=float)
        text = io.TextIOWrapper(body, encoding="utf-8-sig", newline="")
        header = [name.strip().strip('"').strip() for name in text.readline().rstrip("\r\n").split(",")]
        order = csv_columns(header, job.features)
        with warnings.catch_warnings():  # a header without rows: said below, not warned about
            warnings.simplefilter("ignore", UserWarning)
            points = np.loadtxt(
                text, delimiter=",", usecols=order, dtype=float, ndmin=2, max_rows=backend.max_points + 1, quotechar='"'
            )
    except RequestError as exc:
        raise JobInputError(f"{name}: {exc.details[0][1]}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        # loadtxt says where: "could not convert string 'abc' to float64 at row 2, column 3."
        raise JobInputError(f"{name}: {exc}"[:400]) from exc
    finally:
        body.close()
    if len(points) == 0:
        raise JobInputError(f"{name} has a header but no rows")
    return points


def check_points(points: np.ndarray, manifest: Manifest, margin: float, max_points: int) -> None:
    if len(points) > max_points:
        raise JobInputError(f"more than {max_points} points; split the job")
    if not np.isfinite(points).all():
        row, column = np.argwhere(~np.isfinite(points))[0]
        raise JobInputError(
            f"row {row + 1}: {manifest.features[column]} is {points[row, column]} (not a finite number)"
        )
    if violations := manifest.domain_violations(points, margin, limit=3):
        described = "; ".join(
            f"row {v.row + 1}: {v.feature} = {v.value:g} is outside [{v.low:g}, {v.high:g}]" for v in violations
        )
        raise JobInputError(f"point(s) outside the model's domain: {described}")


def predict_chunk(backend: JobBackend, message: WorkMessage, surrogate: SurrogateModel) -> None:
    job = backend.store.get(message.job)
    if job is None or job.status != "RUNNING":
        logger.info("chunk skipped", extra={"job": message.job, "status": job and job.status})
        return
    points = backend.storage.read_input_rows(job, message.start, message.stop)
    mean, variance = surrogate.predict(points, latent=job.options.latent)
    if not (np.isfinite(mean).all() and np.isfinite(variance).all()):
        raise ArithmeticError("the model returned non-finite predictions")
    np.maximum(variance, 0.0, out=variance)  # as /predict: rounding below zero far inside the data
    backend.storage.put_chunk(job.id, message.index, np.hstack([mean, variance]))
    counted, after = backend.store.complete_chunk(job.id, message.index, len(points))
    if counted:
        metrics.add_metric(name="JobPointsPredicted", unit=MetricUnit.Count, value=len(points))
    # The last chunk queues the assembly; a redelivered last chunk queues it again in case that send failed.
    if after.status == "RUNNING" and after.chunks_done == after.n_chunks:
        backend.queue.assemble(job.id)


def handle_message(record: SQSRecord) -> None:
    message = WorkMessage.parse(record.body)
    try:
        if message.kind == "plan":
            plan_job(backend, message.job, model.manifest(), settings.domain_margin)
        elif message.kind == "chunk":
            predict_chunk(backend, message, model.get().model)
        else:
            raise ValueError(f"the worker does not take {message.kind} messages")
    except JobInputError as exc:  # the input itself is wrong: retrying cannot help
        logger.warning("job failed", extra={"job": message.job, "reason": str(exc)})
        backend.store.fail(message.job, str(exc))
    except Exception as exc:
        reason = f"{message.describe()}: {type(exc).__name__}: {exc}"
        logger.exception("job message failed", extra={"job": message.job, "reason": reason})
        with contextlib.suppress(Exception):  # the retry matters more than the note
            backend.store.record_error(message.job, reason)
        _delay_retry(record)
        raise


def _delay_retry(record: SQSRecord) -> None:
    """Retry soon rather than after the queue's visibility timeout (sized for the longest plan)."""
    attempt = int(record.attributes.approximate_receive_count or 1)
    delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S)) - 1]
    with contextlib.suppress(Exception):
        backend.sqs.change_message_visibility(
            QueueUrl=settings.job_queue_url, ReceiptHandle=record.receipt_handle, VisibilityTimeout=delay
        )


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return process_partial_response(event=event, record_handler=handle_message, processor=processor, context=context)
