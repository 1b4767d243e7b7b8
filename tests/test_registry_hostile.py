"""What a red-team pass on the registry found, each kept as a regression test (in-process, moto)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handler.registry import store as store_module
from handler.registry.store import artifact_key, upload_key
from tests.registry_harness import ADMIN_KEY_ID, Registry, start_registry

TINY_POINT = {"x1": 0.5, "x2": 0.5, "x3": 0.5, "x4": 0.5}


@pytest.fixture
def registry(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model) -> Registry:
    return start_registry(monkeypatch, tmp_path)


def manifest_of(path: Path) -> dict:
    return json.loads(path.with_name(f"{path.stem}.manifest.json").read_text())


def publish_body(path: Path, **changes) -> dict:
    return {"manifest": {**manifest_of(path), **changes}, "size": path.stat().st_size}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"description": "d" * 380_000}, "manifest.description"),
        ({"source": "s" * 5_000}, "manifest.source"),
        ({"holdout": {"y": {"r2": 1.0, "pad": "p" * 20_000}}}, "manifest.holdout"),
        ({"notes": "n" * 450_000}, "manifest"),  # over a DynamoDB item, under the 1 MB manifest limit
    ],
)
def test_manifest_fields_that_would_overflow_an_item_or_an_answer_are_refused_before_a_number_is_given(
    registry: Registry, tiny_posterior_path: Path, changes: dict, field: str
):
    status, _, refused = registry.call(
        "POST", "/models/big/versions", publish_body(tiny_posterior_path, **changes), ADMIN_KEY_ID
    )
    assert status == 422
    assert refused["details"][0]["field"] == field
    assert registry.store.model_names() == []  # no number burnt, no model made


def test_a_models_description_stays_within_one_lambda_answer(registry: Registry, tiny_posterior_path: Path):
    body = publish_body(tiny_posterior_path, description="d" * 1_990)
    for _ in range(60):
        assert registry.call("POST", "/models/wide/versions", body, ADMIN_KEY_ID)[0] == 201
    status, _, described = registry.call("GET", "/models/wide")
    assert status == 200
    assert len(json.dumps(described)) < 6 * 2**20 // 2


def test_a_second_check_while_one_holds_the_version_is_refused_and_the_artifact_stays_what_was_checked(
    registry: Registry, tiny_posterior_path: Path
):
    data = tiny_posterior_path.read_bytes()
    registry.call("POST", "/models/race/versions", publish_body(tiny_posterior_path), ADMIN_KEY_ID)
    registry.store.s3.put_object(Bucket=registry.store.bucket, Key=upload_key("race", 1), Body=data)
    registry.store.claim("race", 1)  # a first check is running
    registry.store.s3.put_object(Bucket=registry.store.bucket, Key=upload_key("race", 1), Body=b"\0" * len(data))
    status, _, refused = registry.call("POST", "/models/race/versions/1/check", None, ADMIN_KEY_ID)
    assert status == 409
    assert "CHECKING" in refused["details"][0]["message"]
    missing = registry.store.s3.list_objects_v2(Bucket=registry.store.bucket, Prefix=artifact_key("race", 1))
    assert missing.get("KeyCount", 0) == 0  # the second check sealed nothing


def test_a_check_whose_lease_expired_may_be_taken_over(
    registry: Registry, tiny_posterior_path: Path, monkeypatch: pytest.MonkeyPatch
):
    registry.call("POST", "/models/late/versions", publish_body(tiny_posterior_path), ADMIN_KEY_ID)
    registry.store.s3.put_object(
        Bucket=registry.store.bucket, Key=upload_key("late", 1), Body=tiny_posterior_path.read_bytes()
    )
    registry.store.claim("late", 1)  # a check that died (its function timed out)
    later = registry.store.clock() + store_module.CHECK_LEASE_S + 1
    monkeypatch.setattr(registry.store, "clock", lambda: later)
    assert registry.call("POST", "/models/late/versions/1/check", None, ADMIN_KEY_ID)[2]["state"] == "READY"


def test_an_s3_fault_during_the_check_is_a_503_and_the_version_can_be_checked_again(
    registry: Registry, tiny_posterior_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from botocore.exceptions import ClientError

    registry.call("POST", "/models/flaky/versions", publish_body(tiny_posterior_path), ADMIN_KEY_ID)
    registry.store.s3.put_object(
        Bucket=registry.store.bucket, Key=upload_key("flaky", 1), Body=tiny_posterior_path.read_bytes()
    )

    def slow_down(*args, **kwargs):
        raise ClientError({"Error": {"Code": "SlowDown", "Message": "reduce your request rate"}}, "GetObject")

    with monkeypatch.context() as patch:
        patch.setattr(registry.store.s3, "download_file", slow_down)
        status, headers, _ = registry.call("POST", "/models/flaky/versions/1/check", None, ADMIN_KEY_ID)
    assert status == 503
    assert headers["Retry-After"]
    assert registry.store.version("flaky", 1).state == "PENDING"
    assert registry.call("POST", "/models/flaky/versions/1/check", None, ADMIN_KEY_ID)[2]["state"] == "READY"


def test_aliases_are_bounded_so_a_delete_sees_every_one(registry: Registry, tiny_posterior_path: Path, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_ALIASES", 3)
    registry.publish("al", tiny_posterior_path)
    registry.publish("al", tiny_posterior_path)
    for alias in ("a", "b"):
        assert registry.call("PUT", f"/models/al/aliases/{alias}", {"version": 1}, ADMIN_KEY_ID)[0] == 200
    assert registry.call("PUT", "/models/al/aliases/zz", {"version": 2}, ADMIN_KEY_ID)[0] == 200
    status, _, refused = registry.call("PUT", "/models/al/aliases/one-more", {"version": 1}, ADMIN_KEY_ID)
    assert status == 409
    assert "3 aliases" in refused["details"][0]["message"]
    assert registry.call("DELETE", "/models/al/versions/2", None, ADMIN_KEY_ID)[0] == 409  # zz serves it


def test_the_history_shows_the_newest_moves_whichever_alias_moved(
    registry: Registry, tiny_posterior_path: Path, monkeypatch: pytest.MonkeyPatch
):
    registry.publish("hist", tiny_posterior_path)
    registry.publish("hist", tiny_posterior_path)
    moment = [1_000_000.0]

    def tick() -> float:
        moment[0] += 1
        return moment[0]

    monkeypatch.setattr(registry.store, "clock", tick)
    for version in (1, 2, 1, 2, 1):  # an alias sorting before `live` moves often
        registry.call("PUT", "/models/hist/aliases/aaa", {"version": version}, ADMIN_KEY_ID)
    registry.call("PUT", "/models/hist/aliases/live", {"version": 2, "reason": "newest"}, ADMIN_KEY_ID)
    newest = registry.store.history("hist", limit=2)
    assert [(m["alias"], m["reason"]) for m in newest] == [("live", "newest"), ("aaa", None)]


def test_versions_never_uploaded_do_not_hide_the_ones_that_serve(registry: Registry, tiny_posterior_path: Path):
    registry.publish("crowd", tiny_posterior_path)
    registry.call("PUT", "/models/crowd/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    for _ in range(55):
        registry.call("POST", "/models/crowd/versions", publish_body(tiny_posterior_path), ADMIN_KEY_ID)
    described = registry.call("GET", "/models/crowd")[2]
    assert 1 in [v["version"] for v in described["versions"]]
    status, _, refused = registry.call("POST", "/models/crowd/versions/40/predict", TINY_POINT)
    assert status == 404
    assert "READY: 1" in refused["details"][0]["message"]


@pytest.mark.parametrize("weight", [1e-300, 5e-324, 1 - 1e-9])
def test_a_canary_weight_outside_what_can_be_stored_is_refused(registry: Registry, tiny_posterior_path, weight):
    registry.publish("w", tiny_posterior_path)
    registry.publish("w", tiny_posterior_path)
    body = {"version": 1, "canary": {"version": 2, "weight": weight}}
    status, _, refused = registry.call("PUT", "/models/w/aliases/live", body, ADMIN_KEY_ID)
    assert status == 422
    assert refused["details"][0]["field"] == "canary.weight"


def test_listing_the_models_reads_one_item_per_model(
    registry: Registry, tiny_posterior_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for name in ("m1", "m2", "m3"):
        registry.publish(name, tiny_posterior_path)
        registry.call("PUT", f"/models/{name}/aliases/live", {"version": 1}, ADMIN_KEY_ID)
    calls = []
    for operation in ("query", "get_item"):
        real = getattr(registry.store.table, operation)
        monkeypatch.setattr(
            registry.store.table, operation, lambda real=real, op=operation, **kw: calls.append(op) or real(**kw)
        )
    listed = registry.call("GET", "/models")[2]["models"]
    assert {m["name"]: m["aliases"] for m in listed if m["source"] == "registry"} == {
        name: {"live": {"version": 1}} for name in ("m1", "m2", "m3")
    }
    assert calls == ["query"]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/models/tiny@/predict", "model"),
        ("/models/tiny/versions/0/predict", "version"),
        ("/models/tiny/versions/1e3/predict", "version"),
        ("/models/tiny%40live/predict", "model"),  # %2540 as API Gateway passes it on, decoded once: never twice
    ],
)
def test_malformed_addresses_name_the_right_field(registry: Registry, path: str, field: str):
    status, _, refused = registry.call("POST", path, TINY_POINT)
    assert status == 404
    assert refused["details"][0]["field"] == field


def test_describing_a_model_takes_its_name_alone(registry: Registry, tiny_posterior_path: Path):
    registry.publish("tiny", tiny_posterior_path)
    assert registry.call("GET", "/models/tiny@nope")[0] == 404


def test_a_case_variant_of_the_packaged_models_name_is_refused(registry: Registry, tiny_posterior_path: Path):
    packaged = registry.resolver.packaged_model().name
    body = publish_body(tiny_posterior_path)
    status, _, _ = registry.call("POST", f"/models/{packaged.upper()}/versions", body, ADMIN_KEY_ID)
    assert status == 409
