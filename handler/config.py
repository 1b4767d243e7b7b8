"""Service settings, read once from the environment when the function starts.

An invalid value fails the import (a Lambda init error), not the tenth request.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # /var/task inside Lambda
DEFAULT_MODEL_PATH = Path("model_artifacts/pretrained-model.pkl")

# Lambda caps synchronous request and response payloads at 6 MB. A point costs ~90-150 bytes
# of JSON in and ~60 bytes out, so 10,000 points stay below 1.5 MB either way.
LAMBDA_PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: Path = Field(
        default=DEFAULT_MODEL_PATH,
        description="Pickled model; a relative path is taken from the project root (LAMBDA_TASK_ROOT).",
    )
    max_batch_size: int = Field(default=10_000, ge=1, le=50_000)
    max_body_bytes: int = Field(default=LAMBDA_PAYLOAD_LIMIT_BYTES, ge=1024, le=LAMBDA_PAYLOAD_LIMIT_BYTES)
    domain_margin: float = Field(
        default=0.1,
        ge=0.0,
        le=10.0,
        description="How far outside the training bounds a point may lie, as a fraction of each feature's range.",
    )

    @property
    def resolved_model_path(self) -> Path:
        return self.model_path if self.model_path.is_absolute() else PROJECT_ROOT / self.model_path


_ENVIRONMENT = {
    "model_path": "MODEL_PATH",
    "max_batch_size": "MAX_BATCH_SIZE",
    "max_body_bytes": "MAX_BODY_BYTES",
    "domain_margin": "DOMAIN_MARGIN",
}


class SettingsError(RuntimeError):
    """An environment variable holds a value the service cannot run with."""


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build the settings from environment variables (unset ones keep their defaults)."""
    environ = dict(os.environ) if environ is None else environ
    given = {field: environ[name] for field, name in _ENVIRONMENT.items() if environ.get(name, "") != ""}
    try:
        return Settings.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_ENVIRONMENT[str(error['loc'][0])]}: {error['msg']}" if error["loc"] else error["msg"]
            for error in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from exc
