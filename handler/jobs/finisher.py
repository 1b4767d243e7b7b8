"""The job finisher: stitches a finished job's results, and fails jobs whose messages were dead-lettered.

Two SQS event sources: the results queue (one message per job whose chunks are all done) and the
work queue's dead-letter queue. Each chunk wrote its part of the results in the final format; for csv
and npy the finisher has S3 copy them, in order, into one object (handler.jobs.stitching), so no byte
passes through it and its time does not grow with the job. Parquet parts are the results as they are
(a dataset). It needs no model and no pyarrow.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.config import load_settings
from handler.jobs.backend import JobBackend, WorkMessage, backend_from_settings, npy_part_sizes, retry_soon
from handler.jobs.stitching import Source, StitchCancelledError, stitch

# Visibility after the 1st and 2nd failed assembly (S3 or DynamoDB faults, a part not there yet); after the 3rd the
# next receive moves the message to the dead-letter queue, so it should come back at once. Without this a failed
# assembly would wait for the results queue's visibility timeout (six times this function's: 90 minutes).
RETRY_DELAYS_S = (5, 30, 1)

settings = load_settings()
logger = Logger()
metrics = Metrics(namespace="GPRSurrogate")
backend: JobBackend = backend_from_settings(settings)
processor = BatchProcessor(event_type=EventType.SQS)


def assemble(backend: JobBackend, job_id: str) -> None:
    """Stitch the chunks' parts into the results object (csv, npy) or check they are all there (parquet); then
    SUCCEEDED. A part missing is an error (retried: a chunk's write may not be visible yet); a job cancelled while
    its parts are copied keeps no results (the upload is aborted)."""
    job = backend.store.get(job_id)
    if job is None or job.status != "RUNNING" or job.chunks_done != job.n_chunks:
        logger.info("assembly skipped", extra={"job": job_id, "status": job and job.status})
        return
    assert job.n_chunks is not None
    storage, fmt = backend.storage, job.options.format
    parts = storage.list_parts(job.id, fmt)
    if missing := [index for index in range(job.n_chunks) if index not in parts]:
        raise RuntimeError(f"{len(missing)} part(s) of {job.n_chunks} missing, the first chunk {missing[0]}")
    if fmt == "npy":  # each part's size is known: one cut short or of other rows would make the file unreadable
        expected = npy_part_sizes(job)
        if wrong := [index for index in range(job.n_chunks) if parts[index][1] != expected[index]]:
            index = wrong[0]
            raise ValueError(f"part {index} is {parts[index][1]} bytes, expected {expected[index]} ({len(wrong)} so)")
    if fmt != "parquet":
        sources = [Source(*parts[index]) for index in range(job.n_chunks)]

        def still_running() -> bool:
            current = backend.store.get(job.id)
            return current is not None and current.status == "RUNNING"

        began = time.perf_counter()
        try:
            key = storage.results_key(job.id, fmt)
            size = stitch(storage.s3, storage.bucket, key, sources, still_wanted=still_running)
        except StitchCancelledError:
            logger.info("assembly stopped: the job ended meanwhile", extra={"job": job.id})
            return
        seconds = round(time.perf_counter() - began, 4)
        logger.info("results stitched", extra={"job": job.id, "parts": len(sources), "bytes": size, "seconds": seconds})
    if backend.store.succeed(job.id) is not None:
        metrics.add_metric(name="JobsSucceeded", unit=MetricUnit.Count, value=1)
        logger.info("job succeeded", extra={"job": job.id, "points": job.n_points, "format": fmt})
        if fmt != "parquet":  # the stitched file holds them now
            storage.delete_keys([parts[index][0] for index in range(job.n_chunks)])


def dead_letter(backend: JobBackend, record: SQSRecord) -> None:
    """A message that kept failing: its job becomes FAILED with the last error the worker recorded."""
    try:
        message = WorkMessage.parse(record.body)
    except ValueError:
        logger.error("unreadable dead letter dropped", extra={"body": record.body[:200]})
        return
    job = backend.store.get(message.job)
    if job is None:
        return
    cause = job.last_error or "the worker stopped without reporting an error (time limit or memory?)"
    reason = f"{message.describe()} failed on every retry; last error: {cause}"
    if backend.store.fail(job.id, reason) is not None:
        metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
        logger.warning("job failed", extra={"job": job.id, "reason": reason})


def handle_message(record: SQSRecord) -> None:
    if settings.job_dead_letter_queue_arn and record.event_source_arn == settings.job_dead_letter_queue_arn:
        dead_letter(backend, record)
        return
    message = WorkMessage.parse(record.body)
    try:
        assemble(backend, message.job)
    except Exception as exc:
        logger.exception("assembly failed", extra={"job": message.job})
        with contextlib.suppress(Exception):
            backend.store.record_error(message.job, f"assembling the results: {type(exc).__name__}: {exc}")
        _delay_retry(record)
        raise


def _delay_retry(record: SQSRecord) -> None:
    """Retry soon rather than after the results queue's visibility timeout (sized for the longest stitch)."""
    attempt = int(record.attributes.approximate_receive_count or 1)
    retry_soon(backend.sqs, settings.results_queue_url, record.receipt_handle, attempt, RETRY_DELAYS_S)


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return process_partial_response(event=event, record_handler=handle_message, processor=processor, context=context)
