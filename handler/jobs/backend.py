"""Asynchronous jobs: records in DynamoDB, inputs and results in S3, work on SQS.

Knows nothing of API Gateway and nothing of how a model predicts: `handler.jobs.routes` (HTTP),
`handler.jobs.worker` (plans and chunks, with the model) and `handler.jobs.finisher` (results and dead
letters, without it) drive it. boto3 is imported on first use.

A design's chunks generate their own points; other jobs' points are one .npy that chunks read by byte
range: the uploaded .npy itself, or a float64 `jobs/ID/input.npy` (inline points, or an uploaded CSV
converted batch by batch). Each chunk writes its rows of the results, in the final format, to
`jobs/ID/results/part-NNNNNN.{csv,npy,parquet}`; the finisher stitches csv and npy parts into
`jobs/ID/results.{csv,npy}` (S3 copies them), and Parquet parts are the results as they stand: a dataset.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from handler.api.errors import RequestError
from handler.jobs.stitching import COPY_THREADS

STATUSES = ("AWAITING_UPLOAD", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED")
RESULT_FORMATS = ("csv", "npy", "parquet")
UPLOAD_FORMATS = ("csv", "npy")
DESIGN_METHODS = ("sobol", "lhs", "halton", "grid")
URL_EXPIRY_S = 3600
MAX_UPLOAD_BYTES = 2 * 1024**3  # 10^7 rows of a few features as CSV take ~1 GB
UPLOAD_HEAD_BYTES = 64 * 1024  # what POST /jobs/{id}/start reads to check the header
# A CSV value (its separator and the line end included) is a float's repr, at most 24 characters; 64 allows
# padding and quotes, as the request body limit does. A longer row is refused rather than parsed.
CSV_VALUE_CHARS = 64
MIN_PART_BYTES = 5 * 2**20  # S3's least size for every part of a multipart upload but the last
MAX_REASON_CHARS = 500
SQS_BATCH = 10  # SendMessageBatch's maximum


class JobInputError(Exception):
    """A job cannot go on (its input is unusable): it becomes FAILED with this reason, without retries."""


class JobNotFoundError(LookupError):
    pass


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class OutputOptions:
    """What the results hold beside mean and variance, and their file format."""

    latent: bool = False
    include_std: bool = False
    include_interval: bool = False
    format: str = "csv"

    def document(self) -> dict[str, Any]:
        include = [name for name, on in (("std", self.include_std), ("interval", self.include_interval)) if on]
        return {"variance": "latent" if self.latent else "noisy", "include": include, "format": self.format}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> OutputOptions:
        include = set(doc.get("include", []))
        return cls(doc["variance"] == "latent", "std" in include, "interval" in include, doc["format"])

    def statistics(self) -> list[str]:
        names = ["mean", "variance"]
        if self.include_std:
            names.append("std")
        if self.include_interval:
            names += ["lower_95", "upper_95"]
        return names


def result_columns(features: tuple[str, ...], outputs: tuple[str, ...], options: OutputOptions) -> list[str]:
    """Column names of the results: the features, then `OUTPUT_mean`, `OUTPUT_variance`, ... per output."""
    predicted = [f"{output}_{stat}" for output in outputs for stat in options.statistics()]
    if set(predicted) & set(features):  # a feature named like a prediction column: keep both readable
        predicted = [f"predicted_{name}" for name in predicted]
    return [*features, *predicted]


@dataclass(frozen=True)
class Job:
    """A job's record, as stored (one DynamoDB item, key `id` = `job#ID`)."""

    id: str
    owner: str
    status: str
    source: str  # inline | design | upload
    created_at: float
    expiration: int  # epoch seconds: DynamoDB's TTL attribute
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    # The version that computes every chunk: name, version, source ("packaged": the function's own model, by its
    # manifest's name and version; "registry": a registry version, by number). Records from before the registry
    # have no source: they were the packaged model's.
    model: dict[str, str]
    options: OutputOptions
    design: dict[str, Any] | None = None
    upload_format: str | None = None
    upload_etag: str | None = None
    n_points: int | None = None
    chunk_points: int | None = None
    n_chunks: int | None = None
    input_offset: int | None = None
    input_dtype: str | None = None  # set when chunks read the uploaded .npy itself: its dtype, e.g. "<f4"
    chunks_done: int = 0
    points_done: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    last_error: str | None = None

    def item(self) -> dict[str, Any]:
        # Plain attributes for what is updated or queried; JSON strings for the nested parts (DynamoDB
        # wants Decimals for floats, and nothing reads inside them there).
        item = {
            "id": f"job#{self.id}",
            "owner": self.owner,
            "status": self.status,
            "source": self.source,
            "created_at": str(self.created_at),
            "expiration": self.expiration,
            "spec": orjson.dumps(
                {
                    "features": self.features,
                    "outputs": self.outputs,
                    "model": self.model,
                    "options": self.options.document(),
                    "design": self.design,
                    "upload_format": self.upload_format,
                }
            ).decode(),
            "chunks_done": self.chunks_done,
            "points_done": self.points_done,
        }
        for name in ("n_points", "chunk_points", "n_chunks", "input_offset", "input_dtype", "upload_etag"):
            if getattr(self, name) is not None:
                item[name] = getattr(self, name)
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Job:
        spec = orjson.loads(item["spec"])

        def number(name: str) -> int | None:
            return int(item[name]) if name in item else None

        def moment(name: str) -> float | None:
            return float(item[name]) if name in item else None

        return cls(
            id=item["id"].removeprefix("job#"),
            owner=item["owner"],
            status=item["status"],
            source=item["source"],
            created_at=float(item["created_at"]),
            expiration=int(item["expiration"]),
            features=tuple(spec["features"]),
            outputs=tuple(spec["outputs"]),
            model=spec["model"],
            options=OutputOptions.from_document(spec["options"]),
            design=spec.get("design"),
            upload_format=spec.get("upload_format"),
            upload_etag=item.get("upload_etag"),
            n_points=number("n_points"),
            chunk_points=number("chunk_points"),
            n_chunks=number("n_chunks"),
            input_offset=number("input_offset"),
            input_dtype=item.get("input_dtype"),
            chunks_done=int(item.get("chunks_done", 0)),
            points_done=int(item.get("points_done", 0)),
            started_at=moment("started_at"),
            finished_at=moment("finished_at"),
            error=item.get("error"),
            last_error=item.get("last_error"),
        )


