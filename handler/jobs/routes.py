"""HTTP routes of asynchronous jobs, included in the app's one resolver.

    POST /jobs                 submit: points inline, a design spec, or an upload to come -> 202 + Location
                               (also POST /models/{name}/jobs and /models/{name}/versions/{v}/jobs: a registry model)
    GET  /jobs/{job_id}        status, progress, timings; the results' URL once SUCCEEDED
    POST /jobs/{job_id}/start  after uploading the file to the URL the submit answer gave
    POST /jobs/{job_id}/cancel FAILED ("cancelled by the caller"); workers skip its remaining chunks

Jobs belong to the caller (their API key's id, or IAM identity): another caller's job is a 404. A job is computed
by the version resolved when it was submitted (its record's `model`), whatever its alias serves by the time the worker
runs it: the routes after the submission read the record, never the alias.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from functools import cache
from typing import Any

import numpy as np
import orjson
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from handler.api.errors import RequestError, brief
from handler.api.model_routes import model_route, served
from handler.api.parsing import RequestParser, decode_body, load_body, outside_domain, parse_options
from handler.api.services import Services
from handler.config import Settings
from handler.gp.artifact import Manifest
from handler.jobs.backend import (
    RESULT_FORMATS,
    Job,
    JobBackend,
    OutputOptions,
    backend_from_settings,
    new_job,
    start_upload,
    status_document,
    submit_design,
    submit_points,
    submit_upload,
)
from handler.jobs.designs import design_points
from handler.jobs.sizing import model_chunk_points

router = Router()
JOB_ID = re.compile(r"[0-9a-f]{32}")  # fullmatch: `$` would let a trailing newline through
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as HTTP header values are: fullmatch
DESIGN_BODY_BYTES = 64 * 1024


_services: Services | None = None


def configure(services: Services) -> None:
    global _services
    _services = services


def _settings() -> Settings:
    assert _services is not None, "handler.jobs.routes.configure() was not called"
    return _services.settings


def _context() -> tuple[Settings, Manifest, RequestParser]:
    """What a submission needs: the settings, and the manifest and parser of the model the request addressed."""
    assert _services is not None, "handler.jobs.routes.configure() was not called"
    manifest = _services.manifest()
    return _services.settings, manifest, _services.parser(manifest.features)


def submitted_model() -> dict[str, str]:
    """The job record's `model`: the version that answers this submission, which the worker loads again by it."""
    model = served()
    return {"name": model.name, "version": model.version, "source": model.source}


def chunk_points_of_served_model(settings: Settings) -> int:
    """Points a chunk of a job holds on the model served (handler.jobs.sizing)."""
    assert _services is not None, "handler.jobs.routes.configure() was not called"
    model = _services.loaded_model().model
    return model_chunk_points(model, settings.job_chunk_points, settings.job_worker_timeout_seconds)


@cache
def _backend(settings: Settings) -> JobBackend:
    return backend_from_settings(settings)


def _jobs(settings: Settings) -> JobBackend:
    if not settings.jobs_enabled:
        raise RequestError(
            503, "jobs are not available", [("jobs", "this deployment has no job queue, table or bucket")]
        )
    return _backend(settings)


def _request_context() -> dict[str, Any]:
    """The event's requestContext, with the identity object API Gateway always sends: 400 otherwise."""
    context = router.current_event.raw_event.get("requestContext")
    if not isinstance(context, dict) or not isinstance(context.get("identity"), dict):
        message = "the event's requestContext has no identity object: jobs belong to their caller"
        raise RequestError(400, "malformed event", [("event", message)])
    return context


def caller() -> str:
    """Who owns the jobs this request makes or reads: the API key's id, else the IAM caller, else anyone."""
    identity = _request_context()["identity"]
    for name in ("apiKeyId", "userArn", "caller"):
        value = identity.get(name)
        if not isinstance(value, (str, type(None))):
            message = f"the event's requestContext.identity.{name} is a {type(value).__name__}"
            raise RequestError(400, "malformed event", [("event", message)])
        if value:
            return value
    return "anonymous"


def job_options(query: dict[str, str] | None) -> OutputOptions:
    query = query or {}
    predict = parse_options(query, allowed=("std", "interval"))  # per point, so a file can hold them
    fmt = query.get("format", "csv")
    if fmt not in RESULT_FORMATS:
        raise RequestError(
            422, "invalid query parameter", [("format", f"expected csv, npy or parquet, got {brief(fmt)}")]
        )
    return OutputOptions(predict.latent, predict.include_std, predict.include_interval, fmt)


