"""The registry's records (DynamoDB) and artifacts (S3): versions, aliases and every alias move.

One table, keyed `pk`/`sk`:
    MODELS              / {name}                       the model: `latest`, the last version number given
    MODEL#{name}        / VERSION#{v:010d}             a version: state, sha256, size, manifest, who and when
    MODEL#{name}        / ALIAS#{alias}                an alias: version, canary, `revision` (moves so far)
    MODEL#{name}        / HISTORY#{alias}#{rev:010d}   one move of an alias: from, to, who, when, why

Version numbers come from an atomic counter, so concurrent publishes get distinct versions; an alias moves only
from the revision it was read at, in one transaction with its history item, so concurrent moves are applied one
after the other and both are recorded. Artifacts live under immutable keys that only the check writes (a copy of
the upload), so what was checked is what serves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handler.gp.artifact import ModelUnavailableError
from handler.registry.names import DEFAULT_ALIAS

# REJECTED: it loads and answers, but its validation failed the quality gate (handler/training): never served.
STATES = ("PENDING", "CHECKING", "READY", "FAILED", "REJECTED", "DELETED")
SERVABLE = "READY"
URL_EXPIRY_S = 3600
HISTORY_LIMIT = 200  # moves shown per model (newest first)
MOVE_ATTEMPTS = 5  # an alias move read at a stale revision is read again and retried
# Bounds that keep every read of the registry within one request's budget: GET /models and the repository index
# read one item per model and one query per model; a model's versions and aliases are each one query.
MAX_MODELS = 200
MAX_VERSIONS = 1000  # version numbers per model, whatever their state
MAX_ALIASES = 20
CHECK_LEASE_S = 120  # a check claims its version this long (the admin function's timeout is 60 s)


class RegistryUnavailableError(RuntimeError):
    """S3 or DynamoDB failed (throttled, unreachable): a 503 with Retry-After, nothing half written."""


class RegistryNotConfiguredError(RuntimeError):
    """This deployment has no registry (REGISTRY_BUCKET / REGISTRY_TABLE unset)."""


class RegistryNotFoundError(LookupError):
    """An unknown model, version or alias; `available` names what exists."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RegistryConflictError(RuntimeError):
    """A write that the registry's state forbids (an alias on a version that is not READY, a delete under an alias)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def artifact_key(name: str, version: int) -> str:
    return f"models/{name}/versions/{version}/model.npz"


def manifest_key(name: str, version: int) -> str:
    return f"models/{name}/versions/{version}/model.manifest.json"


def upload_key(name: str, version: int) -> str:
    """Where the publisher's presigned PUT lands; the check copies it to `artifact_key` (which only it writes)."""
    return f"uploads/{name}/{version}/model.npz"