def chunk_ranges(n_points: int, chunk_points: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_points, n_points)) for start in range(0, n_points, chunk_points)]


def npy_part_sizes(job: Job) -> list[int]:
    """The bytes of each chunk's part of an npy job's results: its rows of float64 columns, part 0 with the header."""
    assert job.n_points is not None
    assert job.chunk_points is not None
    columns = result_columns(job.features, job.outputs, job.options)
    header = npy_header((job.n_points,), np.dtype([(name, "<f8") for name in columns]))
    sizes = [(stop - start) * 8 * len(columns) for start, stop in chunk_ranges(job.n_points, job.chunk_points)]
    sizes[0] += len(header)
    return sizes


def npy_header(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bytes:
    """The .npy header (format 1.0, C order) of an array of this shape and dtype."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


class JobStore:
    """Job records in DynamoDB; every change of state is one conditional UpdateItem."""

    def __init__(self, table: Any, clock: Callable[[], float] = time.time) -> None:
        self.table = table  # a boto3 DynamoDB Table
        self.clock = clock

    def create(self, job: Job) -> None:
        self.table.put_item(Item=job.item(), ConditionExpression="attribute_not_exists(id)")

    def get(self, job_id: str) -> Job | None:
        item = self.table.get_item(Key={"id": f"job#{job_id}"}, ConsistentRead=True).get("Item")
        return Job.from_item(item) if item else None

    def _update(self, job_id: str, expression: str, values: dict[str, Any], condition: str | None = None) -> Any:
        condition = "attribute_exists(id)" + (f" AND ({condition})" if condition else "")
        kwargs: dict[str, Any] = {
            "Key": {"id": f"job#{job_id}"},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ReturnValues": "ALL_NEW",
        }
        if "#status" in expression + condition:  # DynamoDB refuses names the expressions do not use
            kwargs["ExpressionAttributeNames"] = {"#status": "status"}
        return self.table.update_item(**kwargs).get("Attributes")

    def _conditional(self, job_id: str, *args: Any) -> Job | None:
        """The update's new record, or None when its condition did not hold."""
        try:
            return Job.from_item(self._update(job_id, *args))
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            return None

    def queue_upload(self, job_id: str, etag: str) -> Job | None:
        """AWAITING_UPLOAD -> QUEUED, remembering which version of the upload to read."""
        return self._conditional(
            job_id,
            "SET #status = :queued, upload_etag = :etag",
            {":queued": "QUEUED", ":etag": etag, ":awaiting": "AWAITING_UPLOAD"},
            "#status = :awaiting",
        )

    def planned(
        self, job_id: str, n_points: int, chunk_points: int, input_offset: int, input_dtype: str | None = None
    ) -> Job | None:
        """The points are in S3 and their chunks about to be queued: RUNNING."""
        values = {
            ":running": "RUNNING",
            ":n": n_points,
            ":c": chunk_points,
            ":k": math.ceil(n_points / chunk_points),
            ":o": input_offset,
            ":now": str(self.clock()),
            ":queued": "QUEUED",
        }
        expression = "SET #status = :running, n_points = :n, chunk_points = :c, n_chunks = :k, input_offset = :o, "
        if input_dtype is not None:
            expression += "input_dtype = :d, "
            values[":d"] = input_dtype
        return self._conditional(
            job_id, expression + "started_at = if_not_exists(started_at, :now)", values, "#status = :queued"
        )

    def complete_chunk(self, job_id: str, index: int, points: int) -> tuple[bool, Job]:
        """Count a chunk once, however often SQS delivers it: (counted now, the record after)."""
        table = self.table
        try:
            item = self._update(
                job_id,
                "ADD done_chunks :index, chunks_done :one, points_done :points",
                {":index": {index}, ":one": 1, ":points": points, ":running": "RUNNING", ":i": index},
                "#status = :running AND NOT contains(done_chunks, :i)",
            )
            return True, Job.from_item(item)
        except table.meta.client.exceptions.ConditionalCheckFailedException:
            job = self.get(job_id)
            if job is None:
                raise JobNotFoundError(job_id) from None
            return False, job

    def is_chunk_done(self, job_id: str, index: int) -> bool:
        """Whether chunk `index` was counted (a redelivered chunk is then neither predicted nor written again)."""
        item = self.table.get_item(
            Key={"id": f"job#{job_id}"}, ProjectionExpression="done_chunks", ConsistentRead=True
        ).get("Item")
        return bool(item) and index in item.get("done_chunks", set())

    def record_error(self, job_id: str, message: str) -> None:
        """The latest failure of some part of the job; the reason given if its retries run out."""
        self._conditional(job_id, "SET last_error = :e", {":e": message[:MAX_REASON_CHARS]})

    def fail(self, job_id: str, reason: str) -> Job | None:
        """FAILED with a reason, unless the job has already ended."""
        try:
            item = self.table.update_item(
                Key={"id": f"job#{job_id}"},
                UpdateExpression="SET #status = :failed, #error = :reason, finished_at = :now",
                ConditionExpression="attribute_exists(id) AND NOT #status IN (:failed, :done)",
                ExpressionAttributeNames={"#status": "status", "#error": "error"},
                ExpressionAttributeValues={
                    ":failed": "FAILED",
                    ":reason": reason[:MAX_REASON_CHARS],
                    ":now": str(self.clock()),
                    ":done": "SUCCEEDED",
                },
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except self.table.meta.client.exceptions.ConditionalCheckFailedException:
            return None
        return Job.from_item(item)

    def succeed(self, job_id: str) -> Job | None:
        return self._conditional(
            job_id,
            "SET #status = :done, finished_at = :now",
            {":done": "SUCCEEDED", ":now": str(self.clock()), ":running": "RUNNING"},
            "#status = :running",
        )


class JobStorage:
    """The job's objects in S3."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket

    @staticmethod
    def input_key(job_id: str) -> str:
        return f"jobs/{job_id}/input.npy"

    @staticmethod
    def upload_key(job_id: str, fmt: str) -> str:
        return f"jobs/{job_id}/upload.{fmt}"

    @staticmethod
    def parts_prefix(job_id: str) -> str:
        """Where the chunks write their parts of the results: a Parquet job's dataset."""
        return f"jobs/{job_id}/results/"

    @classmethod
    def part_key(cls, job_id: str, index: int, fmt: str) -> str:
        return f"{cls.parts_prefix(job_id)}part-{index:06d}.{fmt}"

    @staticmethod
    def results_key(job_id: str, fmt: str) -> str:
        return f"jobs/{job_id}/results.{fmt}"

    def put_input(self, job_id: str, points: np.ndarray) -> int:
        """Write the points as a C-order float64 .npy; returns where the data starts (the header's length)."""
        points = np.ascontiguousarray(points, dtype="<f8")
        header = npy_header(points.shape, points.dtype)
        body = io.BytesIO(header + points.tobytes()) if points.nbytes < 64 * 2**20 else _Concatenated(header, points)
        self.s3.upload_fileobj(body, self.bucket, self.input_key(job_id))
        return len(header)

    def input_writer(self, job_id: str, columns: int, part_bytes: int) -> NpyPartWriter:
        """A float64 `input.npy` written batch by batch, for points whose number is known only at the end."""
        return NpyPartWriter(self.s3, self.bucket, self.input_key(job_id), columns, part_bytes)

    def read_input_rows(self, job: Job, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of the job's points, as float64: from `input.npy`, or from the uploaded .npy itself."""
        assert job.input_offset is not None
        if job.input_dtype is None:
            return self.read_npy_rows(self.input_key(job.id), job.input_offset, "<f8", len(job.features), start, stop)
        key = self.upload_key(job.id, "npy")
        return self.read_npy_rows(
            key, job.input_offset, job.input_dtype, len(job.features), start, stop, etag=job.upload_etag
        )

    def read_npy_rows(
        self, key: str, offset: int, dtype: str, columns: int, start: int, stop: int, etag: str | None = None
    ) -> np.ndarray:
        """Rows start:stop of a C-order 2-D .npy whose data begin at `offset`, by one ranged GET, as float64."""
        width = columns * np.dtype(dtype).itemsize
        data = self.read_bytes(key, offset + start * width, offset + stop * width, etag)
        if len(data) != (stop - start) * width:
            raise ValueError(f"input rows {start}:{stop} are incomplete ({len(data)} bytes)")
        rows = np.frombuffer(data, dtype=dtype).reshape(stop - start, columns)
        return rows.astype(np.float64, copy=False)  # a view of the bytes when they are little-endian float64

    def read_bytes(self, key: str, start: int, stop: int, etag: str | None = None) -> bytes:
        """Bytes start:stop of an object (fewer if it ends before)."""
        return bytes(self.open(key, etag, Range=f"bytes={start}-{stop - 1}").read())

    def open(self, key: str, etag: str | None = None, **arguments: Any) -> Any:
        """The object's streaming body; with `etag`, an object replaced since is a JobInputError (the file the
        job was started with is gone)."""
        if etag is not None:
            arguments["IfMatch"] = etag
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key, **arguments)["Body"]
        except self.s3.exceptions.ClientError as exc:
            if etag and exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise JobInputError(f"{key.rpartition('/')[2]} was replaced after the job started") from exc
            raise

    def put_part(self, job_id: str, index: int, fmt: str, body: bytes | memoryview) -> None:
        """Chunk `index`'s part of the results (a redelivered chunk writes the same bytes again); read in place."""
        reader = body if isinstance(body, bytes) else _ViewReader(body)
        self.s3.put_object(Bucket=self.bucket, Key=self.part_key(job_id, index, fmt), Body=reader)

    def list_parts(self, job_id: str, fmt: str) -> dict[int, tuple[str, int, str]]:
        """The parts written so far: chunk index -> (key, size, ETag), by listing the prefix (1,000 a page)."""
        prefix, suffix = self.parts_prefix(job_id), f".{fmt}"
        found: dict[int, tuple[str, int, str]] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix) :]
                number = name.removeprefix("part-").removesuffix(suffix)
                if name.startswith("part-") and name.endswith(suffix) and number.isdigit():
                    found[int(number)] = (item["Key"], int(item["Size"]), str(item["ETag"]))
        return found

    def delete_keys(self, keys: list[str]) -> None:
        """Best effort (the bucket's lifecycle rule expires them anyway), 1,000 a request."""
        for first in range(0, len(keys), 1000):
            objects = [{"Key": key} for key in keys[first : first + 1000]]
            with contextlib.suppress(Exception):
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def presigned_put(self, key: str) -> str:
        return str(
            self.s3.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=URL_EXPIRY_S
            )
        )

    def presigned_get(self, key: str, filename: str) -> str:
        params = {"Bucket": self.bucket, "Key": key, "ResponseContentDisposition": f'attachment; filename="{filename}"'}
        return str(self.s3.generate_presigned_url("get_object", Params=params, ExpiresIn=URL_EXPIRY_S))


