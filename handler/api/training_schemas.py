"""Request and answer schemas of the training routes (the admin function's; handler/training/jobs.py checks them
itself: these document them in the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TRAINING_STATUSES = Literal["AWAITING_UPLOAD", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]


class TrainingRows(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, float]] = Field(
        max_length=10_000, description="One object per point: each feature's and output's value (10,000 at most)."
    )


class TrainingColumns(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: dict[str, list[float]] = Field(
        description="A list of values for each feature and output, all of one length (10,000 at most)."
    )


class TrainingUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upload: Literal["csv", "npy"] = Field(
        description="The data is uploaded: the answer's `upload_url` takes a PUT of a CSV (a header naming the "
        "features and outputs) or a .npy (rows x features then outputs, float64); then POST `start`."
    )


class TrainingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: TrainingRows | TrainingColumns | TrainingUpload | None = Field(
        None,
        description="The training data. Left out: the model's current dataset. For a model that has one, the rows "
        "are appended to it (as observations are) and the fit uses the whole dataset.",
    )
    features: list[str] | None = Field(None, max_length=64, description="Input names (required for a new model).")
    outputs: list[str] | None = Field(None, max_length=16, description="Output names (required for a new model).")
    bounds: dict[str, list[float]] | None = Field(
        None, description="{feature: [low, high]} for every feature (required for a new model; inputs are scaled "
        "to the unit cube by these)."
    )  # fmt: skip
    units: dict[str, str] | None = Field(None, description="{feature or output: unit}.")
    limits: dict[str, list[float | None]] | None = Field(
        None, description="Physical limits {feature: [low or null, high or null]}, containing the bounds."
    )
    kernel: Literal["auto", "RBF", "Matern32", "Matern52", "Exponential"] = Field(
        "auto", description="ARD kernel; auto fits each and keeps the lowest leave-one-out MSLL."
    )
    restarts: int = Field(3, ge=1, le=20, description="Optimisations (the first from the data's ranges).")
    inference: Literal["auto", "exact", "sparse"] = Field(
        "auto", description="auto: exact up to 2,000 rows, sparse (200 inducing points) beyond, up to 10,000."
    )
    promote: Literal["never", "if_better", "always"] = Field(
        "if_better",
        description="if_better: the alias moves only when the new version's mean leave-one-out MSLL on its dataset "
        "is lower than the current version's on the same rows and no output's R^2 drops by more than 0.001.",
    )
    alias: str = Field("live", description="The alias the promotion moves.")
    force: bool = Field(False, description="Publish READY even when the fit fails the quality gate (else REJECTED).")
    description: str = Field("", max_length=2000, description="The version's description.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seeds the restarts' starts and the inducing points.")


class TrainingProgress(BaseModel):
    stage: Literal["queued", "checking data", "fitting", "validating", "publishing", "done"]
    fits_done: int = 0
    fits_total: int


class TrainingJobStatus(BaseModel):
    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    model: str
    status: TRAINING_STATUSES
    progress: TrainingProgress
    attempts: int = Field(
        description="Deliveries that claimed the job (at most 2: a timed-out attempt is retried once)."
    )
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    version: int | None = Field(description="The version the job published.")
    version_state: Literal["READY", "REJECTED", "FAILED"] | None
    promoted: bool | None
    promotion: dict[str, Any] | None = Field(description='{"rule", "alias", "from", "to", "reason", "scores"?}')
    validation: dict[str, dict[str, Any]] | None = Field(
        description="Per output: leave-one-out n_points, rmse, r2, coverage_95, msll."
    )
    error: str | None
    dataset: dict[str, Any] | None = Field(description='{"id", "rows", "sha256"}: the data fitted.')
    options: dict[str, Any]
    notes: list[str]
    links: dict[str, str]
    upload_url: str | None = Field(None, description="Where to PUT the data (AWAITING_UPLOAD only).")
    start: str | None = Field(None, description="What to POST once uploaded (AWAITING_UPLOAD only).")
