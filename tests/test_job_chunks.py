"""A job's chunks are sized by the model served, so that each fits the worker's timeout; a chunk that would still
outrun it fails the job with the reason instead of being killed and retried."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from handler.analyses.budget import CostModel, analysis_budget_seconds
from handler.gp.artifact import PackagedArtifact
from handler.gp.model import LazyModel, PosteriorModel
from handler.jobs.backend import WorkMessage
from tests import jobs_harness
from tests.conftest import FEATURES, PARK_POSTERIOR, built_once
from tests.events import lambda_context
from tests.jobs_harness import JobsHarness, start_harness
from tests.large_models import write_synthetic_model

CONFIGURED_CHUNK_POINTS = 200_000  # JOB_CHUNK_POINTS's default: what every chunk held whatever the model
WORKER_TIMEOUT_S = 300.0  # template.yaml's JobWorkerFunction (tests/test_template.py keeps the setting equal)
LARGE = {"exact": {"m": 8_000}, "sparse": {"m": 8_000, "sparse": True}}


@pytest.fixture(scope="module")
def large_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Models of m = 8,000 training (exact) or inducing (sparse) points, the format's largest."""

    def build(folder: Path) -> None:
        for size in LARGE.values():
            write_synthetic_model(folder, **size)  # type: ignore[arg-type]

    folder = built_once(tmp_path_factory, "job-chunk-models", build)
    return {name: write_synthetic_model(folder, **size) for name, size in LARGE.items()}  # type: ignore[arg-type]


def harness(monkeypatch: pytest.MonkeyPatch, path: Path) -> JobsHarness:
    jobs = start_harness(monkeypatch, LazyModel(PackagedArtifact(path)), chunk_points=CONFIGURED_CHUNK_POINTS)
    assert jobs.backend.chunk_points == CONFIGURED_CHUNK_POINTS
    return jobs


def planned_chunks(jobs: JobsHarness, n: int) -> tuple[dict, list[WorkMessage]]:
    """Submit a Sobol' design of n points, run its plan only, and take the chunk messages it queued."""
    status, _, submitted = jobs.call("POST", "/jobs", {"design": {"method": "sobol", "n": n, "seed": 5}})
    assert status == 202, submitted
    assert jobs.sources[0].poll() == 1  # the plan, alone on the work queue
    status, _, planned = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert status == 200
    assert planned["status"] == "RUNNING", planned
    sqs, url, messages = jobs.sources[0].sqs, jobs.resources.work_queue_url, []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600).get("Messages"):
        messages += [WorkMessage.parse(message["Body"]) for message in batch]
    return planned, sorted(messages, key=lambda message: message.index)


@pytest.mark.parametrize("kind", LARGE)
def test_a_job_on_an_m_8000_model_is_planned_in_chunks_that_fit_the_workers_budget(
    aws, monkeypatch: pytest.MonkeyPatch, large_models: dict[str, Path], kind: str
):
    # Given the worker's chunks configured at 200,000 points, and a model of m = 8,000 (1-2 ms a point)
    jobs = harness(monkeypatch, large_models[kind])
    served = jobs_harness.app.model.get().model
    assert isinstance(served, PosteriorModel)
    cost = CostModel.of(served.posterior, 0)
    n = 150_000
    # When a job of n points is planned
    planned, chunks = planned_chunks(jobs, n)
    # Then every chunk is estimated to fit the budget an analysis has in the worker's timeout (a third, less 1 s)
    sizes = [message.stop - message.start for message in chunks]
    assert all(message.kind == "chunk" for message in chunks)
    assert cost.predict(max(sizes)) <= analysis_budget_seconds(WORKER_TIMEOUT_S), sizes
    # And the chunks cover every point once, in order, all the job's one recorded size but the last
    assert [message.index for message in chunks] == list(range(len(chunks)))
    assert [(message.start, message.stop) for message in chunks] == list(
        zip([0, *(message.stop for message in chunks[:-1])], [message.stop for message in chunks], strict=True)
    )
    assert chunks[0].start == 0
    assert chunks[-1].stop == n
    assert set(sizes[:-1]) == {sizes[0]}
    assert 0 < sizes[-1] <= sizes[0]
    assert planned["progress"]["chunks"] == len(chunks) > 1
    assert jobs.backend.store.get(planned["id"]).chunk_points == sizes[0]
    # And GET /model reports that size
    status, _, model = jobs.call("GET", "/model")
    assert status == 200
    assert model["limits"]["job_chunk_points"] == sizes[0]


def test_an_inline_job_on_an_m_8000_model_is_chunked_by_the_same_size(
    aws, monkeypatch: pytest.MonkeyPatch, large_models: dict[str, Path]
):
    # Given a sparse model of m = 8,000, whose chunks hold fewer than the configured 200,000 points
    jobs = harness(monkeypatch, large_models["sparse"])
    _, _, model = jobs.call("GET", "/model")
    size = model["limits"]["job_chunk_points"]
    # When a job of inline points is submitted
    points = np.random.default_rng(2).uniform(0.1, 0.9, (10_000, 4))
    body = {"points": {name: points[:, i].tolist() for i, name in enumerate(FEATURES)}}
    status, _, submitted = jobs.call("POST", "/jobs", body)
    assert status == 202, submitted
    # Then its record holds the model's chunk size, as a planned job's does
    assert jobs.backend.store.get(submitted["id"]).chunk_points == size < CONFIGURED_CHUNK_POINTS


def test_the_park_model_keeps_200000_point_chunks(aws, monkeypatch: pytest.MonkeyPatch):
    # Given the Park example (m small: a chunk of 200,000 points takes about a second)
    jobs = harness(monkeypatch, PARK_POSTERIOR)
    # When a job of 250,000 points is planned
    _, chunks = planned_chunks(jobs, 250_000)
    # Then it has the configured chunks, and GET /model says so
    assert [(message.start, message.stop) for message in chunks] == [(0, 200_000), (200_000, 250_000)]
    assert jobs.call("GET", "/model")[2]["limits"]["job_chunk_points"] == CONFIGURED_CHUNK_POINTS


def test_a_chunk_that_would_outrun_the_worker_fails_its_job_with_the_reason_and_is_not_retried(
    aws, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path
):
    # Given a worker whose remaining time is below the reserve a chunk's slice needs
    jobs = start_harness(monkeypatch, LazyModel(PackagedArtifact(tiny_model_path)), chunk_points=1_000)

    def short_of_time(name: str = "PredictFunction"):
        context = lambda_context(name)
        context.get_remaining_time_in_millis = lambda: 500
        return context

    monkeypatch.setattr(jobs_harness, "lambda_context", short_of_time)
    attempts = []
    predict = jobs_harness.worker.predict_chunk
    monkeypatch.setattr(jobs_harness.worker, "predict_chunk", lambda *args: attempts.append(1) or predict(*args))
    # When a job of 2,500 points runs
    points = np.random.default_rng(4).uniform(0.1, 0.9, (2_500, 4))
    body = {"points": {name: points[:, i].tolist() for i, name in enumerate(FEATURES)}}
    status, _, submitted = jobs.call("POST", "/jobs", body)
    assert status == 202, submitted
    jobs.run()
    # Then the job failed, saying which chunk ran out of time and what to do
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "FAILED", done
    assert "would outrun the worker's timeout after 0 of its 1000 points" in done["error"], done["error"]
    assert "JOB_CHUNK_POINTS" in done["error"]
    # And no chunk was tried again: each of the three was tried once at most, none predicted
    assert len(attempts) <= 3
    assert jobs.backend.store.get(submitted["id"]).chunks_done == 0
