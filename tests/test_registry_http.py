"""The model registry over HTTP against the local server (`make serve`): publish through presigned URLs, serve three
versions side by side, split `live` 90/10, roll back, and the packaged model answering at /predict throughout."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from handler.gp.artifact import manifest_path_for
from handler.registry.resolver import ALIAS_TTL_S
from tests.conftest import serving

ADMIN = {"x-api-key": "adm1n"}
PLANT_POINT = {"temperature": 300.0, "pressure": 5.0, "flow_rate": 1.0}
TINY_POINT = {"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}


@pytest.fixture(scope="module")
def server(tiny_posterior_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tiny_posterior_path, tmp_path_factory.mktemp("registry"), "--admin-api-key", ADMIN["x-api-key"]) as (
        base_url,
        _,
    ):
        yield base_url


def publish(base_url: str, name: str, model_path: Path) -> dict:
    """What `make publish-model` does: the manifest to the API, the bytes to the presigned URL, then the check."""
    data = model_path.read_bytes()
    manifest = json.loads(manifest_path_for(model_path).read_text())
    created = httpx.post(
        f"{base_url}/models/{name}/versions", json={"manifest": manifest, "size": len(data)}, headers=ADMIN, timeout=60
    )
    assert created.status_code == 201, created.text
    upload = created.json()["upload"]["model"]
    assert httpx.put(upload["url"], content=data, timeout=60).status_code == 200
    checked = httpx.post(f"{base_url}{created.json()['check']}", headers=ADMIN, timeout=60)
    assert checked.status_code == 200, checked.text
    return checked.json()


def served_version(base_url: str, path: str, body: dict) -> str:
    answer = httpx.post(f"{base_url}{path}", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-model-version"]


def wait_for_version(base_url: str, path: str, body: dict, wanted: str) -> float:
    """Seconds until `path` answers from `wanted`; fails beyond the stated bound (alias reads cached ALIAS_TTL_S)."""
    started = time.monotonic()
    while served_version(base_url, path, body) != wanted:
        assert time.monotonic() - started < ALIAS_TTL_S + 3, f"{path} did not move to {wanted}"
        time.sleep(0.2)
    return time.monotonic() - started


def test_three_versions_side_by_side_a_90_10_split_a_rollback_and_the_packaged_model_throughout(
    server: str, plant_model_path: Path, tiny_posterior_path: Path
):
    packaged = served_version(server, "/predict", TINY_POINT)
    # given two versions of the plant model and one of another model, published as a user would
    assert [publish(server, "plant", plant_model_path)["version"] for _ in range(2)] == [1, 2]
    assert publish(server, "small", tiny_posterior_path)["state"] == "READY"
    # and a reader's key cannot publish
    refused = httpx.post(f"{server}/models/plant/versions", json={}, timeout=60)
    assert refused.status_code == 403
    assert refused.json()["details"][0]["field"] == "permission"
    for name in ("plant", "small"):
        moved = httpx.put(f"{server}/models/{name}/aliases/live", json={"version": 1}, headers=ADMIN, timeout=60)
        assert moved.status_code == 200, moved.text
    # then all three serve side by side, each saying which version answered
    assert served_version(server, "/models/plant/predict", PLANT_POINT) == "plant/1"
    assert served_version(server, "/models/plant/versions/2/predict", PLANT_POINT) == "plant/2"
    assert served_version(server, "/models/small@live/predict", TINY_POINT) == "small/1"
    listed = {m["name"]: m for m in httpx.get(f"{server}/models", timeout=60).json()["models"]}
    assert listed["plant"]["latest_version"] == 2
    assert listed[packaged.split("/")[0]]["source"] == "packaged"

    # when live sends 10% of requests to version 2
    split = {"version": 1, "canary": {"version": 2, "weight": 0.1}, "reason": "try v2"}
    assert httpx.put(f"{server}/models/plant/aliases/live", json=split, headers=ADMIN, timeout=60).status_code == 200
    time.sleep(ALIAS_TTL_S + 0.5)  # every warm environment has read the move
    n = 1000
    with ThreadPoolExecutor(max_workers=4) as pool:  # as concurrent callers would (the server has two environments)
        answers = list(pool.map(lambda _: served_version(server, "/models/plant/predict", PLANT_POINT), range(n)))
    # then 10% of 1,000 answers come from version 2, within four binomial standard deviations
    canary = answers.count("plant/2")
    assert abs(canary - 0.1 * n) <= 4 * np.sqrt(n * 0.1 * 0.9), canary
    assert set(answers) == {"plant/1", "plant/2"}

    # when live moves to 2 alone, then is rolled back
    httpx.put(f"{server}/models/plant/aliases/live", json={"version": 2}, headers=ADMIN, timeout=60)
    assert wait_for_version(server, "/models/plant/predict", PLANT_POINT, "plant/2") <= ALIAS_TTL_S + 3
    rolled = httpx.post(f"{server}/models/plant/aliases/live/rollback", json={"reason": "v2 drifts"}, headers=ADMIN)
    # then it serves what it served before its last move: the 90/10 split, not "version 1"
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["canary"] == {"version": 2, "weight": 0.1}
    history = httpx.get(f"{server}/models/plant", timeout=60).json()["history"]
    assert [(m["action"], m["to"]) for m in history[:2]] == [
        ("rollback", {"version": 1, "canary": {"version": 2, "weight": 0.1}}),
        ("set", {"version": 2}),
    ]
    # and the packaged model answered at /predict throughout
    assert served_version(server, "/predict", TINY_POINT) == packaged
