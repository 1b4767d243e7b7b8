"""The job worker: an SQS event source of the work queue, one message a plan or a chunk.

A plan checks a job's points and stores them where its chunks read them (an uploaded CSV becomes
`input.npy`; an uploaded .npy is read in place; a design is stored nowhere: each chunk generates its
rows), then queues its chunks; a chunk is predicted with the same model code as /predict, its part of
the results written to S3 in the final format (handler.jobs.results), then counted once. Uploads are
read a batch of rows at a time: a worker's memory is bounded by its chunk, not by the file.
Failures are reported per message (partial batch response): SQS retries them after a short backoff,
then moves them to the dead-letter queue, where `handler.jobs.finisher` fails the job with the reason.

Every plan and chunk runs on the model version the job's record names (resolved when it was submitted): the packaged
model, or a registry version loaded by its number, never through an alias that may have moved since.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import numpy as np
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.analyses.budget import Deadline, DeadlineExceeded, no_deadline
from handler.api.errors import RequestError
from handler.config import load_settings
from handler.gp.artifact import Manifest, ModelUnavailableError
from handler.gp.broken import ModelBrokenError
from handler.gp.model import LazyModel, SurrogateModel
from handler.jobs.backend import (
    UPLOAD_HEAD_BYTES,
    Job,
    JobBackend,
    JobInputError,
    NpyLayout,
    WorkMessage,
    backend_from_settings,
    chunk_ranges,
    csv_columns,
    csv_header_names,
    csv_row_chars,
    npy_layout,
    result_columns,
    retry_soon,
)
from handler.jobs.designs import design_points, generate_rows
from handler.jobs.results import encode_part, result_rows
from handler.jobs.sizing import model_chunk_points
from handler.jobs.stitching import MIN_PART_BYTES
from handler.registry.names import BadNameError, ModelRef
from handler.registry.resolver import ModelResolver
from handler.registry.store import RegistryNotFoundError, store_from_settings

# Visibility after the 1st and 2nd failed attempt; after the 3rd (the queue's maxReceiveCount) the next receive
# moves the message to the dead-letter queue, so it should come back at once.
RETRY_DELAYS_S = (5, 30, 1)
# CSV text read and parsed at once: ~800 rows of 4 features, ~0.3 MB of Python strings; a block of the
# shortest rows (",,,") ~2.5 MB.
CSV_BLOCK_CHARS = 64 * 1024
# A chunk is predicted this many points at a time, the remaining time checked before each: ~14 s on an exact model of
# m = 8,000 (a chunk there holds ~70,000 points), a slice's arrays ~2 x 10,000 x outputs floats
CHUNK_SLICE_POINTS = 10_000
MAX_BLANK_LINES = 1000  # skipped, as np.loadtxt did; a file of nothing else fails fast
# Result values (points x columns) a chunk holds at most: its part is encoded in memory, a CSV of 200,000 points x 100
# columns peaking ~620 MB beside its 160 MB of rows (handler.jobs.results), within the worker's 1,769 MB with a model.
# Results of more columns (many outputs, include=std,interval) have chunks of fewer points.
MAX_CHUNK_VALUES = 20_000_000

settings = load_settings()
logger = Logger()
metrics = Metrics(namespace="GPRSurrogate")
model = LazyModel(settings.artifact_source(), retry_interval_s=settings.model_retry_seconds)
# Registry versions, as the API function reads them (the registry's variables are on every function); only by number.
resolver = ModelResolver(
    packaged=lambda: model,
    store=(lambda: store_from_settings(settings)) if settings.registry_enabled else None,
    bucket=settings.registry_bucket,
    cache_budget_bytes=settings.registry_cache_bytes,
    cache_dir=settings.model_cache_dir / "registry",
    retry_interval_s=settings.model_retry_seconds,
)
backend: JobBackend = backend_from_settings(settings)
processor = BatchProcessor(event_type=EventType.SQS)


def plan_job(
    backend: JobBackend, job_id: str, manifest: Manifest, margin: float, chunk_points: Callable[[], int]
) -> None:
    """Check a job's points, store them where chunks read them, and queue its chunks of `chunk_points()` points each
    (the model's, handler.jobs.sizing: asked once the points are checked, so a bad input fails before the model
    loads); again, if a plan comes twice, with the size recorded.

    Uploads are read a chunk (.npy) or a 64 KiB block (CSV) at a time: a plan holds a few chunks' worth at most
    (a CSV's converted rows go to S3 in parts of a chunk), whatever the file holds.
    """
    job = backend.store.get(job_id)
    if job is None or job.status not in ("QUEUED", "RUNNING"):
        logger.info("plan skipped", extra={"job": job_id, "status": job and job.status})
        return
    if job.status == "RUNNING":  # planned before, but perhaps stopped before all its chunks were sent
        backend.queue.chunks(job)
        return
    dtype = None
    if job.source == "design":  # its chunks generate their own points: nothing is written here
        design = job.design
        assert design is not None
        n_points, offset = design_points(design["method"], design["n"], len(job.features)), 0
    elif job.upload_format == "npy":
        layout = check_npy_upload(backend, job, manifest, margin)
        n_points, offset, dtype = layout.rows, layout.offset, layout.dtype
    else:
        n_points, offset = convert_csv_upload(backend, job, manifest, margin)
    running = backend.store.planned(job.id, n_points, chunk_points(), offset, dtype)
    if running is not None:
        backend.queue.chunks(running)
        logger.info("job planned", extra={"job": job.id, "points": n_points, "chunks": running.n_chunks})


def chunk_points_of(job_model: LazyModel, job: Job) -> int:
    """The model's chunk size, at most MAX_CHUNK_VALUES result values, raised where its time allows so that each
    chunk's part of a stitched file (csv, npy) holds the 5 MiB S3 asks of every part but the last: then no byte of it
    passes through the finisher (5 MiB of values is far under MAX_CHUNK_VALUES)."""
    columns = len(result_columns(job.features, job.outputs, job.options))
    least = 0
    if job.options.format != "parquet":
        least = math.ceil(MIN_PART_BYTES / (8 * columns))  # an .npy row's bytes; CSV's are longer
    configured = max(1, min(settings.job_chunk_points, MAX_CHUNK_VALUES // columns))
    surrogate = job_model.get().model
    return model_chunk_points(surrogate, configured, settings.job_worker_timeout_seconds, least)


class JobModelGoneError(Exception):
    """The registry version a job was submitted to can no longer serve (deleted since): the job fails, unretried."""


def model_of(job: Job) -> LazyModel:
    """The version the job was submitted to: the packaged model, or the registry version by its number."""
    if job.model.get("source", "packaged") == "packaged":  # records from before the registry were the packaged model's
        return model
    name, version = job.model["name"], job.model["version"]
    try:
        return resolver.resolve(ModelRef.parse(name, version)).model
    except (RegistryNotFoundError, BadNameError) as exc:
        raise JobModelGoneError(f"the job's model {name} version {version} can no longer serve: {exc}") from exc


def chunk_inputs(backend: JobBackend, job: Job, start: int, stop: int) -> np.ndarray:
    """Points start:stop of the job: a design's generated here (the same rows as the whole design's, whichever
    chunk asks; its bounds were checked against the model's domain when it was submitted), others read from S3."""
    if job.source != "design":
        return backend.storage.read_input_rows(job, start, stop)
    design = job.design
    assert design is not None
    bounds = np.array([design["bounds"][name] for name in job.features], dtype=float)
    return generate_rows(design["method"], design["n"], design["seed"], bounds[:, 0], bounds[:, 1], start, stop)


def check_npy_upload(backend: JobBackend, job: Job, manifest: Manifest, margin: float) -> NpyLayout:
    """Check every row of the uploaded .npy, a chunk's worth per ranged GET; chunks then read it in place."""
    storage = backend.storage
    key = storage.upload_key(job.id, "npy")
    try:
        layout = npy_layout(storage.read_bytes(key, 0, UPLOAD_HEAD_BYTES, etag=job.upload_etag))
    except RequestError as exc:  # `start` checked this version of the file; said, not assumed
        raise JobInputError(f"upload.npy: {exc.details[0][1]}") from exc
    if layout.columns != len(job.features):
        raise JobInputError(f"upload.npy: expected {len(job.features)} columns, got {layout.columns}")
    for start, stop in chunk_ranges(layout.rows, backend.chunk_points):
        points = storage.read_npy_rows(
            key, layout.offset, layout.dtype, layout.columns, start, stop, etag=job.upload_etag
        )
        check_points(points, manifest, margin, first_row=start + 1)
    return layout


def convert_csv_upload(backend: JobBackend, job: Job, manifest: Manifest, margin: float) -> tuple[int, int]:
    """Read the uploaded CSV as a stream, check its rows batch by batch and write them to `input.npy`.

    Returns the number of points and where their data begin.
    """
    storage = backend.storage
    body = storage.open(storage.upload_key(job.id, "csv"), job.upload_etag)
    columns = len(job.features)
    part_bytes = backend.chunk_points * columns * 8
    try:
        text = io.TextIOWrapper(body, encoding="utf-8-sig")  # universal newlines: \r\n and \r become \n
        with storage.input_writer(job.id, columns, part_bytes) as writer:
            for points, rows in csv_batches(text, job.features, backend.max_points):
                check_points(points, manifest, margin, rows=rows)
                writer.write(points)
            if writer.rows == 0:
                raise JobInputError("upload.csv has a header but no rows")
    finally:
        body.close()
    return writer.rows, writer.header_bytes


def csv_batches(
    text: TextIO, features: tuple[str, ...], max_points: int, block_chars: int = CSV_BLOCK_CHARS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (points in the features' order, their 1-based row numbers) from a CSV with a header line.

    The text is read `block_chars` at a time and split into lines, so memory is bounded by the block whatever
    the file holds: a line longer than `csv_row_chars` fails the job before it is parsed. A row with fewer or
    more values than the header, a value that is not a number, a quoted value spanning lines, or more than
    `max_points` rows fail the job naming the row. Empty lines are skipped, as np.loadtxt did; rows count the
    lines after the header.
    """
    header = text.readline(UPLOAD_HEAD_BYTES + 1)
    if len(header) > UPLOAD_HEAD_BYTES:
        raise JobInputError("upload.csv: the CSV header line is over 64 KiB")
    names = csv_header_names(header)
    try:
        order = csv_columns(names, features)
    except RequestError as exc:
        raise JobInputError(f"upload.csv: {exc.details[0][1]}") from exc
    columns, limit = len(features), csv_row_chars(len(features))
    lines_before = points = blank = 0  # lines of the blocks before this one; points and empty lines so far
    pending = ""  # the start of a line the block ended in
    while True:
        try:
            block = text.read(block_chars)
        except UnicodeDecodeError:
            raise JobInputError(f"upload.csv: not UTF-8 text after row {lines_before}") from None
        lines = (pending + block).split("\n")
        pending = lines.pop() if block else ""
        if len(pending) >= limit:
            lines.append(pending)
        if max(map(len, lines), default=0) >= limit:
            row = lines_before + next(i for i, line in enumerate(lines) if len(line) >= limit) + 1
            raise JobInputError(f"upload.csv: row {row} is longer than {limit} characters ({columns} values)")
        try:
            rows = list(csv.reader(lines, strict=True))
        except csv.Error:
            rows = []
        if len(rows) != len(lines):  # a syntax error, or a quoted value that spans lines: say where
            _raise_csv_error(lines, lines_before)
        if empty := rows.count([]):
            blank += empty
            if blank > MAX_BLANK_LINES:
                raise JobInputError(f"upload.csv: more than {MAX_BLANK_LINES} empty lines")
            numbers = np.array([lines_before + i + 1 for i, fields in enumerate(rows) if fields], dtype=np.int64)
            rows = [fields for fields in rows if fields]
        else:
            numbers = np.arange(lines_before + 1, lines_before + len(rows) + 1)
        if set(map(len, rows)) - {columns}:
            i = next(i for i, fields in enumerate(rows) if len(fields) != columns)
            message = f"row {numbers[i]} has {len(rows[i])} values; the header names {columns}"
            raise JobInputError(f"upload.csv: {message}")
        points += len(rows)
        if points > max_points:
            raise JobInputError(f"more than {max_points} points; split the job")
        if rows:
            yield _floats(rows, numbers, names, order), numbers
        lines_before += len(lines)
        if not block:
            return


def _raise_csv_error(lines: list[str], lines_before: int) -> None:
    for i, line in enumerate(lines):
        try:
            list(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise JobInputError(f"upload.csv: row {lines_before + i + 1}: {exc}") from None
    raise JobInputError(f"upload.csv: a row after row {lines_before} could not be read as CSV")


def _floats(batch: list[list[str]], rows: np.ndarray, names: list[str], order: list[int]) -> np.ndarray:
    """The batch's values as float64 in the features' order; JobInputError naming a value that is not a number."""
    try:
        values = np.fromiter(itertools.chain.from_iterable(batch), dtype=float, count=len(batch) * len(names))
    except ValueError:  # np.fromiter converts as float() does: find which value it was
        for fields, row in zip(batch, rows, strict=True):
            for name, value in zip(names, fields, strict=True):
                try:
                    float(value)
                except ValueError:
                    raise JobInputError(f"upload.csv: row {row}: {name} is {value[:40]!r}, not a number") from None
        raise
    return values.reshape(len(batch), len(names))[:, order]


def check_points(
    points: np.ndarray, manifest: Manifest, margin: float, first_row: int = 1, rows: np.ndarray | None = None
) -> None:
    """JobInputError naming the first non-finite value, else the first points outside the domain.

    Point i is row `rows[i]` when given, else row `first_row + i`.
    """

    def row(i: int) -> int:
        return int(rows[i]) if rows is not None else first_row + int(i)

    if not np.isfinite(points).all():
        i, column = np.argwhere(~np.isfinite(points))[0]
        raise JobInputError(f"row {row(i)}: {manifest.features[column]} is {points[i, column]} (not a finite number)")
    if violations := manifest.domain_violations(points, margin, limit=3):
        described = "; ".join(f"row {row(v.row)}: {v.feature} = {v.describe()}" for v in violations)
        raise JobInputError(f"point(s) outside the model's domain: {described}")


def predict_chunk(
    backend: JobBackend, message: WorkMessage, surrogate: SurrogateModel, deadline: Deadline | None = None
) -> None:
    """Predict a chunk in slices, checking the worker's remaining time between them: DeadlineExceeded rather than a
    function killed mid-chunk (its chunk size was estimated to take a third of the timeout at most)."""
    job = backend.store.get(message.job)
    if job is None or job.status != "RUNNING":
        logger.info("chunk skipped", extra={"job": message.job, "status": job and job.status})
        return
    assert job.n_points is not None
    if backend.store.is_chunk_done(job.id, message.index):  # delivered again: its part is written and counted
        logger.info("chunk already done", extra={"job": job.id, "chunk": message.index})
        after = job
    else:
        deadline = deadline or no_deadline()
        clock = _StepClock()
        points = chunk_inputs(backend, job, message.start, message.stop)
        clock.lap("inputs")
        means, variances = [], []
        for start in range(0, len(points), CHUNK_SLICE_POINTS):
            deadline.check(f"{start} of its {len(points)} points")
            # finite, variance >= 0, or ModelBrokenError
            mean, variance = surrogate.predict(points[start : start + CHUNK_SLICE_POINTS], latent=job.options.latent)
            means.append(mean)
            variances.append(variance)
        predictions = np.hstack([np.vstack(means), np.vstack(variances)])
        clock.lap("predict")
        rows = result_rows(points, predictions, len(job.outputs), job.options)
        columns = result_columns(job.features, job.outputs, job.options)
        part = encode_part(job.options.format, message.index, job.n_points, columns, rows)
        clock.lap("encode")
        backend.storage.put_part(job.id, message.index, job.options.format, part)
        clock.lap("write")
        counted, after = backend.store.complete_chunk(job.id, message.index, len(points))
        clock.lap("count")
        if counted:
            metrics.add_metric(name="JobPointsPredicted", unit=MetricUnit.Count, value=len(points))
        # where a chunk's time goes (benchmarks/jobs.py reads it): generating or reading its points, predicting,
        # encoding its part, writing it, counting it
        extra = {"job": job.id, "chunk": message.index, "points": len(points), "bytes": len(part)}
        logger.info("chunk done", extra=extra | {"seconds": clock.laps})
    # The last chunk queues the assembly; a redelivered last chunk queues it again in case that send failed.
    if after.status == "RUNNING" and after.chunks_done == after.n_chunks:
        backend.queue.assemble(job.id)


class _StepClock:
    """Seconds between laps, by name."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 4)
        self.last = now


def handle_message(record: SQSRecord, lambda_context: LambdaContext | None = None) -> None:
    message = WorkMessage.parse(record.body)
    try:
        if message.kind not in ("plan", "chunk"):
            raise ValueError(f"the worker does not take {message.kind} messages")
        job = backend.store.get(message.job)
        if job is None or job.status not in ("QUEUED", "RUNNING"):
            logger.info("message skipped", extra={"job": message.job, "status": job and job.status})
            return
        job_model = model_of(job)
        if message.kind == "plan":
            sizing = functools.partial(chunk_points_of, job_model, job)
            plan_job(backend, job.id, job_model.manifest(), settings.domain_margin, sizing)
        else:
            deadline = None if lambda_context is None else Deadline(lambda_context.get_remaining_time_in_millis)
            predict_chunk(backend, message, job_model.get().model, deadline)
    except DeadlineExceeded as exc:  # the same chunk on the same model would run out of time again: not retried
        reason = (
            f"{message.describe()} would outrun the worker's timeout after {exc.done}: the model's points cost more "
            "than estimated on this hardware; set JOB_CHUNK_POINTS lower and submit the job again"
        )
        logger.error("job failed: chunk out of time", extra={"job": message.job, "reason": reason})
        backend.store.fail(message.job, reason)
    except JobModelGoneError as exc:  # the version was deleted while the job waited: no other version may stand in
        logger.warning("job failed: model gone", extra={"job": message.job, "reason": str(exc)})
        backend.store.fail(message.job, str(exc))
    except JobInputError as exc:  # the input itself is wrong: retrying cannot help
        logger.warning("job failed", extra={"job": message.job, "reason": str(exc)})
        backend.store.fail(message.job, str(exc))
    except ModelBrokenError as exc:  # the model answers non-finite numbers: retrying cannot help either
        logger.error("job failed: model broken", extra={"job": message.job, "reason": str(exc)})
        backend.store.fail(
            message.job,
            "the model is broken (its predictions are not finite or a variance is negative); the reason is logged",
        )
    except Exception as exc:
        # A model's load error may quote the artifact: the log gets it, the job's caller does not.
        noted = "model unavailable" if isinstance(exc, ModelUnavailableError) else f"{type(exc).__name__}: {exc}"
        reason = f"{message.describe()}: {noted}"
        logger.exception("job message failed", extra={"job": message.job, "reason": f"{type(exc).__name__}: {exc}"})
        with contextlib.suppress(Exception):  # the retry matters more than the note
            backend.store.record_error(message.job, reason)
        _delay_retry(record)
        raise


def _delay_retry(record: SQSRecord) -> None:
    """Retry soon rather than after the queue's visibility timeout (sized for the longest plan)."""
    attempt = int(record.attributes.approximate_receive_count or 1)
    retry_soon(backend.sqs, settings.job_queue_url, record.receipt_handle, attempt, RETRY_DELAYS_S)


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return process_partial_response(event=event, record_handler=handle_message, processor=processor, context=context)
