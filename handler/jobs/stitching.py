"""One S3 object from many, without the bytes passing through: a multipart upload whose parts are copies.

Each chunk of a job writes its results in the final format (`jobs/ID/results/part-NNNNNN.fmt`); the finisher
stitches them in order into `jobs/ID/results.fmt`. S3 copies each part server-side (UploadPartCopy), so the
finisher's time and memory do not grow with the file. S3's rules for the parts, checked here before any request
(moto does not enforce all of them):
- part numbers 1 to 10,000, each once, in ascending order in the completion;
- every part but the last at least 5 MiB, none over 5 GiB;
- a copied range inside its source object, and only out of a source over 5 MiB.

A source smaller than 5 MiB that is not the last (a job whose chunks are small) cannot be a part of its own: the
plan fills a part with it and the head of what follows, read and uploaded by the finisher (`PartPlan.pieces` more
than one), under 10 MiB a part, and copies the rest. Sources of 5 MiB or more are copied whole.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

MIN_PART_BYTES = 5 * 2**20
MAX_PART_BYTES = 5 * 2**30
MAX_PARTS = 10_000
# Copies in flight at once: S3 copies each server-side, so the finisher only waits. 64 makes one round of any job the
# service takes at its default chunks (10^7 points: 50 parts of 200,000), so the stitch's time does not grow with n;
# far below S3's per-prefix request rate (3,500 writes a second). The S3 client's connection pool is as large
# (handler/jobs/backend.py: botocore's default pool of 10 would queue the rest).
COPY_THREADS = 64
# Parts the finisher reads and uploads itself (small chunks gathered) at once: each holds under 10 MiB, so at most
# ~80 MiB of them, whatever the number of threads copying.
READ_PARTS_AT_ONCE = 8
COMPLETE_ATTEMPTS = 5
RETRIED_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "503", "500"}


class StitchCancelledError(Exception):
    """The job ended (cancelled) while its parts were being copied: the upload was aborted."""


@dataclass(frozen=True)
class Source:
    key: str
    size: int
    etag: str | None = None  # the version the plan was made from: a copy of any other fails


@dataclass(frozen=True)
class Piece:
    """Bytes start:stop of one source."""

    source: Source
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.source.size


@dataclass(frozen=True)
class PartPlan:
    number: int
    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(piece.size for piece in self.pieces)

    @property
    def copied(self) -> bool:
        """One piece: S3 copies it (UploadPartCopy); more: the finisher reads them and uploads the part."""
        return len(self.pieces) == 1


def plan_parts(sources: Sequence[Source], min_part: int = MIN_PART_BYTES) -> list[PartPlan]:
    """The parts whose concatenation is the sources' in order, each copied where S3's rules allow.

    Greedy: a source of at least `min_part` with nothing pending is one copied part; smaller sources gather into a
    pending part, topped up to `min_part` with the head of the next source over `min_part`, whose rest is copied
    (or, if under `min_part` and not last, gathers in turn). A part read through the finisher holds under
    2 x `min_part` bytes.
    """
    parts: list[list[Piece]] = []
    pending: list[Piece] = []
    pending_bytes = 0
    for position, source in enumerate(sources):
        if source.size == 0:
            continue
        last = position == len(sources) - 1 or all(s.size == 0 for s in sources[position + 1 :])
        start = 0
        if pending:
            # S3 copies a range only out of a source over 5 MiB: a smaller one joins the pending part whole
            take = source.size if source.size <= min_part else min_part - pending_bytes
            pending.append(Piece(source, 0, take))
            pending_bytes += take
            start = take
            if pending_bytes < min_part:
                continue
            parts.append(pending)
            pending, pending_bytes = [], 0
        rest = source.size - start
        if rest == 0:
            continue
        if rest >= min_part or last:
            parts.append([Piece(source, start, source.size)])
        else:
            pending, pending_bytes = [Piece(source, start, source.size)], rest
    if pending:
        parts.append(pending)
    plans = [PartPlan(number, tuple(pieces)) for number, pieces in enumerate(parts, start=1)]
    check_plan(plans, sources, min_part)
    return plans


def check_plan(plans: Sequence[PartPlan], sources: Sequence[Source], min_part: int = MIN_PART_BYTES) -> None:
    """S3's multipart rules, and that the parts are the sources' bytes in order: ValueError naming the first break."""
    if not plans and any(source.size for source in sources):
        raise ValueError("no parts for non-empty sources")
    if len(plans) > MAX_PARTS:
        raise ValueError(f"{len(plans)} parts: S3 allows at most {MAX_PARTS}")
    expected = [(source.key, 0, source.size) for source in sources if source.size]
    covered: list[tuple[str, int, int]] = []
    for index, plan in enumerate(plans):
        if plan.number != index + 1:
            raise ValueError(f"part {index + 1} is numbered {plan.number}: parts are numbered 1, 2, ... in order")
        if not plan.pieces:
            raise ValueError(f"part {plan.number} is empty")
        for piece in plan.pieces:
            if not 0 <= piece.start < piece.stop <= piece.source.size:
                raise ValueError(
                    f"part {plan.number}: range {piece.start}-{piece.stop} is outside {piece.source.key} "
                    f"({piece.source.size} bytes) or empty"
                )
            if plan.copied and not piece.whole and piece.source.size <= min_part:
                raise ValueError(
                    f"part {plan.number}: a range of {piece.source.key} ({piece.source.size} bytes): S3 copies "
                    f"ranges only out of objects over {min_part} bytes"
                )
            if covered and covered[-1][0] == piece.source.key and covered[-1][2] == piece.start:
                covered[-1] = (piece.source.key, covered[-1][1], piece.stop)
            else:
                covered.append((piece.source.key, piece.start, piece.stop))
        if plan.size > MAX_PART_BYTES:
            raise ValueError(f"part {plan.number} is {plan.size} bytes: S3 allows at most {MAX_PART_BYTES}")
        if index < len(plans) - 1 and plan.size < min_part:
            raise ValueError(f"part {plan.number} is {plan.size} bytes: every part but the last needs {min_part}")
    if covered != expected:
        raise ValueError("the parts are not the sources' bytes in order")


def stitch(
    s3: Any,
    bucket: str,
    key: str,
    sources: Sequence[Source],
    *,
    still_wanted: Callable[[], bool] = lambda: True,
    min_part: int = MIN_PART_BYTES,
    threads: int = COPY_THREADS,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write `key` as the concatenation of `sources` (a multipart upload: nothing is visible until it completes,
    and on any failure, or when `still_wanted()` turns false between parts, the upload is aborted). Returns the
    bytes written."""
    plans = plan_parts(sources, min_part)
    total = sum(plan.size for plan in plans)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    reading = threading.BoundedSemaphore(READ_PARTS_AT_ONCE)
    try:

        def send(plan: PartPlan) -> dict[str, Any]:
            if not still_wanted():
                raise StitchCancelledError(key)
            common = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": plan.number}
            if plan.copied:
                piece = plan.pieces[0]
                copy: dict[str, Any] = {"CopySource": {"Bucket": bucket, "Key": piece.source.key}}
                if not piece.whole:
                    copy["CopySourceRange"] = f"bytes={piece.start}-{piece.stop - 1}"
                if piece.source.etag:
                    copy["CopySourceIfMatch"] = piece.source.etag
                etag = s3.upload_part_copy(**common, **copy)["CopyPartResult"]["ETag"]
            else:
                with reading:
                    body = b"".join(_read(s3, bucket, piece) for piece in plan.pieces)
                    etag = s3.upload_part(**common, Body=body)["ETag"]
            return {"PartNumber": plan.number, "ETag": etag}

        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(plans)))) as pool:
            parts = list(pool.map(send, plans))  # in plan order: ascending part numbers
        if not still_wanted():
            raise StitchCancelledError(key)
        _complete(s3, bucket, key, upload_id, parts, total, sleep)
    except BaseException:
        with contextlib.suppress(Exception):  # the bucket's lifecycle rule aborts it a day later anyway
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return total


