"""The registry, read: GET /models, GET /models/{name}, and the Open Inference Protocol's repository index.

Writes (publish, check, aliases, delete) are another function's: handler.registry_admin_app.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from handler.api.errors import RequestError
from handler.api.model_routes import parse_ref, resolver
from handler.api.parsing import BodyLimits, decode_body, load_body
from handler.api.services import Services
from handler.gp.artifact import ModelUnavailableError
from handler.registry.names import DEFAULT_ALIAS
from handler.registry.store import Target

router = Router()
_services: Services | None = None
VERSIONS_SHOWN = 50
# The registry's states as the protocol's (READY, UNAVAILABLE, LOADING), with why
INDEX_STATES = {
    "READY": ("READY", ""),
    "PENDING": ("UNAVAILABLE", "published; waiting for its upload and check"),
    "CHECKING": ("LOADING", "being checked"),
    "FAILED": ("UNAVAILABLE", "its check failed"),
}
# {"ready": true}, generously: what the body may hold before it is refused as not that (400), rather than as too large
INDEX_REQUEST_LIMITS = BodyLimits(max_bytes=64 * 1024, max_containers=1000, max_members=1000)


def configure(services: Services) -> None:
    global _services
    _services = services


def _packaged_entry() -> dict[str, Any] | None:
    """The packaged model as GET /models lists it; None when its manifest cannot be read (said in the log)."""
    try:
        manifest = resolver().packaged().manifest()
    except ModelUnavailableError:
        return None
    return {
        "name": manifest.name,
        "source": "packaged",
        "latest_version": manifest.version,
        "aliases": {DEFAULT_ALIAS: {"version": manifest.version}},
        "url": f"/models/{manifest.name}",
    }


@router.get("/models")
def list_models() -> dict[str, Any]:
    models = []
    if (packaged := _packaged_entry()) is not None:
        models.append(packaged)
    if resolver().configured:
        for item in resolver().store.models():  # one query: each model's item holds its aliases' targets
            name = str(item["sk"])
            aliases = {
                alias: Target.from_item(target).document() for alias, target in (item.get("aliases") or {}).items()
            }
            models.append(
                {
                    "name": name,
                    "source": "registry",
                    "latest_version": int(item.get("latest", 0)),
                    "aliases": aliases,
                    "url": f"/models/{name}",
                }
            )
    return {"models": models}


@router.get("/models/<name>")
def describe_model(name: str) -> dict[str, Any]:
    ref = parse_ref(name)
    if ref.alias is not None:
        raise RequestError(
            HTTPStatus.NOT_FOUND,
            "model not found",
            [("model", f"describe the model by its name alone: /models/{ref.name}")],
        )
    store = resolver().store if resolver().configured else None
    if store is None or store.model(ref.name) is None:
        packaged = _packaged_entry()
        if packaged is not None and packaged["name"] == ref.name:
            return {**packaged, "versions": [], "history": []}
        resolver().resolve(ref)  # raises the 404 that names the models there are
    assert store is not None
    aliases = store.aliases(ref.name)
    versions = store.versions(ref.name, VERSIONS_SHOWN)
    # the versions the aliases serve are shown even when newer ones (say, never uploaded) outnumber them
    shown = {v.version for v in versions}
    for number in sorted({n for a in aliases for n in a.target.versions()} - shown, reverse=True):
        if (record := store.version(ref.name, number)) is not None:
            versions.append(record)
    return {
        "name": ref.name,
        "source": "registry",
        "versions": [v.document() for v in sorted(versions, key=lambda v: v.version, reverse=True)],
        "aliases": {
            a.alias: {**a.target.document(), "revision": a.revision, "updated_by": a.updated_by} for a in aliases
        },
        "history": store.history(ref.name),
    }


@router.post("/v2/repository/index")
def repository_index() -> list[dict[str, Any]]:
    """MLServer's and Triton's model repository extension: every model version this API serves, with its state.

    The body is empty (Triton's client sends none) or `{"ready": true}` for the READY versions only. Each entry is
    `{"name", "version", "state", "reason"}`; states are the protocol's: READY, LOADING (published, not yet
    checked), UNAVAILABLE (its check failed, or the packaged model cannot load).
    """
    ready_only = _ready_only()
    index: list[dict[str, Any]] = []
    try:
        packaged = resolver().packaged()
        manifest = packaged.manifest()
        state = "READY" if packaged.is_loaded or _loadable(packaged) else "UNAVAILABLE"
        reason = "" if state == "READY" else "the model could not be loaded; the reason is logged"
        index.append({"name": manifest.name, "version": manifest.version, "state": state, "reason": reason})
    except ModelUnavailableError:
        index.append({"name": "", "version": "", "state": "UNAVAILABLE", "reason": "the packaged model is unavailable"})
    if resolver().configured:
        store = resolver().store
        for name in store.model_names():  # at most MAX_MODELS, one small query each
            for number, stored, failure in store.version_states(name):
                if stored == "DELETED" or (ready_only and stored != "READY"):
                    continue
                state, reason = INDEX_STATES[stored]
                reason = failure or reason
                index.append({"name": name, "version": str(number), "state": state, "reason": reason})
    return [entry for entry in index if entry["state"] == "READY"] if ready_only else index


def _ready_only() -> bool:
    """The request's `ready` (the protocol's RepositoryIndexRequest): false unless the body says true."""
    event = router.current_event
    if not event.body:
        return False
    body = decode_body(event.body, bool(event.is_base64_encoded))
    if not body.strip():
        return False
    request = load_body(body, INDEX_REQUEST_LIMITS)
    if not isinstance(request, dict) or not isinstance(request.get("ready", False), bool) or set(request) - {"ready"}:
        message = 'expected an empty body or {"ready": true|false}'
        raise RequestError(HTTPStatus.BAD_REQUEST, "invalid repository index request", [("body", message)])
    return bool(request.get("ready", False))


def _loadable(model: Any) -> bool:
    try:
        model.get()
    except ModelUnavailableError:
        return False
    return True
