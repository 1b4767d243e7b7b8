"""The training function (TrainingFunction, SQS TrainingQueue): claims a training job, fits its dataset, packages and
publishes the version, applies the promotion rule, and records each step on the job.

A fit gets the Lambda's remaining time less DEADLINE_MARGIN_S (packaging, the publish's check and the promotion's
scoring after it). Between restarts it records its progress, which is also where a cancel is seen. A fit that
fails, or stops with no optimisation converged, leaves the job FAILED with the reason and the alias untouched. AWS
faults are retried by the queue (the job released first), at most MAX_ATTEMPTS deliveries in all.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from handler.config import load_settings
from handler.gp.artifact import manifest_path_for
from handler.registry.datasets import DatasetStore, datasets_from_store
from handler.registry.publishing import PublishRefusedError, publish_artifact
from handler.registry.store import RegistryStore, RegistryUnavailableError, store_from_settings
from handler.training.data import EXACT_MAX_N, TrainingDataError, covering
from handler.training.fit import FitResult, fit
from handler.training.jobs import TRAINING_TIMEOUT_S, JobCancelledError, TrainingJob, TrainingStore
from handler.training.packaging import PackagingError, package
from handler.training.promotion import promote

# Packaging (2,048 check points against GPy), the publish's load check and the if_better scoring of two versions
# took ~5 s at 2,000 points here; a minute leaves room for a slow S3 and a cold start.
DEADLINE_MARGIN_S = 60.0
MAX_ERROR_CHARS = 500
RETRY_DELAY_S = 30  # an attempt interrupted by an AWS fault is delivered again this soon

settings = load_settings()
logger = Logger(service="training")
processor = BatchProcessor(event_type=EventType.SQS)
_stores: tuple[RegistryStore, DatasetStore, TrainingStore] | None = None


def stores() -> tuple[RegistryStore, DatasetStore, TrainingStore]:
    global _stores
    if _stores is None:
        import boto3

        registry = store_from_settings(settings)
        _stores = (
            registry,
            datasets_from_store(registry),
            TrainingStore(registry, boto3.client("sqs"), settings.training_queue_url),
        )
    return _stores


def handle_message(record: SQSRecord, lambda_context: LambdaContext | None = None) -> None:
    message = json.loads(record.body)
    name, job_id = str(message["model"]), str(message["job_id"])
    registry, datasets, jobs = stores()
    job = jobs.get(name, job_id)
    if job is None:
        logger.warning("training job not found", extra={"model": name, "job": job_id})
        return
    remaining = TRAINING_TIMEOUT_S if lambda_context is None else lambda_context.get_remaining_time_in_millis() / 1e3
    claimed = jobs.claim(job, remaining)
    if claimed is None:  # finished, cancelled, or held by a live attempt (a second delivery): nothing to do
        logger.info("training job not claimed", extra={"model": name, "job": job_id, "status": job.status})
        return
    deadline = time.monotonic() + remaining - DEADLINE_MARGIN_S
    try:
        train(claimed, registry, datasets, jobs, deadline)
    except JobCancelledError:
        logger.info("training job cancelled while it ran", extra={"model": name, "job": job_id})
    except RegistryUnavailableError:
        # AWS faults say nothing about the job: the queue delivers it again (its attempts counted)
        logger.exception("training job interrupted by AWS", extra={"model": name, "job": job_id})
        with contextlib.suppress(Exception):
            jobs.release(claimed)
            # back in RETRY_DELAY_S rather than the queue's 90 minutes (sized for an attempt that died)
            jobs.sqs.change_message_visibility(
                QueueUrl=jobs.queue_url, ReceiptHandle=record.receipt_handle, VisibilityTimeout=RETRY_DELAY_S
            )
        raise


def train(
    job: TrainingJob, registry: RegistryStore, datasets: DatasetStore, jobs: TrainingStore, deadline: float
) -> None:
    """Fit, publish, promote; the job FAILED with the reason when the fit cannot give a version."""
    try:
        assert job.dataset is not None, "a queued job names its dataset"
        dataset = datasets.get(job.model, str(job.dataset["id"]))
        if dataset is None:
            raise TrainingDataError("data", f"dataset {job.dataset['id']} of {job.model} is gone")
        X, Y = datasets.load(dataset)
        state = [jobs.progress(job, stage="fitting")]

        def progress(fits_done: int, fits_total: int) -> None:
            # JobCancelledError when the job was cancelled meanwhile: the fit stops between optimisations
            state[0] = jobs.progress(state[0], fits_done=fits_done, fits_total=fits_total)

        options = job.options
        # rows may reach past the bounds (within the domain the model answers: /suggest proposes points there); the
        # new version's bounds cover them
        bounds = covering(np.array([job.bounds[f] for f in job.features]), X)
        result = fit(
            X,
            Y,
            bounds,
            kernel=options.kernel,  # type: ignore[arg-type]
            restarts=options.restarts,
            seed=options.seed,
            sparse_above={"auto": EXACT_MAX_N, "exact": len(X), "sparse": 0}[options.inference],
            deadline=deadline,
            outputs=list(job.outputs),
            features=list(job.features),
            progress=progress,
        )
        job = jobs.progress(state[0], stage="validating")
        if problem := unconverged(result):
            jobs.finish(job, "FAILED", error=problem, validation=_validation(result), notes=[*job.notes, *result.notes])
            return
        job = jobs.progress(job, stage="publishing")
        version = publish(job, result, registry)
    except JobCancelledError:
        raise
    except TimeoutError as exc:
        jobs.finish(job, "FAILED", error=f"timed out: {exc}"[:MAX_ERROR_CHARS])
        return
    except (TrainingDataError, PackagingError, PublishRefusedError, RuntimeError, np.linalg.LinAlgError) as exc:
        if isinstance(exc, RegistryUnavailableError):
            raise
        logger.warning("training failed", extra={"model": job.model, "job": job.job_id, "reason": str(exc)})
        jobs.finish(job, "FAILED", error=f"the fit failed: {exc}"[:MAX_ERROR_CHARS])
        return
    except Exception as exc:  # anything else: the log has it, the job says what kind
        if isinstance(exc, RegistryUnavailableError):
            raise
        logger.exception("training failed unexpectedly", extra={"model": job.model, "job": job.job_id})
        jobs.finish(job, "FAILED", error=f"the fit failed ({type(exc).__name__}); the reason is logged")
        return
    promoted, promotion = False, None
    if version.state == "READY":
        # JobCancelledError when a cancel landed while the version was published: it stays, unpromoted
        job = jobs.progress(job, stage="publishing")
        promoted, promotion = promote(
            registry,
            version,
            job.options.promote,
            job.options.alias,
            X,
            Y,
            list(job.outputs),
            job.created_by,
            f"training job {job.job_id}",
            settings.model_cache_dir / "training",
        )
    else:
        promotion = {
            "rule": job.options.promote,
            "alias": job.options.alias,
            "from": None,
            "to": None,
            "reason": f"the version is {version.state}: {version.reason}",
        }
    finished = jobs.finish(
        job,
        "SUCCEEDED" if version.state in ("READY", "REJECTED") else "FAILED",
        version=version.version,
        version_state=version.state,
        promoted=promoted,
        promotion=promotion,
        validation=_validation(result),
        error=None if version.state in ("READY", "REJECTED") else f"the version failed its check: {version.reason}",
        notes=[*job.notes, *result.notes],
    )
    logger.info(
        "training job finished",
        extra={"model": job.model, "job": job.job_id, "version": version.version, "recorded": finished is not None},
    )


def unconverged(result: FitResult) -> str | None:
    """Why the fit's result is no fit, or None: every optimisation must not have stopped short."""
    if any(r.stopped == "converged" for r in result.restarts):
        return None
    stops = sorted({r.stopped for r in result.restarts})
    if "deadline" in stops:
        return "timed out: no optimisation converged before the training function's deadline"
    return f"the fit did not converge: every optimisation stopped ({', '.join(stops)})"


