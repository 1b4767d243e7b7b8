"""Training jobs: the record (registry table, PK=MODEL#{name}, SK=TRAINING#{job_id}), its transitions, and
`start_training`, which checks a training request in full and queues the job (the admin routes call it).

Statuses: AWAITING_UPLOAD (the data is being uploaded) -> QUEUED -> RUNNING -> SUCCEEDED | FAILED; CANCELLED from
any unfinished status. Every transition is conditional on the status it leaves, so a cancelled job is never revived
and a job delivered twice runs once: the worker claims it (QUEUED -> RUNNING, with a lease as long as the training
function's timeout); a second delivery while the lease holds does nothing. A delivery after the lease has run out
means the attempt holding it died (the function timed out): the job is tried again, at most MAX_ATTEMPTS times in
all, then FAILED "timed out".

Numpy only: the admin function (no GPy, no scipy) imports this module.
"""

from __future__ import annotations

import csv
import io
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from handler.config import Settings
from handler.gp.artifact import check_limits, check_names, check_units
from handler.registry.datasets import Dataset, DatasetStore
from handler.registry.names import BadNameError, check_alias
from handler.registry.store import RegistryStore, RegistryUnavailableError, _aws_errors, _code, _model_pk
from handler.training.data import (
    DEFAULT_RESTARTS,
    EXACT_MAX_N,
    KERNELS,
    MAX_RESTARTS,
    MAX_TRAINING_ROWS,
    TrainingDataError,
    answered_domain,
    check_offsets,
    check_training_data,
    limits_array,
)
from handler.training.promotion import DEFAULT_PROMOTION, PROMOTION_RULES