class NpyPartWriter:
    """A float64 .npy in S3 from batches of rows, as a multipart upload; `with` it: an exception aborts it.

    Its header, which holds the number of rows, goes in part 1, which is sent last (S3 orders parts by
    number, not by arrival). So at most two parts are held: the first, and the one being filled.
    """

    def __init__(self, s3: Any, bucket: str, key: str, columns: int, part_bytes: int) -> None:
        self.s3, self.bucket, self.key, self.columns = s3, bucket, key, columns
        self.part_bytes = max(part_bytes, MIN_PART_BYTES)
        self.first = bytearray()
        self.filling = bytearray()
        self.parts: list[dict[str, Any]] = []
        self.upload_id: str | None = None
        self.rows = 0
        self.header_bytes = 0

    def __enter__(self) -> NpyPartWriter:
        return self

    def __exit__(self, kind: Any, exc: Any, traceback: Any) -> None:
        if exc is None:
            self._finish()
        elif self.upload_id is not None:
            with contextlib.suppress(Exception):  # the bucket's lifecycle rule aborts it a day later anyway
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)

    def write(self, rows: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(rows, dtype="<f8")).cast("B")
        self.rows += len(rows)
        if len(self.first) < self.part_bytes:
            self.first += data
        else:
            self.filling += data
            if len(self.filling) >= self.part_bytes:
                self._send(self.filling)
                self.filling = bytearray()

    def _send(self, body: bytearray) -> None:
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 2  # part 1, with the header, is sent last
        etag = self.s3.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})

    def _finish(self) -> None:
        header = npy_header((self.rows, self.columns), np.dtype("<f8"))
        self.header_bytes = len(header)
        if self.upload_id is None and not self.filling:  # all of it fits one part: one PUT
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=header + self.first)
            return
        if self.filling:  # the last part, of any size
            self._send(self.filling)
            self.filling = bytearray()
        first = self.s3.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=1, Body=header + self.first
        )["ETag"]
        parts = [{"PartNumber": 1, "ETag": first}, *self.parts]
        self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}
        )


