"""benchmarks/jobs.py's pure parts: reading the functions' log lines, summing a job's chunks, the projection.

No server: the end-to-end run itself is `make bench-jobs`.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from benchmarks.jobs import (
    Assumptions,
    ChunkCost,
    chunk_phase_seconds,
    parse_log,
    project,
    stitch_seconds,
    summarise_job,
)


def log_line(message: str, at: datetime, **fields: Any) -> str:
    """A line as Powertools' Logger writes it under the emulator."""
    stamp = at.strftime("%Y-%m-%d %H:%M:%S,") + f"{at.microsecond // 1000:03d}+0000"
    return json.dumps({"level": "INFO", "message": message, "timestamp": stamp, "service": "gpr", **fields})


def event(message: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"message": message, "at": at, **fields}


def chunk(job: str, index: int, end: float, points: int = 200_000, nbytes: int = 9_600_000, **seconds: float):
    steps = {"inputs": 0.1, "predict": 1.0, "encode": 0.2, "write": 0.1, "count": 0.02} | seconds
    return event("chunk done", end, job=job, chunk=index, points=points, bytes=nbytes, seconds=steps)


def test_the_log_gives_the_lines_read_with_their_time_and_skips_everything_else():
    # given a server log: its own lines, a request line, a metrics line, a line cut short, and two that matter
    planned_at = datetime(2026, 12, 7, 13, 29, 2, 619000, tzinfo=UTC)
    done_at = datetime(2026, 12, 7, 13, 29, 7, 781000, tzinfo=UTC)
    text = "\n".join(
        [
            "Listening on http://127.0.0.1:3000",
            '127.0.0.1 - - [07/Dec/2026 13:29:01] "POST /jobs HTTP/1.1" 202 -',
            json.dumps({"_aws": {"Timestamp": 1}, "JobPointsPredicted": [100000.0]}),
            '{"level":"INFO","message":"chunk done","timestamp":',
            log_line("job planned", planned_at, job="a", points=100_000, chunks=1),
            log_line("message skipped", planned_at, job="a"),
            log_line("chunk done", done_at, job="a", chunk=0, points=100_000, bytes=10, seconds={"predict": 1.0}),
        ]
    )
    # when parsed
    events = parse_log(text)
    # then only the planned and chunk lines, each at its timestamp (to the millisecond), their fields kept
    assert [e["message"] for e in events] == ["job planned", "chunk done"]
    assert events[0]["at"] == pytest.approx(planned_at.timestamp(), abs=1e-6)
    assert events[1]["at"] - events[0]["at"] == pytest.approx((done_at - planned_at).total_seconds(), abs=1e-6)
    assert events[1]["seconds"] == {"predict": 1.0}


def test_a_job_is_summed_from_its_own_lines_only():
    # given the lines of two jobs interleaved: job a submitted at 100, planned, two chunks, stitched, succeeded
    events = [
        event("job planned", 100.25, job="a"),
        event("job planned", 100.5, job="b"),
        chunk("a", 1, 103.0, predict=1.5),
        chunk("b", 0, 103.1, predict=9.0),
        chunk("a", 0, 102.0),
        event("results stitched", 104.0, job="a", parts=2, bytes=1, seconds=0.5),
        event("job succeeded", 104.1, job="a"),
    ]
    # when job a is summarised, seen SUCCEEDED at 104.3 with 2 workers
    run = summarise_job("a", 400_000, "npy", 2, 100.0, 104.3, events)
    # then its own chunks, in order; its steps summed; the hops from the timestamps
    assert [c["chunk"] for c in run.chunks] == [0, 1]
    assert run.step("predict") == pytest.approx(2.5)
    assert run.wall_s == pytest.approx(4.3)
    assert run.prediction_share == pytest.approx(2.5 / (4.3 * 2))
    assert run.plan_s == pytest.approx(0.25)
    first_start = 102.0 - (0.1 + 1.0 + 0.2 + 0.1 + 0.02)
    assert run.chunks_s == pytest.approx(103.0 - first_start)
    assert run.hop_s == pytest.approx((104.0 - 0.5) - 103.0)
    assert (run.stitch_s, run.parts, run.bytes, run.chunk_points) == (0.5, 2, 2 * 9_600_000, 200_000)


def test_a_parquet_job_has_no_stitch_and_its_finisher_starts_at_its_success():
    # given a parquet job: no "results stitched" line
    events = [event("job planned", 10.1, job="p"), chunk("p", 0, 11.0), event("job succeeded", 11.5, job="p")]
    # when summarised
    run = summarise_job("p", 200_000, "parquet", 1, 10.0, 11.6, events)
    # then
    assert run.stitch_s is None
    assert run.parts is None
    assert run.hop_s == pytest.approx(0.5)


