"""The client: synchronous predictions of any size, asynchronous jobs, and the model registry."""

from __future__ import annotations

import copy
import csv
import email.utils
import io
import json
import math
import operator
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import numpy as np
import tenacity
from tqdm.auto import tqdm

from gpr_client.answers import (
    JobResults,
    ModelInfo,
    Predictions,
    Suggestions,
    TrainingData,
    optional_module,
)
from gpr_client.training import (
    MAX_INLINE_OBSERVATIONS,
    PROMOTE_RULES,
    REFITS,
    LoopHistory,
    LoopRound,
    Observed,
    RefitPolicy,
    Upload,
    as_upload,
    check_loop_arguments,
    promoted,
    rows_in,
    simulated,
    table_of,
    training_body,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
CANCELLED_BY_CALLER = "cancelled by the caller"  # a cancelled job's error (handler/jobs/routes.py)
NPY_HEADER_READ = 2**20  # an .npy header of a result's columns: a few KB (numpy reads at most 10,000 bytes of it)
REFUSED_BEFORE_WORK = frozenset({429, 503})  # throttled, or the service's own 503 (nothing written)
TIME_BUDGET_EXCEEDED = "time budget exceeded"  # the service's 504: not retried (the same work would not fit again)
URL_VARIABLE = "GPR_SURROGATE_URL"
KEY_VARIABLE = "GPR_SURROGATE_API_KEY"
ADMIN_KEY_VARIABLE = "GPR_SURROGATE_ADMIN_KEY"
MODEL_VERSION_HEADER = "x-model-version"
MAX_RETRY_AFTER_S = 120.0
ACCEPTED_POINTS = (
    "an (N, n_features) array or list of lists in the model's feature order, a DataFrame with a column per feature, "
    "a list of rows {feature: value}, or columns {feature: [values]}"
)


class ApiError(Exception):
    """The service refused a request: `status`, `error` and `details` ([{field, message}]) as it sent them."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        # API Gateway's own refusals (403 without a key, 429) say {"message": ...}; the service's say {"error": ...}
        self.error = (body.get("error") or body.get("message") or "") if isinstance(body, dict) else str(body)[:200]
        self.details: list[dict[str, str]] = body.get("details", []) if isinstance(body, dict) else []
        said = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in self.details[:5])
        super().__init__(f"HTTP {status}: {self.error}" + (f" ({said})" if said else ""))


class JobFailedError(Exception):
    """A job ended FAILED; `reason` is the service's."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id} failed: {reason}")


class PublishFailedError(Exception):
    """A published version failed the service's checks (it is FAILED and nothing serves it); `reason` is the
    service's."""

    def __init__(self, name: str, version: int, reason: str) -> None:
        self.name = name
        self.version = version
        self.reason = reason
        super().__init__(f"{name} version {version} failed its checks: {reason}")


class _RetryableError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        super().__init__(f"HTTP {response.status_code}")


class _WaitRetryAfter(tenacity.wait.wait_base):
    """The server's Retry-After when it sent one (seconds or an HTTP date), else the fallback backoff."""

    def __init__(self, fallback: tenacity.wait.wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _RetryableError) and (header := error.response.headers.get("retry-after")):
            seconds = _retry_after_seconds(header)
            if seconds is not None:
                return min(seconds, MAX_RETRY_AFTER_S)
        return float(self.fallback(retry_state))


def _out_of_time(response: httpx.Response) -> bool:
    """The service's own 504 (its work did not fit the function's time): the same request would fail again.
    API Gateway's 504 (a timed-out integration, a body of its own) is retried."""
    if response.status_code != 504:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error") == TIME_BUDGET_EXCEEDED


def _retry_after_seconds(header: str) -> float | None:
    try:
        return max(0.0, float(header))
    except ValueError:
        moment = email.utils.parsedate_to_datetime(header) if header else None
        return None if moment is None else max(0.0, moment.timestamp() - time.time())


class SurrogateClient:
    """The API at `base_url` (or $GPR_SURROGATE_URL), with `api_key` (or $GPR_SURROGATE_API_KEY) if it needs one.

    `model` picks a model of the registry: "name" (its `live` alias), "name@alias", or "name" with `version=3`;
    every model call then goes to /models/{model}/...; without one, to the root routes (the packaged model).
    `last_model_version` is the version that answered the last call ("name/3", the X-Model-Version header).
    `admin_key` (or $GPR_SURROGATE_ADMIN_KEY) is sent instead of `api_key` on the registry's writes (publish,
    promote, rollback, delete_version). Thread-safe; use as a context manager or call `close()`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        model: str | None = None,
        version: int | None = None,
        admin_key: str | None = None,
        concurrency: int = 4,
        max_attempts: int = 8,
        timeout_s: float = 60.0,
        batch_size: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base_url = base_url or os.environ.get(URL_VARIABLE)
        if not base_url:
            raise ValueError(f"give base_url or set {URL_VARIABLE}")
        api_key = api_key if api_key is not None else os.environ.get(KEY_VARIABLE)
        self._admin_key = admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_VARIABLE)
        # The admin key is an API key too (deployed, in a usage plan of its own): an admin's client with no reader's
        # key reads with it as well.
        key = api_key if api_key else self._admin_key
        headers = {"x-api-key": key} if key else {}
        limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, limits=limits, transport=transport
        )
        # Presigned S3 URLs carry their own signature: no API key goes to S3.
        self._files = httpx.Client(timeout=max(timeout_s, 300.0), transport=transport)
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self._batch_size = batch_size
        self._model: ModelInfo | None = None
        self._training: TrainingData | None = None
        self._prefix = _model_prefix(model, version)
        self.last_model_version: str | None = None

    def __enter__(self) -> SurrogateClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._files.close()

    # --- HTTP with retries ---------------------------------------------------------------------------

    def _request(
        self, method: str, url: str, *, client: httpx.Client | None = None, once: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, retried on 429/502/503/504 (not the service's own 504, "time budget exceeded") and transport
        errors; ApiError for any other 4xx/5xx. `once`: a write that must not happen twice (it appends data) is
        retried only where the service cannot have done it: 429 and 503 (refused before any work), and connections
        that never opened."""
        failures: tuple[type[Exception], ...] = (_RetryableError, httpx.TransportError)
        statuses = RETRYABLE_STATUSES
        if once:
            statuses, failures = REFUSED_BEFORE_WORK, (_RetryableError, httpx.ConnectError, httpx.ConnectTimeout)
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=_WaitRetryAfter(tenacity.wait_random_exponential(multiplier=0.5, max=30)),
            retry=tenacity.retry_if_exception_type(failures),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    response = (client or self._http).request(method, url, **kwargs)
                    if response.status_code in statuses and not _out_of_time(response):
                        raise _RetryableError(response)
        except _RetryableError as exhausted:
            response = exhausted.response
        if answered_by := response.headers.get(MODEL_VERSION_HEADER):
            self.last_model_version = answered_by
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text[:200]}
            raise ApiError(response.status_code, body)
        return response

    # --- the model ----------------------------------------------------------------------------------

    def _model_path(self, root: str, under_model: str | None = None) -> str:
        """A model route's path: `root` for the packaged model, else under /models/{model} (at `under_model`)."""
        return f"{self._prefix}{under_model or root}" if self._prefix else root

    def model(self) -> ModelInfo:
        """GET /model (or /models/{model}/manifest), once: names, bounds and the deployment's limits."""
        if self._model is None:
            doc = self._request("GET", self._model_path("/model", "/manifest")).json()
            limits = doc.get("limits", {})
            self._model = ModelInfo(
                name=doc["name"],
                version=str(doc["version"]),
                features=tuple(doc["features"]),
                outputs=tuple(doc["outputs"]),
                bounds={k: (float(v[0]), float(v[1])) for k, v in doc["bounds"].items()},
                max_batch_size=int(limits.get("max_batch_size", 10_000)),
                max_job_points=limits.get("max_job_points"),
                max_batch_size_with_gradient=limits.get("max_batch_size_with_gradient"),
                published_training_data=doc.get("published_training_data"),
                units={str(k): str(v) for k, v in (doc.get("units") or {}).items()},
            )
        return self._model

    def training_data(self) -> TrainingData | None:
        """GET /model/training-data (or /models/{model}/training-data), once: the points the model was fitted on,
        where its manifest publishes them; None where it publishes none."""
        info = self.model()
        if info.published_training_data is None:
            return None
        if self._training is None:
            doc = self._request("GET", self._model_path("/model/training-data", "/training-data")).json()
            outputs = doc.get("outputs")
            self._training = TrainingData(
                published=doc["published"],
                inputs=np.column_stack([np.asarray(doc["inputs"][f], dtype=float) for f in info.features]),
                outputs=None
                if outputs is None
                else np.column_stack([np.asarray(outputs[o], dtype=float) for o in info.outputs]),
            )
        return self._training

    def _points(self, X: Any) -> np.ndarray:
        """X as an (N, n_features) float array in the model's feature order: an array or list of lists in that
        order, or named values (a DataFrame, a list of rows {feature: value}, columns {feature: [values]})."""
        features = self.model().features
        if hasattr(X, "columns") and hasattr(X, "to_numpy"):
            missing = [f for f in features if f not in X.columns]
            if missing:
                raise ValueError(
                    f"X lacks column(s) {', '.join(missing)} (the model's features: {', '.join(features)})"
                )
            X = X[list(features)].to_numpy(dtype=float)
        elif isinstance(X, Mapping):
            X = _columns_by_name(X, features)
        elif isinstance(X, Sequence) and not isinstance(X, str) and any(isinstance(r, Mapping) for r in X):
            if not all(isinstance(r, Mapping) for r in X):
                raise TypeError(f"X must be {ACCEPTED_POINTS}; got {_described(X)}")
            X = _rows_by_name(X, features)
        try:
            points = np.asarray(X, dtype=float)
        except TypeError as refused:
            raise TypeError(f"X must be {ACCEPTED_POINTS}; got {_described(X)}") from refused
        except ValueError as refused:
            raise ValueError(f"X must be numbers, {ACCEPTED_POINTS} ({refused})") from refused
        if points.ndim == 1 and len(features) == 1:
            points = points[:, None]
        if points.ndim != 2 or points.shape[1] != len(features):
            raise ValueError(f"X must be (N, {len(features)}) for features {', '.join(features)}; got {points.shape}")
        return points

    # --- synchronous predictions --------------------------------------------------------------------

    def predict(
        self, X: Any, *, latent: bool = False, include: Sequence[str] = (), progress: bool = False
    ) -> Predictions:
        """Predictions for every row of X, in order: batches within the limit, sent `concurrency` at a time."""
        info = self.model()
        points = self._points(X)
        limit = info.max_batch_size
        if "gradient" in include and info.max_batch_size_with_gradient is not None:
            limit = min(limit, info.max_batch_size_with_gradient)
        size = min(self._batch_size, limit) if self._batch_size else limit
        params = {"variance": "latent" if latent else "noisy"}
        if include:
            params["include"] = ",".join(include)
        starts = range(0, len(points), size)

        path = self._model_path("/predict")

        def send(start: int) -> tuple[dict[str, Any], str | None]:
            batch = points[start : start + size]
            body = {name: batch[:, i].tolist() for i, name in enumerate(info.features)}
            content = json.dumps(body, allow_nan=False)
            headers = {"content-type": "application/json"}
            response = self._request("POST", path, params=params, content=content, headers=headers)
            return response.json(), response.headers.get(MODEL_VERSION_HEADER)

        answers, versions = [], []
        with (
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
            tqdm(total=len(starts), unit="batch", disable=not progress) as bar,
        ):
            for answer, answered_by in pool.map(send, starts):
                answers.append(answer)
                if answered_by is not None and answered_by not in versions:
                    versions.append(answered_by)
                _advance(bar, len(answers))
        predictions = _gather(answers, info.outputs, info.features, tuple(include))
        predictions.model_versions = tuple(versions)
        return predictions

    def covariance(self, X: Any, *, latent: bool = False) -> np.ndarray:
        """The joint predictive covariance of the rows of X, (n_outputs, N, N); N within the service's limit."""
        info = self.model()
        points = self._points(X)
        body = {name: points[:, i].tolist() for i, name in enumerate(info.features)}
        params = {"variance": "latent" if latent else "noisy", "include": "covariance"}
        answer = self._request("POST", self._model_path("/predict"), params=params, json=body).json()
        per_output = [answer] if len(info.outputs) == 1 else [answer[o] for o in info.outputs]
        return np.array([np.asarray(o["covariance"], dtype=float) for o in per_output])

    def sample(
        self, X: Any, samples: int, *, seed: int | None = None, target: str = "latent"
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Joint draws at the rows of X: (n_outputs, samples, N), and the answer's seed, jitter and method."""
        info = self.model()
        points = self._points(X)
        body: dict[str, Any] = {
            "points": {name: points[:, i].tolist() for i, name in enumerate(info.features)},
            "samples": samples,
            "target": target,
        }
        if seed is not None:
            body["seed"] = seed
        answer = self._request("POST", self._model_path("/sample"), json=body).json()
        draws = answer.pop("samples")
        per_output = [draws] if len(info.outputs) == 1 else [draws[o] for o in info.outputs]
        return np.array(per_output, dtype=float), answer

    # --- analyses: /sensitivity, /propagate, /suggest ------------------------------------------------
    # Each POSTs the documented body (fields left as None are not sent: the service's defaults apply) and
    # returns the service's answer; refusals raise ApiError naming the field.

    def sensitivity(
        self,
        n: int = 1024,
        posterior_samples: int = 0,
        second_order: bool = False,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Sobol' indices (POST /sensitivity): the answer as JSON, `{output: answer}` for several outputs.

        One output's answer has `variance`, `first_order` and `total` ({feature: {estimate, ci_low, ci_high}}),
        `second_order` if asked, and `seed`, `n`, `evaluations`, `posterior_samples`, `confidence`. `inputs`:
        a distribution per feature, e.g. {"x1": {"distribution": "normal", "mean": 0.5, "std": 0.1}}; features
        not named are uniform over the model's bounds.
        """
        body: dict[str, Any] = {
            "n": operator.index(n),
            "posterior_samples": operator.index(posterior_samples),
            "second_order": bool(second_order),
            "inputs": _input_distributions(inputs),
            "seed": _seed(seed),
        }
        return self._post_analysis("/sensitivity", body)

    def propagate(
        self,
        n: int = 4096,
        posterior_samples: int = 50,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        thresholds: Sequence[float] = (),
        bins: int = 30,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """The output's distribution under input distributions (POST /propagate): the answer as JSON.

        One output's answer has `mean`, `std`, `quantiles` ([{probability, estimate, ci_low, ci_high}]),
        `exceedance` ([{threshold, ...}]: P(y > threshold)), `histogram` ({edges, counts, ...}),
        `points_outside_domain`, `seed`, `n`, `posterior_samples`, `confidence`; `{output: answer}` for several.
        """
        body: dict[str, Any] = {
            "n": operator.index(n),
            "posterior_samples": operator.index(posterior_samples),
            "quantiles": [float(q) for q in quantiles],
            "thresholds": [float(t) for t in thresholds],
            "bins": operator.index(bins),
            "inputs": _input_distributions(inputs),
            "seed": _seed(seed),
        }
        return self._post_analysis("/propagate", body)

    def suggest(
        self,
        q: int = 1,
        acquisition: str = "variance",
        goal: str | None = None,
        output: str | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        pending: Any = None,
        best: float | None = None,
        beta: float = 2.0,
        seed: int | None = None,
    ) -> Suggestions:
        """The next q points to simulate, chosen jointly (POST /suggest); `.points` is their (q, d) array.

        `acquisition`: variance, integrated_variance, expected_improvement or upper_confidence_bound (the last
        two need `goal`, maximize or minimize, and `output` for a model with several). `bounds`: {feature:
        (low, high)} for any subset. `pending`: points already planned, which the batch avoids: a list of
        {feature: value}, or an (n, d) array (or DataFrame) in the model's feature order.
        """
        info = self.model()
        body: dict[str, Any] = {
            "q": operator.index(q),
            "acquisition": acquisition,
            "goal": goal,
            "output": output,
            "bounds": None if bounds is None else {k: [float(lo), float(hi)] for k, (lo, hi) in bounds.items()},
            "pending": self._pending_rows(pending),
            "best": None if best is None else float(best),
            "beta": float(beta),
            "seed": _seed(seed),
        }
        answer = self._post_analysis("/suggest", body)
        picks = answer["points"]
        d, k = len(info.features), len(info.outputs)
        points = np.array([[p["x"][f] for f in info.features] for p in picks], dtype=float).reshape(len(picks), d)
        per_output = [[p["prediction"]] if k == 1 else [p["prediction"][o] for o in info.outputs] for p in picks]
        mean = np.array([[o["mean"] for o in row] for row in per_output], dtype=float).reshape(len(picks), k)
        variance = np.array([[o["variance"] for o in row] for row in per_output], dtype=float).reshape(len(picks), k)
        values = np.array([p["acquisition"] for p in picks], dtype=float)
        return Suggestions(info.features, info.outputs, points, values, mean, variance, answer)

    def _post_analysis(self, path: str, body: dict[str, Any]) -> Any:
        content = json.dumps({k: v for k, v in body.items() if v is not None}, allow_nan=False)
        headers = {"content-type": "application/json"}
        return self._request("POST", self._model_path(path), content=content, headers=headers).json()

    def _pending_rows(self, pending: Any) -> list[dict[str, float]] | None:
        """Pending points as rows: a list of {feature: value} kept as given (values as floats), else an array."""
        if pending is None:
            return None
        if (
            isinstance(pending, Sequence)
            and not isinstance(pending, str)
            and all(isinstance(row, Mapping) for row in pending)
        ):
            return [{str(k): float(v) for k, v in row.items()} for row in pending]
        features = self.model().features
        return [dict(zip(features, map(float, row), strict=True)) for row in self._points(pending)]

    # --- pictures (the `plot` extra: matplotlib) ------------------------------------------------------

    def plot_slices(
        self,
        at: Mapping[str, float] | None = None,
        *,
        output: str | None = None,
        points: int = 60,
        latent: bool = True,
        near: float | None = 0.15,
        ncols: int | None = None,
        figsize: tuple[float, float] | None = None,
    ) -> Figure:
        """The mean along each feature in a band of two standard deviations, the others held at `at` (default: the
        middle of the bounds), on a grid of `ncols` columns (default: at most 4, rows as even as can be), a block
        of rows per output unless `output` names one; `figsize` in inches (default: 3.2 x 2.5 a panel). A
        matplotlib Figure (`.savefig(path)`). Axes name their feature and output with the manifest's units; where
        the band is narrower than the line, the panel says so and the legend leaves it out.

        Where the model publishes its training points, those `near` the held values are drawn too (the root mean
        square, over the other features, of each difference over its range; None: none): dots at their outputs, or
        ticks along the foot where only inputs are published."""
        from gpr_client.plots import slices  # the `plot` extra's matplotlib: imported when a picture is asked for

        return slices(self, at, output, points, latent, near, ncols, figsize)

    def plot_contour(
        self,
        a: str,
        b: str,
        *,
        at: Mapping[str, float] | None = None,
        output: str | None = None,
        points: int = 40,
        latent: bool = True,
        figsize: tuple[float, float] | None = None,
    ) -> Figure:
        """Mean and standard deviation over features `a` (across) and `b` (up) side by side, the others held at
        `at` (default: the middle of the bounds); one row per output unless `output` names one. Colour bars name
        the statistic, the output and its unit."""
        from gpr_client.plots import contour

        return contour(self, a, b, at, output, points, latent, figsize)

    def plot_sensitivity(
        self,
        result: Mapping[str, Any] | None = None,
        *,
        output: str | None = None,
        n: int = 1024,
        posterior_samples: int = 0,
        seed: int = 1,
        figsize: tuple[float, float] | None = None,
    ) -> Figure:
        """First-order and total Sobol' indices with their intervals, as bars: of `result` (what `sensitivity()`
        returns) or, without one, of `sensitivity(n=n, posterior_samples=posterior_samples, seed=seed)`. Each
        title says n, the posterior draws k (0: the posterior mean's indices) and the seed."""
        from gpr_client.plots import sensitivity as sensitivity_bars

        if result is None:
            result = self.sensitivity(n=n, posterior_samples=posterior_samples, seed=seed)
        return sensitivity_bars(self, result, output, figsize)

    # --- asynchronous jobs --------------------------------------------------------------------------

    def submit(
        self,
        X: Any = None,
        *,
        design: dict[str, Any] | None = None,
        latent: bool = False,
        include: Sequence[str] = (),
        format: str = "npy",
        idempotency_key: str | None = None,
    ) -> Job:
        """Start a job on the rows of X (inline, or uploaded when over one request) or on a design spec."""
        if (X is None) == (design is None):
            raise ValueError("give either X or design")
        params = {"variance": "latent" if latent else "noisy", "format": format}
        if include:
            params["include"] = ",".join(include)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}  # a retried submit is the same job
        if design is not None:
            body: dict[str, Any] = {"design": design}
            points = None
        else:
            points = self._points(X)
            if len(points) <= self.model().max_batch_size:
                body = {"points": {n: points[:, i].tolist() for i, n in enumerate(self.model().features)}}
            else:
                body = {"upload": {"format": "npy"}}
        doc = self._request("POST", self._model_path("/jobs"), params=params, json=body, headers=headers).json()
        if doc["status"] == "AWAITING_UPLOAD" and points is not None:
            buffer = io.BytesIO()
            np.save(buffer, points)
            self._request("PUT", doc["upload"]["url"], client=self._files, content=buffer.getvalue())
            doc = self._request("POST", f"/jobs/{doc['id']}/start").json()
        return Job(self, doc["id"], doc)

    def job(self, job_id: str) -> Job:
        """A job submitted earlier (by id)."""
        return Job(self, job_id, self._request("GET", f"/jobs/{job_id}").json())

    def run_design(
        self,
        method: str,
        n: int,
        *,
        seed: int | None = None,
        bounds: dict[str, tuple[float, float]] | None = None,
        latent: bool = False,
        include: Sequence[str] = (),
        format: str = "npy",
        progress: bool = True,
        poll_interval_s: float = 2.0,
        timeout_s: float | None = None,
    ) -> JobResults:
        """Generate a design server-side (sobol, lhs, halton or grid), predict it as a job, and return the results
        (delivered as `format`: npy, csv or parquet, as submit())."""
        _check_poll_interval(poll_interval_s)  # before the job is submitted
        design: dict[str, Any] = {"method": method, "n": n}
        if seed is not None:
            design["seed"] = seed
        if bounds:
            design["bounds"] = {k: list(v) for k, v in bounds.items()}
        job = self.submit(design=design, latent=latent, include=include, format=format)
        return job.wait(progress=progress, poll_interval_s=poll_interval_s, timeout_s=timeout_s)

    # --- the model registry -------------------------------------------------------------------------
    # Reads take the client's key; writes (publish, promote, rollback, delete_version) the admin key where one was
    # given (`admin_key=` here or to the client, or $GPR_SURROGATE_ADMIN_KEY), else the client's own.

    def models(self) -> list[dict[str, Any]]:
        """GET /models: every model served (the packaged one and the registry's), with its aliases and latest
        version: [{name, source, latest_version, aliases, url}]."""
        return list(self._request("GET", "/models").json()["models"])

    def model_versions(self, name: str) -> dict[str, Any]:
        """GET /models/{name}: the model's versions (newest first: version, state, sha256, size, published_by,
        published_at, source, holdout, reason), its aliases, and their history (every move, newest first)."""
        return dict(self._request("GET", f"/models/{_segment(name)}").json())

    def publish(self, model_path: str | os.PathLike[str], name: str, *, admin_key: str | None = None) -> dict[str, Any]:
        """Publish a posterior file (and the manifest beside it, `X.manifest.json` as package_model.py writes them) as
        the next version of `name`: the version asked for, the file uploaded to its presigned URL, then checked by
        the service. The version's record (state READY) once it passed; PublishFailedError with the service's reason
        when it failed (the version is then FAILED, and nothing serves it)."""
        path = Path(model_path)
        manifest_path = path.with_name(f"{path.stem}.manifest.json")
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{path} has no manifest beside it ({manifest_path.name}): package it first")
        manifest = json.loads(manifest_path.read_text())
        data = path.read_bytes()
        headers = self._admin_headers(admin_key)
        asked = {"manifest": manifest, "size": len(data)}
        created = self._request("POST", f"/models/{_segment(name)}/versions", json=asked, headers=headers).json()
        upload = created["upload"]["model"]
        self._request(upload.get("method", "PUT"), upload["url"], client=self._files, content=data)
        try:
            return dict(self._request("POST", created["check"], headers=headers).json())
        except ApiError as refused:
            body = refused.body if isinstance(refused.body, dict) else {}
            if refused.status == 409 and not any(d.get("field") == "upload" for d in refused.details):
                # This client's own retry (API Gateway's 504 after 29 s) found the first check done, or running
                return self._checked(name, int(created["version"]))
            if refused.status != 422 or body.get("state") != "FAILED":
                raise
            reason = str(body.get("reason") or "no reason given")
            raise PublishFailedError(name, int(created["version"]), reason) from None

    def _checked(self, name: str, version: int, timeout_s: float = 120.0) -> dict[str, Any]:
        """The version's record once its check has ended (READY), as GET /models/{name} lists it."""
        deadline = time.monotonic() + timeout_s
        while True:
            listed = self.model_versions(name).get("versions", [])
            record = next((v for v in listed if v.get("version") == version), None)
            state = record.get("state") if record else None
            if state == "READY":
                return dict(record)  # type: ignore[arg-type]
            if state == "FAILED":
                raise PublishFailedError(name, version, str(record.get("reason") or "no reason given"))  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise ApiError(
                    409,
                    {
                        "error": "check not finished",
                        "details": [{"field": "version", "message": f"{name} version {version} is {state}"}],
                    },
                )
            time.sleep(1.0)

    def promote(
        self,
        name: str,
        version: int,
        alias: str = "live",
        *,
        canary: tuple[int, float] | Mapping[str, Any] | None = None,
        reason: str | None = None,
        admin_key: str | None = None,
    ) -> dict[str, Any]:
        """Point `alias` of `name` at `version` (PUT /models/{name}/aliases/{alias}); with `canary` (version,
        weight), that share of requests goes to the canary's version instead. The alias record."""
        body: dict[str, Any] = {"version": operator.index(version)}
        if canary is not None:
            pair = (canary["version"], canary["weight"]) if isinstance(canary, Mapping) else canary
            canary_version, weight = pair
            body["canary"] = {"version": operator.index(canary_version), "weight": float(weight)}
        if reason is not None:
            body["reason"] = reason
        path = f"/models/{_segment(name)}/aliases/{_segment(alias)}"
        return dict(self._request("PUT", path, json=body, headers=self._admin_headers(admin_key)).json())

    def rollback(
        self, name: str, alias: str = "live", *, reason: str | None = None, admin_key: str | None = None
    ) -> dict[str, Any]:
        """Move `alias` back to what it served before its last move (whatever that version's number), recorded as a
        rollback in the history. The alias record."""
        body = {} if reason is None else {"reason": reason}
        path = f"/models/{_segment(name)}/aliases/{_segment(alias)}/rollback"
        return dict(self._request("POST", path, json=body, headers=self._admin_headers(admin_key)).json())

    def delete_version(self, name: str, version: int, *, admin_key: str | None = None) -> dict[str, Any]:
        """Mark a version DELETED (nothing serves it again); refused (409) while an alias points at it."""
        path = f"/models/{_segment(name)}/versions/{operator.index(version)}"
        return dict(self._request("DELETE", path, headers=self._admin_headers(admin_key)).json())

    def _admin_headers(self, admin_key: str | None) -> dict[str, str]:
        key = admin_key if admin_key is not None else self._admin_key
        return {"x-api-key": key} if key else {}

    # --- training and the loop (admin writes: the admin key, as publish) ------------------------------------------

    def train(
        self,
        name: str,
        data: Any = None,
        *,
        features: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        units: Mapping[str, str] | None = None,
        limits: Mapping[str, tuple[float, float]] | None = None,
        kernel: str | None = None,
        restarts: int | None = None,
        inference: str | None = None,
        promote: str | None = None,
        alias: str | None = None,
        force: bool | None = None,
        description: str | None = None,
        seed: int | None = None,
        wait: bool = True,
        progress: bool | Callable[[dict[str, Any]], None] = True,
        poll_interval_s: float = 2.0,
        timeout_s: float | None = None,
        admin_key: str | None = None,
    ) -> dict[str, Any]:
        """Fit a version of `name` on the service (POST /models/{name}/train): on `data` (rows, columns, a DataFrame,
        a pair (X, Y) or an array with features= and outputs=, or a .csv/.npy file, uploaded), or, without data, on
        the model's own data. A new model needs `bounds` (and may give `units`, `limits`). Options left as None take
        the service's defaults (kernel auto, 3 restarts, promote if_better).

        With `wait`, polls the training job until it ends, with a progress bar (or `progress(document)` at each
        poll): its final document (`version`, `version_state` READY or REJECTED, `promoted`, `validation`); a FAILED
        job raises JobFailedError with the service's reason. Without, the job's first document."""
        if wait:
            _check_poll_interval(poll_interval_s)  # before the job is queued
        table = None if data is None else table_of(data, features, outputs)
        options = {"bounds": bounds, "units": units, "limits": limits, "kernel": kernel, "restarts": restarts,
                   "inference": inference, "promote": promote, "alias": alias, "force": force,
                   "description": description, "seed": _seed(seed)}  # fmt: skip
        body = training_body(table, features=features, outputs=outputs, options=options)
        headers = self._admin_headers(admin_key)
        path = f"/models/{_segment(name)}/train"
        doc = self._request("POST", path, json=body, headers=headers, once=table is not None).json()
        if isinstance(table, Upload):
            upload = doc.get("upload_url") or doc.get("upload")
            url, method = (upload, "PUT") if isinstance(upload, str) else (upload["url"], upload.get("method", "PUT"))
            self._request(method, url, client=self._files, content=table.content)
            start = f"/models/{_segment(name)}/training-jobs/{_segment(doc['job_id'])}/start"
            doc = self._request("POST", start, headers=headers).json()
        if not wait:
            return dict(doc)
        return self.wait_training(
            name, doc["job_id"], progress=progress, poll_interval_s=poll_interval_s, timeout_s=timeout_s,
            admin_key=admin_key, first=doc,
        )  # fmt: skip

    def training_job(self, name: str, job_id: str, *, admin_key: str | None = None) -> dict[str, Any]:
        """GET /models/{name}/training-jobs/{job_id}: the job's status document."""
        path = f"/models/{_segment(name)}/training-jobs/{_segment(job_id)}"
        return dict(self._request("GET", path, headers=self._admin_headers(admin_key)).json())

    def cancel_training(self, name: str, job_id: str, *, admin_key: str | None = None) -> dict[str, Any]:
        """Cancel a training job (a running fit stops between restarts): its document, CANCELLED."""
        path = f"/models/{_segment(name)}/training-jobs/{_segment(job_id)}/cancel"
        return dict(self._request("POST", path, headers=self._admin_headers(admin_key)).json())

    def wait_training(
        self,
        name: str,
        job_id: str,
        *,
        progress: bool | Callable[[dict[str, Any]], None] = True,
        poll_interval_s: float = 2.0,
        timeout_s: float | None = None,
        admin_key: str | None = None,
        first: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> dict[str, Any]:
        """Poll a training job until SUCCEEDED or CANCELLED (its document) or FAILED (JobFailedError): first after
        0.1 s, the wait doubling up to `poll_interval_s`."""
        _check_poll_interval(poll_interval_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        doc = dict(first) if first is not None else self.training_job(name, job_id, admin_key=admin_key)
        report = progress if callable(progress) else None
        waits = _poll_waits(poll_interval_s)
        with tqdm(total=None, unit="fit", disable=report is not None or not progress, desc=job_id[:8]) as bar:
            while True:
                if report is not None:
                    report(doc)
                else:
                    _show_training(bar, doc)
                if doc["status"] in ("SUCCEEDED", "CANCELLED"):
                    return doc
                if doc["status"] == "FAILED":
                    raise JobFailedError(job_id, doc.get("error") or "no reason given")
                if doc["status"] == "AWAITING_UPLOAD":
                    raise RuntimeError(
                        f"training job {job_id} waits for its upload: PUT the file, then POST its /start"
                    )
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"training job {job_id} is still {doc['status']} after {timeout_s} s")
                sleep(next(waits))
                doc = self.training_job(name, job_id, admin_key=admin_key)

    def observe(
        self,
        name: str,
        data: Any,
        *,
        refit: str = "condition",
        promote: str | None = None,
        alias: str | None = None,
        reason: str | None = None,
        admin_key: str | None = None,
    ) -> dict[str, Any]:
        """New simulations for `name` (POST /models/{name}/observations): rows, columns, a DataFrame or a pair
        (X, Y) of arrays in the model's feature and output order, or a .csv/.npy file (a CSV's header names the
        columns; an .npy holds the features then the outputs), uploaded to the URL the service gives, then started.
        The answer: the `surprise` of the version that served before it saw them, and with refit "condition"
        (default) the conditioned `version` and its `promotion`; with "full", the `training_job` started (wait for
        it with wait_training)."""
        if refit not in REFITS:
            raise ValueError(f"refit must be one of {', '.join(REFITS)}; got {refit!r}")
        if promote is not None and promote not in PROMOTE_RULES:
            raise ValueError(f"promote must be one of {', '.join(PROMOTE_RULES)}; got {promote!r}")
        features = outputs = None
        if isinstance(data, tuple | np.ndarray):
            info = self._on(name).model()
            features, outputs = info.features, info.outputs
        table = table_of(data, features, outputs)
        if not isinstance(table, Upload) and rows_in(table) > MAX_INLINE_OBSERVATIONS:  # more than a request takes
            info = self._on(name).model()
            table = as_upload(table, info.features, info.outputs)
        sent = {"upload": table.format} if isinstance(table, Upload) else table
        body: dict[str, Any] = {"data": sent, "refit": refit}
        body |= {k: v for k, v in (("promote", promote), ("alias", alias), ("reason", reason)) if v is not None}
        path = f"/models/{_segment(name)}/observations"
        headers = self._admin_headers(admin_key)
        answer = self._request("POST", path, json=body, headers=headers, once=True).json()
        if isinstance(table, Upload):  # the file PUT where the service said, then started (once: it appends)
            self._request("PUT", answer["upload_url"], client=self._files, content=table.content)
            start = f"{path}/uploads/{_segment(answer['upload_id'])}/start"
            answer = self._request("POST", start, headers=headers, once=True).json()
        return dict(answer)

    def loop(
        self,
        name: str,
        simulator: Callable[[np.ndarray], Any],
        rounds: int,
        batch: int = 1,
        acquisition: str = "integrated_variance",
        refit_every: int | str | None = "auto",
        progress: bool | Callable[[LoopRound], None] = True,
        *,
        promote: str = "always",
        seed: int | None = None,
        admin_key: str | None = None,
    ) -> LoopHistory:
        """Active learning on the service, the simulator on this side: each round, suggest `batch` points (POST
        /models/{name}/suggest, points observed but not yet in the served version sent as pending), simulate them
        (`simulator(points)`: an (batch, n_features) array in, (batch,) or (batch, n_outputs) values out), observe
        them (a version conditioned on all the data, promoted by `promote`), and when `refit_every` says so a full
        refit on the model's data (a training job, waited for, promoted if better; with `promote="never"`, not
        promoted): "auto" (default) when the data
        has grown by a fifth since the hyperparameters were last fitted or the new runs surprised the served versions
        (gpr_client.training.RefitPolicy states the rule), k after every k-th round, None never. The history of the
        rounds; `progress(round)` after each round if a callable, else a progress bar."""
        check_loop_arguments(rounds, batch, acquisition, refit_every)
        if promote not in PROMOTE_RULES:
            raise ValueError(f"promote must be one of {', '.join(PROMOTE_RULES)}; got {promote!r}")
        model = self._on(name)
        info = model.model()
        history = LoopHistory(name, info.features, info.outputs)
        observed = Observed()
        policy = RefitPolicy(refit_every)
        refit_promote = "never" if promote == "never" else "if_better"
        served: int | None = None  # the newest version known to serve the alias (None: the one before the loop)
        report = progress if callable(progress) else None
        with tqdm(total=rounds, unit="round", disable=report is not None or not progress, desc=name) as bar:
            for number in range(rounds):
                started = time.perf_counter()
                round_seed = None if seed is None else seed + number
                unseen = observed.unseen_by(served)
                # The version known to serve the alias is asked by its number: through the alias, environments
                # that read it up to a few seconds ago would answer with an older version, its hyperparameters
                # rounds stale where every round refits (Branin over HTTP: 7 of every 8 rounds' suggestions).
                # Until one is known (none promoted yet), the alias, with every point of the loop as pending.
                asked = model if served is None else self._on(name, served)
                picks = asked.suggest(q=batch, acquisition=acquisition, pending=unseen, seed=round_seed)
                suggested = time.perf_counter()
                values = simulated(simulator(picks.points.copy()), batch, info.outputs)
                simulated_at = time.perf_counter()
                observed.add(picks.points)
                answer = self.observe(name, (picks.points, values), promote=promote, admin_key=admin_key)
                observed_at = time.perf_counter()
                version = (answer.get("version") or {}).get("version")
                observed.made(version)
                is_served = promoted(answer.get("promotion"), version)
                served = version if is_served else served
                policy.observed(answer, seconds=observed_at - started)
                job = None
                if (why := policy.due()) is not None:
                    # polled at most every 0.25 s: what the refit took decides whether the next round refits.
                    # force: a refit is judged against the version it would replace (if_better), not the quality
                    # gate, which a first few points fail (Branin's 11 to 15: leave-one-out R^2 under 0.5) while
                    # their conditioned versions, no better, serve. With promote="never" no refit moves the alias
                    # either: forced past the gate and judged on the new rows alone, a refit on a simulator's noise
                    # took the alias from a model 6,000x more accurate (red team).
                    job = self.train(name, promote=refit_promote, progress=False, admin_key=admin_key,
                                     poll_interval_s=0.25, force=True)  # fmt: skip
                    job["refit_reason"] = why
                    policy.refitted(seconds=time.perf_counter() - observed_at)
                    observed.made(job.get("version"))
                    served = job["version"] if job.get("promoted") else served
                finished = time.perf_counter()
                seconds = {"suggest": suggested - started, "simulate": simulated_at - suggested,
                           "observe": observed_at - simulated_at, "refit": finished - observed_at,
                           "total": finished - started}  # fmt: skip
                entry = LoopRound(number, picks.points, values, version, is_served, answer.get("surprise"), job,
                                  seconds, 0 if unseen is None else len(unseen), served)  # fmt: skip
                history.rounds.append(entry)
                if report is not None:
                    report(entry)
                else:
                    bar.set_postfix(version=version, refresh=False)
                    bar.update(1)
        return history

    def _on(self, name: str, version: int | None = None) -> SurrogateClient:
        """This client on model `name` (its live alias, or `version`): the same connections, another prefix."""
        other = copy.copy(self)
        other._prefix, other._model, other._training = _model_prefix(name, version), None, None
        return other


class Job:
    """A submitted job: `status()`, `wait()`, `results()`, `download()`, `cancel()`."""

    def __init__(self, client: SurrogateClient, job_id: str, doc: dict[str, Any]) -> None:
        self.client = client
        self.id = job_id
        self.last_status = doc
        self._status_at = _clock()

    def status(self) -> dict[str, Any]:
        self.last_status = self.client._request("GET", f"/jobs/{self.id}").json()
        self._status_at = _clock()
        return self.last_status

    def cancel(self) -> dict[str, Any]:
        """Cancel the job (POST /jobs/{id}/cancel): its document, FAILED "cancelled by the caller"; a job that has
        already ended otherwise raises ApiError 409. A cancel retried after its answer was lost (the first one
        worked) returns the cancelled job too."""
        try:
            self.last_status = self.client._request("POST", f"/jobs/{self.id}/cancel").json()
        except ApiError as refused:
            if refused.status != 409:
                raise
            ended = self.status()
            if (ended.get("status"), ended.get("error")) != ("FAILED", CANCELLED_BY_CALLER):
                raise
        return self.last_status

    def wait(
        self,
        *,
        progress: bool = True,
        poll_interval_s: float = 2.0,
        timeout_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> JobResults:
        """Poll until SUCCEEDED (then download the results) or FAILED (JobFailedError with the reason): first after
        0.1 s, the wait doubling up to `poll_interval_s`."""
        _check_poll_interval(poll_interval_s)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        doc = self.last_status
        waits = _poll_waits(poll_interval_s)
        with tqdm(total=doc["progress"]["points"] or None, unit="pt", disable=not progress, desc=self.id[:8]) as bar:
            while True:
                total, done = doc["progress"]["points"], doc["progress"]["points_done"]
                if total and bar.total != total:
                    bar.total = total
                _advance(bar, done)
                if doc["status"] == "SUCCEEDED":
                    break  # the bar closes (its one 100% line) before the download, which is not its work
                if doc["status"] == "FAILED":
                    raise JobFailedError(self.id, doc.get("error") or "no reason given")
                if doc["status"] == "AWAITING_UPLOAD":
                    raise RuntimeError(
                        f"job {self.id} waits for its upload: PUT the file, then POST /jobs/{self.id}/start"
                    )
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} is still {doc['status']} after {timeout_s} s")
                sleep(next(waits))
                doc = self.status()
        return self.results()

    def results(self) -> JobResults:
        """The results in memory, in input order (a Parquet job's parts, read in turn, as one table)."""
        doc = self._succeeded()
        info = self.client.model()
        fmt = doc["results"]["format"]
        if fmt == "parquet":
            parts = [_read_table(self._download(part["url"]), fmt) for part in self._parts(doc)]
            table = np.concatenate(parts)  # a job has a point, so a part, at least
        else:
            table = _read_table(self._download(doc["results"]["url"]), fmt)
        return JobResults(table, info.features, info.outputs)

    def download(self, path: str | os.PathLike[str]) -> Path:
        """Save the results without holding them in memory: a csv or npy job's file at `path`; a Parquet job's parts
        as `path/part-NNNNNN.parquet`, a folder pyarrow, DuckDB, pandas and Spark read as one dataset. Returns it.

        The folder must be new or empty (any other file in it would be read as part of the dataset), and appears only
        once every part is in it: a failed download leaves none, not a dataset missing rows.
        """
        doc = self._succeeded()
        target = Path(path)
        if doc["results"]["format"] != "parquet":
            self._stream(doc["results"]["url"], target)
            return target
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(f"{target} is not an empty folder: a Parquet job's parts need a folder of their own")
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)  # left by a download that was killed
        staging.mkdir(parents=True)
        try:
            for part in self._parts(doc):
                self._stream(part["url"], staging / f"part-{int(part['index']):06d}.parquet")
            if target.exists():  # empty, checked above; Windows replaces no folder
                target.rmdir()
            staging.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _succeeded(self) -> dict[str, Any]:
        results = self.last_status.get("results")
        fresh = results and not _expiring(results, _clock() - self._status_at)
        doc = self.last_status if fresh else self.status()  # an answer's URLs are signed for an hour
        if doc["status"] != "SUCCEEDED":
            raise RuntimeError(f"job {self.id} is {doc['status']}; its results come when it has SUCCEEDED")
        return doc

    def _parts(self, doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A Parquet job's parts, in order, page after page of the job's answer; a page whose URLs are about to
        expire (reading its parts took most of an hour) is asked for again from the next part."""
        listing, listed_at = doc["results"], self._status_at
        position = 0  # in listing["parts"]
        while True:
            if position == len(listing["parts"]):
                following = listing.get("parts_next")
                if not following:
                    return
                parts_from = parse_qs(urlsplit(following).query)["parts_from"][0]
            elif _expiring(listing, _clock() - listed_at):
                parts_from = str(listing["parts"][position]["index"])
            else:
                position += 1
                yield listing["parts"][position - 1]
                continue
            page = self.client._request("GET", f"/jobs/{self.id}", params={"parts_from": parts_from}).json()
            listing, listed_at, position = page["results"], _clock(), 0

    def _download(self, url: str) -> bytearray:
        """The object's bytes, a megabyte at a time into one buffer (the table is then a view of it, not a copy);
        retried as other requests are on S3's 5xx and 429 and on transport errors."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.client.max_attempts),
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=30),
            retry=tenacity.retry_if_exception_type((_RetryableError, httpx.TransportError)),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt, self.client._files.stream("GET", url) as response:
                    if response.status_code in RETRYABLE_STATUSES or response.status_code >= 500:
                        response.read()
                        raise _RetryableError(response)
                    if response.status_code >= 400:
                        raise ApiError(response.status_code, {"error": response.read()[:200].decode(errors="replace")})
                    data = bytearray(int(response.headers.get("content-length") or 0))
                    filled = 0
                    for block in response.iter_bytes(2**20):
                        data[filled : filled + len(block)] = block
                        filled += len(block)
                    del data[filled:]
        except _RetryableError as exhausted:
            raise ApiError(exhausted.response.status_code, {"error": exhausted.response.text[:200]}) from None
        return data

    def _stream(self, url: str, target: Path) -> None:
        """GET `url` into `target` a megabyte at a time, through a temporary file: a failed download leaves none."""
        partial = target.with_name(target.name + ".partial")
        try:
            with self.client._files.stream("GET", url) as response, partial.open("wb") as sink:
                if response.status_code >= 400:
                    raise ApiError(response.status_code, {"error": response.read()[:200].decode(errors="replace")})
                for block in response.iter_bytes(2**20):
                    sink.write(block)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)


