"""Publishing a version: its manifest checked and stored (PENDING), its artifact uploaded by the publisher, then the
loader's own checks (size, sha256, shapes, factor, probe prediction) before it is READY, or FAILED with a reason.

The reason a version failed is recorded as one of a few fixed sentences; the loader's own words, which can quote
the artifact, go to the log only.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from handler.gp import posterior_file
from handler.gp.artifact import MAX_MANIFEST_BYTES, Manifest, ModelUnavailableError, PackagedArtifact, read_manifest
from handler.gp.model import load_model
from handler.registry.store import RegistryConflictError, RegistryStore, Version

logger = logging.getLogger(__name__)

# The prediction function downloads a version into /tmp before loading it (then removes it): 512 MiB there, which
# SnapStart does not let grow. A version is at most this, leaving room for the download's own temporary file.
MAX_ARTIFACT_BYTES = 448 * 2**20
# A version's record is one DynamoDB item (400 KB at most) holding its manifest; GET /models/{name} answers 50 of them
# within Lambda's 6 MB, so what each shows of its manifest is bounded too.
MAX_STORED_MANIFEST_BYTES = 300_000
MAX_DESCRIPTION_CHARS = 2_000
MAX_METRICS_BYTES = 16_384


class PublishRefusedError(ValueError):
    """A publish request that cannot become a version (the manifest is invalid, a pickle, too large)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# A failed check's recorded reason: the first whose key words the loader's message holds.
REASONS = (
    (("does not exist",), "the upload vanished or changed while it was checked: publish the model again"),
    (("larger than",), "the artifact is larger than its manifest's arrays need"),
    (("checksum", "sha256", "size differs"), "the artifact does not match its manifest's sha256 or size"),
    (("not finite", "overflow"), "the model's predictions across its bounds are not finite"),
    (("factor",), "the artifact's factor does not belong to its kernel"),
)
OTHER_REASON = "the artifact failed the loader's checks (shapes, arrays or probe prediction); the reason is logged"


def failure_reason(message: str) -> str:
    lowered = message.lower()
    for words, reason in REASONS:
        if any(word in lowered for word in words):
            return reason
    return OTHER_REASON