class _Concatenated(io.RawIOBase):
    """A readable file of `header` then the array's bytes, without copying the array (S3 uploads it in parts)."""

    def __init__(self, header: bytes, array: np.ndarray) -> None:
        self.parts = [memoryview(header), memoryview(array).cast("B")]
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self.parts and len(self.parts[0]) == 0:
            self.parts.pop(0)
        if not self.parts:
            return 0
        count = min(len(view), len(self.parts[0]))
        view[:count] = self.parts[0][:count]
        self.parts[0] = self.parts[0][count:]
        return count


class _ViewReader(io.RawIOBase):
    """A seekable file of a buffer's bytes, not copied (io.BytesIO copies all but `bytes`): botocore reads it for its
    length and checksum, then sends it, and seeks back to send it again on a retry."""

    def __init__(self, view: memoryview) -> None:
        self.view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.view)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        count = max(0, min(len(target), len(self.view) - self.position))
        target[:count] = self.view[self.position : self.position + count]
        self.position += count
        return count


@dataclass(frozen=True)
class WorkMessage:
    """One SQS message: plan a job, predict a chunk of it, or assemble its results."""

    kind: str  # plan | chunk | assemble
    job: str
    index: int = 0
    start: int = 0
    stop: int = 0

    def body(self) -> str:
        fields: dict[str, Any] = {"kind": self.kind, "job": self.job}
        if self.kind == "chunk":
            fields |= {"index": self.index, "start": self.start, "stop": self.stop}
        return orjson.dumps(fields).decode()

    @classmethod
    def parse(cls, body: str) -> WorkMessage:
        data = orjson.loads(body)
        if data.get("kind") not in ("plan", "chunk", "assemble") or not isinstance(data.get("job"), str):
            raise ValueError(f"not a job message: {body[:200]!r}")
        return cls(
            data["kind"], data["job"], int(data.get("index", 0)), int(data.get("start", 0)), int(data.get("stop", 0))
        )

    def describe(self) -> str:
        return f"chunk {self.index} (points {self.start}-{self.stop - 1})" if self.kind == "chunk" else self.kind