@dataclass(frozen=True)
class Target:
    """What an alias serves: a version, and optionally a canary version taking `weight` of the requests."""

    version: int
    canary_version: int | None = None
    canary_weight: float = 0.0

    def versions(self) -> list[int]:
        return [self.version] if self.canary_version is None else [self.version, self.canary_version]

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version}
        if self.canary_version is not None:
            out["canary"] = {"version": self.canary_version, "weight": self.canary_weight}
        return out

    def item(self) -> dict[str, Any]:
        from decimal import Decimal

        return {
            "version": self.version,
            "canary_version": self.canary_version,
            "canary_weight": Decimal(str(self.canary_weight)),
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Target:
        canary = item.get("canary_version")
        return cls(int(item["version"]), None if canary is None else int(canary), float(item.get("canary_weight", 0)))


@dataclass(frozen=True)
class Alias:
    name: str
    alias: str
    target: Target
    revision: int
    updated_at: float
    updated_by: str
    previous: Target | None = None  # what it served before its last move: where a rollback goes


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    state: str
    sha256: str
    size: int
    manifest: dict[str, Any]
    published_by: str
    published_at: float
    reason: str | None = None
    # Where it came from (DETAIL_FIELDS): the data it was fitted on, how (published, trained, conditioned), its
    # validation and, for a conditioned version, its parent's surprise at the new rows. Stored as one JSON attribute.
    details: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        manifest = self.manifest
        return {
            "version": self.version,
            "state": self.state,
            "sha256": self.sha256,
            "size": self.size,
            "published_by": self.published_by,
            "published_at": _iso(self.published_at),
            "source": manifest.get("source"),
            "model_version": manifest.get("version"),
            "description": manifest.get("description"),
            "holdout": manifest.get("holdout"),
            "leave_one_out": manifest.get("leave_one_out"),
            "reason": self.reason,
            **{key: self.details.get(key) for key in DETAIL_FIELDS},
        }


DETAIL_FIELDS = ("dataset", "origin", "validation", "surprise")


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _model_pk(name: str) -> str:
    return f"MODEL#{name}"


def _version_sk(version: int) -> str:
    return f"VERSION#{version:010d}"


def _alias_sk(alias: str) -> str:
    return f"ALIAS#{alias}"


def _history_sk(at: float, alias: str, revision: int) -> str:
    """Time first, so that a model's newest moves are the first read, whichever alias moved."""
    return f"HISTORY#{int(at * 1000):015d}#{alias}#{revision:010d}"


def _aws_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class RegistryStore:
    """Reads and writes of the registry. Every AWS error leaves as RegistryUnavailableError (or a domain error)."""

    def __init__(self, table: Any, s3: Any, bucket: str, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.s3 = s3
        self.bucket = bucket
        self.clock = clock

    # --- reads -----------------------------------------------------------------------------------------------

    def _call(self, action: Callable[[], Any], what: str) -> Any:
        try:
            return action()
        except _aws_errors() as exc:
            raise RegistryUnavailableError(f"{what}: {_code(exc) or type(exc).__name__}") from exc

    def _query(
        self, pk: str, prefix: str, limit: int, newest_first: bool = False, **extra: Any
    ) -> list[dict[str, Any]]:
        from boto3.dynamodb.conditions import Key

        items: list[dict[str, Any]] = []
        arguments: dict[str, Any] = {
            "KeyConditionExpression": Key("pk").eq(pk) & Key("sk").begins_with(prefix) if prefix else Key("pk").eq(pk),
            "ScanIndexForward": not newest_first,
            **extra,
        }
        while len(items) < limit:
            arguments["Limit"] = limit - len(items)
            page = self._call(lambda: self.table.query(**arguments), "registry query")
            items += page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                break
            arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return items

    def model_names(self) -> list[str]:
        return [str(item["sk"]) for item in self._query("MODELS", "", MAX_MODELS)]

    def models(self) -> list[dict[str, Any]]:
        """Every model's item: its last version number and its aliases' targets (kept there by each move)."""
        return self._query("MODELS", "", MAX_MODELS)

    def version_states(self, name: str) -> list[tuple[int, str, str | None]]:
        """(version, state, reason) of every version, newest first: one query of small items, whatever the manifests."""
        names = {"#version": "version", "#state": "state", "#reason": "reason"}
        items = self._query(
            _model_pk(name), "VERSION#", MAX_VERSIONS, newest_first=True,
            ProjectionExpression="#version, #state, #reason", ExpressionAttributeNames=names,
        )  # fmt: skip
        return [(int(item["version"]), str(item["state"]), item.get("reason")) for item in items]

    def model(self, name: str) -> dict[str, Any] | None:
        key = {"pk": "MODELS", "sk": name}
        item = self._call(lambda: self.table.get_item(Key=key, ConsistentRead=True), "registry read").get("Item")
        return item

    def version(self, name: str, version: int) -> Version | None:
        key = {"pk": _model_pk(name), "sk": _version_sk(version)}
        item = self._call(lambda: self.table.get_item(Key=key, ConsistentRead=True), "registry read").get("Item")
        return None if item is None else _version_from_item(item)

    def versions(self, name: str, limit: int = 1000) -> list[Version]:
        return [_version_from_item(item) for item in self._query(_model_pk(name), "VERSION#", limit, newest_first=True)]

    def alias(self, name: str, alias: str) -> Alias | None:
        key = {"pk": _model_pk(name), "sk": _alias_sk(alias)}
        item = self._call(lambda: self.table.get_item(Key=key, ConsistentRead=True), "registry read").get("Item")
        return None if item is None else _alias_from_item(name, item)

    def aliases(self, name: str) -> list[Alias]:
        return [_alias_from_item(name, item) for item in self._query(_model_pk(name), "ALIAS#", MAX_ALIASES + 1)]

    def history(self, name: str, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
        """The newest moves of every alias of the model, newest first."""
        return [_move_document(item) for item in self._query(_model_pk(name), "HISTORY#", limit, newest_first=True)]

    # --- publishing --------------------------------------------------------------------------------------------

    def new_version(
        self, name: str, manifest: dict[str, Any], size: int, by: str, details: dict[str, Any] | None = None
    ) -> Version:
        """A PENDING version with the next number (its manifest's `version`), recorded with its manifest."""
        now = self.clock()
        if self.model(name) is None and len(self.model_names()) >= MAX_MODELS:
            raise RegistryConflictError("model", f"the registry holds {MAX_MODELS} models, its most: reuse a name")
        try:
            counter = self.table.update_item(
                Key={"pk": "MODELS", "sk": name},
                UpdateExpression="ADD latest :one SET created_at = if_not_exists(created_at, :now), "
                "created_by = if_not_exists(created_by, :by), aliases = if_not_exists(aliases, :none)",
                ConditionExpression="attribute_not_exists(latest) OR latest < :most",
                ExpressionAttributeValues={":one": 1, ":now": int(now), ":by": by, ":most": MAX_VERSIONS, ":none": {}},
                ReturnValues="UPDATED_NEW",
            )
        except _aws_errors() as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise RegistryConflictError(
                    "model", f"{name} has had {MAX_VERSIONS} versions, its most: publish under a new name"
                ) from exc
            raise RegistryUnavailableError(f"registry write: {_code(exc) or type(exc).__name__}") from exc
        # Numbers are unique and increasing; a publish that fails after this leaves a gap, never a reused number.
        number = int(counter["Attributes"]["latest"])
        manifest = {**manifest, "version": str(number)}  # served as `name/number`: its manifest says so too
        extra = {key: value for key, value in (details or {}).items() if key in DETAIL_FIELDS}
        version = Version(name, number, "PENDING", manifest["sha256"], size, manifest, by, now, details=extra)
        self._call(
            lambda: self.table.put_item(Item=_version_item(version), ConditionExpression="attribute_not_exists(pk)"),
            "registry write",
        )
        return version

    def upload_url(self, name: str, version: int) -> str:
        return str(
            self._call(
                lambda: self.s3.generate_presigned_url(
                    "put_object",
                    Params={"Bucket": self.bucket, "Key": upload_key(name, version)},
                    ExpiresIn=URL_EXPIRY_S,
                ),
                "presigning",
            )
        )

    def put_upload(self, name: str, version: int, data: bytes) -> None:
        """The artifact of a version made on the service, where a publisher's upload would be."""
        self._call(
            lambda: self.s3.put_object(Bucket=self.bucket, Key=upload_key(name, version), Body=data),
            "registry upload write",
        )

    def uploaded_size(self, name: str, version: int) -> tuple[int, str] | None:
        """The upload's size and ETag, or None when nothing was uploaded."""
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=upload_key(name, version))
        except _aws_errors() as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise RegistryUnavailableError(f"registry upload read: {_code(exc) or type(exc).__name__}") from exc
        return int(head["ContentLength"]), str(head["ETag"])

    def seal_upload(self, name: str, version: int, etag: str) -> None:
        """Copy the upload, as it was measured, to the version's immutable key (server side: no bytes pass here)."""
        from handler.registry.names import check_model_name

        check_model_name(name)
        try:
            self.s3.copy_object(
                Bucket=self.bucket,
                Key=artifact_key(name, version),
                CopySource={"Bucket": self.bucket, "Key": upload_key(name, version)},
                CopySourceIfMatch=etag,
            )
        except _aws_errors() as exc:
            if _code(exc) in ("PreconditionFailed", "NoSuchKey", "404", "412"):
                raise ModelUnavailableError(
                    "the upload does not exist any more, or changed, since it was measured"
                ) from exc
            raise RegistryUnavailableError(f"registry artifact copy: {_code(exc) or type(exc).__name__}") from exc

    def download_artifact(self, name: str, version: int, path: Path) -> None:
        """The sealed artifact to `path` (the check's copy); S3 failing and a full disk: RegistryUnavailableError."""
        transient: tuple[type[BaseException], ...] = (*_aws_errors(), OSError)
        try:
            self.s3.download_file(self.bucket, artifact_key(name, version), str(path))
        except transient as exc:
            raise RegistryUnavailableError(f"registry artifact download: {_code(exc) or type(exc).__name__}") from exc

    def put_manifest(self, record: Version) -> None:
        """The manifest beside the sealed artifact, where the loader reads it (written by the check, once)."""
        text = json.dumps(record.manifest, indent=2).encode()
        self._call(
            lambda: self.s3.put_object(
                Bucket=self.bucket,
                Key=manifest_key(record.name, record.version),
                Body=text,
                ContentType="application/json",
            ),
            "registry artifact write",
        )

    def claim(self, name: str, version: int) -> None:
        """PENDING -> CHECKING, by one check at a time (a check that died leaves a lease that expires)."""
        now = self.clock()
        try:
            self.table.update_item(
                Key={"pk": _model_pk(name), "sk": _version_sk(version)},
                UpdateExpression="SET #state = :checking, claimed_at = :now",
                ConditionExpression="#state = :pending OR (#state = :checking AND claimed_at < :stale)",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":checking": "CHECKING",
                    ":pending": "PENDING",
                    ":now": int(now),
                    ":stale": int(now - CHECK_LEASE_S),
                },
            )
        except _aws_errors() as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                record = self.version(name, version)
                state = record.state if record else "gone"
                raise RegistryConflictError(
                    "version", f"{name} version {version} is {state}: not checked again"
                ) from exc
            raise RegistryUnavailableError(f"registry write: {_code(exc) or type(exc).__name__}") from exc

    def release(self, name: str, version: int) -> None:
        """CHECKING -> PENDING: the check could not finish (S3 or DynamoDB failed); it may be checked again."""
        try:
            self.table.update_item(
                Key={"pk": _model_pk(name), "sk": _version_sk(version)},
                UpdateExpression="SET #state = :pending",
                ConditionExpression="#state = :checking",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":pending": "PENDING", ":checking": "CHECKING"},
            )
        except _aws_errors():
            pass  # the lease expires: a later check claims it

    def settle(self, name: str, version: int, state: str, reason: str | None = None) -> Version:
        """A CHECKING version becomes READY, FAILED or REJECTED, once."""
        values: dict[str, Any] = {":state": state, ":pending": "CHECKING", ":reason": reason}
        try:
            answer = self.table.update_item(
                Key={"pk": _model_pk(name), "sk": _version_sk(version)},
                UpdateExpression="SET #state = :state, reason = :reason",
                ConditionExpression="#state = :pending",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except _aws_errors() as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise RegistryConflictError("version", f"{name} version {version} was already checked") from exc
            raise RegistryUnavailableError(f"registry write: {_code(exc) or type(exc).__name__}") from exc
        return _version_from_item(answer["Attributes"])

    # --- aliases ---------------------------------------------------------------------------------------------

    def move_alias(self, name: str, alias: str, target: Target | None, by: str, reason: str | None) -> Alias:
        """Point `alias` at `target` (None: roll back to what it served before its last move), recorded in history."""
        for _ in range(MOVE_ATTEMPTS):
            current = self.alias(name, alias)
            action = "set"
            if target is None:
                if current is None:
                    raise RegistryNotFoundError("alias", f"{name} has no alias {alias!r} to roll back")
                if current.previous is None:
                    raise RegistryConflictError(
                        "alias", f"{name}@{alias} has served only {current.target.version}: nothing to roll back to"
                    )
                new, action = current.previous, "rollback"
            else:
                new = target
                if current is None and len(self.aliases(name)) >= MAX_ALIASES:
                    raise RegistryConflictError("alias", f"{name} has {MAX_ALIASES} aliases, its most: move one")
            records = [
                self._servable(name, number, field)
                for number, field in zip(new.versions(), ("version", "canary.version"), strict=False)
            ]
            if len(records) == 2 and _signature(records[0]) != _signature(records[1]):
                raise RegistryConflictError(
                    "canary.version",
                    f"{name} versions {new.version} and {new.canary_version} take different features or give different "
                    "outputs: one alias's requests must suit both",
                )
            revision = (current.revision if current else 0) + 1
            try:
                self._transact(name, alias, new, revision, current, by, reason, action)
            except RegistryConflictError:
                continue  # another move landed first: read again, apply after it
            return Alias(name, alias, new, revision, self.clock(), by)
        raise RegistryUnavailableError(f"{name}@{alias} kept moving under this request; try again")

    def _servable(self, name: str, version: int, field: str = "version") -> Version:
        record = self.version(name, version)
        if record is None:
            raise RegistryNotFoundError(field, f"{name} has no version {version}")
        if record.state != SERVABLE:
            raise RegistryConflictError(field, f"{name} version {version} is {record.state}, not READY")
        return record

    def _transact(
        self,
        name: str,
        alias: str,
        new: Target,
        revision: int,
        current: Alias | None,
        by: str,
        reason: str | None,
        action: str,
    ) -> None:
        now = self.clock()
        alias_item = {
            "pk": _model_pk(name), "sk": _alias_sk(alias), **new.item(), "revision": revision,
            "updated_at": int(now), "updated_by": by,
            # what it served before this move: where a rollback goes
            "previous": current.target.item() if current else None,
        }  # fmt: skip
        history_item = {
            "pk": _model_pk(name), "sk": _history_sk(now, alias, revision), "alias": alias, "revision": revision,
            "action": action, "from": current.target.item() if current else None, "to": new.item(), "by": by,
            "at": int(now), "reason": reason,
        }  # fmt: skip
        condition: dict[str, Any] = (
            {"ConditionExpression": "revision = :expected", "ExpressionAttributeValues": {":expected": revision - 1}}
            if current
            else {"ConditionExpression": "attribute_not_exists(pk)"}
        )
        ready = [
            {
                "ConditionCheck": {
                    "TableName": self.table.name,
                    "Key": {"pk": _model_pk(name), "sk": _version_sk(number)},
                    "ConditionExpression": "#state = :ready",
                    "ExpressionAttributeNames": {"#state": "state"},
                    "ExpressionAttributeValues": {":ready": SERVABLE},
                }
            }
            for number in new.versions()
        ]
        try:
            self.table.meta.client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.table.name, "Item": alias_item, **condition}},
                    {
                        "Put": {
                            "TableName": self.table.name,
                            "Item": history_item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {  # GET /models reads every model's aliases from its one item
                        "Update": {
                            "TableName": self.table.name,
                            "Key": {"pk": "MODELS", "sk": name},
                            "UpdateExpression": "SET aliases.#alias = :target",
                            "ConditionExpression": "attribute_exists(aliases)",
                            "ExpressionAttributeNames": {"#alias": alias},
                            "ExpressionAttributeValues": {":target": new.item()},
                        }
                    },
                    *ready,
                ]
            )
        except _aws_errors() as exc:
            if _code(exc) == "TransactionCanceledException":
                raise RegistryConflictError("alias", "moved concurrently") from exc
            raise RegistryUnavailableError(f"registry write: {_code(exc) or type(exc).__name__}") from exc

    def delete_version(self, name: str, version: int, by: str) -> Version:
        """DELETED: nothing serves it again. Refused while an alias points at it (move the alias first)."""
        record = self.version(name, version)
        if record is None or record.state == "DELETED":
            raise RegistryNotFoundError("version", f"{name} has no version {version}")
        aliases = self.aliases(name)
        holding = [a.alias for a in aliases if version in (a.target.version, a.target.canary_version)]
        if holding:
            raise RegistryConflictError(
                "version", f"{name} version {version} is served by alias {', '.join(holding)}: move it first"
            )
        unchanged = [
            {
                "ConditionCheck": {
                    "TableName": self.table.name,
                    "Key": {"pk": _model_pk(name), "sk": _alias_sk(a.alias)},
                    "ConditionExpression": "revision = :seen",
                    "ExpressionAttributeValues": {":seen": a.revision},
                }
            }
            for a in aliases
        ]
        update = {
            "Update": {
                "TableName": self.table.name,
                "Key": {"pk": _model_pk(name), "sk": _version_sk(version)},
                "UpdateExpression": "SET #state = :deleted, deleted_by = :by, deleted_at = :now",
                "ConditionExpression": "#state = :was",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": {
                    ":deleted": "DELETED",
                    ":by": by,
                    ":now": int(self.clock()),
                    ":was": record.state,
                },
            }
        }
        try:
            self.table.meta.client.transact_write_items(TransactItems=[update, *unchanged])  # MAX_ALIASES + 1 <= 100
        except _aws_errors() as exc:
            if _code(exc) == "TransactionCanceledException":
                raise RegistryConflictError("version", f"{name} changed while version {version} was deleted") from exc
            raise RegistryUnavailableError(f"registry write: {_code(exc) or type(exc).__name__}") from exc
        return Version(**{**record.__dict__, "state": "DELETED"})