FIRST_POLL_S = 0.1  # a job that ends quickly (a refit of a few dozen points: ~0.25 s) is seen ending quickly


def _check_poll_interval(poll_interval_s: Any) -> float:
    """A poll interval: a positive, finite number of seconds (0 would poll without pause, a negative one fails in
    time.sleep after the first poll, NaN or infinity would let the waits double without end), refused before any
    request."""
    if isinstance(poll_interval_s, bool) or not isinstance(poll_interval_s, int | float):
        raise ValueError(f"poll_interval_s must be a number of seconds; got {poll_interval_s!r}")
    if not (math.isfinite(poll_interval_s) and poll_interval_s > 0):
        raise ValueError(f"poll_interval_s must be positive and finite; got {poll_interval_s!r}")
    return float(poll_interval_s)


def _poll_waits(longest_s: float) -> Iterator[float]:
    """Waits between polls: FIRST_POLL_S, doubling up to `longest_s` (the caller's poll interval, checked by the
    caller before any request), then that."""
    wait = min(FIRST_POLL_S, longest_s)
    while True:
        yield wait
        wait = min(2 * wait, longest_s)


def _clock() -> float:
    return time.monotonic()


def _expiring(results: dict[str, Any], age_s: float) -> bool:
    """Whether URLs signed `age_s` ago for `expires_in_seconds` (an hour) are in their last fifth: sign again."""
    return age_s > 0.8 * float(results.get("expires_in_seconds", 3600))


