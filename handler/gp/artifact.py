"""The model artifact: its manifest, its checksum, and where it comes from (the package or S3).

Nothing here imports GPy or pydantic: the manifest is read on every cold start, and an artifact (a posterior
file, or for the GPy route a pickle) is only handed on once its size and bytes match what the manifest says.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 3
# Version 2 manifests (before posterior files) describe pickles; they keep working, served by the GPy route.
READABLE_SCHEMA_VERSIONS = (2, 3)
FORMATS = {"npz": ".npz", "pickle": ".pkl"}  # the artifact's format, and the suffix its file name has
# Names appear in JSON keys and in error paths such as `[3].name` and `name[3]`.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
MAX_MANIFEST_BYTES = 1024 * 1024
DOWNLOAD_CHUNK_BYTES = 8 * 2**20
# What of its training points a manifest lets GET /model/training-data serve (`published_training_data`).
PUBLISHED_TRAINING_DATA = ("inputs", "inputs_and_outputs")
# A unit labels an axis or a column: a short printable string ("m", "m3/yr", "1" for a fraction).
MAX_UNIT_CHARACTERS = 32
UNIT_MARKUP = frozenset("$<>&\"'\\`{}")


class ModelUnavailableError(RuntimeError):
    """The artifact could not be loaded. The message, which can quote the artifact, is for the log, never a caller."""


def manifest_path_for(model_path: Path) -> Path:
    """`pretrained-model.pkl` -> `pretrained-model.manifest.json`."""
    return model_path.with_name(f"{model_path.stem}.manifest.json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(DOWNLOAD_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: Any) -> str:
    """A model, feature or output name; ValueError says what a name must be."""
    if not (isinstance(name, str) and NAME_PATTERN.fullmatch(name)):  # fullmatch: `$` would let "x1\n" in
        raise ValueError(f"{name!r} must start with a letter or _ and hold only letters, digits, _ or - (64 at most)")
    return name


def check_names(names: Any) -> tuple[str, ...]:
    """Feature or output names: a non-empty list of distinct names, each as `check_name` wants."""
    if not (isinstance(names, list) and names):
        raise ValueError("expected a non-empty list of names")
    for name in names:
        check_name(name)
    if len(set(names)) != len(names):
        raise ValueError("names must be distinct")
    return tuple(names)


@dataclass(frozen=True)
class Manifest:
    """What the service reads of the manifest; the full schema is `handler.api.schemas.ModelManifest`.

    Read without pydantic, which would add ~150 ms to every cold start.
    """

    model_type: str
    format: str  # "npz" (a posterior file: numpy only) or "pickle" (the GPy route)
    sha256: str
    name: str
    version: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    bounds: np.ndarray  # (n_features, 2): lower, upper
    document: dict[str, Any]  # the whole file, for GET /model
    published_training_data: str | None = None  # one of PUBLISHED_TRAINING_DATA; None: nothing is published
    # (n_features, 2): each feature's physical limits (`limits`), never widened; -inf/inf where open or not given
    limits: np.ndarray | None = None
    units: dict[str, str] = field(default_factory=dict)  # feature or output -> unit (`units`), where given

    @classmethod
    def parse(cls, text: bytes) -> Manifest:
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object")
        if (schema := document.get("schema_version")) not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(
                f"schema_version is {schema!r}, expected {MANIFEST_SCHEMA_VERSION}: "
                "write it with scripts/package_model.py"
            )
        artifact_format = document.get("format", "pickle") if schema == 3 else "pickle"
        if artifact_format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {artifact_format!r}"[:200])
        artifact = document.get("artifact")
        if not (
            isinstance(artifact, str)
            and Path(artifact).name == artifact
            and artifact.endswith(FORMATS[artifact_format])
        ):
            raise ValueError(f"artifact must be a file name ending {FORMATS[artifact_format]}")
        model_type, sha256, name, version, bounds = (
            document.get(k) for k in ("model_type", "sha256", "name", "version", "bounds")
        )
        if not isinstance(model_type, str):
            raise ValueError("model_type must be a string")
        if not (isinstance(sha256, str) and len(sha256) == 64 and set(sha256) <= set("0123456789abcdef")):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        name = _checked("name", name, check_name)
        features = _checked("features", document.get("features"), check_names)
        outputs = _checked("outputs", document.get("outputs"), check_names)
        if not (isinstance(version, str) and version):
            raise ValueError("version must be a non-empty string")
        if not (isinstance(bounds, dict) and tuple(bounds) == features):
            raise ValueError("bounds must list exactly the features, in order")
        try:
            bounds_array = np.array([bounds[f] for f in features], dtype=float).reshape(len(features), 2)
        except (TypeError, ValueError):
            raise ValueError("each bound must be a [lower, upper] pair of numbers") from None
        if not (np.isfinite(bounds_array).all() and np.all(bounds_array[:, 0] < bounds_array[:, 1])):
            raise ValueError("each bound must be finite with lower < upper")
        published = document.get("published_training_data")
        if published is not None and published not in PUBLISHED_TRAINING_DATA:
            raise ValueError(f"published_training_data must be one of {', '.join(PUBLISHED_TRAINING_DATA)} or absent")
        limits = _checked("limits", document.get("limits"), lambda value: check_limits(value, features, bounds_array))
        units = _checked("units", document.get("units"), lambda value: check_units(value, features + outputs))
        return cls(
            model_type,
            artifact_format,
            sha256,
            name,
            version,
            features,
            outputs,
            bounds_array,
            document,
            published,
            limits,
            units,
        )

    def domain(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper ends of the inputs the service answers for: the training bounds widened by `margin` x
        each range, within the physical limits (never widened). Every check of an input's range derives from this."""
        low, high = self._widened(margin)
        if self.limits is None:
            return low, high
        return np.maximum(low, self.limits[:, 0]), np.minimum(high, self.limits[:, 1])

    def physical_ends(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Which ends of `domain(margin)` are physical limits (True) rather than the widened training bounds."""
        if self.limits is None:
            return np.zeros(len(self.features), bool), np.zeros(len(self.features), bool)
        low, high = self._widened(margin)
        return self.limits[:, 0] > low, self.limits[:, 1] < high

    def _widened(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        width = self.bounds[:, 1] - self.bounds[:, 0]
        return self.bounds[:, 0] - margin * width, self.bounds[:, 1] + margin * width

    def describe_domain(self, j: int, margin: float) -> str:
        """Feature j's domain for a message: `[-0.1, 1.1]`, or `[0, 55000] (0 is r's physical limit)`."""
        low, high = (float(end[j]) for end in self.domain(margin))
        ends = [
            f"{end:g}"
            for end, end_is_limit in zip((low, high), self.physical_ends(margin), strict=True)
            if end_is_limit[j]
        ]
        if not ends:
            return f"[{low:g}, {high:g}]"
        physical = f"{ends[0]} is" if len(ends) == 1 else f"{ends[0]} and {ends[1]} are"
        return f"[{low:g}, {high:g}] ({physical} {self.features[j]}'s physical limit{'s' * (len(ends) - 1)})"

    def domain_violations(self, X: np.ndarray, margin: float, limit: int = 20) -> list[DomainViolation]:
        """Points outside the domain (at most `limit` of them), each saying which end it passed."""
        low, high = self.domain(margin)
        outside = (low > X) | (high < X)
        if not outside.any():
            return []
        physical_low, physical_high = self.physical_ends(margin)
        rows, cols = np.nonzero(outside)
        violations = []
        for r, c in zip(rows[:limit], cols[:limit], strict=True):
            value, below = float(X[r, c]), bool(X[r, c] < low[c])
            physical = bool(physical_low[c] if below else physical_high[c])
            violations.append(
                DomainViolation(
                    int(r),
                    self.features[c],
                    value,
                    float(low[c]),
                    float(high[c]),
                    below,
                    physical,
                    self.units.get(self.features[c], ""),
                )
            )
        return violations


@dataclass(frozen=True)
class DomainViolation:
    row: int
    feature: str
    value: float
    low: float
    high: float
    below: bool = True  # below the low end (else above the high end)
    physical: bool = False  # the end passed is a physical limit (else the widened training range's)
    unit: str = ""  # the feature's unit, where the manifest gives one

    def describe(self) -> str:
        """`-1000 is outside the allowed range [0, 55000] m: below the physical limit 0` (or `...: above the training
        domain`, the training bounds widened by DOMAIN_MARGIN)."""
        end = self.low if self.below else self.high
        # 6 digits, unless they would show the value equal to the end it passed (1 + 2e-16 against 1)
        digits = ".17g" if f"{self.value:g}" == f"{end:g}" else "g"
        side = "below" if self.below else "above"
        which = f"the physical limit {end:{digits}}" if self.physical else "the training domain"
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{self.value:{digits}} is outside the allowed range [{self.low:{digits}}, {self.high:{digits}}]{unit}: "
            f"{side} {which}"
        )


def check_limits(value: Any, features: tuple[str, ...], bounds: np.ndarray) -> np.ndarray | None:
    """`limits` as an (n_features, 2) array (-inf/inf where open or not given); None when absent.

    `{"feature": [low or null, high or null]}`: each names a feature, has at least one end, low < high, and
    contains the feature's training bounds (a model is never fitted where its inputs cannot be).
    """
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError("expected an object of feature: [low or null, high or null]")
    limits = np.tile([-np.inf, np.inf], (len(features), 1))
    position = {name: j for j, name in enumerate(features)}  # a manifest may name thousands of features
    for name, pair in value.items():
        if name not in position:
            raise ValueError(f"{str(name)[:64]!r} is not a feature ({', '.join(features)})"[:300])
        if not (isinstance(pair, list) and len(pair) == 2 and pair != [None, None]):
            raise ValueError(f"{name}: expected [low or null, high or null] with at least one end")
        if not all(end is None or (type(end) in (int, float) and np.isfinite(end)) for end in pair):
            raise ValueError(f"{name}: each end must be a finite number or null")
        j = position[name]
        low = -np.inf if pair[0] is None else float(pair[0])
        high = np.inf if pair[1] is None else float(pair[1])
        if not low < high:
            raise ValueError(f"{name}: expected low < high, got [{low:g}, {high:g}]")
        if not (low <= bounds[j, 0] and bounds[j, 1] <= high):
            raise ValueError(
                f"{name}: [{low:g}, {high:g}] does not contain the training bounds [{bounds[j, 0]:g}, {bounds[j, 1]:g}]"
            )
        limits[j] = low, high
    return limits


def check_units(value: Any, names: tuple[str, ...]) -> dict[str, str]:
    """`units`: {feature or output: a short printable string}; {} when absent."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise ValueError("expected an object of feature or output: unit")
    known = set(names)
    for name, unit in value.items():
        if name not in known:
            raise ValueError(f"{str(name)[:64]!r} is not a feature or output ({', '.join(names)})"[:300])
        if not (isinstance(unit, str) and 0 < len(unit) <= MAX_UNIT_CHARACTERS and unit.isprintable()):
            raise ValueError(f"{name}: expected a printable string of 1 to {MAX_UNIT_CHARACTERS} characters")
        if markup := sorted(set(unit) & UNIT_MARKUP):
            # a unit is drawn as text on axes: matplotlib reads $...$ as TeX and Plotly <...> and &...; as HTML
            raise ValueError(f"{name}: a unit may not hold {' '.join(markup)} (they are markup where units are drawn)")
    return dict(value)


def _checked[T](kind: str, value: Any, check: Callable[[Any], T]) -> T:
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{kind}: {exc}") from None


def read_manifest(text: bytes, where: str) -> Manifest:
    try:
        return Manifest.parse(text)
    # json.JSONDecodeError and UnicodeDecodeError are ValueErrors; an integer too large for a float (10**400 as a
    # bound) raises OverflowError or TypeError where it is compared or converted: all mean the manifest is invalid
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ModelUnavailableError(f"model manifest {where} is invalid: {exc}") from exc


class ArtifactSource(Protocol):
    """Where the artifact (a posterior file or a pickle) and its manifest come from."""

    def fetch_manifest(self) -> Manifest:
        """The manifest, parsed."""

    def fetch_model(self, manifest: Manifest) -> Path:
        """A local path to the artifact, its bytes checked against the manifest's sha256."""


@dataclass(frozen=True)
class PackagedArtifact:
    """The artifact inside the function's package, its manifest beside it (`NAME.npz` -> `NAME.manifest.json`).

    `model_path` names the artifact; where no file is there, the manifest beside it names the artifact (so the
    template's MODEL_PATH serves a posterior file or a pickle, whichever was packaged).
    """

    model_path: Path

    def fetch_manifest(self) -> Manifest:
        path = manifest_path_for(self.model_path)
        if not path.is_file():
            raise ModelUnavailableError(f"model manifest {path.name} is missing")
        if path.stat().st_size > MAX_MANIFEST_BYTES:  # GET /model answers it: it must fit an answer
            raise ModelUnavailableError(f"model manifest {path.name} is over {MAX_MANIFEST_BYTES} bytes")
        manifest = read_manifest(path.read_bytes(), path.name)
        if not self._artifact(manifest).is_file():
            raise ModelUnavailableError(f"model artifact {self._artifact(manifest).name} is missing")
        return manifest

    def fetch_model(self, manifest: Manifest) -> Path:
        artifact = self._artifact(manifest)
        if artifact.suffix != FORMATS[manifest.format]:
            raise ModelUnavailableError(f"model artifact {artifact.name} is not a {manifest.format} file")
        check_size(artifact.stat().st_size, manifest, artifact.name)
        if sha256_of(artifact) != manifest.sha256:
            raise ModelUnavailableError(
                f"model artifact {artifact.name} does not match its manifest checksum (corrupt or replaced)"
            )
        return artifact

    def _artifact(self, manifest: Manifest) -> Path:
        if self.model_path.is_file():
            return self.model_path
        return self.model_path.with_name(manifest.document["artifact"])


def check_size(size: int, manifest: Manifest, where: str) -> None:
    """Refuse a posterior file larger than its manifest's arrays need, before it is hashed, downloaded or opened."""
    if manifest.format != "npz":
        return  # a pickle's size says nothing; the restricted unpickler bounds what it may build
    from handler.gp import posterior_file

    try:
        shapes = posterior_file.expected_shapes(
            manifest.document.get("posterior"), len(manifest.features), len(manifest.outputs)
        )
    except posterior_file.PosteriorFileError as exc:
        raise ModelUnavailableError(f"model manifest's posterior is invalid: {exc}") from exc
    if size > posterior_file.largest_file_bytes(shapes):
        raise ModelUnavailableError(f"model artifact {where} is larger than its manifest's arrays need")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/path/model.npz` -> ("bucket", "path/model.npz") (or a .pkl); ValueError otherwise."""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(.+\.(?:npz|pkl))", uri)
    if match is None:
        raise ValueError(f"expected s3://BUCKET/KEY.npz (or KEY.pkl), got {uri!r}")
    return match.group(1), match.group(2)


@dataclass
class S3Artifact:
    """An artifact in S3 with its manifest beside it (`KEY.npz` or `KEY.pkl` -> `KEY.manifest.json`).

    Downloaded once per execution environment into `cache_dir` (Lambda's /tmp), streamed and hashed
    on the way; a file left by an earlier attempt in the same environment is re-hashed, not re-fetched.
    """

    uri: str
    cache_dir: Path
    client: Any = None  # a boto3 S3 client; made on first use (importing boto3 costs ~0.2 s)

    def __post_init__(self) -> None:
        self.bucket, self.key = parse_s3_uri(self.uri)
        self.manifest_key = str(manifest_path_for(Path(self.key)))

    def _s3(self) -> Any:
        if self.client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)
            self.client = boto3.client("s3", config=config)
        return self.client

    def _get(self, key: str) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        uri = f"s3://{self.bucket}/{key}"
        try:
            return self._s3().get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ModelUnavailableError(f"{uri} does not exist") from exc
            if code in ("AccessDenied", "403", "AllAccessDisabled"):
                raise ModelUnavailableError(f"access to {uri} is denied") from exc
            if code == "NoSuchBucket":
                raise ModelUnavailableError(f"bucket {self.bucket} does not exist") from exc
            raise ModelUnavailableError(f"{uri} could not be read: {code or exc}") from exc
        except BotoCoreError as exc:
            raise ModelUnavailableError(f"{uri} could not be read: {type(exc).__name__}") from exc

    def fetch_manifest(self) -> Manifest:
        body = self._get(self.manifest_key)["Body"]
        try:
            text = body.read(MAX_MANIFEST_BYTES + 1)
        finally:
            body.close()
        if len(text) > MAX_MANIFEST_BYTES:
            raise ModelUnavailableError(f"model manifest {self.manifest_key} is over {MAX_MANIFEST_BYTES} bytes")
        return read_manifest(text, f"s3://{self.bucket}/{self.manifest_key}")

    def fetch_model(self, manifest: Manifest) -> Path:
        suffix = FORMATS[manifest.format]
        if not self.key.endswith(suffix):
            raise ModelUnavailableError(f"s3://{self.bucket}/{self.key} is not a {manifest.format} file ({suffix})")
        target = self.cache_dir / f"{manifest.sha256}{suffix}"
        if target.is_file() and sha256_of(target) == manifest.sha256:
            return target
        from botocore.exceptions import BotoCoreError

        response = self._get(self.key)
        body = response["Body"]
        try:
            check_size(int(response.get("ContentLength") or 0), manifest, f"s3://{self.bucket}/{self.key}")
        except ModelUnavailableError:
            body.close()
            raise
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=self.cache_dir, prefix=".download-", delete=False) as tmp:
            try:
                for block in body.iter_chunks(DOWNLOAD_CHUNK_BYTES):
                    digest.update(block)
                    tmp.write(block)
            except (OSError, BotoCoreError) as exc:
                os.unlink(tmp.name)
                # Typically /tmp is full: EphemeralStorageSize in the template sets its size.
                raise ModelUnavailableError(f"s3://{self.bucket}/{self.key} could not be downloaded: {exc}") from exc
            finally:
                body.close()
        if digest.hexdigest() != manifest.sha256:
            os.unlink(tmp.name)
            raise ModelUnavailableError(
                f"s3://{self.bucket}/{self.key} does not match its manifest checksum (corrupt or replaced)"
            )
        os.replace(tmp.name, target)
        logger.info("model downloaded", extra={"uri": self.uri, "bytes": target.stat().st_size})
        return target


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file so a crash never leaves a half-written artifact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)  # Lambda runs as a non-root user: the packaged file must stay readable
    os.replace(tmp.name, path)
