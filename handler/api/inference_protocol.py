"""The Open Inference Protocol (KServe/Triton/MLServer "V2") REST API, for clients teams already have.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     200 when live / ready
    GET  /v2/models/{name}[/versions/{v}]      model metadata: one FP64 input [-1, n_features], mean and variance
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

A name is the packaged model's (its manifest's name, and its manifest's version) or a registry model's (its `live`
alias, `name@alias`, or a version by number), chosen by the one resolver as on every model route (`X-Model-Version`
says which version answered). One input tensor, FP64 (FP32 accepted), shape [N, n_features] in the manifest's
feature order, data flat (row-major) or nested; outputs `mean` and `variance`, FP64 [N, n_outputs]. Parameter
`variance` ("noisy" or "latent") as on /predict. Errors are `{"error": "..."}` as the protocol says, with the same
statuses as the rest of the API.
"""

from __future__ import annotations

from itertools import chain, islice
from typing import Any

import numpy as np
import orjson
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from handler.api.deadline import BatchLimits, batch_limits, predict_within_deadline
from handler.api.errors import RequestError, brief, encodable
from handler.api.model_routes import resolver, serve, served
from handler.api.parsing import decode_body, load_body
from handler.api.services import Services
from handler.gp.artifact import Manifest, ModelUnavailableError
from handler.registry.names import BadNameError, ModelRef
from handler.registry.store import RegistryNotFoundError, RegistryUnavailableError

router = Router()
logger = Logger(child=True)
_services: Services | None = None
DATATYPES = {"FP64": np.float64, "FP32": np.float32}
SERVER_VERSION = "1.0.0"


def configure(services: Services) -> None:
    global _services
    _services = services


def _context() -> Services:
    assert _services is not None, "handler.api.inference_protocol.configure() was not called"
    return _services