def _segment(name: str) -> str:
    """A name as one path segment: `/`, `?`, `#` and the like percent-encoded (the service refuses them anyway)."""
    return quote(str(name), safe="@")


def _model_prefix(model: str | None, version: int | None) -> str:
    """The path prefix of the model asked for: "" (the root routes), /models/{model} or /models/{name}/versions/{v}."""
    if model is None:
        if version is not None:
            raise ValueError("version= needs model= (the model's name)")
        return ""
    if not isinstance(model, str) or not model:
        raise ValueError('model= is a model\'s name: "name", "name@alias", or "name" with version=')
    if version is None:
        return f"/models/{_segment(model)}"
    if "@" in model:
        raise ValueError(f"give an alias or a version, not both: model={model!r}, version={version}")
    return f"/models/{_segment(model)}/versions/{operator.index(version)}"


def _advance(bar: tqdm, done: int) -> None:
    """Move the bar to `done`. Reaching its total is left to the bar's close(), which shows the last line (with the
    overall rate) once: update() would show it too, with the recent rate, and a log would read two 100% lines."""
    if bar.total is not None and done >= bar.total:
        bar.n = done
    else:
        bar.update(done - bar.n)


def _show_training(bar: tqdm, doc: Mapping[str, Any]) -> None:
    """A training job's stage and fits done on its bar."""
    stage = (doc.get("progress") or {}).get("stage") or doc.get("status", "")
    done, total = (doc.get("progress") or {}).get("fits_done"), (doc.get("progress") or {}).get("fits_total")
    if total and bar.total != total:
        bar.total = total
    bar.set_description_str(f"{str(doc.get('job_id', ''))[:8]} {stage}", refresh=False)
    if done is not None:
        _advance(bar, int(done))
    else:
        bar.refresh()