STATUSES = ("AWAITING_UPLOAD", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
UNFINISHED = ("AWAITING_UPLOAD", "QUEUED", "RUNNING")
STAGES = ("queued", "checking data", "fitting", "validating", "publishing", "done")
# The training function's timeout (template.yaml TrainingFunction Timeout); its queue's maxReceiveCount is
# MAX_ATTEMPTS: a job is tried at most twice, then FAILED.
TRAINING_TIMEOUT_S = 900
MAX_ATTEMPTS = 2
LEASE_MARGIN_S = 60  # an attempt holds the job this long past its function's timeout
JOB_TTL_S = 30 * 86_400  # records expire (DynamoDB TTL on expires_at) a month after they are made
UPLOAD_URL_EXPIRY_S = 3600
MAX_FEATURES = 64
MAX_OUTPUTS = 16
MAX_DESCRIPTION_CHARS = 2_000
MAX_SEED = 2**32 - 1
INFERENCES = ("auto", "exact", "sparse")
UPLOAD_FORMATS = ("csv", "npy")
DATA_KINDS = ("rows", "columns", "upload")
# The largest upload a training set of MAX_TRAINING_ROWS rows can need: a .npy of float64 (and its header), or a
# CSV whose every value takes 32 characters with its separator (repr of a float64 takes at most 24).
NPY_HEADER_BYTES = 4096
CSV_VALUE_BYTES = 32
REQUEST_FIELDS = (
    "data", "features", "outputs", "bounds", "units", "limits", "kernel", "restarts", "inference", "promote",
    "alias", "force", "description", "seed",
)  # fmt: skip


# The margin by which a model answers past its bounds (DOMAIN_MARGIN; the admin function passes its own setting)
DOMAIN_MARGIN = Settings.domain_margin


class TrainingRequestError(ValueError):
    """A training request refused: `field` names what is wrong; `status` the HTTP status (422, 409, 413, 404)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class JobCancelledError(Exception):
    """The job was cancelled (or taken over) while it ran: stop, and write nothing more."""


@dataclass(frozen=True)
class TrainingOptions:
    kernel: str = "auto"
    restarts: int = DEFAULT_RESTARTS
    inference: str = "auto"
    promote: str = DEFAULT_PROMOTION
    alias: str = "live"
    force: bool = False
    description: str = ""
    seed: int = 0

    def fits_total(self) -> int:
        """Optimisations the fit runs at most (handler.training.fit): kernel auto screens each kernel briefly, then
        finishes the best and gives it the other restarts."""
        return len(KERNELS) + self.restarts if self.kernel == "auto" else self.restarts


@dataclass(frozen=True)
class TrainingJob:
    model: str
    job_id: str
    status: str
    created_at: float
    created_by: str
    options: TrainingOptions
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    bounds: dict[str, list[float]]
    units: dict[str, str] = field(default_factory=dict)
    limits: dict[str, list[float | None]] | None = None
    dataset: dict[str, Any] | None = None
    upload: str | None = None  # "csv" | "npy" while AWAITING_UPLOAD
    progress: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    lease_until: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    version: int | None = None
    version_state: str | None = None
    promoted: bool | None = None
    promotion: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model": self.model,
            "status": self.status,
            "progress": self.progress or {"stage": "queued", "fits_done": 0, "fits_total": self.options.fits_total()},
            "attempts": self.attempts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "version": self.version,
            "version_state": self.version_state,
            "promoted": self.promoted,
            "promotion": self.promotion,
            "validation": self.validation,
            "error": self.error,
            "dataset": self.dataset,
            "options": vars(self.options),
            "notes": self.notes,
            "links": {"self": f"/models/{self.model}/training-jobs/{self.job_id}"},
        }

    def item(self) -> dict[str, Any]:
        import json

        return {
            "pk": _model_pk(self.model),
            "sk": training_sk(self.job_id),
            "status": self.status,
            "attempts": self.attempts,
            "lease_until": int(self.lease_until),
            "expires_at": int(self.created_at + JOB_TTL_S),
            # the rest as one JSON attribute: DynamoDB holds no floats, and nothing queries on it
            "body": json.dumps(
                {
                    "created_at": self.created_at,
                    "created_by": self.created_by,
                    "options": vars(self.options),
                    "features": list(self.features),
                    "outputs": list(self.outputs),
                    "bounds": self.bounds,
                    "units": self.units,
                    "limits": self.limits,
                    "dataset": self.dataset,
                    "upload": self.upload,
                }
            ),
            "state": json.dumps(_state(self)),
        }


def _state(job: TrainingJob) -> dict[str, Any]:
    keys = (
        "progress", "started_at", "finished_at", "version", "version_state", "promoted", "promotion", "validation",
        "error", "notes",
    )  # fmt: skip
    return {key: getattr(job, key) for key in keys}


def _from_item(name: str, item: dict[str, Any]) -> TrainingJob:
    import json

    body, state = json.loads(item["body"]), json.loads(item.get("state") or "{}")
    return TrainingJob(
        model=name,
        job_id=str(item["sk"]).removeprefix("TRAINING#"),
        status=str(item["status"]),
        created_at=float(body["created_at"]),
        created_by=str(body["created_by"]),
        options=TrainingOptions(**body["options"]),
        features=tuple(body["features"]),
        outputs=tuple(body["outputs"]),
        bounds=body["bounds"],
        units=body.get("units") or {},
        limits=body.get("limits"),
        dataset=body.get("dataset"),
        upload=body.get("upload"),
        attempts=int(item.get("attempts", 0)),
        lease_until=float(item.get("lease_until", 0)),
        **state,
    )


def training_sk(job_id: str) -> str:
    return f"TRAINING#{job_id}"


def upload_key(name: str, job_id: str, kind: str) -> str:
    return f"uploads/training/{name}/{job_id}.{kind}"


def _iso(moment: float | None) -> str | None:
    return None if moment is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


class TrainingStore:
    """Training jobs' records and their queue; AWS errors leave as RegistryUnavailableError."""

    def __init__(self, registry: RegistryStore, sqs: Any, queue_url: str) -> None:
        self.registry = registry
        self.table, self.s3, self.bucket, self.clock = registry.table, registry.s3, registry.bucket, registry.clock
        self.sqs = sqs
        self.queue_url = queue_url

    def _call(self, action: Any, what: str) -> Any:
        try:
            return action()
        except _aws_errors() as exc:
            raise RegistryUnavailableError(f"{what}: {_code(exc) or type(exc).__name__}") from exc

    def create(self, job: TrainingJob) -> None:
        self._call(
            lambda: self.table.put_item(Item=job.item(), ConditionExpression="attribute_not_exists(pk)"),
            "training job write",
        )

    def get(self, name: str, job_id: str) -> TrainingJob | None:
        key = {"pk": _model_pk(name), "sk": training_sk(job_id)}
        item = self._call(lambda: self.table.get_item(Key=key, ConsistentRead=True), "training job read").get("Item")
        if item is None:
            return None
        job = _from_item(name, item)
        if job.status == "RUNNING" and job.lease_until < self.clock() and job.attempts >= MAX_ATTEMPTS:
            # its last attempt died (the function timed out) and no delivery is left to say so: it failed
            return self.finish(job, "FAILED", error=timed_out(job.attempts), attempt=job.attempts) or job
        return job

    def enqueue(self, job: TrainingJob) -> None:
        import json

        body = json.dumps({"model": job.model, "job_id": job.job_id})
        self._call(lambda: self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body), "training queue")

    def _update(self, job: TrainingJob, expression: str, condition: str, values: dict[str, Any]) -> bool:
        """One conditional update; False when the condition did not hold (the record moved on)."""
        try:
            self.table.update_item(
                Key={"pk": _model_pk(job.model), "sk": training_sk(job.job_id)},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={n: n[1:] for n in ("#status", "#state") if n in expression + condition},
                ExpressionAttributeValues=values,
            )
        except _aws_errors() as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise RegistryUnavailableError(f"training job write: {_code(exc) or type(exc).__name__}") from exc
        return True

    def queue(self, job: TrainingJob, dataset: Dataset) -> TrainingJob:
        """AWAITING_UPLOAD -> QUEUED with its dataset (after /start), and the message sent."""
        queued = replace(job, status="QUEUED", dataset=dataset.reference(), upload=None)
        body = queued.item()["body"]
        ok = self._update(
            job,
            "SET #status = :queued, body = :body",
            "#status = :awaiting",
            {":queued": "QUEUED", ":awaiting": "AWAITING_UPLOAD", ":body": body},
        )
        if not ok:
            raise TrainingRequestError("job", "the job is no longer awaiting its upload", 409)
        self.enqueue(queued)
        return queued

    def claim(self, job: TrainingJob, remaining_s: float) -> TrainingJob | None:
        """This attempt's hold on the job, or None when it is not to run here (finished, cancelled, or held by a
        live attempt). A job whose earlier attempt's lease ran out is taken over (its attempts counted)."""
        now = self.clock()
        lease = now + remaining_s + LEASE_MARGIN_S
        attempt = job.attempts + 1
        if job.status == "QUEUED":
            values: dict[str, Any] = {":queued": "QUEUED"}
            condition = "#status = :queued"
        elif job.status == "RUNNING" and job.lease_until < now:
            if job.attempts >= MAX_ATTEMPTS:
                self.finish(job, "FAILED", error=timed_out(job.attempts), attempt=job.attempts)
                return None
            condition = "#status = :running AND attempts = :before AND lease_until < :now"
            values = {":running": "RUNNING", ":before": job.attempts, ":now": int(now)}
        else:
            return None
        notes = [
            *job.notes,
            *([f"attempt {job.attempts} did not finish (it timed out or was interrupted)"] if job.attempts else []),
        ]
        claimed = replace(
            job,
            status="RUNNING",
            attempts=attempt,
            lease_until=lease,
            started_at=now,
            notes=notes,
            progress={"stage": "checking data", "fits_done": 0, "fits_total": job.options.fits_total()},
        )
        ok = self._update(
            job,
            "SET #status = :run, attempts = :attempt, lease_until = :lease, #state = :state",
            condition,
            {
                **values,
                ":run": "RUNNING",
                ":attempt": attempt,
                ":lease": int(lease),
                ":state": claimed.item()["state"],
            },
        )
        return claimed if ok else None

    def progress(self, job: TrainingJob, **progress: Any) -> TrainingJob:
        """Record progress while this attempt holds the job; JobCancelledError when it no longer does."""
        moved = replace(job, progress={**job.progress, **progress})
        ok = self._update(
            job,
            "SET #state = :state",
            "#status = :running AND attempts = :attempt",
            {":state": moved.item()["state"], ":running": "RUNNING", ":attempt": job.attempts},
        )
        if not ok:
            raise JobCancelledError(f"training job {job.job_id} was cancelled or taken over")
        return moved

    def finish(
        self, job: TrainingJob, status: str, *, attempt: int | None = None, **results: Any
    ) -> TrainingJob | None:
        """RUNNING -> SUCCEEDED | FAILED, by the attempt holding it; None when it no longer does."""
        done = replace(
            job,
            status=status,
            finished_at=self.clock(),
            progress={**job.progress, "stage": "done"},
            **results,
        )
        ok = self._update(
            job,
            "SET #status = :status, #state = :state",
            "#status = :running AND attempts = :attempt",
            {
                ":status": status,
                ":state": done.item()["state"],
                ":running": "RUNNING",
                ":attempt": job.attempts if attempt is None else attempt,
            },
        )
        return done if ok else None

    def release(self, job: TrainingJob) -> None:
        """This attempt lets go of the job (an AWS fault interrupted it): the queue's next delivery claims it."""
        self._update(
            job,
            "SET lease_until = :zero",
            "#status = :running AND attempts = :attempt",
            {":zero": 0, ":running": "RUNNING", ":attempt": job.attempts},
        )

    def cancel(self, job: TrainingJob) -> TrainingJob:
        cancelled = replace(job, status="CANCELLED", finished_at=self.clock())
        ok = self._update(
            job,
            "SET #status = :cancelled, #state = :state",
            "#status IN (:awaiting, :queued, :running)",
            {
                ":cancelled": "CANCELLED",
                ":state": cancelled.item()["state"],
                ":awaiting": "AWAITING_UPLOAD",
                ":queued": "QUEUED",
                ":running": "RUNNING",
            },
        )
        if not ok:
            current = self.get(job.model, job.job_id) or job
            raise TrainingRequestError("job", f"the job is {current.status}: only an unfinished job is cancelled", 409)
        return cancelled

    def upload_url(self, job: TrainingJob) -> str:
        assert job.upload is not None
        key = upload_key(job.model, job.job_id, job.upload)
        return str(
            self._call(
                lambda: self.s3.generate_presigned_url(
                    "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=UPLOAD_URL_EXPIRY_S
                ),
                "presigning",
            )
        )


