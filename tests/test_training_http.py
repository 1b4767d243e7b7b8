"""Training over HTTP against the local server (`make serve`): a model trained from inline rows and another from a
CSV PUT to its presigned URL, each fitted by the training function the server polls the training queue for, then
served by the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.simulators import SIMULATORS
from tests.conftest import serving

ADMIN = {"x-api-key": "adm1n"}
BRANIN = SIMULATORS["Branin"]
BOUNDS = {name: list(pair) for name, pair in BRANIN.bounds.items()}
QUICK = {"kernel": "Matern52", "restarts": 1, "promote": "always"}  # a fit of well under a second


@pytest.fixture(scope="module")
def server(tiny_posterior_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tiny_posterior_path, tmp_path_factory.mktemp("training"), "--admin-api-key", ADMIN["x-api-key"]) as (
        base_url,
        _,
    ):
        yield base_url


def finished(base_url: str, link: str, timeout_s: float = 60.0) -> dict:
    """The job once it has finished, polled as a client would."""
    started = time.monotonic()
    while True:
        answer = httpx.get(f"{base_url}{link}", headers=ADMIN, timeout=30)
        assert answer.status_code == 200, answer.text
        job = answer.json()
        if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return job
        assert time.monotonic() - started < timeout_s, job
        time.sleep(0.2)


def test_a_model_is_trained_over_http_inline_and_from_an_upload_then_served(server: str):
    X = BRANIN.design(30, seed=2)
    y = BRANIN.function(X).ravel()
    rows = [{"x1": float(a), "x2": float(b), "y": float(v)} for (a, b), v in zip(X, y, strict=True)]
    body = {"features": ["x1", "x2"], "outputs": ["y"], "bounds": BOUNDS, **QUICK}
    # given a caller without the admin key: refused, naming the permission
    refused = httpx.post(f"{server}/models/branin/train", json={**body, "data": {"rows": rows}}, timeout=30)
    assert (refused.status_code, refused.json()["details"][0]["field"]) == (403, "permission")
    # when the admin trains from inline rows
    queued = httpx.post(
        f"{server}/models/branin/train", json={**body, "data": {"rows": rows}}, headers=ADMIN, timeout=30
    )
    assert queued.status_code == 202, queued.text
    job = finished(server, queued.json()["links"]["self"])
    # then the training function fitted and published it, and the API serves it
    assert (job["status"], job["version_state"], job["promoted"]) == ("SUCCEEDED", "READY", True), job
    predicted = httpx.post(f"{server}/models/branin/predict", json={"x1": 1.0, "x2": 4.0}, timeout=30)
    assert predicted.status_code == 200, predicted.text
    assert predicted.headers["x-model-version"] == "branin/1"
    # when another model's data is uploaded as CSV to the presigned URL and started
    created = httpx.post(f"{server}/models/uploaded/train", json={**body, "data": {"upload": "csv"}}, headers=ADMIN)
    assert created.status_code == 202, created.text
    csv = "x1,x2,y\n" + "\n".join(f"{r['x1']!r},{r['x2']!r},{r['y']!r}" for r in rows)
    assert httpx.put(created.json()["upload_url"], content=csv.encode(), timeout=30).status_code == 200
    started = httpx.post(f"{server}{created.json()['start']}", headers=ADMIN, timeout=30)
    assert started.status_code == 202, started.text
    # then it trains too, on the 30 rows uploaded
    job = finished(server, created.json()["links"]["self"])
    assert (job["status"], job["dataset"]["rows"], job["version_state"]) == ("SUCCEEDED", 30, "READY"), job