def check_manifest(document: Any, name: str, size: Any) -> tuple[dict[str, Any], int]:
    """The manifest as the registry stores it (named after the registry's name), and the artifact's declared size."""
    if not isinstance(document, dict):
        raise PublishRefusedError("manifest", "expected the manifest's JSON object, as package_model.py writes it")
    text = json.dumps(document).encode()
    if len(text) > MAX_MANIFEST_BYTES:
        raise PublishRefusedError("manifest", f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = read_manifest(text, "sent")
    except ModelUnavailableError as exc:
        raise PublishRefusedError("manifest", str(exc)[:300]) from None
    for field, limit in (("description", MAX_DESCRIPTION_CHARS), ("source", MAX_DESCRIPTION_CHARS)):
        value = document.get(field)
        if value is not None and len(json.dumps(value)) > limit:
            raise PublishRefusedError(f"manifest.{field}", f"at most {limit} characters in the registry")
    for field in ("holdout", "leave_one_out"):
        if len(json.dumps(document.get(field))) > MAX_METRICS_BYTES:
            raise PublishRefusedError(f"manifest.{field}", f"at most {MAX_METRICS_BYTES} bytes of metrics")
    if len(text) > MAX_STORED_MANIFEST_BYTES:
        raise PublishRefusedError(
            "manifest", f"the registry keeps manifests of at most {MAX_STORED_MANIFEST_BYTES} bytes (a DynamoDB item)"
        )
    if manifest.format != posterior_file.FORMAT:
        raise PublishRefusedError(
            "manifest",
            "only posterior files (.npz) are published; a pickle is served only as the packaged model "
            "(package it again with scripts/package_model.py, which writes a posterior file)",
        )
    largest = min(_largest_bytes(manifest), MAX_ARTIFACT_BYTES)
    if type(size) is not int or not 0 < size <= largest:
        raise PublishRefusedError(
            "size",
            f"expected the artifact's size in bytes, from 1 to {largest} for this manifest's arrays (a registry "
            f"version is at most {MAX_ARTIFACT_BYTES // 2**20} MiB: the prediction function's /tmp holds it while "
            "it loads; a larger model is served as the packaged one)",
        )
    # Named and numbered as the registry serves it (GET /models/{name}/manifest, V2 metadata, the explorer); what
    # it was packaged as is kept beside.
    stored = {**document, "name": name, "packaged_as": {"name": manifest.name, "version": manifest.version}}
    return stored, size


def _largest_bytes(manifest: Manifest) -> int:
    try:
        shapes = posterior_file.expected_shapes(
            manifest.document.get("posterior"), len(manifest.features), len(manifest.outputs)
        )
    except posterior_file.PosteriorFileError as exc:
        raise PublishRefusedError("manifest", f"its posterior is invalid: {exc}"[:300]) from None
    return posterior_file.largest_file_bytes(shapes)


def publish_artifact(
    store: RegistryStore,
    name: str,
    artifact: bytes,
    manifest: dict[str, Any],
    by: str,
    cache_dir: Path,
    details: dict[str, Any] | None = None,
    rejected_reason: str | None = None,
) -> Version:
    """A version made on the service (trained, conditioned): the manifest checked as a publish's, the file put
    where an upload goes, then the same check. `rejected_reason`: it failed the quality gate, so once its check
    passes it is REJECTED with that reason rather than READY (kept, inspectable, never served)."""
    stored, size = check_manifest(manifest, name, len(artifact))
    record = store.new_version(name, stored, size, by, details)
    store.put_upload(name, record.version, artifact)
    return check_version(store, record, cache_dir, rejected_reason=rejected_reason)


def check_version(
    store: RegistryStore, record: Version, cache_dir: Path, rejected_reason: str | None = None
) -> Version:
    """The loader's checks on the uploaded artifact: READY, or FAILED with a fixed reason (the detail is logged).

    One check at a time holds the version (CHECKING); S3 or DynamoDB failing on the way is no verdict on the model:
    the version goes back to PENDING and the caller is told to try again (RegistryUnavailableError, a 503).
    """
    if record.state not in ("PENDING", "CHECKING"):
        raise RegistryConflictError("version", f"{record.name} version {record.version} is {record.state} already")
    uploaded = store.uploaded_size(record.name, record.version)
    if uploaded is None:  # nothing to check yet: it stays PENDING, to be checked once uploaded
        raise RegistryConflictError(
            "upload",
            f"{record.name} version {record.version} has no upload yet: PUT the artifact to its upload URL, then check",
        )
    store.claim(record.name, record.version)
    try:
        verdict = _verdict(store, record, uploaded, cache_dir)
    except BaseException:
        store.release(record.name, record.version)
        raise
    if verdict is not None:
        # The reason in the message too: a runtime's plain log format drops `extra`.
        logger.error(
            "published version %s/%s failed its check: %s",
            record.name,
            record.version,
            verdict,
            extra={"model": f"{record.name}/{record.version}", "reason": verdict},
        )
        return store.settle(record.name, record.version, "FAILED", failure_reason(verdict))
    if rejected_reason is not None:
        return store.settle(record.name, record.version, "REJECTED", rejected_reason[:MAX_DESCRIPTION_CHARS])
    return store.settle(record.name, record.version, "READY")


def _verdict(store: RegistryStore, record: Version, uploaded: tuple[int, str], cache_dir: Path) -> str | None:
    """Why the upload is not the model its manifest describes, or None when it is; AWS failures raise."""
    size, etag = uploaded
    if size != record.size:
        return f"size differs: uploaded {size} bytes, declared {record.size}"
    try:
        store.seal_upload(record.name, record.version, etag)
    except ModelUnavailableError as exc:  # the upload vanished or changed since it was measured
        return str(exc)
    store.put_manifest(record)
    folder = Path(tempfile.mkdtemp(prefix="check-", dir=_existing(cache_dir)))
    try:
        path = folder / "model.npz"
        store.download_artifact(record.name, record.version, path)  # S3's faults and a full disk: raised
        manifest = read_manifest(json.dumps(record.manifest).encode(), "stored")
        try:
            load_model(PackagedArtifact(path), manifest)
        except ModelUnavailableError as exc:
            return str(exc)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return None


def _existing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