@model_route(router, "POST", "/jobs")
def submit_job() -> Response:
    settings, manifest, parser = _context()
    backend = _jobs(settings)
    event: APIGatewayProxyEvent = router.current_event  # type: ignore[assignment]
    options = job_options(event.query_string_parameters)
    body = decode_body(event.body, bool(event.is_base64_encoded))
    key = event.headers.get("idempotency-key")  # Powertools' headers ignore case, as HTTP does
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        message = "expected 1 to 255 visible ASCII characters"
        raise RequestError(400, "invalid Idempotency-Key header", [("Idempotency-Key", message)])
    owner = caller()
    # Inline points as many as /predict takes, beside a design's or an upload's few fields.
    limits = dataclasses.replace(parser.limits, max_bytes=parser.limits.max_bytes + DESIGN_BODY_BYTES)
    data = load_body(body, limits)
    if key is None:
        job = _submit(backend, settings, manifest, parser, owner, data, options)
    else:
        job = _submit_once(backend, settings, manifest, parser, owner, key, body, data, options)
    return _job_response(backend, job, 202, _jobs_path(event.path))


def _jobs_path(route_path: str) -> str:
    """Where the caller reads its jobs: /jobs behind the stage's prefix (the API's path with the stage), whichever
    model route the job was submitted at (/models/{name}/jobs too)."""
    path = _request_context().get("path")
    prefix = path[: -len(route_path)] if isinstance(path, str) and path.endswith(route_path) else ""
    return f"{prefix}/jobs"


def _submit(
    backend: JobBackend,
    settings: Settings,
    manifest: Manifest,
    parser: RequestParser,
    owner: str,
    data: Any,
    options: OutputOptions,
) -> Job:
    from handler.api.schemas import submission_errors

    submission, problems = submission_errors(data, manifest.features)
    if submission is None:
        raise RequestError(422, "invalid job", [(p.field, p.message) for p in problems])
    if submission.points is not None:
        request = parser.parse_nested(submission.points, "points")
        if request.shape == "point":
            request = type(request)(request.points, "rows")
        if violations := manifest.domain_violations(request.points, settings.domain_margin):
            raise outside_domain(request, violations, "points")
        job = new_job(backend, owner, manifest, "inline", options, model=submitted_model())
        return submit_points(backend, job, request.points, chunk_points_of_served_model(settings))
    if submission.design is not None:
        design = _resolved_design(submission.design, manifest, settings, backend.max_points)
        job = new_job(backend, owner, manifest, "design", options, model=submitted_model(), design=design)
        return submit_design(backend, job)
    assert submission.upload is not None
    upload_format = submission.upload.format
    job = new_job(backend, owner, manifest, "upload", options, model=submitted_model(), upload_format=upload_format)
    return submit_upload(backend, job)


def _resolved_design(spec: Any, manifest: Manifest, settings: Settings, max_points: int) -> dict[str, Any]:
    """The spec with every default made explicit (seed, bounds, point count), so the job can be rerun exactly.

    `n` is compared with the job limit before anything whose work grows with it (a grid's levels).
    """
    problems = []
    low_limit, high_limit = manifest.domain(settings.domain_margin)
    training = zip(manifest.features, manifest.bounds.tolist(), strict=True)
    bounds = {name: [float(low), float(high)] for name, (low, high) in training}
    # schemas.submission_errors kept the features and at most MAX_ERROR_DETAILS other names
    for name, (low, high) in (spec.bounds or {}).items():
        if name not in bounds:
            message = f"not a feature of this model ({', '.join(manifest.features)})"
            problems.append((f"design.bounds.{name}", message))
            continue
        i = manifest.features.index(name)
        if not low < high:
            problems.append((f"design.bounds.{name}", f"expected low < high, got [{low:g}, {high:g}]"))
        elif low < low_limit[i] or high > high_limit[i]:
            message = (
                f"[{low:g}, {high:g}] leaves the model's domain {manifest.describe_domain(i, settings.domain_margin)}"
            )
            problems.append((f"design.bounds.{name}", message))
        bounds[name] = [low, high]
    dimensions = len(manifest.features)
    points = 0
    if type(spec.n) is not int or spec.n < 1:  # the schema's strict check, restated beside the work that needs it
        problems.append(("design.n", f"expected a positive integer, got {brief(spec.n)}"))
    elif spec.n > max_points:
        problems.append(("design.n", f"{brief(spec.n)} points; at most {max_points} per job"))
    else:
        points = design_points(spec.method, spec.n, dimensions)
        if points < 1 or (spec.method == "grid" and points < 2**dimensions):
            problems.append(("design.n", f"a grid of {dimensions} features needs n >= {2**dimensions}"))
    if problems:
        raise RequestError(422, "invalid design", problems)
    seed = spec.seed if spec.seed is not None else int(np.random.default_rng().integers(2**63))
    return {"method": spec.method, "n": spec.n, "points": points, "seed": seed, "bounds": bounds}