def _read_table(data: bytes | bytearray, fmt: str) -> np.ndarray:
    if fmt == "npy":
        return _npy_view(data)
    if fmt == "csv":
        return _read_csv(data)
    pq = optional_module("pyarrow.parquet", "parquet", "results in parquet need pyarrow")
    table = pq.read_table(io.BytesIO(data))
    array = np.empty(table.num_rows, dtype=[(name, "<f8") for name in table.column_names])
    for name in table.column_names:
        array[name] = table.column(name).to_numpy()
    return array


def _npy_view(data: bytes | bytearray) -> np.ndarray:
    """An .npy's array over its bytes, not a copy of them (a 10^7-row table is 480 MB): writable when they are."""
    stream = io.BytesIO(memoryview(data)[:NPY_HEADER_READ])  # io.BytesIO copies all but bytes: the head alone
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(stream)
    if dtype.hasobject or fortran_order:
        return np.load(io.BytesIO(data), allow_pickle=False)  # refuses objects; copies a Fortran-ordered array
    count = int(np.prod(shape))
    return np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell()).reshape(shape)


def _read_csv(data: bytes | bytearray) -> np.ndarray:
    """A results CSV (a header line of quoted names, then rows of numbers) as a structured array named as its header.
    Not genfromtxt: it renames columns (a feature `print`, `file` or `return` gets a `_`) and is ~3x slower."""
    stream = io.BytesIO(data)
    names = next(csv.reader([stream.readline().decode()]))
    values = np.loadtxt(stream, delimiter=",", dtype=np.float64, ndmin=2).reshape(-1, len(names))
    table = np.empty(len(values), dtype=[(name, "<f8") for name in names])
    for i, name in enumerate(names):
        table[name] = values[:, i]
    return table


