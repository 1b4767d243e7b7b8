"""New simulations by upload (POST /models/{name}/observations with {"data": {"upload": "csv"|"npy"}}): a pending
upload's record (registry table, PK=MODEL#{name}, SK=OBSERVATION#{upload_id}) holding the request's options and who
asked, the file under uploads/{name}/observations/{upload_id}.{kind}, and its start: read with the training jobs'
reader (handler.training.jobs.read_upload), claimed once (AWAITING_UPLOAD -> STARTED, conditional), then observed as
inline rows are (handler.training.observations).

A refusal of the file's content leaves the upload pending: a corrected file PUT to the same URL is started again.
Once claimed, a start is never repeated, whatever followed: rows are appended at most once.

Numpy only: the admin function imports this module.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from handler.registry.datasets import MAX_DATASET_ROWS
from handler.registry.store import RegistryStore, RegistryUnavailableError, _aws_errors, _code, _model_pk
from handler.training.jobs import UPLOAD_FORMATS, TrainingRequestError, read_upload
from handler.training.observations import ObservationRefusedError

# The rows an upload may hold: what a model's dataset holds at most (a dataset past it is refused on append anyway)
MAX_OBSERVATION_UPLOAD_ROWS = MAX_DATASET_ROWS
UPLOAD_URL_EXPIRY_S = 3600
# A pending upload's record lasts as long as the bucket keeps uploads/ (template.yaml, ExpireUploads: a day)
UPLOAD_TTL_S = 86_400


@dataclass(frozen=True)
class PendingUpload:
    model: str
    upload_id: str
    kind: str
    refit: str
    promote: str
    alias: str
    reason: str | None
    created_by: str
    created_at: float
    status: str = "AWAITING_UPLOAD"  # -> STARTED, once

    def item(self) -> dict[str, Any]:
        options = {"kind": self.kind, "refit": self.refit, "promote": self.promote, "alias": self.alias,
                   "reason": self.reason, "created_by": self.created_by, "created_at": self.created_at}  # fmt: skip
        return {
            "pk": _model_pk(self.model),
            "sk": observation_sk(self.upload_id),
            "status": self.status,
            "expires_at": int(self.created_at + UPLOAD_TTL_S),
            "body": json.dumps(options),  # one JSON attribute: DynamoDB holds no floats, and nothing queries on it
        }

    def key(self) -> str:
        return upload_key(self.model, self.upload_id, self.kind)

    def links(self, url: str) -> dict[str, Any]:
        """The answer to the POST: where to PUT the file (until `expires_at`) and where to start it."""
        return {
            "upload_id": self.upload_id,
            "upload_url": url,
            "start": f"/models/{self.model}/observations/uploads/{self.upload_id}/start",
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at + UPLOAD_URL_EXPIRY_S)),
        }


def observation_sk(upload_id: str) -> str:
    return f"OBSERVATION#{upload_id}"


def upload_key(name: str, upload_id: str, kind: str) -> str:
    return f"uploads/{name}/observations/{upload_id}.{kind}"


class ObservationUploads:
    """Pending uploads' records and files; AWS errors leave as RegistryUnavailableError."""

    def __init__(self, registry: RegistryStore) -> None:
        self.table, self.s3, self.bucket, self.clock = registry.table, registry.s3, registry.bucket, registry.clock

    def _call(self, action: Any, what: str) -> Any:
        try:
            return action()
        except _aws_errors() as exc:
            raise RegistryUnavailableError(f"{what}: {_code(exc) or type(exc).__name__}") from exc

    def create(
        self, name: str, kind: str, refit: str, promote: str, alias: str, reason: str | None, by: str
    ) -> tuple[PendingUpload, str]:
        """The pending upload recorded, and the presigned URL its file is PUT to."""
        if kind not in UPLOAD_FORMATS:
            raise ObservationRefusedError("data.upload", f"expected one of {', '.join(UPLOAD_FORMATS)}")
        pending = PendingUpload(name, secrets.token_hex(16), kind, refit, promote, alias, reason, by, self.clock())
        item = pending.item()
        self._call(
            lambda: self.table.put_item(Item=item, ConditionExpression="attribute_not_exists(pk)"), "upload write"
        )
        url = self._call(
            lambda: self.s3.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": pending.key()}, ExpiresIn=UPLOAD_URL_EXPIRY_S
            ),
            "presigning",
        )
        return pending, str(url)

    def get(self, name: str, upload_id: str) -> PendingUpload | None:
        key = {"pk": _model_pk(name), "sk": observation_sk(upload_id)}
        item = self._call(lambda: self.table.get_item(Key=key, ConsistentRead=True), "upload read").get("Item")
        if item is None:
            return None
        body = json.loads(item["body"])
        return PendingUpload(
            name, upload_id, body["kind"], body["refit"], body["promote"], body["alias"], body["reason"],
            body["created_by"], float(body["created_at"]), str(item["status"]),
        )  # fmt: skip

    def read(
        self, pending: PendingUpload, features: tuple[str, ...], outputs: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The file's rows: 409 when it has been started or nothing is uploaded; its size refused before it is read
        past MAX_OBSERVATION_UPLOAD_ROWS (413); its content as the training jobs' reader checks it (422)."""
        if pending.status != "AWAITING_UPLOAD":
            raise ObservationRefusedError("upload_id", f"upload {pending.upload_id} has been started already", 409)
        try:
            X, Y = read_upload(
                self.s3, self.bucket, pending.key(), pending.kind, features, outputs, MAX_OBSERVATION_UPLOAD_ROWS
            )
        except TrainingRequestError as exc:
            raise ObservationRefusedError(exc.field, str(exc), exc.status) from None
        if len(X) == 0:
            raise ObservationRefusedError("upload", f"no rows: from 1 to {MAX_OBSERVATION_UPLOAD_ROWS} an upload")
        return X, Y

    def claim(self, pending: PendingUpload, by: str) -> None:
        """AWAITING_UPLOAD -> STARTED, once: a second start (or one at the same time) is refused (409)."""
        try:
            self.table.update_item(
                Key={"pk": _model_pk(pending.model), "sk": observation_sk(pending.upload_id)},
                UpdateExpression="SET #status = :started, started_by = :by, started_at = :now",
                ConditionExpression="#status = :awaiting",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":started": "STARTED", ":awaiting": "AWAITING_UPLOAD", ":by": by, ":now": int(self.clock()),
                },
            )  # fmt: skip
        except _aws_errors() as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise ObservationRefusedError(
                    "upload_id", f"upload {pending.upload_id} has been started already", 409
                ) from None
            raise RegistryUnavailableError(f"upload write: {_code(exc) or type(exc).__name__}") from exc
