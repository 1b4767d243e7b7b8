"""The registry's write function (RegistryAdminFunction): publish and check versions, move and roll back aliases,
delete versions. Nothing else, and the only function allowed to write the registry.

Apart from handler.app so that the prediction function's role can only read the registry, and so that writes
need the admin permission: in AuthMode API_KEY the admin key (REGISTRY_ADMIN_KEY_ID), in IAM a policy granting these
routes, in NONE nothing, unless RegistryWritesWithoutAuth turned writes on (REGISTRY_WRITES).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import numpy as np
import orjson
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.api.errors import RequestError, brief
from handler.api.events import malformed_event
from handler.api.parsing import decode_body
from handler.config import load_settings
from handler.gp.artifact import Manifest, read_manifest
from handler.registry.datasets import DatasetStore, datasets_from_store
from handler.registry.names import BadNameError, check_alias, check_model_name, check_version
from handler.registry.publishing import PublishRefusedError, check_manifest
from handler.registry.publishing import check_version as check_published
from handler.registry.store import (
    RegistryConflictError,
    RegistryNotFoundError,
    RegistryStore,
    RegistryUnavailableError,
    Target,
    store_from_settings,
)
from handler.training import observations
from handler.training.jobs import TrainingRequestError, TrainingStore, start_training, start_uploaded
from handler.training.observation_uploads import ObservationUploads

MAX_BODY_BYTES = 1_200_000  # a manifest (1 MB at most) and a few fields
# Observations: up to 2,000 rows inline, within API Gateway's 6 MB payload (2,000 rows of 100 values at ~25 bytes each)
MAX_OBSERVATIONS_BODY_BYTES = 6_000_000
# POST /models/{name}/train: 10,000 inline rows of a few columns (~1-2 MB as JSON), within API Gateway's 6 MB (10 MB
# less the base64 a binary body takes); counted before it is parsed, its rows before any of them is read.
MAX_TRAIN_BODY_BYTES = 6_000_000
MAX_REASON_CHARS = 500
MIN_CANARY_WEIGHT = 1e-6

settings = load_settings()
logger = Logger()
# handler.registry's own loggers (a failed check's reason) write through Powertools' JSON formatter, extras kept
copy_config_to_registered_loggers(source_logger=logger, include={"handler"})
app = APIGatewayRestResolver(serializer=lambda value: orjson.dumps(value).decode())
_store: RegistryStore | None = None
_training: tuple[DatasetStore, TrainingStore] | None = None


def store() -> RegistryStore:
    global _store
    if not settings.registry_enabled:
        raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "registry not configured", [("model", "no registry here")])
    if _store is None:
        _store = store_from_settings(settings)
    return _store


def training() -> tuple[DatasetStore, TrainingStore]:
    """The models' datasets and the training jobs (their records and queue): 503 where training is not deployed."""
    global _training
    if _training is None:
        if not settings.training_queue_url:
            raise RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE, "training not configured", [("training", "no training queue here")]
            )
        import boto3

        _training = (
            datasets_from_store(store()),
            TrainingStore(store(), boto3.client("sqs"), settings.training_queue_url),
        )
    return _training


def caller() -> str:
    identity = (app.current_event.request_context.get("identity") if app.current_event.request_context else None) or {}
    for name in ("apiKeyId", "userArn", "caller"):
        value = identity.get(name) if isinstance(identity, dict) else None
        if isinstance(value, str) and value:
            return value[:200]
    return "anonymous"


def require_admin() -> str:
    """Who is writing, if they may: 403 naming the permission otherwise."""
    if not settings.registry_writes:
        message = (
            "registry writes are off in this deployment (AuthMode NONE: deploy with RegistryWritesWithoutAuth=true)"
        )
        raise RequestError(HTTPStatus.FORBIDDEN, "admin permission required", [("permission", message)])
    who = caller()
    if settings.registry_admin_key_id and who != settings.registry_admin_key_id:
        message = (
            "this route needs the admin API key (deployed: the stack's AdminApiKeyId output; locally: make serve "
            "ADMIN_API_KEY=...)"
        )
        raise RequestError(HTTPStatus.FORBIDDEN, "admin permission required", [("permission", message)])
    return who