class JobQueue:
    def __init__(self, sqs: Any, work_url: str, results_url: str) -> None:
        self.sqs = sqs
        self.work_url = work_url
        self.results_url = results_url

    def send(self, url: str, messages: list[WorkMessage]) -> None:
        """Send in batches of ten, resending entries SQS reports failed (throttling) a few times."""
        for first in range(0, len(messages), SQS_BATCH):
            entries = [
                {"Id": str(i), "MessageBody": m.body()} for i, m in enumerate(messages[first : first + SQS_BATCH])
            ]
            for attempt in range(5):
                failed = self.sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed", [])
                if not failed:
                    break
                ids = {f["Id"] for f in failed}
                entries = [e for e in entries if e["Id"] in ids]
                time.sleep(0.1 * 2**attempt)
            else:
                raise RuntimeError(f"SQS refused {len(entries)} message(s): {failed[0].get('Message', '')}")

    def plan(self, job_id: str) -> None:
        self.send(self.work_url, [WorkMessage("plan", job_id)])

    def chunks(self, job: Job) -> None:
        assert job.n_points is not None
        assert job.chunk_points is not None
        ranges = chunk_ranges(job.n_points, job.chunk_points)
        self.send(self.work_url, [WorkMessage("chunk", job.id, i, a, b) for i, (a, b) in enumerate(ranges)])

    def assemble(self, job_id: str) -> None:
        self.send(self.results_url, [WorkMessage("assemble", job_id)])