def _submit_once(
    backend: JobBackend,
    settings: Settings,
    manifest: Manifest,
    parser: RequestParser,
    owner: str,
    key: str,
    body: str | bytes,
    data: Any,
    options: OutputOptions,
) -> Job:
    """Powertools idempotency on the jobs table: the same (caller, key) returns the first job for 24 hours."""
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    raw = body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass")
    signed = raw + b"\n" + orjson.dumps(options.document())
    # The same body at another model's route is another request; the root's fingerprints stay as they were, so that
    # keys in flight at a deploy still match.
    addressed = router.current_event.path
    if addressed != "/jobs":
        signed += b"\n" + addressed.encode()
    fingerprint = hashlib.sha256(signed).hexdigest()

    def create(request: dict[str, Any]) -> dict[str, Any]:
        return {"job": _submit(backend, settings, manifest, parser, owner, data, options).id}

    submit = _idempotent(backend, create)
    try:
        job_id = submit(request={"owner": owner, "key": key, "fingerprint": fingerprint})["job"]
    except IdempotencyValidationError:
        message = "this key was used with a different request; use a new key for a new job"
        raise RequestError(422, "Idempotency-Key reused", [("Idempotency-Key", message)]) from None
    except IdempotencyAlreadyInProgressError:
        message = "a request with this key is still being processed; retry in a second"
        raise RequestError(409, "request in progress", [("Idempotency-Key", message)]) from None
    job = backend.store.get(job_id)
    assert job is not None
    return job


def _idempotent(backend: JobBackend, function: Any) -> Any:
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    persistence = DynamoDBPersistenceLayer(table_name=backend.table_name, boto3_client=backend.dynamodb, key_attr="id")
    config = IdempotencyConfig(
        event_key_jmespath="[owner, key]", payload_validation_jmespath="fingerprint", expires_after_seconds=86_400
    )
    config.register_lambda_context(router.lambda_context)
    return idempotent_function(data_keyword_argument="request", persistence_store=persistence, config=config)(function)


def _owned_job(backend: JobBackend, job_id: str) -> Job:
    job = backend.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or job.owner != caller():  # another caller's job is as absent as a wrong id
        raise RequestError(404, "job not found", [("job_id", f"no job {job_id[:64]!r} of yours")])
    return job


@router.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    backend = _jobs(_settings())
    job = _owned_job(backend, job_id)
    event: APIGatewayProxyEvent = router.current_event  # type: ignore[assignment]
    parts_from = _parts_from((event.query_string_parameters or {}).get("parts_from"), job)
    return _job_response(backend, job, 200, parts_from=parts_from, listing_path=_jobs_path(event.path))


def _parts_from(value: str | None, job: Job) -> int:
    """`?parts_from=K`: a Parquet job's parts are listed from part K (0 to its number of parts)."""
    if value is None:
        return 0
    if job.options.format != "parquet":
        message = f"only a Parquet job's results have parts; this job's are one {job.options.format} file"
        raise RequestError(422, "invalid query parameter", [("parts_from", message)])
    most = job.n_chunks or 0
    # its length checked before int(): a part number has at most the last one's digits (int() refuses 4,300 and more)
    if not (value.isascii() and value.isdigit() and len(value) <= len(str(most)) and int(value) <= most):
        message = f"expected a part number from 0 to {most}, got {brief(value)}"
        raise RequestError(422, "invalid query parameter", [("parts_from", message)])
    return int(value)


@router.post("/jobs/<job_id>/start")
def start_job(job_id: str) -> Response:
    # The upload is checked against the record's features, and its plan runs on the record's model version: no
    # alias is read again (it may have moved since the submission).
    backend = _jobs(_settings())
    return _job_response(backend, start_upload(backend, _owned_job(backend, job_id)), 202)


@router.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    backend = _jobs(_settings())
    job = _owned_job(backend, job_id)
    cancelled = backend.store.fail(job.id, "cancelled by the caller")
    if cancelled is None:
        raise RequestError(409, "job already ended", [("status", f"the job is {job.status}")])
    return _job_response(backend, cancelled, 200)


def _job_response(
    backend: JobBackend,
    job: Job,
    status: int,
    jobs_path: str | None = None,
    *,
    parts_from: int = 0,
    listing_path: str | None = None,
) -> Response:
    headers = {"Location": f"{jobs_path.rstrip('/')}/{job.id}"} if jobs_path else {}
    if job.status in ("QUEUED", "RUNNING"):
        headers["Retry-After"] = "2"  # when to poll again
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=orjson.dumps(status_document(backend, job, parts_from, listing_path or jobs_path or "/jobs")).decode(),
        headers=headers,
    )