def _read(s3: Any, bucket: str, piece: Piece) -> bytes:
    arguments: dict[str, Any] = {"Bucket": bucket, "Key": piece.source.key}
    arguments["Range"] = f"bytes={piece.start}-{piece.stop - 1}"
    if piece.source.etag:
        arguments["IfMatch"] = piece.source.etag
    data = bytes(s3.get_object(**arguments)["Body"].read())
    if len(data) != piece.size:
        raise ValueError(f"{piece.source.key}: read {len(data)} bytes of {piece.size}")
    return data


def _complete(
    s3: Any, bucket: str, key: str, upload_id: str, parts: list[dict[str, Any]], total: int, sleep: Callable
) -> None:
    """CompleteMultipartUpload, retried on S3's transient errors. A retry after a completion whose answer was lost
    finds the upload gone (NoSuchUpload): the object is then checked to be this one (its size and part count)."""
    for attempt in range(COMPLETE_ATTEMPTS):
        try:
            s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
            return
        except s3.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchUpload" and attempt > 0 and _is_completed(s3, bucket, key, total, len(parts)):
                return
            if code not in RETRIED_CODES or attempt == COMPLETE_ATTEMPTS - 1:
                raise
        sleep(0.2 * 2**attempt)


def _is_completed(s3: Any, bucket: str, key: str, total: int, parts: int) -> bool:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError:
        return False
    etag = str(head.get("ETag", "")).strip('"')
    return int(head["ContentLength"]) == total and (parts == 1 or etag.endswith(f"-{parts}"))