def body(limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    event = app.current_event
    raw = event.body or ""
    if len(raw) > limit * 4 // 3 + 4:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large", [("body", f"at most {limit} bytes")])
    data = decode_body(raw, bool(event.is_base64_encoded)) if raw else b"{}"
    if len(data) > limit:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large", [("body", f"at most {limit} bytes")])
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "invalid JSON", [("body", "expected a JSON object")]) from None
    if not isinstance(parsed, dict):
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid request", [("body", "expected a JSON object")])
    return parsed


def known_fields(data: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = [name for name in list(data)[: len(known) + 5] if name not in known]
    if unknown:
        details = [(brief(name), f"unknown field ({', '.join(known)})") for name in unknown[:5]]
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid request", details)


def reason_of(data: dict[str, Any]) -> str | None:
    reason = data.get("reason")
    if reason is not None and not (isinstance(reason, str) and len(reason) <= MAX_REASON_CHARS):
        raise RequestError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "invalid request", [("reason", f"a string of at most {MAX_REASON_CHARS}")]
        )
    return reason


def model_name(name: str) -> str:
    try:
        return check_model_name(name)
    except BadNameError as exc:
        raise RequestError(HTTPStatus.NOT_FOUND, "model not found", [("model", str(exc))]) from None


def version_number(value: Any, field: str, in_body: bool = False) -> int:
    if in_body and type(value) is not int:  # a path's version is text; a body's is a JSON integer
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid version", [(field, "expected an integer")])
    try:
        return check_version(value)
    except BadNameError as exc:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid version", [(field, str(exc))]) from None


def known_model(name: str) -> None:
    if store().model(name) is None:
        if name == _packaged_name():
            raise RegistryConflictError("model", f"{name} is the packaged model: it has one version and no aliases")
        raise RegistryNotFoundError("model", f"no model named {name} in the registry (publish a version first)")


@app.post("/models/<name>/versions")
def publish(name: str) -> Response:
    who = require_admin()
    name = model_name(name)
    data = body()
    known_fields(data, ("manifest", "size"))
    packaged = _packaged_name()
    if packaged is not None and name.casefold() == packaged.casefold():
        raise RegistryConflictError("model", f"{name} is the packaged model's name: publish under another name")
    manifest, size = check_manifest(data.get("manifest"), name, data.get("size"))
    record = store().new_version(name, manifest, size, who)
    answer = {
        "name": name,
        "version": record.version,
        "state": record.state,
        "upload": {"model": {"url": store().upload_url(name, record.version), "method": "PUT"}},
        "check": f"/models/{name}/versions/{record.version}/check",
    }
    return Response(HTTPStatus.CREATED, content_types.APPLICATION_JSON, orjson.dumps(answer).decode())


@app.post("/models/<name>/versions/<version>/check")
def check(name: str, version: str) -> Response:
    require_admin()
    name, number = model_name(name), version_number(version, "version")
    record = store().version(name, number)
    if record is None:
        raise RegistryNotFoundError("version", f"{name} has no version {number}")
    checked = check_published(store(), record, settings.model_cache_dir / "checks")
    status = HTTPStatus.OK if checked.state == "READY" else HTTPStatus.UNPROCESSABLE_ENTITY
    answer = {"name": name, **checked.document()}
    return Response(status, content_types.APPLICATION_JSON, orjson.dumps(answer).decode())


