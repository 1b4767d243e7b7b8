"""Logs, metrics and traces shared by the app and its routers (Powertools; metrics are EMF log lines)."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

from handler.config import load_settings

logger = Logger()
# CloudWatch metrics as EMF log lines (no API calls): namespace from POWERTOOLS_METRICS_NAMESPACE.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "GPRSurrogate")
# /health, /model and refusals (counted by their own single metric) have no request metrics: that is expected.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
# X-Ray subsegments around the model load and the prediction, when TRACING is on (the template's TracingMode).
# Off, the X-Ray SDK is not even imported: it adds ~0.5 s to every cold start that a snapshot does not absorb.
tracer = Tracer() if load_settings().tracing else None


def subsegment(name: str) -> Any:
    return tracer.provider.in_subsegment(name) if tracer is not None else contextlib.nullcontext()