def retry_soon(sqs: Any, queue_url: str, receipt_handle: str, receive_count: int, delays: tuple[int, ...]) -> None:
    """Make a failed message visible again after delays[attempt - 1] seconds rather than its queue's visibility
    timeout (sized for the longest run); best effort: the queue's own timeout is the fallback."""
    delay = delays[min(max(receive_count, 1), len(delays)) - 1]
    with contextlib.suppress(Exception):
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=delay)


@dataclass
class JobBackend:
    """The AWS resources of jobs, with clients made on first use (boto3 honours AWS_ENDPOINT_URL: moto locally)."""

    bucket: str
    table_name: str
    work_queue_url: str
    results_queue_url: str
    chunk_points: int = 200_000
    max_points: int = 10_000_000
    retention_days: int = 7
    clock: Callable[[], float] = time.time
    _clients: dict[str, Any] = field(default_factory=dict)

    def _client(self, name: str) -> Any:
        if name not in self._clients:
            import boto3
            from botocore.config import Config

            config = Config(retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=5, read_timeout=60)
            if name == "table":
                self._clients[name] = boto3.resource("dynamodb", config=config).Table(self.table_name)
            else:
                if name == "s3":  # presigned URLs must name the bucket's region, not the global endpoint
                    config = config.merge(Config(signature_version="s3v4", s3={"addressing_style": "path"}))
                    # the finisher's parts are copied COPY_THREADS at once, each on its own connection
                    config = config.merge(Config(max_pool_connections=COPY_THREADS))
                self._clients[name] = boto3.client(name, config=config)  # type: ignore[call-overload]
        return self._clients[name]

    @property
    def store(self) -> JobStore:
        return JobStore(self._client("table"), self.clock)

    @property
    def storage(self) -> JobStorage:
        return JobStorage(self._client("s3"), self.bucket)

    @property
    def queue(self) -> JobQueue:
        return JobQueue(self._client("sqs"), self.work_queue_url, self.results_queue_url)

    @property
    def sqs(self) -> Any:
        return self._client("sqs")

    @property
    def dynamodb(self) -> Any:
        """A plain DynamoDB client (the table resource's own client converts values, which Powertools does itself)."""
        return self._client("dynamodb")

    def expiration(self) -> int:
        return int(self.clock()) + self.retention_days * 86_400


def backend_from_settings(settings: Any) -> JobBackend:
    return JobBackend(
        bucket=settings.jobs_bucket,
        table_name=settings.jobs_table,
        work_queue_url=settings.job_queue_url,
        results_queue_url=settings.results_queue_url,
        chunk_points=settings.job_chunk_points,
        max_points=settings.job_max_points,
        retention_days=settings.job_retention_days,
    )


# --- submission ------------------------------------------------------------------------------------------


def new_job(
    backend: JobBackend,
    owner: str,
    manifest: Any,
    source: str,
    options: OutputOptions,
    model: dict[str, str] | None = None,
    **extra: Any,
) -> Job:
    """A QUEUED job on `model` (the served version, as `routes.submitted_model` says it; default: the packaged model
    whose manifest this is)."""
    return Job(
        id=new_job_id(),
        owner=owner,
        status="QUEUED",
        source=source,
        created_at=backend.clock(),
        expiration=backend.expiration(),
        features=manifest.features,
        outputs=manifest.outputs,
        model=model or {"name": manifest.name, "version": manifest.version, "source": "packaged"},
        options=options,
        **extra,
    )


def submit_points(backend: JobBackend, job: Job, points: np.ndarray, chunk_points: int) -> Job:
    """Points sent inline: stored, counted, chunked (`chunk_points` each: the model's) and queued now (they are at
    most one request's worth)."""
    offset = backend.storage.put_input(job.id, points)
    backend.store.create(job)
    running = backend.store.planned(job.id, len(points), chunk_points, offset)
    assert running is not None
    backend.queue.chunks(running)
    return running


def submit_design(backend: JobBackend, job: Job) -> Job:
    """A design is generated by a worker (10^7 points take seconds): record it and queue its plan."""
    backend.store.create(job)
    backend.queue.plan(job.id)
    return job


def submit_upload(backend: JobBackend, job: Job) -> Job:
    backend.store.create(replace(job, status="AWAITING_UPLOAD"))
    return replace(job, status="AWAITING_UPLOAD")


