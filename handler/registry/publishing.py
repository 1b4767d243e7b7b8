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
from handler.gp.artifact import MAX_MANIFEST_BYTES, Manifest, ModelUnavailableError, S3Artifact, read_manifest
from handler.gp.model import load_model
from handler.registry.store import RegistryConflictError, RegistryStore, Version, artifact_key

logger = logging.getLogger(__name__)

# The prediction function downloads a version into /tmp before loading it (then removes it): 512 MiB there, which
# SnapStart does not let grow. A version is at most this, leaving room for the download's own temporary file.
MAX_ARTIFACT_BYTES = 448 * 2**20


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


def check_version(store: RegistryStore, record: Version, cache_dir: Path) -> Version:
    """The loader's checks on the uploaded artifact: READY, or FAILED with a fixed reason (the detail is logged)."""
    if record.state != "PENDING":
        raise RegistryConflictError("version", f"{record.name} version {record.version} is {record.state} already")
    uploaded = store.uploaded_size(record.name, record.version)
    if uploaded is None:  # nothing to check yet: it stays PENDING, to be checked once uploaded
        raise RegistryConflictError(
            "upload",
            f"{record.name} version {record.version} has no upload yet: PUT the artifact to its upload URL, then check",
        )
    try:
        size, etag = uploaded
        if size != record.size:
            raise ModelUnavailableError(f"size differs: uploaded {size} bytes, declared {record.size}")
        store.seal_upload(record.name, record.version, etag)
        store.put_manifest(record)
        folder = Path(tempfile.mkdtemp(prefix="check-", dir=_existing(cache_dir)))
        try:
            source = S3Artifact(f"s3://{store.bucket}/{artifact_key(record.name, record.version)}", folder, store.s3)
            manifest = read_manifest(json.dumps(record.manifest).encode(), "stored")
            load_model(source, manifest)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    except ModelUnavailableError as exc:
        # The reason in the message too: a runtime's plain log format drops `extra`.
        logger.error(
            "published version %s/%s failed its check: %s",
            record.name,
            record.version,
            exc,
            extra={"model": f"{record.name}/{record.version}", "reason": str(exc)},
        )
        return store.settle(record.name, record.version, "FAILED", failure_reason(str(exc)))
    return store.settle(record.name, record.version, "READY")


def _existing(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
