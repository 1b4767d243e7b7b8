"""Results written by the chunks in the final format and stitched by the finisher: the same bytes as one writer
wrote, a Parquet dataset users' tools read, and the faults of at-least-once delivery, cancels and S3 errors."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from handler import app
from handler.gp.artifact import PackagedArtifact
from handler.gp.model import LazyModel
from handler.jobs import backend as job_backend
from handler.jobs.backend import JobStorage, npy_header
from tests.conftest import FEATURES
from tests.jobs_harness import JobsHarness, start_harness

DESIGN = {"method": "sobol", "n": 2_500, "seed": 3}  # three chunks of 1,000, 1,000 and 500


@pytest.fixture
def jobs(aws, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path) -> JobsHarness:
    return start_harness(monkeypatch, LazyModel(PackagedArtifact(tiny_model_path)), chunk_points=1_000)


def single_writer(fmt: str, sink: IO[bytes], n_points: int, columns: list[str], batches: Iterable[np.ndarray]) -> int:
    """The finisher's assembly before results were stitched (handler/jobs/results.py's write_results, as it was):
    the reference the stitched files must equal byte for byte."""
    written = 0
    if fmt == "npy":
        sink.write(npy_header((n_points,), np.dtype([(name, "<f8") for name in columns])))
        for batch in batches:
            sink.write(np.ascontiguousarray(batch, dtype="<f8").tobytes())
            written += len(batch)
        return written
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    schema = pa.schema([(name, pa.float64()) for name in columns])
    with pa_csv.CSVWriter(sink, schema) as writer:
        for batch in batches:
            writer.write_table(pa.Table.from_arrays([pa.array(column) for column in batch.T], schema=schema))
            written += len(batch)
    return written


def run_job(jobs: JobsHarness, fmt: str, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any]:
    status, _, submitted = jobs.call("POST", "/jobs", body or {"design": DESIGN}, query={"format": fmt, **query})
    assert status == 202, submitted
    jobs.run()
    status, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "SUCCEEDED", done
    return done


def as_rows(table: np.ndarray) -> np.ndarray:
    return np.column_stack([table[name] for name in table.dtype.names])


@pytest.mark.parametrize("include", ["", "std,interval"])
def test_stitched_csv_and_npy_are_byte_identical_to_what_one_writer_wrote(jobs: JobsHarness, include: str):
    # Given the same design run as an npy job and as a csv job (three chunks each, stitched)
    query = {"include": include} if include else {}
    npy_job, csv_job = run_job(jobs, "npy", **query), run_job(jobs, "csv", **query)
    npy_bytes = jobs.download(npy_job["results"]["url"])
    csv_bytes = jobs.download(csv_job["results"]["url"])
    # When the rows are written again by the single writer, in batches unlike the chunks
    rows = as_rows(np.load(io.BytesIO(npy_bytes), allow_pickle=False))
    columns = npy_job["results"]["columns"]
    expected = {}
    for fmt in ("npy", "csv"):
        sink = io.BytesIO()
        assert single_writer(fmt, sink, len(rows), columns, [rows[:700], rows[700:1900], rows[1900:]]) == 2_500
        expected[fmt] = sink.getvalue()
    # Then the stitched files are those bytes exactly
    assert npy_bytes == expected["npy"]
    assert csv_bytes == expected["csv"]
    assert npy_job["results"]["rows"] == csv_job["results"]["rows"] == 2_500


def test_a_parquet_job_is_a_dataset_of_parts_that_pyarrow_and_duckdb_read_as_the_results(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    import duckdb
    import pyarrow.dataset as ds

    # Given parts listed two at a time
    monkeypatch.setattr(job_backend, "LISTED_PARTS", 2)
    # When a design runs as Parquet and as npy
    parquet_job, npy_job = run_job(jobs, "parquet"), run_job(jobs, "npy")
    results = parquet_job["results"]
    # Then the answer lists the first two parts, in order, with their rows, and where the others are
    assert (results["layout"], results["parts_total"], results["rows"]) == ("dataset", 3, 2_500)
    assert [(p["index"], p["first_row"], p["rows"]) for p in results["parts"]] == [(0, 0, 1_000), (1, 1_000, 1_000)]
    assert results["parts_next"] == f"/prod/jobs/{parquet_job['id']}?parts_from=2"
    code, _, page = jobs.call("GET", f"/jobs/{parquet_job['id']}", query={"parts_from": "2"})
    assert code == 200
    assert [(p["index"], p["first_row"], p["rows"]) for p in page["results"]["parts"]] == [(2, 2_000, 500)]
    assert "parts_next" not in page["results"]
    # And the parts, saved as a folder, are read whole by pyarrow's datasets and by DuckDB, equal to the npy results
    folder = tmp_path / "results"
    folder.mkdir()
    for part in [*results["parts"], *page["results"]["parts"]]:
        (folder / f"part-{part['index']:06d}.parquet").write_bytes(jobs.download(part["url"]))
    expected = np.load(io.BytesIO(jobs.download(npy_job["results"]["url"])), allow_pickle=False)
    table = ds.dataset(folder, format="parquet").to_table()
    assert table.column_names == list(expected.dtype.names)
    for name in expected.dtype.names:
        np.testing.assert_array_equal(table.column(name).to_numpy(), expected[name])
    counted = duckdb.sql(f"SELECT count(*), sum(y_mean) FROM read_parquet('{folder}/*.parquet')").fetchall()[0]
    assert counted[0] == 2_500
    assert counted[1] == pytest.approx(float(np.sum(expected["y_mean"])), rel=1e-12)


@pytest.mark.parametrize("value", ["-1", "x", "4", "1.5", "99999999", "\u0661", "0" * 5_000, "9" * 5_000])
def test_a_bad_parts_from_is_refused_naming_it(jobs: JobsHarness, value: str):
    done = run_job(jobs, "parquet")
    code, _, answer = jobs.call("GET", f"/jobs/{done['id']}", query={"parts_from": value})
    assert code == 422, answer
    assert answer["details"][0]["field"] == "parts_from"


def test_parts_from_on_a_job_of_one_file_is_refused_saying_why(jobs: JobsHarness):
    done = run_job(jobs, "csv")
    code, _, answer = jobs.call("GET", f"/jobs/{done['id']}", query={"parts_from": "1"})
    assert code == 422, answer
    assert answer["details"][0]["field"] == "parts_from"
    assert "only a Parquet job's results have parts" in answer["details"][0]["message"]


def succeeded_parquet_job(jobs: JobsHarness, n_points: int, chunk_points: int) -> str:
    """A SUCCEEDED Parquet job's record of `n_points` in chunks of `chunk_points` (its parts are not read here)."""
    import dataclasses

    job = job_backend.new_job(
        jobs.backend, "key-a", app.model.manifest(), "design", job_backend.OutputOptions(format="parquet")
    )
    n_chunks = -(-n_points // chunk_points)
    jobs.backend.store.create(
        dataclasses.replace(
            job, status="SUCCEEDED", n_points=n_points, chunk_points=chunk_points, n_chunks=n_chunks, input_offset=0
        )
    )
    return job.id


def test_the_last_page_of_a_job_of_millions_of_parts_is_listed_at_the_cost_of_a_page(jobs: JobsHarness):
    import tracemalloc

    # Given a Parquet job of 2,000,000 one-point chunks (JOB_CHUNK_POINTS=1): part numbers of 7 digits
    job_id = succeeded_parquet_job(jobs, 2_000_000, 1)
    _, _, first = jobs.call("GET", f"/jobs/{job_id}")
    assert first["results"]["parts_next"] == f"/prod/jobs/{job_id}?parts_from=500"
    # When its last page is asked for
    tracemalloc.start()
    try:
        code, _, page = jobs.call("GET", f"/jobs/{job_id}", query={"parts_from": "1999500"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Then it lists the last 500 parts and no next page, holding about a page's worth (500 URLs of ~1 KB), not
    # two million parts' rows (~200 MB)
    assert code == 200, page
    listed = page["results"]["parts"]
    assert [part["index"] for part in listed] == list(range(1_999_500, 2_000_000))
    assert (listed[-1]["first_row"], listed[-1]["rows"]) == (1_999_999, 1)
    assert "parts_next" not in page["results"]
    assert peak < 32 * 2**20
    # And a part number past the last is still refused, naming the field
    code, _, refused = jobs.call("GET", f"/jobs/{job_id}", query={"parts_from": "2000001"})
    assert (code, refused["details"][0]["field"]) == (422, "parts_from")


@pytest.mark.parametrize("fmt", ["csv", "npy", "parquet"])
def test_a_part_is_encoded_without_a_copy_of_its_bytes(fmt: str):
    import tracemalloc

    from handler.jobs.results import encode_part

    # Given a chunk's rows (20,000 points x 30 columns, 4.8 MB as float64)
    rows = np.random.default_rng(7).normal(size=(20_000, 30))
    columns = [f"c{i}" for i in range(30)]
    encode_part(fmt, 0, 10, columns, rows[:10])  # pyarrow's modules imported before the count
    # When its part is encoded (Python's allocations traced: numpy's and bytes', not pyarrow's own pool)
    tracemalloc.start()
    try:
        part = encode_part(fmt, 0, len(rows), columns, rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Then the part is held once: an npy part is its bytes and no more, a CSV or Parquet part stays in pyarrow's
    # buffer (no bytes object of it)
    size = len(part)
    assert size > rows.nbytes * (0.9 if fmt == "parquet" else 1)
    assert peak < (1.1 * size if fmt == "npy" else 0.25 * size), (peak, size)
    # And it reads back as the rows
    if fmt == "npy":
        np.testing.assert_array_equal(as_rows(np.load(io.BytesIO(part), allow_pickle=False)), rows)
    else:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        read = pa_csv.read_csv(io.BytesIO(part)) if fmt == "csv" else pq.read_table(io.BytesIO(part))
        np.testing.assert_array_equal(np.column_stack([read.column(c).to_numpy() for c in columns]), rows)


def test_a_design_job_writes_no_points_its_chunks_generate_them(jobs: JobsHarness):
    done = run_job(jobs, "npy")
    s3, bucket = jobs.backend.storage.s3, jobs.backend.storage.bucket
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{done['id']}/").get("Contents")]
    # only the stitched results remain: no input.npy, and the parts are deleted once stitched
    assert keys == [f"jobs/{done['id']}/results.npy"]


def count_part_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    written: list[int] = []
    real = JobStorage.put_part

    def put_part(self: JobStorage, job_id: str, index: int, fmt: str, body: bytes) -> None:
        written.append(index)
        real(self, job_id, index, fmt, body)

    monkeypatch.setattr(JobStorage, "put_part", put_part)
    return written


def test_a_chunk_delivered_twice_writes_its_part_once_and_counts_once(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch
):
    import boto3

    # Given a planned job whose chunk messages are each on the queue twice (at-least-once delivery)
    written = count_part_writes(monkeypatch)
    _, _, submitted = jobs.call("POST", "/jobs", {"design": DESIGN}, query={"format": "csv"})
    assert jobs.sources[0].poll() == 1  # the plan
    sqs, url = boto3.client("sqs", region_name="us-east-1"), jobs.resources.work_queue_url
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]
    assert len(messages) == 3
    for message in messages:
        sqs.send_message(QueueUrl=url, MessageBody=message["Body"])
    # When every copy is processed
    jobs.run()
    # Then each part was written once, each chunk counted once, and the results hold each point once
    assert sorted(written) == [0, 1, 2]
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "SUCCEEDED"
    assert done["progress"]["chunks_done"] == 3
    assert done["progress"]["points_done"] == 2_500
    assert len(jobs.results(done)) == 2_500


def test_a_chunk_that_fails_after_writing_its_part_is_retried_and_counted_once(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch
):
    # Given the count of chunk 1 failing once, after its part was written
    written = count_part_writes(monkeypatch)
    real = job_backend.JobStore.complete_chunk
    failures = {"left": 1}

    def complete_chunk(self: Any, job_id: str, index: int, points: int) -> Any:
        if index == 1 and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("DynamoDB unreachable")
        return real(self, job_id, index, points)

    monkeypatch.setattr(job_backend.JobStore, "complete_chunk", complete_chunk)
    # When the job runs (the worker reports the message failed; SQS delivers it again)
    done = run_job(jobs, "npy")
    # Then the part was written again by the retry, counted once, and the results are whole and in order
    assert sorted(written) == [0, 1, 1, 2]
    assert done["progress"]["chunks_done"] == 3
    assert done["progress"]["points_done"] == 2_500
    reference = run_job(jobs, "npy")
    assert jobs.download(done["results"]["url"]) == jobs.download(reference["results"]["url"])


def test_a_job_cancelled_while_its_results_are_stitched_keeps_no_results(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch
):
    from handler.jobs import finisher, stitching

    # Given a job cancelled by its caller while the finisher copies its parts
    real_stitch = stitching.stitch
    cancelled = {}

    def stitch(s3: Any, bucket: str, key: str, sources: Any, **kwargs: Any) -> int:
        job_id = key.split("/")[1]
        cancelled["answer"] = jobs.call("POST", f"/jobs/{job_id}/cancel")
        return real_stitch(s3, bucket, key, sources, **kwargs)

    monkeypatch.setattr(finisher, "stitch", stitch)
    _status, _, submitted = jobs.call("POST", "/jobs", {"design": DESIGN}, query={"format": "csv"})
    # When the queues run
    jobs.run()
    # Then the cancel was accepted, the job is FAILED as cancelled, and no results object or open upload is left
    assert cancelled["answer"][0] == 200
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert (done["status"], done["error"]) == ("FAILED", "cancelled by the caller")
    s3, bucket = jobs.backend.storage.s3, jobs.backend.storage.bucket
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{submitted['id']}/results.csv")
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_a_stitch_whose_success_cannot_be_recorded_is_retried_within_seconds_keeping_its_parts_till_then(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch
):
    # Given DynamoDB failing the finisher's first SUCCEEDED update, after the parts were stitched
    real = job_backend.JobStore.succeed
    seen: dict[str, Any] = {}

    def succeed(self: Any, job_id: str) -> Any:
        if "parts_at_failure" not in seen:
            seen["parts_at_failure"] = sorted(jobs.backend.storage.list_parts(job_id, "npy"))
            raise ConnectionError("DynamoDB unreachable")
        return real(self, job_id)

    monkeypatch.setattr(job_backend.JobStore, "succeed", succeed)
    _, _, submitted = jobs.call("POST", "/jobs", {"design": DESIGN}, query={"format": "npy"})
    # When the queues run for less than the results queue's visibility timeout (60 s here, 90 minutes deployed)
    jobs.run(timeout_s=30)
    # Then the assembly was retried meanwhile and the job SUCCEEDED, its parts were there until then, and the
    # results are whole
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "SUCCEEDED", done
    assert seen["parts_at_failure"] == [0, 1, 2]
    reference = run_job(jobs, "npy")
    assert jobs.download(done["results"]["url"]) == jobs.download(reference["results"]["url"])


@pytest.mark.parametrize(("include", "columns"), [("", 6), ("std,interval", 9)])
def test_a_chunk_of_wider_results_holds_fewer_points_so_its_part_fits_the_workers_memory(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch, include: str, columns: int
):
    from handler.jobs import worker

    # Given chunks of at most 4,500 result values (deployed: 2*10^7, a CSV part of ~620 MB to encode) and of
    # JOB_CHUNK_POINTS = 1,000
    monkeypatch.setattr(worker, "MAX_CHUNK_VALUES", 4_500)
    # When a design of 2,500 points runs with 6 or 9 columns of results
    done = run_job(jobs, "csv", **({"include": include} if include else {}))
    # Then its chunks hold 4,500 / columns points (750 or 500), and the results are every point, in order
    assert len(done["results"]["columns"]) == columns
    assert done["progress"]["chunks"] == -(-2_500 // (4_500 // columns))
    table = jobs.results(done)
    reference = jobs.results(run_job(jobs, "npy", **({"include": include} if include else {})))  # the same chunks
    for name in (*FEATURES, "y_mean"):
        np.testing.assert_array_equal(table[name], reference[name])


def test_an_npy_part_cut_short_fails_the_job_rather_than_stitching_an_unreadable_file(
    jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch
):
    # Given chunk 1's part stored one row short (a part of other rows than its chunk's)
    real = JobStorage.put_part

    def put_part(self: JobStorage, job_id: str, index: int, fmt: str, body: Any) -> None:
        real(self, job_id, index, fmt, bytes(body)[: -8 * 6] if index == 1 else body)

    monkeypatch.setattr(JobStorage, "put_part", put_part)
    # When the job runs to its end
    _, _, submitted = jobs.call("POST", "/jobs", {"design": DESIGN}, query={"format": "npy"})
    jobs.run()
    # Then it FAILED naming the part and its size, with no results file
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "FAILED", done
    assert "part 1 is 47952 bytes, expected 48000" in done["error"]
    s3, bucket = jobs.backend.storage.s3, jobs.backend.storage.bucket
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{submitted['id']}/results.npy")


def test_inline_points_in_any_format_give_the_rows_in_order(jobs: JobsHarness):
    rng = np.random.default_rng(4)
    points = rng.uniform(size=(1_500, 4))
    body = {"points": [dict(zip(FEATURES, row, strict=True)) for row in points.tolist()]}
    tables = {fmt: jobs.results(run_job(jobs, fmt, body)) for fmt in ("csv", "npy", "parquet")}
    for table in tables.values():
        np.testing.assert_array_equal(np.column_stack([table[name] for name in FEATURES]), points)
    np.testing.assert_array_equal(tables["parquet"]["y_mean"], tables["npy"]["y_mean"])