def _signature(record: Version) -> tuple[Any, Any]:
    return record.manifest.get("features"), record.manifest.get("outputs")


def _version_item(version: Version) -> dict[str, Any]:
    return {
        "pk": _model_pk(version.name),
        "sk": _version_sk(version.version),
        "version": version.version,
        "state": version.state,
        "sha256": version.sha256,
        "size": version.size,
        "manifest": json.dumps(version.manifest),
        "published_by": version.published_by,
        "published_at": int(version.published_at),
        "reason": version.reason,
        "details": json.dumps(version.details),
    }


def _version_from_item(item: dict[str, Any]) -> Version:
    return Version(
        name=str(item["pk"]).removeprefix("MODEL#"),
        version=int(item["version"]),
        state=str(item["state"]),
        sha256=str(item["sha256"]),
        size=int(item["size"]),
        manifest=json.loads(item["manifest"]),
        published_by=str(item.get("published_by", "")),
        published_at=float(item.get("published_at", 0)),
        reason=item.get("reason"),
        details=json.loads(item.get("details") or "{}"),
    )


def _alias_from_item(name: str, item: dict[str, Any]) -> Alias:
    previous = item.get("previous")
    return Alias(
        name,
        str(item["sk"]).removeprefix("ALIAS#"),
        Target.from_item(item),
        int(item["revision"]),
        float(item.get("updated_at", 0)),
        str(item.get("updated_by", "")),
        None if previous is None else Target.from_item(previous),
    )


def _move_document(item: dict[str, Any]) -> dict[str, Any]:
    def target(value: Any) -> dict[str, Any] | None:
        return None if value is None else Target.from_item(value).document()

    return {
        "alias": str(item.get("alias", DEFAULT_ALIAS)),
        "revision": int(item["revision"]),
        "action": str(item.get("action", "set")),
        "from": target(item.get("from")),
        "to": target(item.get("to")),
        "by": str(item.get("by", "")),
        "at": _iso(float(item.get("at", 0))),
        "reason": item.get("reason"),
    }


def store_from_settings(settings: Any) -> RegistryStore:
    """The registry of this deployment (boto3 honours AWS_ENDPOINT_URL: moto locally)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    # presigned URLs must name the bucket's region, not the global endpoint
    s3_config = config.merge(Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    table = boto3.resource("dynamodb", config=config).Table(settings.registry_table)
    return RegistryStore(table, boto3.client("s3", config=s3_config), settings.registry_bucket)
