"""Jobs on a registry model: a job is computed entirely by the version its submission resolved, even when the alias
moves before its chunks run; a job on the packaged model is as it always was."""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from handler.gp.artifact import PackagedArtifact
from handler.gp.model import LazyModel, load_model
from handler.jobs import worker
from handler.jobs.backend import Job
from handler.registry.names import ModelRef
from tests.conftest import FEATURES, PARK_POSTERIOR
from tests.jobs_harness import JobsHarness, start_harness
from tests.registry_harness import ADMIN_KEY_ID, Registry, start_registry

N_POINTS = 1_500  # two chunks of 1,000


@pytest.fixture
def jobs(aws, monkeypatch: pytest.MonkeyPatch, tiny_posterior_path: Path) -> JobsHarness:
    return start_harness(monkeypatch, LazyModel(PackagedArtifact(tiny_posterior_path)), chunk_points=1_000)


@pytest.fixture
def registry(jobs: JobsHarness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_posterior_path: Path) -> Registry:
    """`park` version 1 (the tiny model) and version 2 (the Park example): the same features, other predictions."""
    registry = start_registry(monkeypatch, tmp_path)
    for path in (tiny_posterior_path, PARK_POSTERIOR):
        status, checked = registry.publish("park", path)
        assert (status, checked["state"]) == (200, "READY"), checked
    assert registry.call("PUT", "/models/park/aliases/live", {"version": 1}, ADMIN_KEY_ID)[0] == 200
    return registry


def means_of(path: Path, points: np.ndarray) -> np.ndarray:
    mean, _ = load_model(PackagedArtifact(path)).model.predict(points)
    return mean[:, 0]


def points_of(results: np.ndarray) -> np.ndarray:
    return np.column_stack([results[name] for name in FEATURES])


def submit(jobs: JobsHarness, path: str, source: str, points: np.ndarray) -> dict:
    """A job of `source` (inline, design, upload) at `path`, with its upload PUT (not yet started)."""
    if source == "inline":
        body: dict = {"points": {name: points[:, i].tolist() for i, name in enumerate(FEATURES)}}
    elif source == "design":
        body = {"design": {"method": "sobol", "n": N_POINTS, "seed": 5}}
    else:
        body = {"upload": {"format": "npy"}}
    status, headers, submitted = jobs.call("POST", path, body, query={"format": "npy"})
    assert status == 202, submitted
    assert headers["Location"] == f"/prod/jobs/{submitted['id']}"  # read at the root, whatever model it runs on
    if source == "upload":
        buffer = io.BytesIO()
        np.save(buffer, points)
        bucket, _, key = unquote(urlparse(submitted["upload"]["url"]).path).lstrip("/").partition("/")
        jobs.backend.storage.s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return submitted


@pytest.mark.parametrize("source", ["inline", "design", "upload"])
@pytest.mark.parametrize("path", ["/models/park/jobs", "/models/park@live/jobs"])
def test_a_job_is_computed_by_the_version_its_submission_resolved_when_the_alias_moves_before_it_runs(
    jobs: JobsHarness, registry: Registry, tiny_posterior_path: Path, source: str, path: str
):
    # given a job submitted to park's `live` alias while it serves version 1
    points = np.random.default_rng(8).uniform(0, 1, (N_POINTS, len(FEATURES)))
    submitted = submit(jobs, path, source, points)
    assert submitted["model"] == {"name": "park", "version": "1", "source": "registry"}
    # when `live` moves to version 2 before the job is started (an upload) and before its plan and chunks run
    assert registry.call("PUT", "/models/park/aliases/live", {"version": 2}, ADMIN_KEY_ID)[0] == 200
    if source == "upload":
        status, _, started = jobs.call("POST", f"/jobs/{submitted['id']}/start")
        assert status == 202, started
        assert started["model"] == submitted["model"]
    jobs.run()
    # then the job succeeded, its record still names version 1, and every prediction is version 1's
    status, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert (status, done["status"]) == (200, "SUCCEEDED"), done
    assert done["model"] == {"name": "park", "version": "1", "source": "registry"}
    results = jobs.results(done)
    computed = points_of(results)
    assert len(computed) == N_POINTS
    version_1, version_2 = means_of(tiny_posterior_path, computed), means_of(PARK_POSTERIOR, computed)
    # the same posterior code on the same points: equal to rounding, relative to the outputs' scale
    tolerance = 1e-9 * np.abs(version_1).max()
    np.testing.assert_allclose(results["y_mean"], version_1, rtol=0, atol=tolerance)
    assert np.abs(version_2 - version_1).max() > 1e3 * tolerance  # the versions differ: the check can fail
    # and the worker, asked for the alias now, would have had version 2
    assert worker.resolver.resolve(ModelRef("park")).version == "2"


