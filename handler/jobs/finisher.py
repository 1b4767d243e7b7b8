"""The job finisher: assembles a finished job's results, and fails jobs whose messages were dead-lettered.

Two SQS event sources: the results queue (one message per job whose chunks are all done) and the
work queue's dead-letter queue. It needs no model, so its package has pyarrow instead of GPy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.config import load_settings
from handler.jobs.backend import Job, JobBackend, WorkMessage, backend_from_settings, chunk_ranges, result_columns
from handler.jobs.results import result_rows, write_results

PART_BYTES = 16 * 2**20  # multipart upload parts: 10,000 parts cover 160 GB

settings = load_settings()
logger = Logger()
metrics = Metrics(namespace="GPRSurrogate")
backend: JobBackend = backend_from_settings(settings)
processor = BatchProcessor(event_type=EventType.SQS)


def assemble(backend: JobBackend, job_id: str) -> None:
    """Stream inputs and predictions, chunk by chunk, into the results object; then SUCCEEDED."""
    job = backend.store.get(job_id)
    if job is None or job.status != "RUNNING" or job.chunks_done != job.n_chunks:
        logger.info("assembly skipped", extra={"job": job_id, "status": job and job.status})
        return
    import smart_open

    storage = backend.storage
    key = storage.results_key(job.id, job.options.format)
    columns = result_columns(job.features, job.outputs, job.options)
    assert job.n_points is not None
    # smart_open streams a multipart upload and aborts it on an exception: no half-written results.
    with smart_open.open(
        f"s3://{storage.bucket}/{key}", "wb", transport_params={"client": storage.s3, "min_part_size": PART_BYTES}
    ) as sink:
        rows = write_results(job.options.format, sink, job.n_points, columns, _rows(backend, job))
    if rows != job.n_points:
        raise RuntimeError(f"assembled {rows} rows of {job.n_points}")
    if backend.store.succeed(job.id) is not None:
        metrics.add_metric(name="JobsSucceeded", unit=MetricUnit.Count, value=1)
        logger.info("job succeeded", extra={"job": job.id, "points": rows, "format": job.options.format})


def _rows(backend: JobBackend, job: Job) -> Iterator[np.ndarray]:
    assert job.n_points is not None
    assert job.chunk_points is not None
    for index, (start, stop) in enumerate(chunk_ranges(job.n_points, job.chunk_points)):
        points = backend.storage.read_input_rows(job, start, stop)
        predictions = backend.storage.get_chunk(job.id, index)
        if predictions.shape != (stop - start, 2 * len(job.outputs)):
            raise ValueError(
                f"chunk {index} holds {predictions.shape}, expected {(stop - start, 2 * len(job.outputs))}"
            )
        yield result_rows(points, predictions, len(job.outputs), job.options)


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
        raise


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return process_partial_response(event=event, record_handler=handle_message, processor=processor, context=context)
