"""Stitching a job's results: the part plan against S3's multipart rules, and the stitch itself on moto (whose
multipart checks are looser than S3's: the rules are tested on the plan, not only through moto)."""

from __future__ import annotations

import random
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from handler.jobs.stitching import (
    MAX_PARTS,
    MIN_PART_BYTES,
    PartPlan,
    Piece,
    Source,
    StitchCancelledError,
    check_plan,
    plan_parts,
    stitch,
)

MIB = 2**20
BUCKET = "stitch-test"


def sources_of(*sizes: int) -> list[Source]:
    return [Source(f"parts/part-{i:06d}", size) for i, size in enumerate(sizes)]


def bytes_through_finisher(plans: list[PartPlan]) -> int:
    return sum(plan.size for plan in plans if not plan.copied)


# --- the plan --------------------------------------------------------------------------------------------------


def test_parts_of_at_least_5_mib_are_each_copied_whole_and_the_last_may_be_smaller():
    # given chunks of 8 MiB and a last of 1 KiB
    sources = sources_of(8 * MIB, 8 * MIB, 8 * MIB, 1024)
    # when planned
    plans = plan_parts(sources)
    # then one copied part per chunk, whole, numbered from 1: nothing passes through the finisher
    assert [(p.number, p.copied, p.pieces[0].whole, p.pieces[0].source) for p in plans] == [
        (i + 1, True, True, s) for i, s in enumerate(sources)
    ]
    assert bytes_through_finisher(plans) == 0


def test_a_single_small_chunk_is_one_part():
    plans = plan_parts(sources_of(300))
    assert len(plans) == 1
    assert plans[0].copied
    assert plans[0].size == 300


def test_small_chunks_are_gathered_into_parts_of_5_mib_and_ranges_are_copied_only_out_of_large_sources():
    # given small chunks before and between large ones
    sources = sources_of(2 * MIB, 2 * MIB, 9 * MIB, 3 * MIB, 12 * MIB, 1 * MIB)
    # when planned
    plans = plan_parts(sources)
    # then every part but the last holds at least 5 MiB, and every copied range comes from a source over 5 MiB
    check_plan(plans, sources)
    assert all(plan.size >= MIN_PART_BYTES for plan in plans[:-1])
    for plan in plans:
        if plan.copied and not plan.pieces[0].whole:
            assert plan.pieces[0].source.size > MIN_PART_BYTES
    # and what passes through the finisher is the small chunks and the heads that top them up: under 2 x 5 MiB a part
    assert all(plan.size < 2 * MIN_PART_BYTES for plan in plans if not plan.copied)
    assert bytes_through_finisher(plans) < sum(s.size for s in sources)


def test_empty_sources_are_skipped():
    sources = sources_of(0, 6 * MIB, 0, 100, 0)
    plans = plan_parts(sources)
    check_plan(plans, sources)
    assert [p.size for p in plans] == [6 * MIB, 100]


@pytest.mark.parametrize("seed", range(40))
def test_random_chunkings_always_give_a_plan_that_keeps_s3s_rules(seed: int):
    # given chunk sizes from bytes to tens of MiB, in any mix
    rng = random.Random(seed)
    scale = rng.choice([1, 1024, MIB])
    sizes = [rng.randint(0, 12) * scale + rng.randint(0, 3) for _ in range(rng.randint(1, 40))]
    sources = sources_of(*sizes)
    if not sum(sizes):
        return
    # when planned (plan_parts checks its own plan), then checked again here
    plans = plan_parts(sources)
    check_plan(plans, sources)
    # then the parts are the sources' bytes in order, all of them
    assert sum(plan.size for plan in plans) == sum(sizes)