def test_a_job_on_a_pinned_version_records_it_and_answers_with_its_version(jobs: JobsHarness, registry: Registry):
    # given version 2 addressed by number while `live` is on version 1
    points = np.random.default_rng(9).uniform(0, 1, (10, len(FEATURES)))
    body = {"points": [dict(zip(FEATURES, row, strict=True)) for row in points.tolist()]}
    # when a job is submitted to it
    status, headers, submitted = jobs.call("POST", "/models/park/versions/2/jobs", body, query={"format": "npy"})
    # then the record and the answer's header name version 2, and it computes with version 2
    assert status == 202, submitted
    assert headers["X-Model-Version"] == "park/2"
    assert submitted["model"] == {"name": "park", "version": "2", "source": "registry"}
    jobs.run()
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "SUCCEEDED", done
    want = means_of(PARK_POSTERIOR, points)
    np.testing.assert_allclose(jobs.results(done)["y_mean"], want, rtol=0, atol=1e-9 * np.abs(want).max())


def test_a_job_whose_version_is_deleted_before_it_runs_fails_naming_it_and_no_other_version_computes_it(
    jobs: JobsHarness, registry: Registry
):
    # given a design job on version 2, which no alias holds
    status, _, submitted = jobs.call("POST", "/models/park/versions/2/jobs", {"design": {"method": "lhs", "n": 50}})
    assert status == 202, submitted
    # when version 2 is deleted before the job's plan runs
    status, _, deleted = registry.call("DELETE", "/models/park/versions/2", None, ADMIN_KEY_ID)
    assert status == 200, deleted
    jobs.run()
    # then the job fails at once (not after retries), saying which version is gone
    _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
    assert done["status"] == "FAILED"
    assert "park version 2 can no longer serve" in done["error"]
    assert "DELETED" in done["error"]


def test_a_job_on_the_packaged_model_records_the_packaged_manifest_and_runs_as_before(
    jobs: JobsHarness, registry: Registry, tiny_posterior_path: Path
):
    # given the registry holding a model, and the packaged model at the root
    _, _, manifest = jobs.call("GET", "/model")
    points = np.random.default_rng(10).uniform(0, 1, (N_POINTS, len(FEATURES)))
    # when a job is submitted at the root, and one at the packaged model's own name
    root = submit(jobs, "/jobs", "inline", points)
    by_name = submit(jobs, f"/models/{manifest['name']}/jobs", "inline", points)
    jobs.run()
    # then both name the packaged manifest's name and version, and compute with it
    for submitted in (root, by_name):
        assert submitted["model"] == {"name": manifest["name"], "version": manifest["version"], "source": "packaged"}
        _, _, done = jobs.call("GET", f"/jobs/{submitted['id']}")
        assert done["status"] == "SUCCEEDED", done
        want = means_of(tiny_posterior_path, points)
        np.testing.assert_allclose(jobs.results(done)["y_mean"], want, rtol=0, atol=1e-9 * np.abs(want).max())


def test_a_job_record_from_before_the_registry_runs_on_the_packaged_model(jobs: JobsHarness):
    # given a record as jobs were stored before they named their model's source (its name and version only)
    _, _, submitted = jobs.call("POST", "/jobs", {"design": {"method": "lhs", "n": 10}})
    item = jobs.backend.store.table.get_item(Key={"id": f"job#{submitted['id']}"})["Item"]
    spec = json.loads(item["spec"])
    spec["model"].pop("source")
    record = Job.from_item({**item, "spec": json.dumps(spec)})
    # when the worker picks the model that computes it, then it is the packaged one
    assert worker.model_of(record) is worker.model


def test_an_idempotency_key_reused_at_another_model_is_refused_and_a_retry_at_the_same_address_is_the_same_job(
    jobs: JobsHarness, registry: Registry
):
    # given a job submitted to park's live alias with a key
    body = {"design": {"method": "lhs", "n": 20, "seed": 1}}
    key = {"Idempotency-Key": "run-42"}
    status, _, first = jobs.call("POST", "/models/park/jobs", body, headers=key)
    assert status == 202, first
    # when the same request is retried after the alias moved, and the same key and body go to another model
    assert registry.call("PUT", "/models/park/aliases/live", {"version": 2}, ADMIN_KEY_ID)[0] == 200
    retry = jobs.call("POST", "/models/park/jobs", body, headers=key)
    other = jobs.call("POST", "/jobs", body, headers=key)
    # then the retry is the first job (on the version it resolved), and the other model's request is refused
    assert (retry[0], retry[2]["id"], retry[2]["model"]["version"]) == (202, first["id"], "1")
    assert (other[0], other[2]["details"][0]["field"]) == (422, "Idempotency-Key")
