"""Results written by the chunks in the final format and stitched by the finisher: the same bytes as one writer
wrote, a Parquet dataset users' tools read, and the faults of at-least-once delivery, cancels and S3 errors."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

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


@pytest.mark.parametrize("value", ["-1", "x", "4", "1.5", "99999999", "\u0661"])
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


def test_inline_points_in_any_format_give_the_rows_in_order(jobs: JobsHarness):
    rng = np.random.default_rng(4)
    points = rng.uniform(size=(1_500, 4))
    body = {"points": [dict(zip(FEATURES, row, strict=True)) for row in points.tolist()]}
    tables = {fmt: jobs.results(run_job(jobs, fmt, body)) for fmt in ("csv", "npy", "parquet")}
    for table in tables.values():
        np.testing.assert_array_equal(np.column_stack([table[name] for name in FEATURES]), points)
    np.testing.assert_array_equal(tables["parquet"]["y_mean"], tables["npy"]["y_mean"])