def timed_out(attempts: int) -> str:
    return f"timed out: {attempts} attempts each ran past the training function's {TRAINING_TIMEOUT_S} s"


# --- the request --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    """What an existing model says about the data its next version is fitted on."""

    features: tuple[str, ...]
    outputs: tuple[str, ...]
    bounds: dict[str, list[float]] | None
    units: dict[str, str]
    limits: dict[str, list[float | None]] | None
    head: Dataset | None


def start_training(
    registry: RegistryStore,
    datasets: DatasetStore,
    jobs: TrainingStore,
    name: str,
    request: dict[str, Any],
    by: str,
    max_inline_rows: int = MAX_TRAINING_ROWS,
    margin: float = DOMAIN_MARGIN,
) -> tuple[TrainingJob, str | None]:
    """Check a training request in full and queue its job (or await its upload): the job and the upload URL, if any.

    Sizes are counted before any per-element work; the data is checked (handler.training.data) before anything is
    written. Data for a model that has a dataset is appended to it, as observations are; the fit uses the whole head.
    """
    if not isinstance(request, dict):
        raise TrainingRequestError("body", "expected a JSON object")
    unknown = [key for key in list(request)[: len(REQUEST_FIELDS) + 5] if key not in REQUEST_FIELDS]
    if unknown:
        raise TrainingRequestError(str(unknown[0])[:64], f"unknown field (known: {', '.join(REQUEST_FIELDS)})")
    options = _options(request)
    existing = _existing(registry, datasets, name)
    data = request.get("data")
    if data is not None and not (isinstance(data, dict) and len(data) == 1 and set(data) <= set(DATA_KINDS)):
        raise TrainingRequestError("data", 'one of {"rows": [...]}, {"columns": {...}}, {"upload": "csv"|"npy"}')
    if data is None and (existing is None or existing.head is None):
        raise TrainingRequestError(
            "data", f"{name} has no dataset to train on: send its data (rows, columns or an upload)", 422
        )
    features, outputs = _names(request, existing)
    bounds = _bounds(request.get("bounds"), features, existing)
    units = _units(request.get("units"), features, outputs, existing)
    limits = _limits(request.get("limits"), features, bounds, existing)
    if (
        existing is not None
        and existing.head is not None
        and (existing.head.features, existing.head.outputs)
        != (
            features,
            outputs,
        )
    ):
        raise TrainingRequestError(
            "features", f"{name}'s data has features {list(existing.head.features)} and outputs "
            f"{list(existing.head.outputs)}: train on those"
        )  # fmt: skip
    job = TrainingJob(
        model=name,
        job_id=secrets.token_hex(16),
        status="QUEUED",
        created_at=jobs.clock(),
        created_by=by,
        options=options,
        features=features,
        outputs=outputs,
        bounds=bounds,
        units=units,
        limits=limits,
    )
    if data is not None and "upload" in data:
        kind = data["upload"]
        if kind not in UPLOAD_FORMATS:
            raise TrainingRequestError("data.upload", f"expected one of {', '.join(UPLOAD_FORMATS)}")
        job = replace(job, status="AWAITING_UPLOAD", upload=kind)
        jobs.create(job)
        return job, jobs.upload_url(job)
    if data is not None:
        X, Y = _inline(data, features, outputs, max_inline_rows)
        exact_allowed(options, len(X) + (existing.head.rows if existing is not None and existing.head else 0))
        dataset = _store_data(datasets, name, existing, X, Y, features, outputs, bounds, by, "data", limits, margin)
    else:
        assert existing is not None
        assert existing.head is not None
        dataset = existing.head
        exact_allowed(options, dataset.rows)
        inputs, values = datasets.load(dataset)
        _check(inputs, values, bounds, features, outputs, "data", limits, margin)
    job = replace(job, dataset=dataset.reference())
    jobs.create(job)
    jobs.enqueue(job)
    return job, None


