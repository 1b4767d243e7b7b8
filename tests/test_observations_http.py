"""New simulations over HTTP against the local server (`make serve`): the Park model published with its training
data, 20 new simulations posted, a conditioned version answered and served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from scripts.train_model import park1991
from tests.conftest import serving
from tests.test_registry_http import ADMIN, publish, wait_for_version

FEATURES = ["x1", "x2", "x3", "x4"]


@pytest.fixture(scope="module")
def server(tiny_posterior_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("observations")
    with serving(tiny_posterior_path, folder, "--admin-api-key", ADMIN["x-api-key"]) as (base_url, _):
        yield base_url


def test_twenty_new_simulations_over_http_make_a_conditioned_version_that_live_serves(
    server: str, tiny_posterior_path: Path
):
    # given the Park model published with its training points, live on version 1
    assert publish(server, "park", tiny_posterior_path)["version"] == 1
    moved = httpx.put(f"{server}/models/park/aliases/live", json={"version": 1}, headers=ADMIN, timeout=60)
    assert moved.status_code == 200, moved.text
    # when 20 new simulations are posted
    X = np.random.default_rng(5).uniform(0.05, 1, size=(20, 4))
    rows = [
        {**dict(zip(FEATURES, map(float, x), strict=True)), "y": float(y)} for x, y in zip(X, park1991(X), strict=True)
    ]
    answer = httpx.post(f"{server}/models/park/observations", json={"data": {"rows": rows}}, headers=ADMIN, timeout=60)
    # then a conditioned version 2 is made on the 30 published rows and the 20 new ones, with the surprise of 1
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["rows_before"], body["rows_added"]) == (30, 20)
    assert body["version"]["version"] == 2
    assert body["version"]["state"] == "READY"
    assert body["version"]["origin"]["how"] == "conditioned"
    assert body["surprise"]["version"] == "park/1"
    assert body["surprise"]["y"]["n"] == 20
    assert body["promotion"]["promoted"] is True
    # and live serves it
    point = dict(zip(FEATURES, map(float, X[0]), strict=True))
    wait_for_version(server, "/models/park/predict", point, "park/2")