class InferenceError(Exception):
    """A V2 request refused: `{"error": message}` with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _answer(body: dict[str, Any] | None, status: int = 200) -> Response:
    if body is None:  # health: "the HTTP request and response bodies should be empty"; the status is the answer
        return Response(status, content_types.TEXT_PLAIN, "")
    return Response(status, content_types.APPLICATION_JSON, orjson.dumps(body).decode())


def _error(status: int, message: str) -> Response:
    response = _answer({"error": encodable(message)}, status)  # it may quote what the caller sent
    if status == 503:  # as on every route: when a failed model load is tried again
        response.headers["Retry-After"] = str(max(1, round(_context().settings.model_retry_seconds)))
    return response


def _addressed(name: str, version: str | None) -> ModelRef | None:
    """The model a V2 path names: a registry model by name (its `live` alias), `name@alias` or version number, else
    the packaged model by its manifest's name and version (None: the resolver's packaged model)."""
    wanted = brief(name) + (f" version {brief(version)}" if version is not None else "")
    try:
        ref = ModelRef.parse(name)
        if resolver().registered(ref.name):
            return ref if version is None else ModelRef.parse(name, version)
    except BadNameError as exc:
        raise InferenceError(404, f"no model {wanted}: {exc}") from None
    packaged = resolver().packaged_model()  # ModelUnavailableError: a 503 from _guard
    if name != packaged.name or (version is not None and version != packaged.version):
        raise InferenceError(404, f"no model {wanted}; this server has {packaged.name} version {packaged.version}")
    return None


def _model() -> Manifest:
    """The manifest of the model this request addressed (`_serving` chose it)."""
    return _context().manifest()


def _serving(name: str, version: str | None, route: Any) -> Response:
    answer: Response = serve(_addressed(name, version), route)
    return answer


def _guard(handler: Any) -> Any:
    """Map this protocol's refusals (and the API's own) to `{"error": ...}`, as V2 clients expect."""

    def guarded(**kwargs: Any) -> Response:
        try:
            return handler(**kwargs)
        except InferenceError as exc:
            return _error(exc.status, str(exc))
        except ModelUnavailableError as exc:
            # The reason may quote the artifact: the log gets it, callers a fixed message (as on every route).
            logger.error("model unavailable", extra={"reason": str(exc)})
            return _error(503, "model unavailable")
        except RegistryNotFoundError as exc:  # a registry model's unknown or unservable version: says what exists
            return _error(404, str(exc))
        except RegistryUnavailableError as exc:
            logger.error("registry unavailable", extra={"reason": str(exc)})
            return _error(503, "model registry unavailable")
        except RequestError as exc:
            said = "; ".join(f"{field}: {message}" for field, message in exc.details[:5])
            return _error(exc.status_code, f"{exc.error}" + (f" ({said})" if said else ""))

    guarded.__name__ = handler.__name__
    return guarded


@router.get("/v2")
def server_metadata() -> Response:
    # No protocol extensions: in particular not binary tensor data, so clients send and ask for JSON.
    return _answer({"name": "gpr-surrogate", "version": SERVER_VERSION, "extensions": []})


@router.get("/v2/health/live")
def live() -> Response:
    return _answer(None)


@router.get("/v2/health/ready")
@_guard
def ready() -> Response:
    _model()  # the packaged model's manifest reads
    return _answer(None)


def _metadata() -> Response:
    manifest, model = _model(), served()
    outputs = len(manifest.outputs)
    return _answer(
        {
            "name": model.name,
            "versions": [model.version],
            "platform": "numpy" if manifest.format == "npz" else "gpy",
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, len(manifest.features)]}],
            "outputs": [
                {"name": "mean", "datatype": "FP64", "shape": [-1, outputs]},
                {"name": "variance", "datatype": "FP64", "shape": [-1, outputs]},
            ],
            "parameters": {"features": list(manifest.features), "outputs": list(manifest.outputs)},
        }
    )


@router.get("/v2/models/<name>")
@_guard
def model_metadata(name: str) -> Response:
    return _serving(name, None, _metadata)


@router.get("/v2/models/<name>/versions/<version>")
@_guard
def model_version_metadata(name: str, version: str) -> Response:
    return _serving(name, version, _metadata)


def _ready() -> Response:
    _context().loaded_model()  # ModelUnavailableError: a 503 from _guard
    return _answer(None)


@router.get("/v2/models/<name>/ready")
@_guard
def model_ready(name: str) -> Response:
    return _serving(name, None, _ready)


@router.get("/v2/models/<name>/versions/<version>/ready")
@_guard
def model_version_ready(name: str, version: str) -> Response:
    return _serving(name, version, _ready)


@router.post("/v2/models/<name>/infer")
@_guard
def infer(name: str) -> Response:
    return _serving(name, None, _infer)


@router.post("/v2/models/<name>/versions/<version>/infer")
@_guard
def infer_version(name: str, version: str) -> Response:
    return _serving(name, version, _infer)


def _infer() -> Response:
    services = _context()
    manifest, model = _model(), served()
    event = router.current_event
    body = decode_body(event.body, bool(event.is_base64_encoded))
    # /predict's limits: the same points, as flat or nested numbers
    request = load_body(body, services.parser(manifest.features).limits)
    settings = services.settings
    limits = batch_limits(manifest, settings.max_batch_size, settings.function_timeout_seconds)
    points, latent = _read_request(request, manifest, limits)
    wanted = _requested_outputs(request)
    if violations := manifest.domain_violations(points, services.settings.domain_margin, limit=5):
        described = "; ".join(
            f"input[{v.row}][{manifest.features.index(v.feature)}] ({v.feature}) = {v.describe()}" for v in violations
        )
        raise InferenceError(422, f"point(s) outside the model's domain: {described}")
    # /predict's slices and deadline: a large model's batch answers 504, not a function Lambda kills
    (mean, variance), _ = predict_within_deadline(
        services.loaded_model().model, points, latent, router.lambda_context.get_remaining_time_in_millis
    )
    tensors = {"mean": mean, "variance": variance}
    answer: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": [
            {"name": key, "datatype": "FP64", "shape": list(values.shape), "data": values.ravel()}
            for key, values in tensors.items()
            if key in wanted
        ],
    }
    if request.get("id") is not None:
        answer["id"] = request["id"]  # _read_request checked that it can be echoed
    return Response(
        200,
        content_types.APPLICATION_JSON,
        orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
    )


def _read_request(request: Any, manifest: Manifest, limits: BatchLimits) -> tuple[np.ndarray, bool]:
    """The input tensor as an (N, n_features) float array, and whether the latent variance is wanted.

    Every field's type is checked before it is used (a datatype sent as an array cannot be looked up).
    """
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise InferenceError(400, "expected an inference request: an object with an `inputs` array")
    if (request_id := request.get("id")) is not None and not _echoable(request_id):
        raise InferenceError(400, f"id: expected a string of Unicode text, got {brief(request_id)}")
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InferenceError(400, f"parameters: expected an object, got {brief(parameters)}")
    if len(request["inputs"]) != 1 or not isinstance(request["inputs"][0], dict):
        count = len(request["inputs"])
        raise InferenceError(400, f"expected exactly one input tensor ([N, {len(manifest.features)}]), got {count}")
    tensor = request["inputs"][0]
    raw_name, shape, datatype = tensor.get("name", "input"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(raw_name, str):
        raise InferenceError(400, f"input name: expected a string, got {brief(raw_name)}")
    name = brief(raw_name)
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InferenceError(400, f"input {name}: datatype {brief(datatype)} is not supported; send FP64 (or FP32)")
    d = len(manifest.features)
    if (
        not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int for n in shape) and shape[1] == d)
        or shape[0] < 1
    ):
        raise InferenceError(400, f"input {name}: shape {brief(shape)}; expected [N, {d}] with N >= 1")
    if shape[0] > limits.points:  # before the data is read: the model's limit, what its time budget allows
        where = "" if limits.m is None else f" on {limits.describe()}"
        raise InferenceError(422, f"input {name}: {shape[0]} points; at most {limits.points} per request{where}")
    data = tensor.get("data")
    flat = _flatten(data, shape[0] * d)
    if flat is None:
        raise InferenceError(400, f"input {name}: data must hold {shape[0] * d} finite numbers for shape {shape}")
    points = flat.reshape(shape[0], d)
    variance = (parameters or {}).get("variance", "noisy")
    if not isinstance(variance, str) or variance not in ("noisy", "latent"):
        raise InferenceError(400, f"parameter variance: expected noisy or latent, got {brief(variance)}")
    return points, variance == "latent"


def _echoable(request_id: Any) -> bool:
    """Whether the answer can carry the id back as sent: a lone surrogate cannot be, and an altered id would mislead."""
    if not isinstance(request_id, str):
        return False
    try:
        request_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _flatten(data: Any, count: int) -> np.ndarray | None:
    """Row-major numbers from flat or nested JSON arrays; None unless exactly `count` finite numbers."""
    if not isinstance(data, list):
        return None
    values = data
    while values and all(isinstance(item, list) for item in values):
        values = list(chain.from_iterable(values))
    if len(values) != count or not all(type(v) in (int, float) for v in values):
        return None
    try:
        array = np.asarray(values, dtype=float)
    except OverflowError:
        return None
    return array if np.isfinite(array).all() else None


def _requested_outputs(request: dict[str, Any]) -> set[str]:
    outputs = request.get("outputs")
    if outputs is None:
        return {"mean", "variance"}
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InferenceError(400, 'outputs: expected a list of {"name": ...}')
    names = {o["name"] for o in outputs}
    if unknown := names - {"mean", "variance"}:
        unknown_names = ", ".join(brief(name) for name in islice(unknown, 5))
        raise InferenceError(400, f"outputs: unknown {unknown_names}; this model has mean and variance")
    return names