def _gather(
    answers: Iterable[Any], outputs: tuple[str, ...], features: tuple[str, ...], include: tuple[str, ...]
) -> Predictions:
    """Columns answers (one per batch) into (N, n_outputs) arrays (and (N, n_features, n_outputs) gradients)."""
    names = ["mean", "variance"] + (["std"] if "std" in include else [])
    names += ["lower_95", "upper_95"] if "interval" in include else []
    gradients = ["mean_gradient", "variance_gradient"] if "gradient" in include else []
    per_name: dict[str, list[np.ndarray]] = {name: [] for name in names + gradients}
    for answer in answers:
        per_output = [answer] if len(outputs) == 1 else [answer[output] for output in outputs]
        for name in names:
            per_name[name].append(np.column_stack([np.asarray(o[name], dtype=float) for o in per_output]))
        for name in gradients:
            per_name[name].append(
                np.stack(
                    [np.column_stack([np.asarray(o[name][f], dtype=float) for f in features]) for o in per_output],
                    axis=2,
                )
            )
    stacked = {name: np.concatenate(parts) for name, parts in per_name.items() if parts}
    empty = np.empty((0, len(outputs)))
    mean, variance = stacked.pop("mean", empty), stacked.pop("variance", empty)
    mean_gradient, variance_gradient = stacked.pop("mean_gradient", None), stacked.pop("variance_gradient", None)
    return Predictions(outputs, mean, variance, stacked, mean_gradient, variance_gradient)


