"""A model's datasets (moto): created once, appended to without losing a row, checked when read; versions made on
the service carry their lineage and a quality-gate failure is REJECTED, never served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from handler.gp.artifact import manifest_path_for
from handler.registry.datasets import DatasetStore, dataset_key, datasets_from_store
from handler.registry.publishing import publish_artifact
from handler.registry.store import RegistryConflictError, RegistryUnavailableError
from tests.registry_harness import Registry, start_registry

FEATURES = ("x1", "x2")
OUTPUTS = ("y",)


@pytest.fixture
def registry(aws, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, app_with_model) -> Registry:
    return start_registry(monkeypatch, tmp_path)


@pytest.fixture
def datasets(registry: Registry) -> DatasetStore:
    return datasets_from_store(registry.store)


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, 2))
    return X, X.sum(axis=1, keepdims=True)


def test_a_dataset_reads_back_as_written_and_a_second_create_is_refused(datasets: DatasetStore):
    # given a model's first rows
    X, Y = rows(12, seed=1)
    created = datasets.create("m", X, Y, FEATURES, OUTPUTS, by="alice")
    # when it is read back through its head
    head = datasets.head("m")
    assert head is not None
    assert head.dataset_id == created.dataset_id
    assert head.rows == 12
    inputs, outputs = datasets.load(head)
    # then the rows are the same, and creating again is a conflict naming the data
    np.testing.assert_array_equal(inputs, X)
    np.testing.assert_array_equal(outputs, Y)
    with pytest.raises(RegistryConflictError) as refused:
        datasets.create("m", X, Y, FEATURES, OUTPUTS, by="alice")
    assert refused.value.field == "data"


def test_appends_at_once_are_all_kept_in_order_and_each_dataset_stays_readable(
    datasets: DatasetStore, monkeypatch: pytest.MonkeyPatch
):
    # given a dataset of 10 rows, and an append whose read of the head is overtaken by 5 other appends, one of
    # which is itself overtaken by another (moto in-process is not thread-safe: the races are laid out in order)
    datasets.create("m", *rows(10, seed=2), FEATURES, OUTPUTS, by="alice")
    batches = [rows(3, seed=10 + i) for i in range(6)]
    before: dict[int, int] = {}
    load = datasets.load
    overtaking = {0: [1, 2], 2: [3], 1: [4, 5]}

    def load_then_others_land(dataset):
        answer = load(dataset)
        caller = next((i for i in overtaking if i in pending), None)
        if caller is not None:
            for other in overtaking.pop(caller):
                pending.add(other)
                append(other)
        return answer

    pending: set[int] = set()

    def append(i: int) -> None:
        pending.add(i)
        before[i] = datasets.append("m", *batches[i], by=f"user{i}")[1]
        pending.discard(i)

    monkeypatch.setattr(datasets, "load", load_then_others_land)
    # when the first append runs
    append(0)
    monkeypatch.setattr(datasets, "load", load)
    # then every append landed after a different head, and the last dataset holds every row once
    assert sorted(before.values()) == [10, 13, 16, 19, 22, 25]
    head = datasets.head("m")
    assert head is not None
    assert head.rows == 28
    assert head.revision == 7
    inputs, _ = datasets.load(head)
    for X, _ in batches:
        assert sum(np.array_equal(inputs[i : i + 3], X) for i in range(10, 28, 3)) == 1
    # and the parent chain goes back to the first dataset, each readable
    chain = 0
    dataset = head
    while dataset.parent is not None:
        parent = datasets.get("m", dataset.parent)
        assert parent is not None
        assert parent.rows == dataset.rows - 3
        datasets.load(parent)
        dataset, chain = parent, chain + 1
    assert chain == 6


def test_a_dataset_file_changed_in_the_bucket_is_refused(datasets: DatasetStore, registry: Registry):
    # given a dataset whose file is replaced by other rows
    created = datasets.create("m", *rows(5, seed=3), FEATURES, OUTPUTS, by="alice")
    import io

    other = io.BytesIO()
    np.savez(other, inputs=np.zeros((5, 2)), outputs=np.zeros((5, 1)))
    registry.store.s3.put_object(
        Bucket=registry.store.bucket, Key=dataset_key("m", created.dataset_id), Body=other.getvalue()
    )
    # when it is read, then it is refused rather than used
    with pytest.raises(RegistryUnavailableError, match="differs from its record"):
        datasets.load(created)


def test_appending_past_the_largest_trainable_set_is_refused_before_anything_is_written(
    datasets: DatasetStore, monkeypatch: pytest.MonkeyPatch
):
    import handler.registry.datasets as module

    monkeypatch.setattr(module, "MAX_DATASET_ROWS", 12)
    created = datasets.create("m", *rows(10, seed=4), FEATURES, OUTPUTS, by="alice")
    with pytest.raises(RegistryConflictError, match="12"):
        datasets.append("m", *rows(3, seed=5), by="bob")
    head = datasets.head("m")
    assert head is not None
    assert head.dataset_id == created.dataset_id


def test_a_version_made_on_the_service_records_its_lineage_and_a_rejected_one_is_never_served(
    registry: Registry, tiny_posterior_path: Path
):
    # given the tiny model's file, published server-side twice: once passing the gate, once not
    manifest = json.loads(manifest_path_for(tiny_posterior_path).read_text())
    data = tiny_posterior_path.read_bytes()
    lineage = {"dataset": {"id": "d" * 32, "rows": 30, "sha256": "0" * 64}, "origin": {"how": "trained"}}
    cache = registry.resolver.cache_dir
    ready = publish_artifact(registry.store, "tiny", data, manifest, "alice", cache, details=lineage)
    rejected = publish_artifact(
        registry.store, "tiny", data, manifest, "alice", cache, details=lineage,
        rejected_reason="leave-one-out R2 0.12 < 0.5 on y",
    )  # fmt: skip
    # then the first is READY, the second REJECTED with the reason, both showing where they came from
    assert (ready.state, rejected.state) == ("READY", "REJECTED")
    status, _, model = registry.call("GET", "/models/tiny")
    assert status == 200
    by_number = {v["version"]: v for v in model["versions"]}
    assert by_number[rejected.version]["reason"] == "leave-one-out R2 0.12 < 0.5 on y"
    assert by_number[ready.version]["dataset"] == lineage["dataset"]
    assert by_number[ready.version]["origin"] == {"how": "trained"}
    # and nothing serves the rejected version, nor can an alias point at it
    status, _, refused = registry.call("POST", f"/models/tiny/versions/{rejected.version}/predict", {"x1": 0.5})
    assert status == 404, refused
    status, _, refused = registry.call(
        "PUT", "/models/tiny/aliases/live", {"version": rejected.version}, key_id="admin-key-id"
    )
    assert status == 409
    assert "REJECTED" in json.dumps(refused)