@app.post("/models/<name>/observations")
def post_observations(name: str) -> Response:
    """New simulations: appended, scored by the alias's version before it sees them, conditioned on (a new version,
    promoted by the rule), and the alias's canary judged by them (handler.training.observations). Or, with
    {"data": {"upload": "csv"|"npy"}}, the URL to upload them to and the route that starts them."""
    who = require_admin()
    name = model_name(name)
    data = body(MAX_OBSERVATIONS_BODY_BYTES)
    known_fields(data, ("data", "refit", "promote", "alias", "reason"))
    if "data" not in data:
        raise RequestError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "invalid request", [("data", "required: rows, columns or an upload")]
        )
    refit = observations.choice(data, "refit", observations.REFITS, "condition")
    promote = observations.choice(data, "promote", observations.PROMOTES, "if_better")
    alias, reason = _alias(data.get("alias", "live")), reason_of(data)
    upload = isinstance(data["data"], dict) and list(data["data"]) == ["upload"]
    if not upload:
        observations.row_count(data["data"])  # the largest request's size is refused before the registry is read
    known_model(name)
    manifest = _parent_manifest(name, alias)
    if upload:
        pending, url = ObservationUploads(store()).create(
            name, data["data"]["upload"], refit, promote, alias, reason, who
        )
        answer = pending.links(url)
        headers = {"Location": answer["start"]}
        return Response(HTTPStatus.ACCEPTED, content_types.APPLICATION_JSON, orjson.dumps(answer).decode(), headers)
    # rows anywhere the model answers (where /suggest proposes points): a refit's bounds grow to cover them
    domain = np.column_stack(manifest.domain(settings.domain_margin))
    X, Y = observations.rows_of(data["data"], manifest.features, manifest.outputs, domain)
    return _observed(name, X, Y, refit, promote, alias, reason, who)


@app.post("/models/<name>/observations/uploads/<upload_id>/start")
def start_observations_upload(name: str, upload_id: str) -> Response:
    """An uploaded file of new simulations: its size checked before it is read, its rows as inline rows are, then
    claimed once and observed as they are. A refused file leaves the upload pending (PUT a corrected one)."""
    who = require_admin()
    name = model_name(name)
    if not (len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)):
        raise RequestError(HTTPStatus.NOT_FOUND, "upload not found", [("upload_id", "expected 32 hex digits")])
    uploads = ObservationUploads(store())
    pending = uploads.get(name, upload_id)
    if pending is None:
        raise RequestError(
            HTTPStatus.NOT_FOUND, "upload not found", [("upload_id", f"{name} has no pending upload {upload_id}")]
        )
    known_model(name)
    manifest = _parent_manifest(name, pending.alias)
    X, Y = uploads.read(pending, manifest.features, manifest.outputs)
    domain = np.column_stack(manifest.domain(settings.domain_margin))
    observations.check_rows(X, Y, manifest.features, manifest.outputs, domain, field="upload")
    uploads.claim(pending, who)
    return _observed(name, X, Y, pending.refit, pending.promote, pending.alias, pending.reason, who)


def _parent_manifest(name: str, alias: str) -> Manifest:
    """The manifest of the version `alias` serves (its main target): the features, outputs and domain new rows are
    checked against; 409 when the alias does not exist."""
    current = store().alias(name, alias)
    if current is None:
        raise RegistryConflictError(
            "alias", f"{name} has no alias {alias!r}: point it at a version first (PUT /models/{name}/aliases/{alias})"
        )
    parent = store().version(name, current.target.version)
    manifest = read_manifest(orjson.dumps(parent.manifest), "stored") if parent is not None else None
    if manifest is None:
        raise RegistryUnavailableError(f"{name} version {current.target.version} vanished")
    return manifest


def _observed(
    name: str, X: np.ndarray, Y: np.ndarray, refit: str, promote: str, alias: str, reason: str | None, who: str
) -> Response:
    """Checked rows observed: 201 with the answer, or 202 with a training job for refit "full"."""
    # "full": scored and appended as "none" does, then a training job on all the data (promoted by the same rule)
    request = observations.Request(X, Y, "none" if refit == "full" else refit, promote, alias, reason)
    answer = observations.observe(
        store(), datasets_from_store(store()), name, request, who, settings.model_cache_dir / "observations"
    )
    if refit != "full":
        return Response(HTTPStatus.CREATED, content_types.APPLICATION_JSON, orjson.dumps(answer).decode())
    datasets, jobs = training()
    job, _ = start_training(
        store(), datasets, jobs, name, {"promote": promote, "alias": alias}, who, margin=settings.domain_margin
    )
    answer["training_job"] = job.document()
    headers = {"Location": f"/models/{name}/training-jobs/{job.job_id}"}
    return Response(HTTPStatus.ACCEPTED, content_types.APPLICATION_JSON, orjson.dumps(answer).decode(), headers)


