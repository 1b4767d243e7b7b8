"""What a model is and whether the service is up: GET /health, GET /model (its manifest and this deployment's
limits), GET /model/training-data, GET /openapi.json."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import numpy as np
from aws_lambda_powertools.event_handler.api_gateway import Router

from handler.api.deadline import cost_model_of
from handler.api.errors import RequestError
from handler.api.model_routes import model_route, resolver
from handler.api.predictions import model_batch_limits
from handler.api.services import Services
from handler.gp.artifact import ModelUnavailableError
from handler.jobs.sizing import fitting_chunk_points

router = Router()
_services: Services | None = None


def configure(services: Services) -> None:
    global _services
    _services = services


def _context() -> Services:
    assert _services is not None, "handler.api.model_info.configure() was not called"
    return _services


@router.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "model_loaded": resolver().packaged().is_loaded}


def _job_chunk_points() -> int | None:
    """Points a job's chunk holds on the model served, from its manifest (GET /model loads no model; the worker
    sizes chunks from the loaded model's same shapes); None while the manifest cannot be read (said elsewhere)."""
    try:
        cost = cost_model_of(_context().manifest())
    except ModelUnavailableError:
        return None
    if cost is None:  # a GPy pickle: no cost model
        return _context().settings.job_chunk_points
    return fitting_chunk_points(
        cost, _context().settings.job_chunk_points, _context().settings.job_worker_timeout_seconds
    )


@model_route(router, "GET", "/model", "/manifest")
def model_info() -> dict[str, Any]:
    jobs = _context().settings.jobs_enabled
    batch = model_batch_limits()
    limits: dict[str, Any] = {
        "max_batch_size": batch.points,
        "max_job_points": _context().settings.job_max_points if jobs else None,
        "job_chunk_points": _job_chunk_points() if jobs else None,
    }
    if batch.with_gradient != batch.points:
        limits["max_batch_size_with_gradient"] = batch.with_gradient
    document = dict(_context().manifest().document)
    # `limits` here is this deployment's (as before manifests had any); the manifest's are its features' physical ones
    if (physical_limits := document.pop("limits", None)) is not None:
        document["physical_limits"] = physical_limits
    return {**document, "limits": limits}


@model_route(router, "GET", "/model/training-data", "/training-data")
def training_data() -> dict[str, Any]:
    """The training points the manifest publishes, as columns; 404 where it publishes none."""
    loaded = _context().loaded_model()
    published = loaded.training_data
    if published is None:
        raise RequestError(
            HTTPStatus.NOT_FOUND,
            "training data not published",
            [("path", "this model's manifest publishes no training data (package_model.py --publish-training-data)")],
        )
    manifest = loaded.manifest
    outputs = published.outputs
    return {
        "published": manifest.published_training_data,
        "n_points": len(published.inputs),
        # Columns, C-ordered for orjson (which writes only contiguous arrays)
        "inputs": dict(zip(manifest.features, np.ascontiguousarray(published.inputs.T), strict=True)),
        "outputs": None
        if outputs is None
        else dict(zip(manifest.outputs, np.ascontiguousarray(outputs.T), strict=True)),
    }


@router.get("/openapi.json")
def openapi() -> dict[str, Any]:
    from handler.api.openapi import openapi_document  # pydantic and the schema build: only for this route

    return openapi_document(_context().manifest(), _context().settings)