def test_the_plan_checker_refuses_what_s3_would_refuse():
    big, small = Source("a", 8 * MIB), Source("b", 1 * MIB)
    whole = [PartPlan(1, (Piece(big, 0, big.size),)), PartPlan(2, (Piece(small, 0, small.size),))]
    check_plan(whole, [big, small])  # the valid plan passes
    cases = {
        "numbered": [PartPlan(2, whole[0].pieces), PartPlan(1, whole[1].pieces)],
        "every part but the last needs": [PartPlan(1, whole[1].pieces), PartPlan(2, whole[0].pieces)],
        "outside": [PartPlan(1, (Piece(big, 0, big.size + 1),)), whole[1]],
        "S3 copies ranges only": [
            PartPlan(1, (Piece(big, 0, big.size), Piece(small, 0, 100))),
            PartPlan(2, (Piece(small, 100, small.size),)),
        ],
        "not the sources' bytes in order": [whole[0]],
        "empty": [whole[0], PartPlan(2, ())],
    }
    for message, plans in cases.items():
        with pytest.raises(ValueError, match=message):
            check_plan(plans, [big, small] if message != "every part but the last needs" else [small, big])


def test_more_parts_than_s3_allows_are_refused_before_any_request():
    sources = sources_of(*([MIN_PART_BYTES] * (MAX_PARTS + 1)))
    with pytest.raises(ValueError, match="at most 10000"):
        plan_parts(sources)


# --- the stitch, on moto ---------------------------------------------------------------------------------------


@pytest.fixture
def s3() -> Any:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def put_sources(s3: Any, sizes: list[int]) -> tuple[list[Source], bytes]:
    sources, whole = [], b""
    for i, size in enumerate(sizes):
        body = bytes((i * 7 + j) % 251 for j in range(min(size, 251))) * (size // 251 + 1)
        body = body[:size]
        key = f"jobs/x/results/part-{i:06d}.csv"
        etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]
        sources.append(Source(key, size, etag))
        whole += body
    return sources, whole


def no_uploads_left(s3: Any) -> bool:
    return not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_the_stitched_object_is_the_parts_bytes_in_order(s3: Any):
    # given parts large and small (S3's real 5 MiB minimum)
    sources, whole = put_sources(s3, [6 * MIB, 1 * MIB, 7 * MIB, 300])
    # when stitched
    written = stitch(s3, BUCKET, "jobs/x/results.csv", sources)
    # then the object is their concatenation, and no upload is left open
    assert written == len(whole)
    assert s3.get_object(Bucket=BUCKET, Key="jobs/x/results.csv")["Body"].read() == whole
    assert no_uploads_left(s3)


M = 5 * MIB  # S3's least part


@pytest.mark.parametrize(
    "sizes",
    [
        [M, M, M],
        [M - 1, M, 5],
        [M + 1, M - 1, M + 1, 1],
        [M - 1, M - 1, M - 1],
        [1, M + 1, M - 1, M],
        [M - 1, 1, M + 2],
    ],
    ids=["exactly-5MiB", "one-less-then-exact", "one-more-one-less", "all-one-less", "a-byte-first", "one-more-after"],
)
def test_parts_of_exactly_5_mib_or_a_byte_either_side_stitch_to_their_bytes(s3: Any, sizes: list[int]):
    # given chunks' parts at S3's 5 MiB minimum and a byte either side of it
    sources, whole = put_sources(s3, sizes)
    # when stitched (the plan keeps S3's rules, checked before any request: check_plan)
    plans = plan_parts(sources)
    written = stitch(s3, BUCKET, "jobs/x/results.csv", sources)
    # then the object is their bytes in order, every part but the last is at least 5 MiB, and none is left open
    assert s3.get_object(Bucket=BUCKET, Key="jobs/x/results.csv")["Body"].read() == whole
    assert written == len(whole)
    assert all(plan.size >= M for plan in plans[:-1])
    assert no_uploads_left(s3)


class FlakyS3:
    """The moto client, with CompleteMultipartUpload failing as told: `errors` raised in turn before it goes
    through; `lost` completes the upload and then raises (an answer lost on the way back)."""

    def __init__(self, s3: Any, errors: list[str], lost: bool = False) -> None:
        self.s3, self.errors, self.lost, self.completions = s3, list(errors), lost, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        self.completions += 1
        if self.lost:
            self.lost = False
            self.s3.complete_multipart_upload(**kwargs)
            raise ClientError({"Error": {"Code": "InternalError", "Message": "lost"}}, "CompleteMultipartUpload")
        if self.errors:
            code = self.errors.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": code}}, "CompleteMultipartUpload")
        return self.s3.complete_multipart_upload(**kwargs)