@app.put("/models/<name>/aliases/<alias>")
def set_alias(name: str, alias: str) -> dict[str, Any]:
    who = require_admin()
    name, alias = model_name(name), _alias(alias)
    data = body()
    known_fields(data, ("version", "canary", "reason"))
    target = Target(version_number(data.get("version"), "version", in_body=True), *_canary(data.get("canary")))
    if target.canary_version == target.version:
        raise RequestError(
            HTTPStatus.UNPROCESSABLE_ENTITY, "invalid canary", [("canary.version", "differs from version")]
        )
    known_model(name)
    moved = store().move_alias(name, alias, target, who, reason_of(data))
    return {"name": name, "alias": alias, **moved.target.document(), "revision": moved.revision}


@app.post("/models/<name>/aliases/<alias>/rollback")
def rollback(name: str, alias: str) -> dict[str, Any]:
    who = require_admin()
    name, alias = model_name(name), _alias(alias)
    data = body()
    known_fields(data, ("reason",))
    known_model(name)
    moved = store().move_alias(name, alias, None, who, reason_of(data))
    return {"name": name, "alias": alias, **moved.target.document(), "revision": moved.revision}


@app.delete("/models/<name>/versions/<version>")
def delete(name: str, version: str) -> dict[str, Any]:
    who = require_admin()
    name, number = model_name(name), version_number(version, "version")
    known_model(name)
    deleted = store().delete_version(name, number, who)
    return {"name": name, **deleted.document()}


@app.post("/models/<name>/train")
def train(name: str) -> Response:
    who = require_admin()
    name = model_name(name)
    packaged = _packaged_name()
    if packaged is not None and name.casefold() == packaged.casefold():
        raise RegistryConflictError("model", f"{name} is the packaged model's name: train under another name")
    data = body(MAX_TRAIN_BODY_BYTES)
    datasets, jobs = training()
    job, upload_url = start_training(store(), datasets, jobs, name, data, who, margin=settings.domain_margin)
    answer = {**job.document(), "upload_url": upload_url}
    if upload_url is not None:
        answer["start"] = f"/models/{name}/training-jobs/{job.job_id}/start"
    headers = {"Location": f"/models/{name}/training-jobs/{job.job_id}"}
    return Response(HTTPStatus.ACCEPTED, content_types.APPLICATION_JSON, orjson.dumps(answer).decode(), headers)


@app.get("/models/<name>/training-jobs/<job_id>")
def training_job(name: str, job_id: str) -> dict[str, Any]:
    require_admin()
    return _job(model_name(name), job_id).document()


@app.post("/models/<name>/training-jobs/<job_id>/start")
def start_training_job(name: str, job_id: str) -> Response:
    who = require_admin()
    job = _job(model_name(name), job_id)
    datasets, jobs = training()
    started = start_uploaded(datasets, jobs, job, who, margin=settings.domain_margin)
    return Response(HTTPStatus.ACCEPTED, content_types.APPLICATION_JSON, orjson.dumps(started.document()).decode())


@app.post("/models/<name>/training-jobs/<job_id>/cancel")
def cancel_training_job(name: str, job_id: str) -> dict[str, Any]:
    require_admin()
    job = _job(model_name(name), job_id)
    return training()[1].cancel(job).document()


def _job(name: str, job_id: str) -> Any:
    if not (len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)):
        raise RequestError(HTTPStatus.NOT_FOUND, "training job not found", [("job_id", "expected 32 hex digits")])
    job = training()[1].get(name, job_id)
    if job is None:
        raise RequestError(HTTPStatus.NOT_FOUND, "training job not found", [("job_id", f"{name} has no job {job_id}")])
    return job


def _alias(alias: str) -> str:
    try:
        return check_alias(alias)
    except BadNameError as exc:
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid alias", [("alias", str(exc))]) from None