def start_upload(backend: JobBackend, job: Job) -> Job:
    """POST /jobs/{id}/start: check the uploaded file's size and header, then queue its plan."""
    if job.status != "AWAITING_UPLOAD":
        raise RequestError(409, "job already started", [("status", f"the job is {job.status}")])
    assert job.upload_format is not None
    storage = backend.storage
    key = storage.upload_key(job.id, job.upload_format)
    try:
        head = storage.s3.head_object(Bucket=storage.bucket, Key=key)
    except storage.s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            message = f"no file uploaded yet: PUT the .{job.upload_format} to the job's upload URL first"
            raise RequestError(409, "nothing uploaded", [("upload", message)]) from exc
        raise
    size = int(head["ContentLength"])
    if size == 0:  # S3 answers a ranged GET of an empty object with InvalidRange
        raise RequestError(422, "invalid upload", [("upload", f"the uploaded .{job.upload_format} is empty (0 bytes)")])
    if size > MAX_UPLOAD_BYTES:
        raise RequestError(413, "upload too large", [("upload", f"{size} bytes; at most {MAX_UPLOAD_BYTES}")])
    try:  # the head of the version HEAD saw, whose size was checked and whose ETag the job keeps
        first = storage.read_bytes(key, 0, UPLOAD_HEAD_BYTES, etag=head["ETag"])
    except JobInputError:
        message = "the file was replaced while the job was being started: start it again"
        raise RequestError(409, "upload replaced", [("upload", message)]) from None
    check_upload_head(first, job.upload_format, job.features, size, backend.max_points)
    queued = backend.store.queue_upload(job.id, head["ETag"])
    if queued is None:  # started by a concurrent call
        raise RequestError(409, "job already started", [("status", "the job was started by another request")])
    backend.queue.plan(job.id)
    return queued


