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


class ObservationRows(BaseModel):
    """New simulations as rows ({feature: value, ..., output: value}) or columns ({name: [values]}): each of the
    model's features and outputs exactly once, finite numbers, features within their physical limits. Or an upload
    ("csv": a header naming each feature and output, in any order; "npy": a 2-d array, features then outputs)."""

    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, float]] | None = Field(None, min_length=1, max_length=2_000)
    columns: dict[str, list[float]] | None = None
    upload: Literal["csv", "npy"] | None = Field(
        None, description="Answers where to PUT the file (1 to 10,000 rows) and the route that starts it."
    )


class ObservationsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: ObservationRows = Field(description="1 to 2,000 rows: `rows` or `columns`; or an `upload`. One of them.")
    refit: Literal["condition", "none", "full"] = Field(
        "condition",
        description="condition: a new version conditioned on all the data with the parent's hyperparameters, in "
        "the request; none: only appended and scored; full: a training job on all the data.",
    )
    promote: Literal["never", "if_better", "always"] = Field(
        "if_better",
        description="if_better, for a conditioned version: promoted while the alias serves its parent, or a version "
        "conditioned from the same parent on fewer rows (same hyperparameters, a subset of the data: leave-one-out "
        "scores them alike, a tie, which promotes).",
    )
    alias: str = Field("live", pattern=r"^[a-z][a-z0-9_\-]{0,31}$", description="Its main target is the parent.")
    reason: str | None = Field(None, max_length=500, description="Recorded in the alias history with a promotion.")


class ObservationsUpload(BaseModel):
    """A pending upload of new simulations: PUT the file to `upload_url`, then POST `start`."""

    upload_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    upload_url: str = Field(description="A presigned PUT URL for the file.")
    start: str = Field(description="POST it once the file is uploaded: /models/{name}/observations/uploads/{id}/start.")
    expires_at: str = Field(
        description="When `upload_url` stops taking the file (an hour); the upload can be started for a day."
    )


class SurpriseScores(BaseModel):
    """One output's scores on the new rows, before the version saw them (noise included: predictions of y)."""

    rmse: float | None
    mean_abs_z: float | None = Field(description="Mean of |y - mean| / predictive sd.")
    max_abs_z: float | None
    coverage_95: float | None = Field(description="Share of the rows inside the 95% predictive interval.")
    msll: float | None = Field(
        description="Mean standardised log loss against a Gaussian with the training outputs' mean and variance: "
        "0 is no better than that, lower is better; null where the training outputs are constant."
    )
    n: int


class CanaryJudgement(BaseModel):
    judged: bool
    rolled_back: bool
    rule: str
    reason: str
    scores: dict[str, Any] = Field(description="{main: {version, output: scores}, canary: {version, output: scores}}")


class ObservationsAnswer(BaseModel):
    dataset: dict[str, Any] = Field(description="The model's data now: {id, rows, sha256, features, outputs, parent}.")
    rows_before: int = Field(description="Rows before these (posts at once are all kept, one after the other).")
    rows_added: int
    surprise: dict[str, Any] = Field(
        description="{version: name/N, output: SurpriseScores}: the alias's main version on the new rows."
    )
    version: CheckedVersion | None = Field(None, description="The conditioned version (refit condition).")
    promotion: dict[str, Any] | None = Field(None, description="{rule, alias, from, to, promoted, reason}.")
    canary: CanaryJudgement | None = Field(None, description="When the alias has a canary: its judgement.")
    training_job: dict[str, Any] | None = None