def _rows_by_name(rows: Sequence[Mapping[str, Any]], features: tuple[str, ...]) -> list[list[Any]]:
    """Rows {feature: value} as lists in the model's feature order; a ValueError names a row's missing or unknown
    features."""
    for i, row in enumerate(rows):
        if mismatch := _mismatch(row, features):
            raise ValueError(f"X row {i}: {mismatch} (the model's features: {', '.join(features)})")
    return [[row[f] for f in features] for row in rows]


def _columns_by_name(columns: Mapping[str, Any], features: tuple[str, ...]) -> np.ndarray:
    """Columns {feature: [values]} (/predict's body) as an (N, n_features) array in the model's feature order."""
    if mismatch := _mismatch(columns, features):
        raise ValueError(f"X's columns: {mismatch} (the model's features: {', '.join(features)})")
    shapes = [np.shape(columns[f]) for f in features]
    if len(set(shapes)) != 1 or len(shapes[0]) != 1:
        said = ", ".join(f"{f} {shape}" for f, shape in zip(features, shapes, strict=True))
        raise ValueError(f"X's columns must be lists of one length: {said}")
    return np.column_stack([np.asarray(columns[f]) for f in features])  # made numbers (or refused) by the caller


def _mismatch(names: Mapping[str, Any], features: tuple[str, ...]) -> str:
    """How the names differ from the model's features ("no x2; unknown feature(s) z"), or "" where they do not."""
    missing = [f for f in features if f not in names]
    unknown = sorted(str(k) for k in names if k not in features)
    said = [f"no {', '.join(missing)}"] if missing else []
    return "; ".join(said + ([f"unknown feature(s) {', '.join(unknown)}"] if unknown else []))


def _described(X: Any) -> str:
    """What X is, for an error: its type, and its elements' types where it is a sequence."""
    if isinstance(X, Sequence) and not isinstance(X, str) and X:
        kinds = sorted({type(item).__name__ for item in X})
        return f"a {type(X).__name__} of {' and '.join(kinds)}"
    return type(X).__name__


def _seed(seed: int | None) -> int | None:
    return None if seed is None else operator.index(seed)


def _input_distributions(inputs: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    return None if inputs is None else {str(name): dict(spec) for name, spec in inputs.items()}