def start_uploaded(
    datasets: DatasetStore, jobs: TrainingStore, job: TrainingJob, by: str, margin: float = DOMAIN_MARGIN
) -> TrainingJob:
    """/start: the upload read and checked as inline data is (its size first), then the job queued."""
    if job.status != "AWAITING_UPLOAD" or job.upload is None:
        raise TrainingRequestError("job", f"the job is {job.status}: only a job awaiting its upload is started", 409)
    key = upload_key(job.model, job.job_id, job.upload)
    X, Y = read_upload(jobs.s3, jobs.bucket, key, job.upload, job.features, job.outputs)
    existing = _existing(jobs.registry, datasets, job.model)
    exact_allowed(job.options, len(X) + (existing.head.rows if existing is not None and existing.head else 0))
    dataset = _store_data(
        datasets, job.model, existing, X, Y, job.features, job.outputs, job.bounds, by, "upload", job.limits, margin
    )
    return jobs.queue(job, dataset)


def read_upload(
    s3: Any, bucket: str, key: str, kind: str, features: Any, outputs: Any, max_rows: int = MAX_TRAINING_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """An uploaded .csv or .npy as (X, Y): 409 when nothing is there; its size (HEAD) refused (413) before it is
    read when `max_rows` rows could not take that many bytes; then read and checked (at most `max_rows` rows)."""
    columns = len(features) + len(outputs)
    largest = largest_upload_bytes(kind, columns, max_rows)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except _aws_errors() as exc:
        if _code(exc) in ("404", "NoSuchKey", "NotFound"):
            raise TrainingRequestError("upload", "nothing uploaded yet: PUT the data to the upload URL", 409) from None
        raise RegistryUnavailableError(f"upload read: {_code(exc) or type(exc).__name__}") from exc
    size = int(head["ContentLength"])
    if size > largest:
        raise TrainingRequestError(
            "upload",
            f"{size} bytes: the largest upload taken here ({max_rows} rows of {columns} columns) takes at most "
            f"{largest} bytes as {kind}",
            413,
        )
    try:
        raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except _aws_errors() as exc:
        raise RegistryUnavailableError(f"upload read: {_code(exc) or type(exc).__name__}") from exc
    return _read_upload(raw, kind, list(features), list(outputs), max_rows)


def largest_upload_bytes(kind: str, columns: int, rows: int = MAX_TRAINING_ROWS) -> int:
    values = rows * columns
    return NPY_HEADER_BYTES + 8 * values if kind == "npy" else CSV_VALUE_BYTES * (values + columns)


def _options(request: dict[str, Any]) -> TrainingOptions:
    kernel = request.get("kernel", "auto")
    if kernel != "auto" and kernel not in KERNELS:
        raise TrainingRequestError("kernel", f"expected auto or one of {', '.join(KERNELS)}")
    restarts = request.get("restarts", DEFAULT_RESTARTS)
    if type(restarts) is not int or not 1 <= restarts <= MAX_RESTARTS:
        raise TrainingRequestError("restarts", f"expected an integer from 1 to {MAX_RESTARTS}")
    inference = request.get("inference", "auto")
    if inference not in INFERENCES:
        raise TrainingRequestError("inference", f"expected one of {', '.join(INFERENCES)}")
    promote = request.get("promote", DEFAULT_PROMOTION)
    if promote not in PROMOTION_RULES:
        raise TrainingRequestError("promote", f"expected one of {', '.join(PROMOTION_RULES)}")
    try:
        alias = check_alias(request.get("alias", "live"))
    except BadNameError as exc:
        raise TrainingRequestError("alias", str(exc)) from None
    force = request.get("force", False)
    if type(force) is not bool:
        raise TrainingRequestError("force", "expected true or false")
    description = request.get("description", "")
    if not (isinstance(description, str) and len(description) <= MAX_DESCRIPTION_CHARS):
        raise TrainingRequestError("description", f"a string of at most {MAX_DESCRIPTION_CHARS} characters")
    seed = request.get("seed", 0)
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise TrainingRequestError("seed", f"expected an integer from 0 to {MAX_SEED}")
    return TrainingOptions(kernel, restarts, inference, promote, alias, force, description, seed)


def _existing(registry: RegistryStore, datasets: DatasetStore, name: str) -> _Model | None:
    """The model's dataset head and its newest version's manifest (names, bounds, units, limits), if it has either."""
    head = datasets.head(name)
    manifest: dict[str, Any] = {}
    if registry.model(name) is not None:
        for number, state, _ in registry.version_states(name):
            if state in ("READY", "REJECTED"):
                record = registry.version(name, number)
                manifest = record.manifest if record is not None else {}
                break
    if head is None and not manifest:
        return None
    features = head.features if head is not None else tuple(manifest.get("features") or ())
    outputs = head.outputs if head is not None else tuple(manifest.get("outputs") or ())
    bounds = manifest.get("bounds")
    return _Model(features, outputs, bounds or None, manifest.get("units") or {}, manifest.get("limits"), head)


def _names(request: dict[str, Any], existing: _Model | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    named = []
    for key, most in (("features", MAX_FEATURES), ("outputs", MAX_OUTPUTS)):
        value = request.get(key)
        if value is None:
            if existing is None or not getattr(existing, key):
                raise TrainingRequestError(key, f"required for a new model: a list of {key[:-1]} names")
            named.append(tuple(getattr(existing, key)))
            continue
        if isinstance(value, list) and len(value) > most:
            raise TrainingRequestError(key, f"at most {most} {key}")
        try:
            named.append(check_names(value))
        except ValueError as exc:
            raise TrainingRequestError(key, str(exc)) from None
    features, outputs = named
    if clash := set(features) & set(outputs):
        raise TrainingRequestError("outputs", f"{sorted(clash)[0]} is both a feature and an output")
    return features, outputs


def _bounds(value: Any, features: tuple[str, ...], existing: _Model | None) -> dict[str, list[float]]:
    if value is None:
        if existing is None or existing.bounds is None:
            raise TrainingRequestError("bounds", "required for a new model: {feature: [low, high]} for every feature")
        value = existing.bounds
    if not isinstance(value, dict) or set(value) != set(features):
        raise TrainingRequestError("bounds", "expected {feature: [low, high]} for exactly the features")
    bounds = {}
    for name in features:
        pair = value[name]
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(type(v) in (int, float) for v in pair)
            and all(np.isfinite(pair))
            and pair[0] < pair[1]
            and np.isfinite(float(pair[1]) - float(pair[0]))
        ):
            raise TrainingRequestError(f"bounds.{name}", "expected [low, high], finite numbers with low < high")
        bounds[name] = [float(pair[0]), float(pair[1])]
    return bounds


def _units(value: Any, features: tuple[str, ...], outputs: tuple[str, ...], existing: _Model | None) -> dict[str, str]:
    if value is None:
        return dict(existing.units) if existing is not None else {}
    try:
        return check_units(value, (*features, *outputs))
    except ValueError as exc:
        raise TrainingRequestError("units", str(exc)) from None


def _limits(
    value: Any, features: tuple[str, ...], bounds: dict[str, list[float]], existing: _Model | None
) -> dict[str, list[float | None]] | None:
    if value is None:
        value = existing.limits if existing is not None else None
        if value is None:
            return None
    try:
        check_limits(value, features, np.array([bounds[f] for f in features]))
    except ValueError as exc:
        raise TrainingRequestError("limits", str(exc)) from None
    return {k: list(v) for k, v in value.items()}


def _inline(
    data: dict[str, Any], features: tuple[str, ...], outputs: tuple[str, ...], max_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inline rows or columns as arrays; their count checked before any of their values is read."""
    names = (*features, *outputs)
    if "rows" in data:
        rows = data["rows"]
        if not isinstance(rows, list):
            raise TrainingRequestError("data.rows", "expected a list of {name: value} objects")
        if len(rows) > max_rows:
            raise TrainingRequestError("data.rows", f"{len(rows)} rows: at most {max_rows} inline", 413)
        table = np.empty((len(rows), len(names)))
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or len(row) != len(names):
                raise TrainingRequestError(f"data.rows[{i}]", f"expected an object of {', '.join(names)}")
            for j, key in enumerate(names):
                number = row.get(key)
                if type(number) not in (int, float):
                    raise TrainingRequestError(f"data.rows[{i}].{key}", "expected a number")
                table[i, j] = number
    else:
        columns = data["columns"]
        if not isinstance(columns, dict) or set(columns) != set(names):
            raise TrainingRequestError("data.columns", f"expected a list for each of {', '.join(names)}")
        lengths = {len(v) if isinstance(v, list) else -1 for v in columns.values()}
        if -1 in lengths or len(lengths) != 1:
            raise TrainingRequestError("data.columns", "expected lists of one length")
        n = lengths.pop()
        if n > max_rows:
            raise TrainingRequestError("data.columns", f"{n} rows: at most {max_rows} inline", 413)
        table = np.empty((n, len(names)))
        for j, key in enumerate(names):
            column = columns[key]
            if not all(type(v) in (int, float) for v in column):
                raise TrainingRequestError(f"data.columns.{key}", "expected numbers")
            table[:, j] = column
    return table[:, : len(features)], table[:, len(features) :]


def _read_upload(
    raw: bytes, kind: str, features: list[str], outputs: list[str], max_rows: int = MAX_TRAINING_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    names = [*features, *outputs]
    if kind == "npy":
        _check_npy_header(raw, len(names), max_rows)
        try:
            table = np.load(io.BytesIO(raw), allow_pickle=False).astype(float)
        except (ValueError, OSError, EOFError) as exc:
            raise TrainingRequestError("upload", f"not a .npy file: {exc}"[:200]) from None
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise TrainingRequestError("upload", "a CSV in UTF-8 expected") from None
        reader = csv.reader(io.StringIO(text))
        try:  # csv.Error: a field past the csv module's size limit, a malformed quote
            header = [column.strip() for column in next(reader, [])]
            if missing := [name for name in names if name not in header]:
                raise TrainingRequestError("upload", f"the CSV's header has no column {', '.join(missing)}")
            order = [header.index(name) for name in names]
            rows: list[list[float]] = []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(rows) >= max_rows:
                    raise TrainingRequestError("upload", f"more than {max_rows} rows", 413)
                try:
                    rows.append([float(row[k]) for k in order])
                except (ValueError, IndexError):
                    raise TrainingRequestError("upload", f"line {line}: expected a number in each column") from None
        except csv.Error as exc:
            raise TrainingRequestError("upload", f"line {reader.line_num}: not a CSV row ({exc})"[:200]) from None
        table = np.array(rows, dtype=float).reshape(-1, len(names))
    return table[:, : len(features)], table[:, len(features) :]


def _check_npy_header(raw: bytes, columns: int, max_rows: int = MAX_TRAINING_ROWS) -> None:
    """The .npy's header read and checked before its array is: a 2-d array of real numbers, rows x `columns`, at
    most `max_rows` rows, and no more data declared than the file holds (numpy allocates what the header
    declares before it reads a byte of it)."""
    buffer = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"format version {version[0]}.{version[1]} (1.0 or 2.0 expected)")
        shape, _, dtype = read_header[version](buffer)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise TrainingRequestError("upload", f"not a .npy file: {exc}"[:200]) from None
    if len(shape) != 2 or shape[1] != columns or dtype.kind not in "iuf":
        raise TrainingRequestError(
            "upload", f"expected a 2-d array of real numbers, rows x {columns}: {shape} of {dtype.str}"
        )
    if shape[0] > max_rows:
        raise TrainingRequestError("upload", f"{shape[0]} rows: at most {max_rows}", 413)
    if shape[0] * columns * dtype.itemsize > len(raw) - buffer.tell():
        raise TrainingRequestError("upload", f"its header declares {shape} values; the file is shorter")


def _check(
    X: np.ndarray,
    Y: np.ndarray,
    bounds: dict[str, list[float]],
    features: Any,
    outputs: Any,
    prefix: str,
    limits: Any = None,
    margin: float = DOMAIN_MARGIN,
) -> None:
    """The data as a fit takes it: every row inside the domain the model answers for (its bounds widened by the
    margin, within its limits: where /suggest proposes points); the fit's bounds then cover the rows."""
    declared = np.array([bounds[f] for f in features], dtype=float)
    domain = answered_domain(declared, limits_array(limits, features), margin)
    try:
        # the bounds as given: the fit checks them (or wider ones, holding rows in the margin), not the domain
        check_offsets(declared, list(features))
        check_training_data(X, Y, domain, features=list(features), outputs=list(outputs))
    except TrainingDataError as exc:
        field = "bounds" if exc.field == "bounds" else f"{prefix}.{exc.field}"
        raise TrainingRequestError(field, exc.message) from None


def _store_data(
    datasets: DatasetStore,
    name: str,
    existing: _Model | None,
    X: np.ndarray,
    Y: np.ndarray,
    features: tuple[str, ...],
    outputs: tuple[str, ...],
    bounds: dict[str, list[float]],
    by: str,
    field_prefix: str = "data",
    limits: Any = None,
    margin: float = DOMAIN_MARGIN,
) -> Dataset:
    """The data checked (with the head's rows, which it joins) and written: the dataset the job fits."""
    head = existing.head if existing is not None else None
    if head is None:
        _check(X, Y, bounds, features, outputs, field_prefix, limits, margin)
        return datasets.create(name, X, Y, features, outputs, by)
    if head.rows + len(X) > MAX_TRAINING_ROWS:
        raise TrainingRequestError(
            field_prefix, f"{head.rows} rows held and {len(X)} sent: at most {MAX_TRAINING_ROWS} can be fitted", 413
        )
    before_X, before_Y = datasets.load(head)
    _check(np.vstack([before_X, X]), np.vstack([before_Y, Y]), bounds, features, outputs, field_prefix, limits, margin)
    dataset, _ = datasets.append(name, X, Y, by)
    return dataset


def exact_allowed(options: TrainingOptions, rows: int) -> None:
    if options.inference == "exact" and rows > EXACT_MAX_N:
        raise TrainingRequestError("inference", f"exact inference fits at most {EXACT_MAX_N} rows; {rows} given")
