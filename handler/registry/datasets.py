"""A model's data, versioned: every set of rows a version was fitted on, immutable, kept by id.

A dataset is an .npz in the registry bucket (`datasets/{name}/{id}.npz`: `inputs` (n, d) and `outputs` (n, p), read
with allow_pickle=False and checked against its sha256) and an item in the registry table (`DATASET#{id}`). The
model's head (`DATA`) names its newest dataset; appending writes a new dataset (the head's rows and the new ones)
and moves the head with a conditional write on its revision, so two appends at once are both kept, one after the
other. A version records the dataset it was fitted on, so any version can be refitted or audited.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from handler.registry.store import RegistryConflictError, RegistryUnavailableError, _aws_errors, _code, _model_pk

MAX_DATASET_ROWS = 10_000  # the largest trainable set (handler/training/fit.py MAX_TRAINING_ROWS)
APPEND_ATTEMPTS = 8  # an append that lost the race to another reads the new head and tries again
HEAD_SK = "DATA"


@dataclass(frozen=True)
class Dataset:
    name: str
    dataset_id: str
    rows: int
    sha256: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    revision: int = 0
    parent: str | None = None
    created_at: float = 0.0
    created_by: str = ""

    def reference(self) -> dict[str, Any]:
        """What a version records of the data it was fitted on."""
        return {"id": self.dataset_id, "rows": self.rows, "sha256": self.sha256}

    def document(self) -> dict[str, Any]:
        return {
            **self.reference(),
            "features": list(self.features),
            "outputs": list(self.outputs),
            "parent": self.parent,
            "created_by": self.created_by,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at)),
        }


def dataset_key(name: str, dataset_id: str) -> str:
    return f"datasets/{name}/{dataset_id}.npz"


def encode(inputs: np.ndarray, outputs: np.ndarray) -> tuple[bytes, str]:
    """The dataset's file and the sha256 of its arrays' little-endian bytes (inputs, then outputs)."""
    inputs = np.ascontiguousarray(inputs, dtype="<f8")
    outputs = np.ascontiguousarray(outputs, dtype="<f8")
    buffer = io.BytesIO()
    np.savez(buffer, inputs=inputs, outputs=outputs)
    return buffer.getvalue(), _sha256(inputs, outputs)


def _sha256(inputs: np.ndarray, outputs: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (inputs, outputs):
        digest.update(json.dumps(list(array.shape)).encode())
        digest.update(memoryview(np.ascontiguousarray(array, dtype="<f8")).cast("B"))
    return digest.hexdigest()


class DatasetStore:
    """Reads and writes of models' datasets; AWS errors leave as RegistryUnavailableError."""

    def __init__(self, table: Any, s3: Any, bucket: str, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.s3 = s3
        self.bucket = bucket
        self.clock = clock

    def head(self, name: str) -> Dataset | None:
        """The model's newest dataset, or None when it has none (a published model's data is its own)."""
        return self._read(name, HEAD_SK)

    def get(self, name: str, dataset_id: str) -> Dataset | None:
        return self._read(name, f"DATASET#{dataset_id}")

    def _read(self, name: str, sk: str) -> Dataset | None:
        key = {"pk": _model_pk(name), "sk": sk}
        item = self._call(lambda: self.table.get_item(Key=key, ConsistentRead=True), "dataset read").get("Item")
        return None if item is None else _from_item(name, item)

    def load(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """The dataset's rows, checked against its record (shape and sha256): a changed file is refused."""
        answer = self._call(
            lambda: self.s3.get_object(Bucket=self.bucket, Key=dataset_key(dataset.name, dataset.dataset_id)),
            "dataset read",
        )
        body = self._call(lambda: answer["Body"].read(), "dataset read")
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            inputs, outputs = archive["inputs"], archive["outputs"]
        expected = ((dataset.rows, len(dataset.features)), (dataset.rows, len(dataset.outputs)))
        if (inputs.shape, outputs.shape) != expected or _sha256(inputs, outputs) != dataset.sha256:
            raise RegistryUnavailableError(f"dataset {dataset.dataset_id} of {dataset.name} differs from its record")
        return inputs, outputs

    def create(
        self,
        name: str,
        inputs: np.ndarray,
        outputs: np.ndarray,
        features: tuple[str, ...],
        outputs_named: tuple[str, ...],
        by: str,
    ) -> Dataset:
        """The model's first dataset; refused (409) when it has one already (append to it instead)."""
        return self._write(name, None, inputs, outputs, features, outputs_named, by)

    def append(self, name: str, inputs: np.ndarray, outputs: np.ndarray, by: str) -> tuple[Dataset, int]:
        """A new dataset: the head's rows then these. Returns it and how many rows the head had before."""
        for _ in range(APPEND_ATTEMPTS):
            head = self.head(name)
            if head is None:
                raise RegistryConflictError(
                    "data", f"{name} has no data yet: train it first (POST /models/{name}/train)"
                )
            if head.rows + len(inputs) > MAX_DATASET_ROWS:
                raise RegistryConflictError(
                    "data",
                    f"{name} holds {head.rows} rows; {len(inputs)} more would pass the most a model is trained on "
                    f"({MAX_DATASET_ROWS})",
                )
            old_inputs, old_outputs = self.load(head)
            both_in = np.vstack([old_inputs, np.asarray(inputs, dtype=float)])
            both_out = np.vstack([old_outputs, np.asarray(outputs, dtype=float)])
            try:
                return self._write(name, head, both_in, both_out, head.features, head.outputs, by), head.rows
            except _HeadMovedError:
                continue
        raise RegistryUnavailableError(f"{name}'s data kept changing under this request; try again")

    def _write(
        self,
        name: str,
        head: Dataset | None,
        inputs: np.ndarray,
        outputs: np.ndarray,
        features: tuple[str, ...],
        outputs_named: tuple[str, ...],
        by: str,
    ) -> Dataset:
        if len(inputs) > MAX_DATASET_ROWS:
            raise RegistryConflictError("data", f"at most {MAX_DATASET_ROWS} rows a model, got {len(inputs)}")
        body, sha256 = encode(inputs, outputs)
        dataset = Dataset(
            name,
            uuid.uuid4().hex,
            len(inputs),
            sha256,
            tuple(features),
            tuple(outputs_named),
            revision=(head.revision + 1) if head else 1,
            parent=head.dataset_id if head else None,
            created_at=self.clock(),
            created_by=by,
        )
        # The file first, under a key nobody else writes: a head moved elsewhere leaves it unreferenced, not wrong.
        self._call(
            lambda: self.s3.put_object(Bucket=self.bucket, Key=dataset_key(name, dataset.dataset_id), Body=body),
            "dataset write",
        )
        item = _item(dataset)
        head_item = {**item, "sk": HEAD_SK}
        if head is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {
                "ConditionExpression": "revision = :seen",
                "ExpressionAttributeValues": {":seen": head.revision},
            }
        try:
            self.table.meta.client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.table.name, "Item": head_item, **condition}},
                    {
                        "Put": {
                            "TableName": self.table.name,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except _aws_errors() as exc:
            if _code(exc) == "TransactionCanceledException":
                if head is None:
                    raise RegistryConflictError(
                        "data", f"{name} has data already: post observations to add to it"
                    ) from exc
                raise _HeadMovedError from exc
            raise RegistryUnavailableError(f"dataset write: {_code(exc) or type(exc).__name__}") from exc
        return dataset

    def _call(self, action: Callable[[], Any], what: str) -> Any:
        try:
            return action()
        except _aws_errors() as exc:
            raise RegistryUnavailableError(f"{what}: {_code(exc) or type(exc).__name__}") from exc


class _HeadMovedError(Exception):
    """Another append moved the head first."""


def _item(dataset: Dataset) -> dict[str, Any]:
    return {
        "pk": _model_pk(dataset.name),
        "sk": f"DATASET#{dataset.dataset_id}",
        "dataset_id": dataset.dataset_id,
        "rows": dataset.rows,
        "sha256": dataset.sha256,
        "features": json.dumps(list(dataset.features)),
        "outputs": json.dumps(list(dataset.outputs)),
        "revision": dataset.revision,
        "parent": dataset.parent,
        "created_at": int(dataset.created_at),
        "created_by": dataset.created_by,
    }


def _from_item(name: str, item: dict[str, Any]) -> Dataset:
    return Dataset(
        name,
        str(item["dataset_id"]),
        int(item["rows"]),
        str(item["sha256"]),
        tuple(json.loads(item["features"])),
        tuple(json.loads(item["outputs"])),
        revision=int(item.get("revision", 0)),
        parent=item.get("parent"),
        created_at=float(item.get("created_at", 0)),
        created_by=str(item.get("created_by", "")),
    )


def datasets_from_store(store: Any) -> DatasetStore:
    """The datasets beside a RegistryStore's versions (same table and bucket, same clients)."""
    return DatasetStore(store.table, store.s3, store.bucket, store.clock)
