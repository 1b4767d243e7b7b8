"""The registry's bodies as pydantic models, for the OpenAPI document only (the routes build plain dicts):
GET /models, GET /models/{name}, POST /v2/repository/index, and the admin function's writes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from handler.api.schemas import ModelManifest

VersionState = Literal["PENDING", "CHECKING", "READY", "FAILED", "REJECTED", "DELETED"]


class CanaryTarget(BaseModel):
    version: int = Field(ge=1, description="The version taking `weight` of the alias's requests.")
    weight: float = Field(gt=0, lt=1, description="The share of requests, drawn per request.")


class AliasTarget(BaseModel):
    """What an alias serves: a version, and optionally a canary version taking a share of the requests."""

    version: int | str = Field(description="A registry version's number (the packaged model: its manifest's version).")
    canary: CanaryTarget | None = None


class AliasRecord(AliasTarget):
    revision: int = Field(description="How many times the alias has moved.")
    updated_by: str


class ModelSummary(BaseModel):
    name: str
    source: Literal["packaged", "registry"]
    latest_version: int | str = Field(description="The last version number given (the packaged model: its version).")
    aliases: dict[str, AliasTarget]
    url: str = Field(description="GET it for the versions, aliases and history.")


class ModelListing(BaseModel):
    """Every model this API serves: the packaged model (by its manifest's name) and the registry's."""

    models: list[ModelSummary]


class VersionRecord(BaseModel):
    """A published version: immutable once READY; FAILED with a fixed reason when its check failed."""

    version: int
    state: VersionState
    sha256: str
    size: int = Field(description="The artifact's bytes.")
    published_by: str
    published_at: str
    source: Any = Field(None, description="Where the manifest says the model came from.")
    model_version: str | None = Field(None, description="The version its manifest gives.")
    description: str | None = None
    holdout: Any = Field(None, description="The manifest's hold-out metrics, if it has them.")
    leave_one_out: Any = None
    reason: str | None = Field(
        None, description="Why the version is FAILED (fixed text; the detail is logged) or REJECTED (the quality gate)."
    )
    dataset: Any = Field(None, description="The data it was fitted on: {id, rows, sha256} (trained and conditioned).")
    origin: Any = Field(
        None, description="How it was made: {how: published | trained | conditioned, kernel, inference, ...}."
    )
    validation: Any = Field(None, description="Per output: cross-validated rmse, r2, coverage_95, msll.")
    surprise: Any = Field(None, description="A conditioned version: its parent's scores on the rows it added.")


class AliasMove(BaseModel):
    """One move of an alias, as recorded: rollbacks too."""

    alias: str
    revision: int
    action: Literal["set", "rollback"]
    from_: AliasTarget | None = Field(alias="from", description="What the alias served before (null: it was new).")
    to: AliasTarget | None
    by: str
    at: str
    reason: str | None = None


class ModelDetail(BaseModel):
    """A model's versions (newest first), aliases and alias history (newest first)."""

    name: str
    source: Literal["packaged", "registry"]
    versions: list[VersionRecord]
    aliases: dict[str, AliasRecord | AliasTarget]
    history: list[AliasMove]
    latest_version: int | str | None = None
    url: str | None = None


class RepositoryIndexRequest(BaseModel):
    """The Open Inference Protocol's repository index request (an empty body is the default)."""

    model_config = ConfigDict(extra="forbid")
    ready: bool = Field(False, description="Only the versions ready to infer.")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "LOADING", "UNAVAILABLE"] = Field(
        description="READY: serves; LOADING: published, not yet checked; UNAVAILABLE: its check failed, or the "
        "packaged model cannot load."
    )
    reason: str


class PublishRequest(BaseModel):
    """A new version: its manifest (as scripts/package_model.py writes it) and the artifact's size in bytes."""

    model_config = ConfigDict(extra="forbid")
    manifest: ModelManifest = Field(
        description="The manifest as scripts/package_model.py writes it beside a posterior file (format npz; pickles "
        "stay packaged-only); the registry names it after the model."
    )
    size: int = Field(ge=1, description="The artifact's bytes, as the manifest's sha256 covers them.")


class UploadTarget(BaseModel):
    url: str
    method: Literal["PUT"]


class PublishUploads(BaseModel):
    model: UploadTarget


class PublishAnswer(BaseModel):
    """The PENDING version: PUT the artifact to `upload.model.url`, then POST `check`."""

    name: str
    version: int
    state: Literal["PENDING"]
    upload: PublishUploads
    check: str


class CheckedVersion(VersionRecord):
    name: str


class AliasRequest(BaseModel):
    """Where the alias goes: a READY version, optionally with a canary READY version taking `weight` of requests."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=10**9)
    canary: CanaryTarget | None = None
    reason: str | None = Field(None, max_length=500, description="Recorded in the alias history.")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, max_length=500, description="Recorded in the alias history.")


class AliasAnswer(BaseModel):
    name: str
    alias: str
    version: int
    canary: CanaryTarget | None = None
    revision: int