def test_a_job_without_its_lines_is_an_error_not_a_zero():
    # given lines of another job only; when summarised; then it says so
    with pytest.raises(ValueError, match="missing"):
        summarise_job("a", 1, "npy", 1, 0.0, 1.0, [event("job planned", 0.5, job="b")])


def test_chunk_costs_are_per_point_and_per_byte_over_all_chunks():
    # given two chunks of different sizes
    chunks = [chunk("a", 0, 1.0, points=200_000, predict=1.0), chunk("a", 1, 2.0, points=100_000, predict=0.8)]
    # when their cost is taken
    cost = ChunkCost.of(chunks)
    # then seconds per point over all their points, bytes per point likewise, the count's median
    assert cost.per_point["predict"] == pytest.approx(1.8 / 300_000)
    assert cost.bytes_per_point == pytest.approx(2 * 9_600_000 / 300_000)
    assert cost.count_s == pytest.approx(0.02)


def test_chunks_run_in_waves_of_the_workers_after_one_cold_start():
    # given 50 chunks of 1.3 s, 20 workers joining at once, a 2 s cold start
    # when the chunk phase is computed; then one cold start and ceil(50 / 20) waves
    assert chunk_phase_seconds(50, 20, 1.3, 2.0) == pytest.approx(2.0 + math.ceil(50 / 20) * 1.3)
    # and more workers than chunks is one wave
    assert chunk_phase_seconds(50, 100, 1.3, 2.0) == pytest.approx(2.0 + 1.3)


def test_a_warm_environment_starts_at_once_and_sqs_scaling_only_delays():
    # given 3 chunks of 1 s on 3 workers, one of them warm (the plan's), a 2 s cold start
    # then the warm one does two chunks while the others start: done when the cold ones end
    assert chunk_phase_seconds(3, 3, 1.0, 2.0, warm=1) == pytest.approx(2.0 + 1.0)
    # and Lambda's SQS scaling (5 at once, then 5 a second) never makes it quicker, nor changes 5 workers or fewer
    waves = chunk_phase_seconds(50, 20, 1.3, 2.0, warm=1)
    assert chunk_phase_seconds(50, 20, 1.3, 2.0, warm=1, first=5, per_s=5.0) >= waves
    assert chunk_phase_seconds(50, 5, 1.3, 2.0, first=5, per_s=5.0) == chunk_phase_seconds(50, 5, 1.3, 2.0)


def test_the_stitch_grows_with_rounds_of_copies_not_with_parts_within_a_round():
    # given the assumed rates, the finisher's copies at a time
    assumed = Assumptions()
    at_once = assumed.copy_threads
    # then 1 and copy_threads parts take one round (a 10^7-point job's 50 parts among them); one more takes two
    assert at_once >= 50
    assert stitch_seconds(1, 10e6, assumed) == stitch_seconds(at_once, 10e6, assumed)
    assert stitch_seconds(at_once + 1, 10e6, assumed) - stitch_seconds(at_once, 10e6, assumed) == pytest.approx(
        assumed.s3_request_s + 10e6 / assumed.copy_bytes_per_s
    )


def test_the_projection_is_the_sum_of_its_terms_and_more_workers_never_slower():
    # given a measured chunk cost
    cost = ChunkCost.of([chunk("a", i, float(i)) for i in range(5)])
    assumed = Assumptions()
    # when projected for 10^7 points in npy and parquet
    at_20 = project(10_000_000, "npy", cost, 200_000, 20, 0.1, 0.2, assumed)
    at_100 = project(10_000_000, "npy", cost, 200_000, 100, 0.1, 0.2, assumed)
    parquet = project(10_000_000, "parquet", cost, 200_000, 20, 0.1, 0.2, assumed)
    # then the total is its terms, 50 chunks in 3 waves at 20 workers, parquet has no stitch
    terms = ("submit_plan", "plan_cold", "chunks", "hop", "finisher_cold", "stitch")
    assert at_20["total"] == pytest.approx(sum(at_20[name] for name in terms))
    assert (at_20["n_chunks"], at_20["waves"], at_100["waves"]) == (50, 3, 1)
    assert at_100["total"] <= at_20["total"]
    # and more workers cost more (each environment's cold start is billed), never less
    assert at_100["cost"] >= at_20["cost"] > 0
    assert parquet["stitch"] == 0.0
    assert at_20["stitch"] > 0.0