def publish(job: TrainingJob, result: FitResult, registry: RegistryStore) -> Any:
    """The fitted model packaged as scripts/package_model.py packages (one code path) and published server-side."""
    features, outputs = list(job.features), list(job.outputs)
    cache = settings.model_cache_dir / "training"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="package-") as folder:
        _, artifact = package(
            result.model,
            b"",  # no pickle: a fit is always a posterior file (a fallback to a pickle is refused at publish)
            Path(folder) / f"{job.model}.npz",
            features=features,
            outputs=outputs,
            # the fit's bounds: the job's, covering every row it was fitted on
            bounds={f: (float(lo), float(hi)) for f, (lo, hi) in zip(features, result.bounds, strict=True)},
            name=job.model,
            description=job.options.description or f"trained by job {job.job_id}",
            training={"job_id": job.job_id, "fit": result.describe()},
            limits={f: (lo, hi) for f, (lo, hi) in (job.limits or {}).items()},
            units=job.units,
            force=True,  # the gate is the job's to apply: a failing fit becomes a REJECTED version, kept
        )
        data = artifact.read_bytes()
        manifest = json.loads(manifest_path_for(artifact).read_text())
    details = {
        "dataset": job.dataset,
        "origin": {
            "how": "trained",
            "job_id": job.job_id,
            "kernel": result.kernel,
            "inference": result.inference,
            "restarts": len(result.restarts),
            "seconds": round(result.seconds, 3),
        },
        "validation": _validation(result),
    }
    rejected = "; ".join(result.problems) if result.problems and not job.options.force else None
    return publish_artifact(
        registry, job.model, data, manifest, job.created_by, settings.model_cache_dir / "checks", details, rejected
    )


def _validation(result: FitResult) -> dict[str, Any]:
    return {
        name: {k: (float(v) if isinstance(v, float) and np.isfinite(v) else (v if isinstance(v, int) else None))
               for k, v in vars(m).items()}
        for name, m in result.validation.items()
    }  # fmt: skip


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    return process_partial_response(event=event, record_handler=handle_message, processor=processor, context=context)