def _canary(value: Any) -> tuple[int | None, float]:
    if value is None:
        return None, 0.0
    if not isinstance(value, dict) or set(value) != {"version", "weight"}:
        message = 'expected {"version": V, "weight": W} with 0 < W < 1'
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid canary", [("canary", message)])
    weight = value["weight"]
    # from one request in a million to all but one: a weight DynamoDB's numbers and a reader both can hold
    if type(weight) not in (int, float) or not MIN_CANARY_WEIGHT <= weight <= 1 - MIN_CANARY_WEIGHT:
        message = f"a number from {MIN_CANARY_WEIGHT:g} to {1 - MIN_CANARY_WEIGHT}"
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid canary", [("canary.weight", message)])
    return version_number(value["version"], "canary.version", in_body=True), float(weight)


def _packaged_name() -> str | None:
    from handler.gp.artifact import ModelUnavailableError

    try:
        return settings.artifact_source().fetch_manifest().name
    except ModelUnavailableError:
        return None


def _error(status: int, error: str, details: list[tuple[str, str]], headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(RequestError(status, error, details).body()).decode()
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        headers = {"Retry-After": "5", **(headers or {})}
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=body, headers=headers)


@app.exception_handler(RequestError)
def handle_request_error(exc: RequestError) -> Response:
    logger.info("request refused", extra={"status": exc.status_code, "error": exc.error})
    return _error(exc.status_code, exc.error, exc.details)


@app.exception_handler(TrainingRequestError)
def handle_training_refused(exc: TrainingRequestError) -> Response:
    error = {404: "not found", 409: "conflict", 413: "too large"}.get(exc.status, "invalid training request")
    return _error(exc.status, error, [(exc.field, str(exc))])


@app.exception_handler(PublishRefusedError)
def handle_publish_refused(exc: PublishRefusedError) -> Response:
    return _error(HTTPStatus.UNPROCESSABLE_ENTITY, "publish refused", [(exc.field, str(exc))])


@app.exception_handler(observations.ObservationRefusedError)
def handle_observation_refused(exc: observations.ObservationRefusedError) -> Response:
    error = {409: "conflict", 413: "too large"}.get(exc.status, "invalid observations")
    return _error(exc.status, error, [(exc.field, str(exc))])


@app.exception_handler(RegistryNotFoundError)
def handle_not_found_in_registry(exc: RegistryNotFoundError) -> Response:
    return _error(HTTPStatus.NOT_FOUND, f"{exc.field} not found", [(exc.field, str(exc))])


@app.exception_handler(RegistryConflictError)
def handle_conflict(exc: RegistryConflictError) -> Response:
    return _error(HTTPStatus.CONFLICT, "conflict", [(exc.field, str(exc))])


@app.exception_handler(RegistryUnavailableError)
def handle_unavailable(exc: RegistryUnavailableError) -> Response:
    logger.error("registry unavailable", extra={"reason": str(exc)})
    detail = ("model", "the model registry could not be written; nothing was changed; try again")
    return _error(HTTPStatus.SERVICE_UNAVAILABLE, "registry unavailable", [detail])


@app.not_found
def handle_route_not_found(exc: NotFoundError) -> Response:
    path, method = app.current_event.path, app.current_event.http_method.upper()
    allowed = sorted({route.method for route in (*app._static_routes, *app._dynamic_routes) if route.rule.match(path)})
    if allowed:
        message = f"{method} is not allowed on {brief(path, 200)}; use {', '.join(allowed)}"
        return _error(
            HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed", [("method", message)], {"Allow": ", ".join(allowed)}
        )
    return _error(HTTPStatus.NOT_FOUND, "not found", [("path", "this function serves the registry's write routes")])


@app.exception_handler(Exception)
def handle_unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; it has been logged", [])


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if problem := malformed_event(event):
        body = orjson.dumps(RequestError(HTTPStatus.BAD_REQUEST, "malformed event", [("event", problem)]).body())
        return {"statusCode": 400, "headers": {"Content-Type": "application/json"}, "body": body.decode()}
    return app.resolve(event, context)
