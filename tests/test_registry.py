"""The model registry in-process (moto): publish, check, serve side by side, aliases, canary, rollback, history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handler.gp.artifact import PackagedArtifact, manifest_path_for
from handler.gp.model import load_model
from handler.registry.store import upload_key
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
    assert plant[1]["X-Model-Version"] == "plant/1"
    assert pinned[1]["X-Model-Version"] == "plant/2"
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
        assert status in (200, 404)
        assert headers["X-Model-Version"] == "plant/1"
    status, _, manifest = registry.call("GET", "/models/plant/manifest")
    assert manifest["name"] == "plant"
    assert manifest["features"] == list(PLANT_POINT)


def test_models_are_listed_with_their_versions_aliases_and_history(registry: Registry, plant_model_path: Path):
    registry.publish("plant", plant_model_path)
    registry.publish("plant", plant_model_path)
    registry.call("PUT", "/models/plant/aliases/live", {"version": 1, "reason": "first"}, ADMIN_KEY_ID)
    registry.call("PUT", "/models/plant/aliases/live", {"version": 2, "reason": "better"}, ADMIN_KEY_ID)
    status, _, listing = registry.call("GET", "/models")
    assert status == 200
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["plant"]["latest_version"] == 2
    assert by_name["plant"]["aliases"]["live"] == {"version": 2}
    assert any(m["source"] == "packaged" for m in listing["models"])
    status, _, plant = registry.call("GET", "/models/plant")
    assert [v["version"] for v in plant["versions"]] == [2, 1]
    assert plant["versions"][0]["state"] == "READY"
    assert plant["versions"][0]["published_by"] == ADMIN_KEY_ID
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
    assert status == 200
    assert rolled["version"] == 3
    assert registry.call("POST", "/models/tiny/predict", TINY_POINT)[1]["X-Model-Version"] == "tiny/3"
    history = registry.call("GET", "/models/tiny")[2]["history"]
    assert history[0]["action"] == "rollback"
    assert history[0]["from"] == {"version": 2}
    assert history[0]["to"] == {"version": 3}


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
    assert status == 422
    assert checked["state"] == "FAILED"
    assert checked["reason"] == "the artifact does not match its manifest's sha256 or size"
    status, _, refused = registry.call("PUT", "/models/tiny/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    assert status == 409
    assert "FAILED" in refused["details"][0]["message"]
    status, _, answer = registry.call("POST", "/models/tiny/versions/1/predict", TINY_POINT)
    assert status == 404
    assert "FAILED" in answer["details"][0]["message"]


def test_writes_need_the_admin_key(registry: Registry, tiny_posterior_path: Path):
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    body = {"manifest": manifest, "size": tiny_posterior_path.stat().st_size}
    status, _, refused = registry.call("POST", "/models/tiny/versions", body, key_id="readers-key")
    assert status == 403
    assert refused["details"][0]["field"] == "permission"
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


def test_two_concurrent_publishes_get_two_versions_and_two_concurrent_moves_are_both_recorded(
    registry: Registry, tiny_posterior_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from handler.registry.store import Target

    # given two publishers at once: the second's whole publish lands between the first's number and its record
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    numbered = registry.store.table.update_item
    second: list = []

    def first_numbered_then_second_publishes(**kwargs):
        answer = numbered(**kwargs)
        monkeypatch.setattr(registry.store.table, "update_item", numbered)  # the second publish is not interrupted
        second.append(registry.store.new_version("tiny", manifest, 100, "b"))
        return answer

    monkeypatch.setattr(registry.store.table, "update_item", first_numbered_then_second_publishes)
    first = registry.store.new_version("tiny", manifest, 100, "a")
    assert (first.version, second[0].version) == (1, 2)
    assert sorted((v.version, v.published_by) for v in registry.store.versions("tiny")) == [(1, "a"), (2, "b")]
    for version in (1, 2):  # (ready to serve: the check is another test's)
        registry.store.claim("tiny", version)
        registry.store.settle("tiny", version, "READY")
    # when two admins move live at once (one read the alias before the other's move landed)
    registry.store.move_alias("tiny", "live", Target(1), "a", None)
    stale = registry.store.alias("tiny", "live")
    registry.store.move_alias("tiny", "live", Target(2), "b", None)
    original = registry.store.alias
    calls = iter([stale])
    registry.store.alias = lambda name, alias: next(calls, None) or original(name, alias)  # type: ignore[method-assign]
    moved = registry.store.move_alias("tiny", "live", Target(1), "c", "after b")
    registry.store.alias = original  # type: ignore[method-assign]
    # then the late move is applied after the other, and every move is in the history
    assert moved.revision == 3
    history = registry.store.history("tiny")
    assert [(m["revision"], m["by"]) for m in history] == [(3, "c"), (2, "b"), (1, "a")]
    assert history[0]["from"] == {"version": 2}


def test_an_alias_move_reaches_a_warm_environment_within_the_stated_bound(
    registry: Registry, tiny_posterior_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from handler.registry import resolver as resolver_module

    registry.publish("tiny", tiny_posterior_path)
    registry.publish("tiny", tiny_posterior_path)
    now = [0.0]
    monkeypatch.setattr(registry.resolver.reads, "clock", lambda: now[0])
    registry.call("PUT", "/models/tiny/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    assert registry.call("POST", "/models/tiny/predict", TINY_POINT)[1]["X-Model-Version"] == "tiny/1"
    registry.call("PUT", "/models/tiny/aliases/live", {"version": 2}, ADMIN_KEY_ID)
    now[0] += resolver_module.ALIAS_TTL_S - 0.1  # a warm environment may answer from its cached read for a while
    assert registry.call("POST", "/models/tiny/predict", TINY_POINT)[1]["X-Model-Version"] == "tiny/1"
    now[0] += 0.2  # and no longer than ALIAS_TTL_S
    assert registry.call("POST", "/models/tiny/predict", TINY_POINT)[1]["X-Model-Version"] == "tiny/2"


def test_a_pickle_a_misnamed_manifest_or_the_packaged_models_name_is_refused_before_anything_is_written(
    registry: Registry, tiny_model_path: Path, tiny_posterior_path: Path
):
    pickle_manifest = json.loads(manifest_path_for(tiny_model_path).read_text())
    status, _, refused = registry.call(
        "POST", "/models/tiny/versions", {"manifest": pickle_manifest, "size": 100}, ADMIN_KEY_ID
    )
    assert status == 422
    assert "only posterior files" in refused["details"][0]["message"]
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    status, _, refused = registry.call(
        "POST", "/models/tiny/versions", {"manifest": {**manifest, "bounds": {}}, "size": 100}, ADMIN_KEY_ID
    )
    assert status == 422
    assert refused["details"][0]["field"] == "manifest"
    status, _, refused = registry.call(
        "POST", "/models/tiny/versions", {"manifest": manifest, "size": 10**12}, ADMIN_KEY_ID
    )
    assert status == 422
    assert refused["details"][0]["field"] == "size"
    packaged = registry.resolver.packaged_model().name
    status, _, refused = registry.call(
        "POST", f"/models/{packaged}/versions", {"manifest": manifest, "size": 100}, ADMIN_KEY_ID
    )
    assert status == 409
    assert registry.store.model_names() == []


def test_a_check_before_the_upload_leaves_the_version_pending_and_an_upload_that_vanishes_fails_it(
    registry: Registry, tiny_posterior_path: Path, monkeypatch: pytest.MonkeyPatch
):
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    size = tiny_posterior_path.stat().st_size
    for _ in range(2):
        status, _, _ = registry.call(
            "POST", "/models/tiny/versions", {"manifest": manifest, "size": size}, ADMIN_KEY_ID
        )
        assert status == 201
    # when version 1 is checked before anything was uploaded
    status, _, refused = registry.call("POST", "/models/tiny/versions/1/check", None, ADMIN_KEY_ID)
    # then it is refused and stays PENDING, to be checked once uploaded
    assert status == 409
    assert refused["details"][0]["field"] == "upload"
    assert registry.store.version("tiny", 1).state == "PENDING"
    registry.store.s3.put_object(
        Bucket=registry.store.bucket, Key=upload_key("tiny", 1), Body=tiny_posterior_path.read_bytes()
    )
    assert registry.call("POST", "/models/tiny/versions/1/check", None, ADMIN_KEY_ID)[2]["state"] == "READY"
    # and an upload measured, then gone before it was sealed, fails version 2 for good
    monkeypatch.setattr(registry.store, "uploaded_size", lambda name, version: (size, '"gone"'))
    status, _, checked = registry.call("POST", "/models/tiny/versions/2/check", None, ADMIN_KEY_ID)
    assert status == 422
    assert checked["state"] == "FAILED"
    assert checked["reason"].startswith("the upload vanished")
    assert registry.call("POST", "/models/tiny/versions/2/check", None, ADMIN_KEY_ID)[0] == 409


def test_a_canary_must_take_the_features_of_the_version_it_shares_an_alias_with(
    registry: Registry, tiny_posterior_path: Path, plant_model_path: Path
):
    registry.publish("mixed", tiny_posterior_path)
    registry.publish("mixed", plant_model_path)
    body = {"version": 1, "canary": {"version": 2, "weight": 0.5}}
    status, _, refused = registry.call("PUT", "/models/mixed/aliases/live", body, ADMIN_KEY_ID)
    assert status == 409
    assert refused["details"][0]["field"] == "canary.version"
    assert registry.store.alias("mixed", "live") is None
    # and each version is still served alone (a new generation of a model may change its features)
    assert registry.call("PUT", "/models/mixed/aliases/live", {"version": 2}, ADMIN_KEY_ID)[0] == 200
    assert registry.call("GET", "/models/mixed/manifest")[2]["version"] == "2"


def test_a_version_under_an_alias_cannot_be_deleted_and_a_deleted_version_serves_no_more(
    registry: Registry, tiny_posterior_path: Path
):
    registry.publish("tiny", tiny_posterior_path)
    registry.publish("tiny", tiny_posterior_path)
    registry.call(
        "PUT", "/models/tiny/aliases/live", {"version": 1, "canary": {"version": 2, "weight": 0.5}}, ADMIN_KEY_ID
    )
    status, _, refused = registry.call("DELETE", "/models/tiny/versions/2", None, ADMIN_KEY_ID)
    assert status == 409
    assert "live" in refused["details"][0]["message"]
    registry.call("PUT", "/models/tiny/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    assert registry.call("DELETE", "/models/tiny/versions/2", None, ADMIN_KEY_ID)[0] == 200
    status, _, answer = registry.call("POST", "/models/tiny/versions/2/predict", TINY_POINT)
    assert status == 404
    assert "DELETED" in answer["details"][0]["message"]
    status, _, refused = registry.call("PUT", "/models/tiny/aliases/live", {"version": 2}, ADMIN_KEY_ID)
    assert status == 409


def test_registry_writes_are_off_without_auth_unless_turned_on(registry: Registry, monkeypatch: pytest.MonkeyPatch):
    import dataclasses

    from handler import registry_admin_app

    off = dataclasses.replace(registry_admin_app.settings, registry_writes=False, registry_admin_key_id="")
    monkeypatch.setattr(registry_admin_app, "settings", off)
    status, _, refused = registry.call("PUT", "/models/tiny/aliases/live", {"version": 1})
    assert status == 403
    assert "RegistryWritesWithoutAuth" in refused["details"][0]["message"]


@pytest.mark.parametrize("failing", ["dynamodb", "s3"])
def test_an_aws_error_is_a_503_with_retry_after_and_nothing_half_written(
    registry: Registry, tiny_posterior_path: Path, failing: str, monkeypatch: pytest.MonkeyPatch
):
    from botocore.exceptions import ClientError

    def throttled(*args, **kwargs):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "op")

    registry.publish("tiny", tiny_posterior_path)
    registry.call("PUT", "/models/tiny/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    size = tiny_posterior_path.stat().st_size
    status, _, _created = registry.call(
        "POST", "/models/tiny/versions", {"manifest": manifest, "size": size}, ADMIN_KEY_ID
    )
    registry.store.s3.put_object(
        Bucket=registry.store.bucket, Key=upload_key("tiny", 2), Body=tiny_posterior_path.read_bytes()
    )
    with monkeypatch.context() as patch:
        if failing == "s3":  # the check's copy and writes
            for operation in ("put_object", "copy_object"):
                patch.setattr(registry.store.s3, operation, throttled)
        else:
            for operation in ("get_item", "update_item", "put_item", "query"):
                patch.setattr(registry.store.table, operation, throttled)
            patch.setattr(registry.store.table.meta.client, "transact_write_items", throttled)
        answers = [
            registry.call("POST", "/models/tiny/versions/2/check", None, ADMIN_KEY_ID),
            registry.call("PUT", "/models/tiny/aliases/live", {"version": 2}, ADMIN_KEY_ID),
        ]
        if failing == "dynamodb":
            answers.append(
                registry.call("POST", "/models/tiny/versions", {"manifest": manifest, "size": size}, ADMIN_KEY_ID)
            )
            answers.append(registry.call("POST", "/models/tiny/predict", TINY_POINT))
        for status, headers, answer in answers:
            assert status in (503, 409), answer
            if status == 503:
                assert headers["Retry-After"]
    # then nothing is half written: version 2 is still PENDING (checkable again), live still on 1 with one move
    assert [(v.version, v.state) for v in registry.store.versions("tiny")][-2:] == [(2, "PENDING"), (1, "READY")]
    assert registry.store.alias("tiny", "live").target.version == 1
    assert len(registry.store.history("tiny")) == 1
    assert registry.call("POST", "/models/tiny/versions/2/check", None, ADMIN_KEY_ID)[0] == 200


def test_a_loaded_versions_file_is_removed_so_tmp_holds_no_more_than_the_version_being_loaded(
    registry: Registry, tiny_posterior_path: Path
):
    registry.publish("tiny", tiny_posterior_path)
    registry.call("PUT", "/models/tiny/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    assert registry.call("POST", "/models/tiny/predict", TINY_POINT)[0] == 200
    assert list(registry.resolver.cache_dir.rglob("*.npz")) == []
    assert registry.call("POST", "/models/tiny/predict", TINY_POINT)[0] == 200  # served from memory