def test_an_s3_error_during_completion_is_retried_and_the_object_appears_once_whole(s3: Any):
    sources, whole = put_sources(s3, [6 * MIB, 100])
    flaky = FlakyS3(s3, ["InternalError", "SlowDown"])
    stitch(flaky, BUCKET, "jobs/x/results.csv", sources, sleep=lambda _: None)
    assert flaky.completions == 3
    assert s3.get_object(Bucket=BUCKET, Key="jobs/x/results.csv")["Body"].read() == whole


def test_a_completion_whose_answer_was_lost_is_recognised_when_retried(s3: Any):
    sources, whole = put_sources(s3, [6 * MIB, 100])
    flaky = FlakyS3(s3, [], lost=True)
    stitch(flaky, BUCKET, "jobs/x/results.csv", sources, sleep=lambda _: None)
    assert s3.get_object(Bucket=BUCKET, Key="jobs/x/results.csv")["Body"].read() == whole


def test_a_completion_that_keeps_failing_leaves_no_object_and_no_open_upload(s3: Any):
    sources, _ = put_sources(s3, [6 * MIB, 100])
    with pytest.raises(ClientError):
        stitch(FlakyS3(s3, ["InternalError"] * 10), BUCKET, "jobs/x/results.csv", sources, sleep=lambda _: None)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="jobs/x/results.csv")
    assert no_uploads_left(s3)


def test_a_refused_completion_is_not_retried(s3: Any):
    sources, _ = put_sources(s3, [6 * MIB, 100])
    flaky = FlakyS3(s3, ["EntityTooSmall"])
    with pytest.raises(ClientError, match="EntityTooSmall"):
        stitch(flaky, BUCKET, "jobs/x/results.csv", sources, sleep=lambda _: None)
    assert flaky.completions == 1
    assert no_uploads_left(s3)


def test_a_job_cancelled_mid_stitch_aborts_the_upload_and_leaves_no_object(s3: Any):
    # given a stitch whose job is cancelled once the first parts are copied
    sources, _ = put_sources(s3, [6 * MIB] * 4)
    asked = {"n": 0}

    def still_wanted() -> bool:
        asked["n"] += 1
        return asked["n"] <= 2

    # when stitched, then it stops, aborts the multipart upload, and nothing is visible
    with pytest.raises(StitchCancelledError):
        stitch(s3, BUCKET, "jobs/x/results.csv", sources, still_wanted=still_wanted, threads=1)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="jobs/x/results.csv")
    assert no_uploads_left(s3)


def test_every_copy_names_the_version_the_plan_was_made_from(s3: Any):
    # S3 refuses a copy whose source has another ETag than CopySourceIfMatch (moto ignores it): a part rewritten
    # after the plan fails the stitch rather than mixing versions. So every copy must carry it.
    sources, _ = put_sources(s3, [6 * MIB, 7 * MIB, 100])
    copies: list[dict[str, Any]] = []

    class Recording(FlakyS3):
        def upload_part_copy(self, **kwargs: Any) -> Any:
            copies.append(kwargs)
            return self.s3.upload_part_copy(**kwargs)

    stitch(Recording(s3, []), BUCKET, "jobs/x/results.csv", sources)
    assert sorted(c["PartNumber"] for c in copies) == [1, 2, 3]
    assert all(c["CopySourceIfMatch"] == sources[c["PartNumber"] - 1].etag for c in copies)


def test_the_jobs_s3_client_has_a_connection_for_each_copy_in_flight(monkeypatch: pytest.MonkeyPatch):
    from handler.jobs.backend import JobBackend
    from handler.jobs.stitching import COPY_THREADS

    # botocore's default pool of 10 connections would queue the finisher's copies beyond the tenth
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = JobBackend("b", "t", "w", "r").storage.s3
    assert s3.meta.config.max_pool_connections == COPY_THREADS