def check_upload_head(head: bytes, fmt: str, features: tuple[str, ...], size: int, max_points: int) -> None:
    """Refuse (422) a file whose header does not name the model's features, or whose size its rows cannot
    explain, before any work is queued."""
    if fmt == "csv":
        line, newline, _ = head.partition(b"\n")
        if not newline and len(head) < size:
            raise RequestError(422, "invalid upload", [("upload", "the CSV header line is over 64 KiB")])
        try:
            names = csv_header_names(line.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise RequestError(422, "invalid upload", [("upload", "the CSV header is not UTF-8 text")]) from None
        csv_columns(names, features)
        most = len(line) + len(newline) + max_points * csv_row_chars(len(features))
        if size > most:
            message = (
                f"{size} bytes is more than {max_points} rows of {len(features)} values take "
                f"(at most {most} bytes: {csv_row_chars(len(features))} a row); split the job"
            )
            raise RequestError(422, "invalid upload", [("upload", message)])
        return
    layout = npy_layout(head)
    if layout.columns != len(features):
        message = f"expected {len(features)} columns ({', '.join(features)}), got {layout.columns}"
        raise RequestError(422, "invalid upload", [("upload", message)])
    if not 1 <= layout.rows <= max_points:
        raise RequestError(422, "invalid upload", [("upload", f"{layout.rows} rows; 1 to {max_points} accepted")])
    if size != layout.size:
        message = (
            f"{size} bytes, but its header declares {layout.rows} rows x {layout.columns} columns of "
            f"{np.dtype(layout.dtype).name}: {layout.size} bytes with the {layout.offset}-byte header"
        )
        raise RequestError(422, "invalid upload", [("upload", message)])


def csv_row_chars(columns: int) -> int:
    """The longest CSV row accepted, in characters (bytes, as the values are ASCII), its line end included."""
    return CSV_VALUE_CHARS * columns


def csv_header_names(line: str) -> list[str]:
    return [name.strip().strip('"').strip() for name in line.rstrip("\r\n").split(",")]


def csv_columns(names: list[str], features: tuple[str, ...]) -> list[int]:
    """Where each feature is among the CSV's columns; 422 naming what is missing or unknown."""
    problems = []
    if missing := [f for f in features if f not in names]:
        problems.append(("upload", f"the CSV header lacks {', '.join(missing)}"))
    if unknown := [n for n in names if n not in features]:
        problems.append(("upload", f"the CSV header names unknown column(s) {', '.join(map(repr, unknown[:20]))}"))
    if len(set(names)) != len(names):
        problems.append(("upload", "the CSV header repeats a column"))
    if problems:
        expected = f"expected a header of the model's features: {','.join(features)}"
        raise RequestError(422, "invalid upload", [*problems, ("upload", expected)])
    return [names.index(f) for f in features]


@dataclass(frozen=True)
class NpyLayout:
    """Where a 2-D .npy's rows are: `offset` bytes of header, then rows x columns values of `dtype`."""

    rows: int
    columns: int
    dtype: str  # as numpy spells it with its byte order: "<f8", ">i4", "|u1"
    offset: int

    @property
    def size(self) -> int:
        return self.offset + self.rows * self.columns * np.dtype(self.dtype).itemsize


def npy_layout(head: bytes) -> NpyLayout:
    """The layout of a 2-D numeric, C-order .npy from its first bytes; 422 otherwise."""
    buffer = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(buffer)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read(buffer)
    except Exception as exc:  # numpy raises ValueError or others on anything that is not an .npy header
        raise RequestError(422, "invalid upload", [("upload", f"not an .npy file: {exc}"[:300])]) from None
    # Wider floats (np.longdouble) are not one format across machines.
    if dtype.kind not in "fiu" or dtype.hasobject or dtype.itemsize > 8:
        message = f"expected a float or integer array of at most 64 bits, got dtype {dtype}"
        raise RequestError(422, "invalid upload", [("upload", message)])
    if len(shape) != 2 or fortran_order:
        raise RequestError(422, "invalid upload", [("upload", f"expected a C-order 2-D array, got shape {shape}")])
    return NpyLayout(int(shape[0]), int(shape[1]), dtype.str, buffer.tell())


# --- status -------------------------------------------------------------------------------------------


# A Parquet job's answer lists its parts' URLs this many at a time (a 10^7-point job has 50-250 parts; a presigned
# URL is ~600 bytes): `parts_next` pages on.
LISTED_PARTS = 500


def status_document(backend: JobBackend, job: Job, parts_from: int = 0, jobs_path: str = "/jobs") -> dict[str, Any]:
    """GET /jobs/{id}: state, progress, timings, and the URL to upload to or download from (a Parquet job's parts,
    from part `parts_from`, LISTED_PARTS at a time; `jobs_path`: the route's, for the next page's link)."""
    # A design's size is known before its plan has run; an upload's only once read.
    points = job.n_points if job.n_points is not None else (job.design or {}).get("points")
    doc: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "source": job.source,
        "model": {"source": "packaged", **job.model},  # records from before the registry were the packaged model's
        "options": job.options.document(),
        "progress": {
            "chunks_done": job.chunks_done,
            "chunks": job.n_chunks,
            "points_done": job.points_done,
            "points": points,
            "fraction": round(job.points_done / points, 4) if points else 0.0,
        },
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "elapsed_seconds": round((job.finished_at or backend.clock()) - job.created_at, 3),
        "expires_at": _iso(job.expiration),
    }
    if job.design is not None:
        doc["design"] = job.design
    if job.status == "FAILED":
        doc["error"] = job.error
    if job.status == "AWAITING_UPLOAD":
        assert job.upload_format is not None
        doc["upload"] = {
            "method": "PUT",
            "url": backend.storage.presigned_put(backend.storage.upload_key(job.id, job.upload_format)),
            "format": job.upload_format,
            "then": f"POST /jobs/{job.id}/start",
            "expires_in_seconds": URL_EXPIRY_S,
        }
    if job.status == "SUCCEEDED":
        doc["results"] = results_document(backend, job, parts_from, jobs_path)
    return doc


def results_document(backend: JobBackend, job: Job, parts_from: int, jobs_path: str) -> dict[str, Any]:
    fmt = job.options.format
    assert job.n_points is not None
    assert job.chunk_points is not None
    found: dict[str, Any] = {"format": fmt, "columns": result_columns(job.features, job.outputs, job.options)}
    found["rows"] = job.n_points
    if fmt != "parquet":
        key = backend.storage.results_key(job.id, fmt)
        url = backend.storage.presigned_get(key, f"{job.id}.{fmt}")
        return {"url": url, **found, "expires_in_seconds": URL_EXPIRY_S}
    # the listed parts' rows by arithmetic: an answer costs its page, whatever the job's number of parts
    total = math.ceil(job.n_points / job.chunk_points)
    listed = range(parts_from, min(parts_from + LISTED_PARTS, total))
    parts = []
    for index in listed:
        start = index * job.chunk_points
        stop = min(start + job.chunk_points, job.n_points)
        key = backend.storage.part_key(job.id, index, fmt)
        url = backend.storage.presigned_get(key, f"part-{index:06d}.{fmt}")
        parts.append({"index": index, "url": url, "rows": stop - start, "first_row": start})
    found |= {"layout": "dataset", "parts_total": total, "parts": parts, "expires_in_seconds": URL_EXPIRY_S}
    if listed.stop < total:
        found["parts_next"] = f"{jobs_path.rstrip('/')}/{job.id}?parts_from={listed.stop}"
    return found


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"
