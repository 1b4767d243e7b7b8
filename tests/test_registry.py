"""The model registry in-process (moto): publish, check, serve side by side, aliases, canary, rollback, history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handler.gp.artifact import PackagedArtifact, manifest_path_for
from handler.gp.model import load_model
from tests.registry_harness import ADMIN_KEY_ID, Registry, start_registry

PLANT_POINT = {"temperature": 300.0, "pressure": 5.0, "flow_rate": 1.0}
TINY_POINT = {"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}


@pytest.fixture
def registry(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model) -> Registry:
    return start_registry(monkeypatch, tmp_path)


def expected_mean(model_path: Path, point: dict) -> np.ndarray:
    loaded = load_model(PackagedArtifact(model_path))
    mean, _ = loaded.model.predict(np.array([[point[f] for f in loaded.manifest.features]]))
    return mean[0]


def test_a_published_version_serves_beside_the_packaged_model_and_says_which_version_answered(
    registry: Registry, plant_model_path: Path, tiny_posterior_path: Path
):
    # given the plant model published twice and the tiny model once, and `live` on plant 1
    assert registry.publish("plant", plant_model_path)[1]["state"] == "READY"
    assert registry.publish("plant", plant_model_path)[1]["version"] == 2
    assert registry.publish("tiny", tiny_posterior_path)[1]["state"] == "READY"
    status, _, alias = registry.call("PUT", "/models/plant/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    assert status == 200, alias
    registry.call("PUT", "/models/tiny/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    # when each is asked for the same kind of prediction
    plant = registry.call("POST", "/models/plant/predict", PLANT_POINT)
    pinned = registry.call("POST", "/models/plant/versions/2/predict", PLANT_POINT)
    tiny = registry.call("POST", "/models/tiny@live/predict", TINY_POINT)
    packaged = registry.call("POST", "/predict", TINY_POINT)
    # then each answers from its version, as the model itself predicts, and says which version it was
    assert (plant[0], pinned[0], tiny[0], packaged[0]) == (200, 200, 200, 200)
    assert plant[1]["X-Model-Version"] == "plant/1" and pinned[1]["X-Model-Version"] == "plant/2"
    assert tiny[1]["X-Model-Version"] == "tiny/1"
    assert packaged[1]["X-Model-Version"].startswith(
        json.loads(manifest_path_for(tiny_posterior_path).read_text())["name"]
    )
    want = expected_mean(plant_model_path, PLANT_POINT)
    scale = np.abs(want).max()
    assert abs(plant[2]["conversion"]["mean"] - want[0]) <= 1e-9 * scale
    assert tiny[2]["mean"] == pytest.approx(float(expected_mean(tiny_posterior_path, TINY_POINT)[0]), rel=1e-9)
    # and the model's own routes answer under its name too
    for route in ("manifest", "training-data"):
        status, headers, _ = registry.call("GET", f"/models/plant/{route}")
        assert status in (200, 404) and headers["X-Model-Version"] == "plant/1"
    status, _, manifest = registry.call("GET", "/models/plant/manifest")
    assert manifest["name"] == "plant" and manifest["features"] == list(PLANT_POINT)


def test_models_are_listed_with_their_versions_aliases_and_history(registry: Registry, plant_model_path: Path):
    registry.publish("plant", plant_model_path)
    registry.publish("plant", plant_model_path)
    registry.call("PUT", "/models/plant/aliases/live", {"version": 1, "reason": "first"}, ADMIN_KEY_ID)
    registry.call("PUT", "/models/plant/aliases/live", {"version": 2, "reason": "better"}, ADMIN_KEY_ID)
    status, _, listing = registry.call("GET", "/models")
    assert status == 200
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["plant"]["latest_version"] == 2 and by_name["plant"]["aliases"]["live"] == {"version": 2}
    assert any(m["source"] == "packaged" for m in listing["models"])
    status, _, plant = registry.call("GET", "/models/plant")
    assert [v["version"] for v in plant["versions"]] == [2, 1]
    assert plant["versions"][0]["state"] == "READY" and plant["versions"][0]["published_by"] == ADMIN_KEY_ID
    assert [(m["from"], m["to"], m["reason"]) for m in plant["history"]] == [
        ({"version": 1}, {"version": 2}, "better"),
        (None, {"version": 1}, "first"),
    ]


def test_rollback_goes_to_what_the_alias_served_before_its_last_move_not_to_the_version_before(
    registry: Registry, tiny_posterior_path: Path
):
    for _ in range(3):
        registry.publish("tiny", tiny_posterior_path)
    for version in (1, 3, 2):
        registry.call("PUT", "/models/tiny/aliases/live", {"version": version}, ADMIN_KEY_ID)
    status, _, rolled = registry.call(
        "POST", "/models/tiny/aliases/live/rollback", {"reason": "v2 drifts"}, ADMIN_KEY_ID
    )
    assert status == 200 and rolled["version"] == 3
    assert registry.call("POST", "/models/tiny/predict", TINY_POINT)[1]["X-Model-Version"] == "tiny/3"
    history = registry.call("GET", "/models/tiny")[2]["history"]
    assert (
        history[0]["action"] == "rollback"
        and history[0]["from"] == {"version": 2}
        and history[0]["to"] == {"version": 3}
    )


def test_a_canary_takes_its_weight_of_the_requests(registry: Registry, tiny_posterior_path: Path, monkeypatch):
    registry.publish("tiny", tiny_posterior_path)
    registry.publish("tiny", tiny_posterior_path)
    body = {"version": 1, "canary": {"version": 2, "weight": 0.1}}
    assert registry.call("PUT", "/models/tiny/aliases/live", body, ADMIN_KEY_ID)[0] == 200
    rng = np.random.default_rng(3)
    monkeypatch.setattr(registry.resolver, "draw", lambda: float(rng.random()))
    n = 1000
    versions = [registry.call("GET", "/models/tiny/manifest")[1]["X-Model-Version"] for _ in range(n)]
    canary = versions.count("tiny/2")
    # within 4 binomial standard deviations of 10%
    assert abs(canary - 0.1 * n) <= 4 * np.sqrt(n * 0.1 * 0.9), canary
    assert set(versions) == {"tiny/1", "tiny/2"}


def test_a_version_whose_artifact_does_not_match_is_failed_and_nothing_serves_it(
    registry: Registry, tiny_posterior_path: Path
):
    status, checked = registry.publish("tiny", tiny_posterior_path, corrupt=True)
    assert status == 422 and checked["state"] == "FAILED"
    assert checked["reason"] == "the artifact does not match its manifest's sha256 or size"
    status, _, refused = registry.call("PUT", "/models/tiny/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    assert status == 409 and "FAILED" in refused["details"][0]["message"]
    status, _, answer = registry.call("POST", "/models/tiny/versions/1/predict", TINY_POINT)
    assert status == 404 and "FAILED" in answer["details"][0]["message"]


def test_writes_need_the_admin_key(registry: Registry, tiny_posterior_path: Path):
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    body = {"manifest": manifest, "size": tiny_posterior_path.stat().st_size}
    status, _, refused = registry.call("POST", "/models/tiny/versions", body, key_id="readers-key")
    assert status == 403 and refused["details"][0]["field"] == "permission"
    assert registry.store.model("tiny") is None  # nothing was written


@pytest.mark.parametrize(
    "path",
    ["/models/..%2Fetc/predict", "/models/a%2Fb/predict", "/models/" + "x" * 300 + "/predict", "/models/x@Live/predict",
     "/models/x@live@live/predict", "/models/nobody/predict", "/models/tiny/versions/0/predict",
     "/models/tiny/versions/99999999999/predict", "/models/tiny/versions/1e3/predict"],
)  # fmt: skip
def test_hostile_or_unknown_model_addresses_are_404_naming_what_exists(registry: Registry, path: str):
    status, _, answer = registry.call("POST", path, TINY_POINT)
    assert status == 404, answer
    assert answer["details"][0]["field"] in ("model", "version")
